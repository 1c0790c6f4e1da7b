using System.Net.Sockets;
using PinnedDma.Verbs;
using PinnedDma.Verbs.Internal;

namespace PinnedDma.Transports.Iwarp.Internal;

/// <summary>
/// One iWARP connection under an RC queue pair: RDMAP over DDP over MPA over a real TCP socket, and the queue pair's
/// transport. This type owns the connection's life (start, close, abandon) and answers the engine through the
/// transport contract; the work is done by its parts: <see cref="IwarpSender"/> (requester work and Read Responses on
/// the connection's own DMA engine thread), <see cref="IwarpReceiver"/> (a receive thread per connection: the responder
/// side and Read Response placement) and <see cref="IwarpReadQueue"/> (outstanding RDMA Reads, ORD, fences and
/// in-order completion).
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

    private readonly SocketReceivePipe _rx;
    private readonly Microsoft.Extensions.Logging.ILogger _log;
    private readonly string _peer;
    // This side's IwarpOptions.Ird and Ord: the read depths when MPA revision 1 negotiated none.
    private readonly ushort _localIrd, _localOrd;
    // Set once this side may send FPDUs: at once for the initiator, after the first valid FPDU for the responder.
    private readonly ManualResetEventSlim _transmit = new(false);
    private int _closed;
    private int _opened;
    private int _started;
    private string? _closeReason;

    public IwarpConnection(SocketReceivePipe rx, QueuePair qp, MpaNegotiated negotiated, IwarpOptions settings, bool initiator)
    {
        Initiator = initiator;
        // RFC 5044 §7.1.2 (and RFC 6581 §7 in peer-to-peer mode): the responder sends nothing until it has received and
        // validated the initiator's first FPDU (the RTR in peer-to-peer mode). The initiator may send at once.
        if (initiator) _transmit.Set();
        Socket = rx.Socket;
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
        Sender = new IwarpSender(this, options, maxFpduSize, settings.SendStallTimeout);
        Reads = new IwarpReadQueue(this);
        Receiver = new IwarpReceiver(this, rx, options, awaitRtr: !initiator && negotiated.PeerToPeer);
        Engine = new DmaEngine($"iwarp-qp{qp.QpNumber}");
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
    /// This connection's own send engine: requester work and RDMA Read responses run on it, so a peer that reads
    /// slowly (or not at all, until <see cref="IwarpOptions.SendStallTimeout"/>) delays no other queue pair.
    /// </summary>
    public override DmaEngine Engine { get; }

    /// <summary>Why the connection ended, once it did.</summary>
    public override string? CloseReason => _closeReason;

    /// <summary>Terminates sent because the peer broke the protocol (for tests).</summary>
    public TerminateCode? LastTerminateSent { get; private set; }

    /// <summary>The Terminate received from the peer, if any.</summary>
    public TerminateCode? LastTerminateReceived { get; private set; }

    /// <summary>Completes when the receive thread has ended.</summary>
    public Task Completion { get; private set; } = Task.CompletedTask;

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

    // ------------------------------------------------------------ the transport contract (DMA engine thread)

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

    // ------------------------------------------------------------ transmit gate

    /// <summary>
    /// Engine thread: holds work until this side may transmit (a responder before the initiator's first FPDU); false
    /// when the connection closed meanwhile. Work posted early is kept in order, not lost.
    /// </summary>
    public bool WaitUntilMayTransmit()
    {
        if (!_transmit.IsSet) _transmit.Wait();
        return Volatile.Read(ref _closed) == 0;
    }

    /// <summary>Receive thread: the peer's first FPDU was valid; this side may send from now on.</summary>
    public void AllowTransmit() => _transmit.Set();

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

    /// <summary>Starts the receive thread; bytes that followed the handshake in the receive pipe are parsed first.</summary>
    public override void Start()
    {
        // Exactly one of Start and Close owns the receive pipe's end: the thread started here, or Close.
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
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Completion = done.Task;
        var thread = new Thread(() =>
        {
            try
            {
                Receiver.Run();
            }
            finally
            {
                done.SetResult();
            }
        })
        {
            IsBackground = true,
            Name = $"iwarp-rx qp {Qp.QpNumber}",
        };
        thread.Start();
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
        _transmit.Set(); // releases an engine thread holding work for the first FPDU
        // Shutting down wakes every thread waiting on the socket. The socket itself is disposed by the receive pipe that
        // owns it, after releasing its handle reference: Socket.Dispose waits for every reference, so disposing here
        // from a thread that holds one (the receive thread on an error) would never return.
        try { Socket.Shutdown(SocketShutdown.Both); } catch (SocketException) { } catch (ObjectDisposedException) { }
        var status = LastTerminateReceived is { Layer: TerminateLayer.Rdmap or TerminateLayer.Ddp } ? WcStatus.RemAccessErr : WcStatus.RetryExcErr;
        Reads.CompleteAll(status);
        Qp.EnterError();
        // The QP is in Error and flushed: its engine has nothing left to do.
        Engine.Stop();
        // A connection closed before its receive thread started (the QP refused it) releases the socket here; otherwise
        // that thread does when it ends.
        if (Interlocked.Exchange(ref _started, 1) == 0) _rx.Dispose();
    }

    /// <summary>Drops a connection that was never attached to its queue pair: the socket closes, the QP is untouched.</summary>
    public override void Abandon()
    {
        if (Interlocked.Exchange(ref _closed, 1) != 0) return;
        _closeReason = "not attached: the queue pair was in the wrong state";
        try { Socket.Shutdown(SocketShutdown.Both); } catch (SocketException) { } catch (ObjectDisposedException) { }
        Engine.Stop();
        if (Interlocked.Exchange(ref _started, 1) == 0) _rx.Dispose();
    }

    public void Dispose() => Close("closed locally");
}
