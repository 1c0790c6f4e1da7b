using System.Net.Sockets;
using Microsoft.Extensions.ObjectPool;
using PinnedDma.Transports.Iwarp;
using PinnedDma.Verbs;
using PinnedDma.Verbs.Internal;

namespace PinnedDma.Transports.Iwarp.Internal;

/// <summary>
/// One iWARP connection under an RC queue pair: RDMAP over DDP over MPA over a real TCP socket. The DMA engine thread
/// runs the requester side (<see cref="Execute"/>); a receive thread per connection (IwarpConnection.Receive.cs) runs the
/// responder side and RDMA Read completions.
/// A protocol violation by the peer gets a Terminate with the layer, type and code of RFC 5040/5041/5044 and the
/// connection closes; the queue pair moves to Error. Nothing the peer sends reaches memory outside a registered,
/// valid region it has the access rights for.
/// </summary>
internal sealed partial class IwarpConnection : QpTransport, IDisposable
{
    private const int SendBatch = 256 * 1024;
    // Messages of at least this many bytes send their whole pieces (>= ZeroCopyPiece) by reference and are flushed
    // before the work request completes; shorter ones are copied and batched with their neighbours (one system call
    // for many), which costs less than a send of their own.
    private const int SendByReferenceMin = 32 * 1024;
    private const int ZeroCopyPiece = 4096;
    // Without CRC, tagged segments with at least this much payload are received straight into the region: below it,
    // the copy saved costs less than the extra receive calls.
    private const int PlaceDirectMin = 12 * 1024;
    // Read bound while a large tagged segment is expected: its header (and a previous pad), not its payload.
    private const int HeaderProbe = 64;

    private readonly Socket _socket;
    private readonly SocketReceivePipe _rx;
    private readonly QueuePair _qp;
    private readonly FpduEncoder _encoder;
    private readonly FpduDecoder _decoder;
    private readonly object _sendLock = new();
    private readonly FpduSendQueue _out;
    private readonly byte[] _scratch = GC.AllocateUninitializedArray<byte>(64 * 1024, pinned: true);
    private readonly Queue<PendingRead> _reads = new();
    private readonly ObjectPool<PendingRead> _readPool = new DefaultObjectPool<PendingRead>(new DefaultPooledObjectPolicy<PendingRead>(), 64);
    private readonly object _readsLock = new();
    private readonly Queue<InboundRead> _inboundReads = new();
    private uint _sendMsn = 1, _readMsn = 1, _termMsn = 1;
    private uint _expectSendMsn = 1, _expectReadMsn = 1;
    // Responder-side assembly of an incoming multi-segment Send.
    private bool _inSend;
    private RecvWorkRequest _recv;
    private MemoryRegion? _recvMr;
    private long _recvOffset;
    private uint _recvBytes;
    private int _closed;
    // Pad bytes of a directly placed segment still to be skipped in the pipe.
    private int _skip;

    public IwarpConnection(SocketReceivePipe rx, QueuePair qp, MpaNegotiated negotiated, IwarpOptions settings, bool initiator)
    {
        Initiator = initiator;
        // RFC 5044 §7.1.2 (and RFC 6581 §7 in peer-to-peer mode): the responder sends nothing until it has received and
        // validated the initiator's first FPDU (the RTR in peer-to-peer mode). The initiator may send at once.
        if (initiator) _transmit.Set();
        _awaitRtr = !initiator && negotiated.PeerToPeer;
        _socket = rx.Socket;
        Emss = ReadEmss(_socket);
        int maxFpduSize = settings.MaxFpduSize > 0 ? settings.MaxFpduSize : Emss > 0 ? Math.Max(Emss, 64) : FpduOptions.DefaultMaxFpduSize;
        _rx = rx;
        _out = new FpduSendQueue(_socket, SendBatch + 2 * maxFpduSize, settings.SendStallTimeout);
        _qp = qp;
        Negotiated = negotiated;
        _localIrd = settings.Ird;
        _localOrd = settings.Ord;
        // The MULPDU is the sender's own choice (from its MSS) and never advertised (RFC 5044 §5.1): whatever we send,
        // any valid ULPDU_Length up to 65535 is accepted.
        var options = new FpduOptions { Crc = negotiated.Crc, MaxUlpduLength = FpduOptions.MaxUlpduForFpduSize(maxFpduSize), MaxReceiveUlpduLength = ushort.MaxValue };
        _encoder = new FpduEncoder(options);
        _decoder = new FpduDecoder(options);
        Engine = new DmaEngine($"iwarp-qp{qp.QpNumber}");
        _log = Diagnostics.Log.For(settings.LoggerFactory, Diagnostics.Log.IwarpCategory);
        _peer = Diagnostics.Telemetry.PeerOf(_socket);
    }

    private readonly Microsoft.Extensions.Logging.ILogger _log;
    private readonly string _peer;
    private int _opened;

    public MpaNegotiated Negotiated { get; }

    // This side's IwarpOptions.Ird and Ord: the read depths when MPA revision 1 negotiated none.
    private readonly ushort _localIrd, _localOrd;

    /// <summary>The connection's effective TCP MSS (TCP_MAXSEG) when it could be read, else 0.</summary>
    public int Emss { get; }

    /// <summary>MULPDU: the largest ULPDU this side sends (from <see cref="Emss"/> unless overridden).</summary>
    public int MaxUlpduLength => _encoder.Options.MaxUlpduLength;

    /// <summary>Test hook: the next <paramref name="count"/> FPDUs sent go out with a wrong CRC (see <see cref="FpduEncoder.CorruptNextCrcs"/>).</summary>
    internal void CorruptNextCrcsForTest(int count) => _encoder.CorruptNextCrcs(count);

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

    /// <summary>Whether this side sent the MPA Request (the initiator) rather than the Reply.</summary>
    public bool Initiator { get; }

    // Set once this side may send FPDUs: at once for the initiator, after the first valid FPDU for the responder.
    private readonly ManualResetEventSlim _transmit = new(false);
    // Responder in peer-to-peer mode: the first FPDU must be the negotiated RTR message, which is consumed here.
    private bool _awaitRtr;
    // Whether the peer's first FPDU was received and validated.
    private bool _firstReceived;

    /// <summary>
    /// Engine thread: holds work until this side may transmit (a responder before the initiator's first FPDU); false
    /// when the connection closed meanwhile. Work posted early is kept in order, not lost.
    /// </summary>
    private bool WaitUntilMayTransmit()
    {
        if (!_transmit.IsSet) _transmit.Wait();
        return Volatile.Read(ref _closed) == 0;
    }

    /// <summary>
    /// Initiator in peer-to-peer mode: sends the negotiated zero-length RTR message as the very first FPDU (RFC 6581 §7):
    /// a Send on QN 0 (it takes MSN 1), an RDMA Write, or an RDMA Read Request on QN 1 (MSN 1) whose zero-length Read
    /// Response is consumed here and never completes a work request. STag 1 and offset 0 name no buffer: a zero-length
    /// transfer is not checked against one.
    /// </summary>
    private void SendRtr()
    {
        const uint RtrStag = 1;
        lock (_sendLock)
        {
            switch (Negotiated.Rtr)
            {
                case MpaRtrTypes.ZeroLengthSend:
                    _encoder.Write(_out, DdpRdmapHeader.ForUntagged(RdmapOpcode.Send, DdpQueue.Send, _sendMsn++, 0, true), default(ReadOnlySpan<byte>));
                    break;
                case MpaRtrTypes.ZeroLengthRdmaWrite:
                    _encoder.WriteRdmaWrite(_out, RtrStag, 0, true, default);
                    break;
                case MpaRtrTypes.ZeroLengthRdmaRead:
                    lock (_readsLock)
                        _reads.Enqueue(new PendingRead { Internal = true, SinkSTag = RtrStag, SinkTo = 0, Length = 0 });
                    _encoder.WriteReadRequest(_out, _readMsn++, new RdmaReadRequest(RtrStag, 0, 0, RtrStag, 0));
                    break;
                default:
                    throw new InvalidOperationException($"No RTR message for {Negotiated.Rtr}.");
            }
            _out.Flush();
        }
    }

    /// <summary>
    /// This connection's own send engine: requester work and RDMA Read responses run on it, so a peer that reads
    /// slowly (or not at all, until <see cref="IwarpOptions.SendStallTimeout"/>) delays no other queue pair.
    /// </summary>
    public override DmaEngine Engine { get; }

    /// <summary>Why the connection ended, once it did.</summary>
    public override string? CloseReason => _closeReason;

    private string? _closeReason;

    /// <summary>Terminates sent because the peer broke the protocol (for tests).</summary>
    public TerminateCode? LastTerminateSent { get; private set; }

    /// <summary>The Terminate received from the peer, if any.</summary>
    public TerminateCode? LastTerminateReceived { get; private set; }

    public Task Completion { get; private set; } = Task.CompletedTask;

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
                SendRtr();
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
                ReceiveLoop();
            }
            finally
            {
                done.SetResult();
            }
        })
        {
            IsBackground = true,
            Name = $"iwarp-rx qp {_qp.QpNumber}",
        };
        thread.Start();
    }

    /// <summary>An RDMA Read Request accepted by the receive loop, answered by the DMA engine thread.</summary>
    private readonly record struct InboundRead(MemoryRegion Source, long Offset, uint Size, uint SinkSTag, ulong SinkTo);

    private sealed class PendingRead
    {
        /// <summary>The RTR message's zero-length read: completes no work request.</summary>
        public bool Internal;
        public ulong WrId;
        public bool Signaled;
        public MemoryRegion? Sink;
        public long SinkOffset;
        public ulong SinkTo;
        public uint SinkSTag;
        public uint Length;
        public uint Received;
        public bool Done;
        public WcStatus Status;
    }

    // Send-queue completions leave in posting order: the completion of a request posted after a still outstanding
    // RDMA Read waits behind the Read's (so a signaled completion means every earlier request finished, as verbs
    // promise). Entries are reads (in order, completing in order) and held completions of other requests.
    private readonly Queue<(PendingRead? Read, WorkCompletion Completion)> _order = new();

    /// <summary>DMA engine thread: delivers the completion of a request other than an RDMA Read, in posting order.</summary>
    public override void CompleteInOrder(in WorkCompletion wc)
    {
        lock (_readsLock)
        {
            if (_order.Count == 0) _qp.SendCq.Push(wc);
            else _order.Enqueue((null, wc));
        }
    }

    // ------------------------------------------------------------ requester side (DMA engine thread)

    /// <summary>
    /// Tests only: runs on the DMA engine thread between an RDMA Read's first look at the closed flag and its queueing,
    /// so that a test can land a Close exactly in that window.
    /// </summary>
    internal Action? BeforeReadQueued { get; set; }

    /// <summary>Runs a send work request over the wire. RDMA Read completes later, when its response arrives.</summary>
    /// <summary>RDMA Reads complete from the receive loop, when their last response segment arrives.</summary>
    public override bool CompletesReadsLater => true;

    public override WcStatus Execute(in SendWorkRequest wr, MemoryRegion? local, long localOffset, out TransportOutcome outcome)
    {
        outcome = TransportOutcome.Done;
        if (Volatile.Read(ref _closed) != 0 || !WaitUntilMayTransmit()) return WcStatus.RetryExcErr;
        try
        {
            switch (wr.Opcode)
            {
                case WrOpcode.RdmaWrite:
                    return StreamOut(local, localOffset, wr.Local.Length, tagged: true, RdmapOpcode.RdmaWrite, wr.RKey, wr.RemoteAddress, 0, 0);
                case WrOpcode.Send:
                case WrOpcode.SendWithInvalidate:
                    {
                        bool se = (wr.Flags & SendFlags.Solicited) != 0;
                        var op = wr.Opcode == WrOpcode.Send
                            ? (se ? RdmapOpcode.SendWithSolicitedEvent : RdmapOpcode.Send)
                            : (se ? RdmapOpcode.SendWithSolicitedEventAndInvalidate : RdmapOpcode.SendWithInvalidate);
                        uint msn = _sendMsn++;
                        return StreamOut(local, localOffset, wr.Local.Length, tagged: false, op, 0, 0, msn, wr.InvalidateRKey);
                    }
                case WrOpcode.RdmaRead:
                    {
                        // ORD 0: the peer takes no RDMA Reads (or this side said it issues none). Refused, not parked:
                        // it would wait forever, and everything posted after it with it.
                        if (OrdLimit == 0) return WcStatus.LocQpOpErr;
                        var p = _readPool.Get();
                        p.WrId = wr.WrId;
                        p.Signaled = _qp.SignalAll || (wr.Flags & SendFlags.Signaled) != 0;
                        p.Sink = local;
                        p.SinkOffset = localOffset;
                        p.SinkTo = wr.Local.Address;
                        p.SinkSTag = wr.Local.LKey;
                        p.Length = wr.Local.Length;
                        p.Received = 0;
                        p.Done = false;
                        BeforeReadQueued?.Invoke();
                        lock (_readsLock)
                        {
                            // Close sets the flag, then completes what is queued under this lock: a read queued after
                            // that would never complete, so it is refused here instead (every posted request completes).
                            if (Volatile.Read(ref _closed) != 0)
                            {
                                p.Sink = null;
                                _readPool.Return(p);
                                return WcStatus.RetryExcErr;
                            }
                            _reads.Enqueue(p);
                            _order.Enqueue((p, default));
                        }
                        // A zero-length read is answered like any other (one empty, last Read Response segment) and
                        // completes in its turn behind the reads before it.
                        var req = new RdmaReadRequest(wr.Local.LKey, wr.Local.Address, wr.Local.Length, wr.RKey, wr.RemoteAddress);
                        lock (_sendLock) _encoder.WriteReadRequest(_out, _readMsn++, req);
                        outcome = TransportOutcome.Deferred;
                        return WcStatus.Success;
                    }
                default:
                    // RFC 5040 has no immediate data and no atomics (those are RFC 7306 extensions).
                    return WcStatus.LocQpOpErr;
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException)
        {
            Close($"send failed: {e.Message}");
            return WcStatus.RetryExcErr;
        }
    }

    /// <summary>
    /// Segments a message into full-size FPDUs straight from region memory. In a message of at least
    /// <see cref="SendByReferenceMin"/> bytes, pieces of at least <see cref="ZeroCopyPiece"/> go to the kernel by
    /// reference (gathered send); everything else is copied into the send stage.
    /// </summary>
    private WcStatus StreamOut(MemoryRegion? mr, long offset, uint length, bool tagged, RdmapOpcode op, uint stag, ulong to, uint msn, uint invalidate)
    {
        int hl = tagged ? DdpRdmapHeader.TaggedLength : DdpRdmapHeader.UntaggedLength;
        int max = _encoder.MaxPayload(hl);
        if (length > 0 && !mr!.TryEnter()) return WcStatus.LocProtErr;
        // A send inside the region's drain may block on a peer that does not read: a revocation waiting for the drain
        // cuts this connection off rather than wait (the socket shuts down, the blocked send fails, the drain is left).
        if (length > 0) mr!.Drain.AddStallHandler(_cutOffForRevoke ??= () => Close("region revoked while a send to the peer was blocked"));
        try
        {
            lock (_sendLock)
            {
                uint done = 0;
                bool referenced = false;
                do
                {
                    int n = (int)Math.Min(max, length - done);
                    bool last = done + (uint)n == length;
                    var header = tagged
                        ? DdpRdmapHeader.ForTagged(op, stag, to + done, last)
                        : DdpRdmapHeader.ForUntagged(op, DdpQueue.Send, msn, done, last, invalidate);
                    if (n == 0)
                    {
                        _encoder.Write(_out, header, default);
                    }
                    else if (mr!.IsOnDemand)
                    {
                        mr.ReadAt(offset + done, _scratch.AsSpan(0, n));
                        _encoder.Write(_out, header, _scratch.AsSpan(0, n));
                    }
                    else
                    {
                        // One full-size segment even across extents: whole pieces by reference, ragged ones copied.
                        uint crc = _encoder.BeginGather(_out, header, n);
                        for (int at = 0; at < n;)
                        {
                            var piece = mr.Piece(offset + done + at, n - at);
                            bool byReference = length >= SendByReferenceMin && piece.Length >= ZeroCopyPiece;
                            _encoder.Gather(_out, piece, byReference, ref crc);
                            referenced |= byReference;
                            at += piece.Length;
                        }
                        _encoder.EndGather(_out, header.Length, n, crc);
                    }
                    if (_out.QueuedBytes >= SendBatch) _out.Flush();
                    done += (uint)n;
                }
                while (done < length);
                // Referenced payload must reach the kernel before the region's drain is left (and before the work
                // request completes: the caller may reuse the buffer).
                if (referenced) _out.Flush();
            }
        }
        finally
        {
            if (length > 0)
            {
                mr!.Drain.RemoveStallHandler(_cutOffForRevoke!);
                mr.Exit();
            }
        }
        return WcStatus.Success;
    }

    /// <summary>DMA engine thread: answers accepted RDMA Read Requests, in order.</summary>
    public override void TakeTurn() => ServiceInbound();

    /// <summary>Answers accepted RDMA Read Requests, in order (the engine's turn, or the receive loop before a Terminate).</summary>
    public void ServiceInbound()
    {
        // Inside the QP's gate: a QP in Error or destroyed answers no more Read Requests.
        if (!_qp.TryEnterActive()) return;
        try
        {
            // One servicer at a time keeps responses in request order (the receive loop services the rest before a Terminate).
            lock (_serviceLock) ServiceInboundLocked();
        }
        finally
        {
            _qp.ExitActive();
        }
    }

    private readonly object _serviceLock = new();

    private void ServiceInboundLocked()
    {
        while (Volatile.Read(ref _closed) == 0)
        {
            InboundRead r;
            lock (_inboundReads)
            {
                if (!_inboundReads.TryDequeue(out r)) return;
            }
            WcStatus st;
            try
            {
                st = StreamOut(r.Source, r.Offset, r.Size, tagged: true, RdmapOpcode.RdmaReadResponse, r.SinkSTag, r.SinkTo, 0, 0);
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException)
            {
                Close($"send failed: {e.Message}");
                return;
            }
            if (st != WcStatus.Success)
            {
                SendTerminate(TerminateCode.Rdmap(RdmapErrorType.RemoteProtection, RdmapErrorCode.InvalidStag), null, 0);
                Close("region revoked during an RDMA Read");
                return;
            }
        }
    }

    /// <summary>DMA engine thread: sends what the last batch of work requests encoded (one system call for many small messages).</summary>
    public override void FlushPending()
    {
        if (Volatile.Read(ref _closed) != 0) return;
        try
        {
            lock (_sendLock) _out.Flush();
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException)
        {
            Close($"send failed: {e.Message}");
        }
    }

    // ------------------------------------------------------------ teardown

    private void SendTerminate(TerminateCode code, DdpRdmapHeader? header, ushort segmentLength)
    {
        LastTerminateSent = code;
        Diagnostics.Telemetry.Terminate(sent: true, (byte)code.Layer, code.ErrorType, code.ErrorCode);
        Diagnostics.Log.TerminateSent(_log, _peer, code.ToString(), CloseReason ?? "protocol error");
        try
        {
            lock (_sendLock)
            {
                var t = new TerminateMessage { Code = code, TerminatedDdpHeader = header, DdpSegmentLength = segmentLength, SegmentLengthValid = header.HasValue };
                _encoder.WriteTerminate(_out, _termMsn++, t);
                _out.Flush();
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException)
        {
        }
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
        try { _socket.Shutdown(SocketShutdown.Both); } catch (SocketException) { } catch (ObjectDisposedException) { }
        var status = LastTerminateReceived is { Layer: TerminateLayer.Rdmap or TerminateLayer.Ddp } ? WcStatus.RemAccessErr : WcStatus.RetryExcErr;
        while (true)
        {
            lock (_readsLock)
                if (_reads.Count == 0) break;
            CompleteHeadRead(status);
        }
        _qp.EnterError();
        // The QP is in Error and flushed: its engine has nothing left to do.
        Engine.Stop();
        // A connection closed before its receive thread started (the QP refused it) releases the socket here; otherwise
        // that thread does when it ends.
        if (Interlocked.Exchange(ref _started, 1) == 0) _rx.Dispose();
    }

    private int _started;
    private Action? _cutOffForRevoke;

    /// <summary>Drops a connection that was never attached to its queue pair: the socket closes, the QP is untouched.</summary>
    public override void Abandon()
    {
        if (Interlocked.Exchange(ref _closed, 1) != 0) return;
        _closeReason = "not attached: the queue pair was in the wrong state";
        try { _socket.Shutdown(SocketShutdown.Both); } catch (SocketException) { } catch (ObjectDisposedException) { }
        Engine.Stop();
        if (Interlocked.Exchange(ref _started, 1) == 0) _rx.Dispose();
    }

    public void Dispose() => Close("closed locally");
}
