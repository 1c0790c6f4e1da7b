using System.Net.Sockets;
using PinnedDma.Interop;
using PinnedDma.Verbs;
using PinnedDma.Verbs.Internal;

namespace PinnedDma.Transports.Iwarp.Internal;

/// <summary>
/// One iWARP connection under an RC queue pair: RDMAP over DDP over MPA over a real TCP socket, and the queue pair's
/// transport. This type owns the connection's life (start, close, abandon) and answers the engine through the
/// transport contract; the work is done by its parts: <see cref="IwarpSender"/> (requester work and Read Responses),
/// <see cref="IwarpReceiver"/> (the responder side and Read Response placement) and <see cref="IwarpReadQueue"/>
/// (outstanding RDMA Reads, ORD, fences and in-order completion). The connection lives on one <see cref="IoLoop"/>: the
/// loop's thread receives and parses its FPDUs, runs its queue pair's turns on the loop's engine, and resumes its send
/// side when the socket has room; a poster may send a small request of an idle queue pair itself (inline). Nothing
/// blocks: a peer that does not read parks this connection's send side only, until
/// <see cref="IwarpOptions.SendStallTimeout"/> ends it.
/// A protocol violation by the peer gets a Terminate with the layer, type and code of RFC 5040/5041/5044 and the
/// connection closes; the queue pair moves to Error. Nothing the peer sends reaches memory outside a registered,
/// valid region it has the access rights for.
/// </summary>
internal sealed class IwarpConnection : QpTransport, IDisposable
{
    /// <summary>
    /// MPA revision 1 carries no IRD/ORD: the inbound RDMA Read Requests accepted at once then, unless
    /// <see cref="IwarpOptions.Ird"/> is larger. 128 is the most a Linux siw peer ever has outstanding (SIW_MAX_ORD_QP).
    /// </summary>
    internal const int Revision1InboundReads = 128;

    /// <summary>Work requests of at most this many bytes a poster sends itself on an idle queue pair.</summary>
    internal const uint InlineBytes = 16 * 1024;

    private readonly SocketReceivePipe _rx;
    private readonly Microsoft.Extensions.Logging.ILogger _log;
    private readonly string _peer;
    // This side's IwarpOptions.Ird and Ord: the read depths when MPA revision 1 negotiated none.
    private readonly ushort _localIrd, _localOrd;
    private readonly IoLoop _loop;
    private readonly LoopSide _io;
    private readonly long _stallMs;
    private readonly TaskCompletionSource _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);
    // Set once this side may send FPDUs: at once for the initiator, after the first valid FPDU for the responder.
    private volatile bool _mayTransmit;
    private int _closed;
    private int _opened;
    private int _started;
    private string? _closeReason;
    // A Terminate waits in the send queue: the socket closes once it left, or at this time (loop thread only).
    private long _lingerUntil = long.MaxValue;
    private string? _lingerReason;

    public IwarpConnection(SocketReceivePipe rx, QueuePair qp, MpaNegotiated negotiated, IwarpOptions settings, bool initiator)
    {
        Initiator = initiator;
        // RFC 5044 §7.1.2 (and RFC 6581 §7 in peer-to-peer mode): the responder sends nothing until it has received and
        // validated the initiator's first FPDU (the RTR in peer-to-peer mode). The initiator may send at once.
        _mayTransmit = initiator;
        Socket = rx.Socket;
        // Every call on the socket from here on must not wait: the loop serves many connections.
        Socket.Blocking = false;
        Emss = ReadEmss(Socket);
        int maxFpduSize = settings.MaxFpduSize > 0 ? settings.MaxFpduSize : Emss > 0 ? Math.Max(Emss, 64) : FpduOptions.DefaultMaxFpduSize;
        _rx = rx;
        Qp = qp;
        Negotiated = negotiated;
        _localIrd = settings.Ird;
        _localOrd = settings.Ord;
        // The MULPDU is the sender's own choice (from its MSS) and never advertised (RFC 5044 §5.1): whatever we send,
        // any valid ULPDU_Length up to 65535 is accepted.
        var options = new FpduOptions { Crc = negotiated.Crc, MaxUlpduLength = FpduOptions.MaxUlpduForFpduSize(maxFpduSize), MaxReceiveUlpduLength = ushort.MaxValue };
        Sender = new IwarpSender(this, options, rx.Fd);
        Reads = new IwarpReadQueue(this);
        Receiver = new IwarpReceiver(this, rx, options, awaitRtr: !initiator && negotiated.PeerToPeer);
        _stallMs = (long)Math.Clamp(settings.SendStallTimeout.TotalMilliseconds, 1, long.MaxValue / 4);
        _loop = IoLoopGroup.Next(settings.IoThreads);
        _io = new LoopSide(this);
        _log = Diagnostics.Log.For(settings.LoggerFactory, Diagnostics.Log.IwarpCategory);
        _peer = Diagnostics.Telemetry.PeerOf(Socket);
    }

    public QueuePair Qp { get; }

    public Socket Socket { get; }

    public IwarpSender Sender { get; }

    public IwarpReceiver Receiver { get; }

    public IwarpReadQueue Reads { get; }

    public MpaNegotiated Negotiated { get; }

    /// <summary>The connection's effective TCP MSS (TCP_MAXSEG) when it could be read, else 0.</summary>
    public int Emss { get; }

    /// <summary>MULPDU: the largest ULPDU this side sends (from <see cref="Emss"/> unless overridden).</summary>
    public int MaxUlpduLength => Sender.MaxUlpduLength;

    /// <summary>Whether this side sent the MPA Request (the initiator) rather than the Reply.</summary>
    public bool Initiator { get; }

    /// <summary>
    /// The engine of this connection's I/O loop: requester work and RDMA Read responses run on the loop's thread; a
    /// peer that reads slowly (or not at all, until <see cref="IwarpOptions.SendStallTimeout"/>) parks only this
    /// connection's send side.
    /// </summary>
    public override DmaEngine Engine => _loop.Engine;

    /// <summary>Why the connection ended, once it did.</summary>
    public override string? CloseReason => _closeReason;

    /// <summary>Terminates sent because the peer broke the protocol (for tests).</summary>
    public TerminateCode? LastTerminateSent { get; private set; }

    /// <summary>The Terminate received from the peer, if any.</summary>
    public TerminateCode? LastTerminateReceived { get; private set; }

    /// <summary>Completes when the connection has ended and its socket is closed.</summary>
    public Task Completion => _completion.Task;

    /// <summary>Whether the connection has closed (or was abandoned).</summary>
    public bool IsClosed => Volatile.Read(ref _closed) != 0;

    /// <summary>Set by the listener when it limits peers that name invalid STags (IwarpOptions.MaxInvalidStagConnections).</summary>
    public Action? InvalidStagNamed
    {
        get => Receiver.InvalidStagNamed;
        set => Receiver.InvalidStagNamed = value;
    }

    /// <summary>Tests only: see <see cref="IwarpReadQueue.BeforeReadQueued"/>.</summary>
    internal Action? BeforeReadQueued
    {
        get => Reads.BeforeReadQueued;
        set => Reads.BeforeReadQueued = value;
    }

    /// <summary>Test hook: the next <paramref name="count"/> FPDUs sent go out with a wrong CRC (see <see cref="FpduEncoder.CorruptNextCrcs"/>).</summary>
    internal void CorruptNextCrcsForTest(int count) => Sender.CorruptNextCrcs(count);

    /// <summary>
    /// Outbound RDMA Reads outstanding at once: with MPA revision 2 the negotiated ORD (the lower of our ORD and the
    /// peer's IRD; 0 means the peer takes no reads), with revision 1 (nothing negotiated) our own
    /// <see cref="IwarpOptions.Ord"/>.
    /// </summary>
    internal int OrdLimit => Negotiated.Revision >= 2 ? Negotiated.Ord : _localOrd;

    /// <summary>
    /// Inbound RDMA Read Requests this side accepts at once: with MPA revision 2 the IRD it advertised (RFC 6581 §5),
    /// with revision 1 (nothing advertised) <see cref="Revision1InboundReads"/> or our IRD if larger.
    /// </summary>
    internal int IrdLimit => Negotiated.Revision >= 2 ? Negotiated.Ird : Math.Max(Revision1InboundReads, (int)_localIrd);

    /// <summary>TCP_MAXSEG of a connected socket: the MSS its sends are cut to (0 when the platform does not say).</summary>
    private static int ReadEmss(Socket socket)
    {
        const int IpProtoTcp = 6, TcpMaxSeg = 2;
        Span<byte> value = stackalloc byte[4];
        try
        {
            return socket.GetRawSocketOption(IpProtoTcp, TcpMaxSeg, value) == 4 ? Math.Max(0, System.Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(value)) : 0;
        }
        catch (Exception e) when (e is SocketException or PlatformNotSupportedException)
        {
            return 0;
        }
    }

    // ------------------------------------------------------------ the transport contract (the engine's turn: loop thread or an inline poster)

    /// <summary>RDMA Reads complete from the receive loop, when their last response segment arrives.</summary>
    public override bool CompletesReadsLater => true;

    /// <summary>Answers the RDMA Read Requests the receive loop accepted, before the send queue's turn.</summary>
    public override void TakeTurn() => Sender.ServiceInbound();

    public override WcStatus Execute(in SendWorkRequest wr, MemoryRegion? local, long localOffset, out TransportOutcome outcome) =>
        Sender.Execute(in wr, local, localOffset, out outcome);

    public override bool ParkForFence() => Reads.ParkForFence();

    public override bool ParkForOrd() => Reads.ParkForOrd();

    public override void CompleteInOrder(in WorkCompletion wc) => Reads.CompleteInOrder(wc);

    public override void FlushPending() => Sender.FlushPending();

    /// <summary>Small requests of an idle queue pair may go out from the posting thread: the send side never blocks.</summary>
    public override bool SupportsInline => true;

    public override uint InlineLimit => InlineBytes;

    /// <summary>The socket is full, or a responder has not yet received the peer's first FPDU: the turn waits.</summary>
    public override bool ParkForSend() => Sender.ParkForSend();

    // ------------------------------------------------------------ transmit gate

    /// <summary>
    /// Whether this side may send FPDUs (a responder only after the initiator's first FPDU). Work posted early waits
    /// in the send queue, in order, and goes on when <see cref="AllowTransmit"/> rings the queue pair.
    /// </summary>
    public bool MayTransmit => _mayTransmit;

    /// <summary>Receive side: the peer's first FPDU was valid; this side may send from now on.</summary>
    public void AllowTransmit()
    {
        if (_mayTransmit) return;
        _mayTransmit = true;
        Engine.Ring(Qp);
    }

    // ------------------------------------------------------------ the I/O loop

    /// <summary>Sender: the socket is full; the loop watches for room (and for the stall timeout).</summary>
    public void SendBlocked()
    {
        if (_loop.IsLoopThread) WatchForRoom();
        else _loop.Post(WatchForRoom);
    }

    private void WatchForRoom()
    {
        if (IsClosed || _io.Slot < 0 || !Sender.Blocked) return;
        _loop.SetInterest(_io, EpollInterop.EPOLLIN | EpollInterop.EPOLLRDHUP | EpollInterop.EPOLLOUT);
        _loop.Timed(_io, on: true);
        // Room may have come between the failed send and now (level-triggered: epoll reports it at once anyway).
    }

    /// <summary>Loop thread: readiness of the socket.</summary>
    private void OnEvents(uint events)
    {
        if (_lingerUntil != long.MaxValue)
        {
            Linger(); // the receive side has ended: only the Terminate's way out matters
            return;
        }
        if (IsClosed) return;
        // Room: the parked send side goes on (or it was freed by a flush meanwhile); the turn goes on after it.
        if ((events & EpollInterop.EPOLLOUT) != 0 && (!Sender.Blocked || Sender.Resume()))
        {
            _loop.SetInterest(_io, EpollInterop.EPOLLIN | EpollInterop.EPOLLRDHUP);
            _loop.Timed(_io, on: false);
            Engine.Ring(Qp);
        }
        if ((events & ~EpollInterop.EPOLLOUT) != 0 && !IsClosed) Receiver.OnReadable();
    }

    private long Deadline => _lingerUntil != long.MaxValue ? _lingerUntil : Sender.Blocked ? Sender.LastProgress + _stallMs : long.MaxValue;

    private void OnDeadline(long now)
    {
        if (_lingerUntil != long.MaxValue)
        {
            _lingerUntil = now; // the Terminate did not leave in time: close without it
            Linger();
            return;
        }
        if (!IsClosed && Sender.Blocked && now - Sender.LastProgress >= _stallMs)
            Close($"send failed: the peer took no bytes for {_stallMs} ms (SendStallTimeout)");
    }

    /// <summary>
    /// Receive side (loop thread), after a Terminate was queued: closes the connection once the Terminate left, or after
    /// a short linger when the peer does not read (it cannot hold the connection open).
    /// </summary>
    public void CloseAfterTerminate(string reason)
    {
        if (Sender.QueuedBytes == 0 || IsClosed)
        {
            Close(reason);
            return;
        }
        _lingerReason = reason;
        _lingerUntil = Environment.TickCount64 + Math.Min(_stallMs, 1000);
        _loop.SetInterest(_io, EpollInterop.EPOLLOUT);
        _loop.Timed(_io, on: true);
    }

    private void Linger()
    {
        if (!IsClosed && Environment.TickCount64 < _lingerUntil && !Sender.Resume() && Sender.QueuedBytes > 0) return;
        _lingerUntil = long.MaxValue;
        Close(_lingerReason ?? "protocol error");
    }

    /// <summary>The connection as the loop sees it.</summary>
    private sealed class LoopSide(IwarpConnection connection) : IoHandler
    {
        public override int Fd => connection._rx.Fd;

        public override void OnEvents(uint events)
        {
            try
            {
                connection.OnEvents(events);
            }
            catch (Exception e)
            {
                // A fault in this connection's handling ends this connection only.
                connection.Close($"I/O loop fault: {e.GetType().Name}: {e.Message}");
            }
        }

        public override long Deadline => connection.Deadline;

        public override void OnDeadline(long now) => connection.OnDeadline(now);
    }

    // ------------------------------------------------------------ Terminates

    /// <summary>Records a Terminate this side is sending.</summary>
    public void TerminateSent(TerminateCode code)
    {
        LastTerminateSent = code;
        Diagnostics.Telemetry.Terminate(sent: true, (byte)code.Layer, code.ErrorType, code.ErrorCode);
        Diagnostics.Log.TerminateSent(_log, _peer, code.ToString(), CloseReason ?? "protocol error");
    }

    /// <summary>Records the Terminate the peer sent.</summary>
    public void TerminateReceived(TerminateCode code)
    {
        LastTerminateReceived = code;
        Diagnostics.Telemetry.Terminate(sent: false, (byte)code.Layer, code.ErrorType, code.ErrorCode);
        Diagnostics.Log.TerminateReceived(_log, _peer, code.ToString());
    }

    // ------------------------------------------------------------ lifetime

    /// <summary>
    /// Joins the connection's I/O loop: the socket is watched from now on, and bytes that followed the handshake in
    /// the receive pipe are parsed first.
    /// </summary>
    public override void Start()
    {
        // Exactly one of Start and Close owns the receive pipe's end: the loop (from here), or Close.
        if (Interlocked.Exchange(ref _started, 1) != 0) return;
        Volatile.Write(ref _opened, 1);
        Diagnostics.Telemetry.ConnectionOpen(1);
        Diagnostics.Telemetry.Connections.Add(1, Diagnostics.Telemetry.Established);
        Diagnostics.Log.ConnectionEstablished(_log, _peer, Negotiated.Revision, Negotiated.Crc, Initiator ? "initiator" : "responder");
        if (Initiator && Negotiated.PeerToPeer)
        {
            try
            {
                Sender.SendRtr();
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException)
            {
                Close($"send failed: {e.Message}");
            }
        }
        _loop.Post(() =>
        {
            if (IsClosed) return; // Close posted the release after this
            if (!_loop.Register(_io, EpollInterop.EPOLLIN | EpollInterop.EPOLLRDHUP))
            {
                Close("the socket was closed before the connection started");
                return;
            }
            if (Sender.Blocked) WatchForRoom();
            Receiver.OnReadable();
        });
    }

    /// <summary>Ends the connection: the QP moves to Error, outstanding reads complete with an error, the socket closes.</summary>
    public override void Close(string reason)
    {
        if (Interlocked.Exchange(ref _closed, 1) != 0) return;
        _closeReason = reason;
        if (Interlocked.Exchange(ref _opened, 0) != 0)
        {
            Diagnostics.Telemetry.ConnectionOpen(-1);
            Diagnostics.Log.ConnectionClosed(_log, _peer, reason);
        }
        // A message parked on a full socket leaves its region now (a revocation may be waiting for it); nothing queued
        // is sent after this.
        Sender.Abort();
        // The peer sees the end of the stream. The socket itself is disposed by the receive pipe that owns it, on the
        // loop's thread, after the loop stopped watching it.
        try { Socket.Shutdown(SocketShutdown.Both); } catch (SocketException) { } catch (ObjectDisposedException) { }
        var status = LastTerminateReceived is { Layer: TerminateLayer.Rdmap or TerminateLayer.Ddp } ? WcStatus.RemAccessErr : WcStatus.RetryExcErr;
        Reads.CompleteAll(status);
        Qp.EnterError();
        ReleaseSocket();
    }

    /// <summary>The loop stops watching the socket and closes it (after the handler that may be using it returned).</summary>
    private void ReleaseSocket()
    {
        // A connection closed before it started (the QP refused it) releases the socket here.
        if (Interlocked.Exchange(ref _started, 1) == 0)
        {
            _rx.Dispose();
            _loop.Release();
            _completion.TrySetResult();
            return;
        }
        _loop.Post(() =>
        {
            _loop.Unregister(_io);
            _rx.Dispose();
            _loop.Release();
            _completion.TrySetResult();
        });
    }

    /// <summary>Drops a connection that was never attached to its queue pair: the socket closes, the QP is untouched.</summary>
    public override void Abandon()
    {
        if (Interlocked.Exchange(ref _closed, 1) != 0) return;
        _closeReason = "not attached: the queue pair was in the wrong state";
        Sender.Abort();
        try { Socket.Shutdown(SocketShutdown.Both); } catch (SocketException) { } catch (ObjectDisposedException) { }
        ReleaseSocket();
    }

    public void Dispose() => Close("closed locally");
}
