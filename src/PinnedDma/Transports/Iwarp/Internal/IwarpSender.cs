using System.Net.Sockets;
using PinnedDma.Verbs;
using PinnedDma.Verbs.Internal;

namespace PinnedDma.Transports.Iwarp.Internal;

/// <summary>
/// The send side of an iWARP connection: requester work requests (RDMA Write, Send, RDMA Read Request) and the answers
/// to accepted RDMA Read Requests, segmented into FPDUs straight from region memory and flushed in batches; also the
/// RTR message, the Terminate and the RTR's Read Response. It never blocks: a message the socket cannot take now stays
/// the connection's current outbound message (its region entered, as during a blocking send), the send side parks
/// and the I/O loop resumes it when the socket has room (<see cref="Resume"/>). Every write to the stream is under one
/// lock (the loop's thread and an inline poster may both send), so FPDUs never interleave.
/// </summary>
internal sealed class IwarpSender
{
    private const int SendBatch = 256 * 1024;
    // Messages of at least this many bytes send their whole pieces (>= ZeroCopyPiece) by reference and are flushed
    // before the work request completes; shorter ones are copied and batched with their neighbours (one system call
    // for many), which costs less than a send of their own.
    private const int SendByReferenceMin = 32 * 1024;
    private const int ZeroCopyPiece = 4096;

    private readonly IwarpConnection _connection;
    private readonly QueuePair _qp;
    private readonly FpduEncoder _encoder;
    private readonly object _sendLock = new();
    private readonly FpduSendQueue _out;
    private byte[]? _scratch; // on-demand regions only: their bytes are read through it
    private readonly Queue<InboundRead> _inboundReads = new();
    private readonly object _serviceLock = new();
    private readonly Outbound _current = new();
    private uint _sendMsn = 1, _readMsn = 1, _termMsn = 1;
    private Action? _cutOffForRevoke;
    // Set while the socket is full (bytes queued that the kernel did not take): the loop waits for room.
    private volatile bool _blocked;
    private long _lastProgress;

    public IwarpSender(IwarpConnection connection, FpduOptions options, int fd)
    {
        _connection = connection;
        _qp = connection.Qp;
        _encoder = new FpduEncoder(options);
        _out = new FpduSendQueue(fd);
    }

    /// <summary>MULPDU: the largest ULPDU this side sends.</summary>
    public int MaxUlpduLength => _encoder.Options.MaxUlpduLength;

    /// <summary>Whether the socket is full and bytes wait (the loop watches for room).</summary>
    public bool Blocked => _blocked;

    /// <summary>When the socket last took bytes while this side was blocked (<see cref="Environment.TickCount64"/>).</summary>
    public long LastProgress => Volatile.Read(ref _lastProgress);

    /// <summary>Test hook: the next <paramref name="count"/> FPDUs sent go out with a wrong CRC (see <see cref="FpduEncoder.CorruptNextCrcs"/>).</summary>
    public void CorruptNextCrcs(int count) => _encoder.CorruptNextCrcs(count);

    /// <summary>An RDMA Read Request accepted by the receive side, answered in the queue pair's turn.</summary>
    public readonly record struct InboundRead(MemoryRegion Source, long Offset, uint Size, uint SinkSTag, ulong SinkTo);

    /// <summary>Who the current outbound message is for.</summary>
    private enum OutboundOwner : byte
    {
        None,
        WorkRequest,
        ReadResponse,
    }

    /// <summary>The message being segmented: the rest of it goes out when the socket has room.</summary>
    private sealed class Outbound
    {
        public OutboundOwner Owner;
        public bool Finished;
        public MemoryRegion? Region;
        public long Offset;
        public uint Length;
        public uint Done;
        public bool Started;
        public bool Tagged;
        public RdmapOpcode Op;
        public uint STag;
        public ulong To;
        public uint Msn;
        public uint Invalidate;
        public bool ByReference;
        public bool Referenced;
        public bool Entered;
    }

    /// <summary>
    /// Receive side: queues an accepted RDMA Read Request for the queue pair's turn; false when
    /// <paramref name="limit"/> are queued already.
    /// </summary>
    public bool TryQueueInboundRead(in InboundRead read, int limit)
    {
        lock (_inboundReads)
        {
            if (_inboundReads.Count >= limit) return false;
            _inboundReads.Enqueue(read);
            return true;
        }
    }

    /// <summary>
    /// Initiator in peer-to-peer mode: sends the negotiated zero-length RTR message as the very first FPDU (RFC 6581 §7):
    /// a Send on QN 0 (it takes MSN 1), an RDMA Write, or an RDMA Read Request on QN 1 (MSN 1) whose zero-length Read
    /// Response is consumed here and never completes a work request. STag 1 and offset 0 name no buffer: a zero-length
    /// transfer is not checked against one.
    /// </summary>
    public void SendRtr()
    {
        const uint RtrStag = 1;
        lock (_sendLock)
        {
            switch (_connection.Negotiated.Rtr)
            {
                case MpaRtrTypes.ZeroLengthSend:
                    _encoder.Write(_out, DdpRdmapHeader.ForUntagged(RdmapOpcode.Send, DdpQueue.Send, _sendMsn++, 0, true), default(ReadOnlySpan<byte>));
                    break;
                case MpaRtrTypes.ZeroLengthRdmaWrite:
                    _encoder.WriteRdmaWrite(_out, RtrStag, 0, true, default);
                    break;
                case MpaRtrTypes.ZeroLengthRdmaRead:
                    _connection.Reads.AddRtrRead(RtrStag);
                    _encoder.WriteReadRequest(_out, _readMsn++, new RdmaReadRequest(RtrStag, 0, 0, RtrStag, 0));
                    break;
                default:
                    throw new InvalidOperationException($"No RTR message for {_connection.Negotiated.Rtr}.");
            }
            FlushLocked();
        }
    }

    /// <summary>
    /// Receive side, responder in peer-to-peer mode: answers the initiator's zero-length RTR Read Request at once, the
    /// first FPDU this side sends (a few bytes into an empty socket buffer).
    /// </summary>
    public void SendRtrReadResponse(in RdmaReadRequest rr)
    {
        lock (_sendLock)
        {
            _encoder.WriteReadResponse(_out, rr.SinkSTag, rr.SinkTaggedOffset, true, default);
            FlushLocked();
        }
    }

    /// <summary>True while this side may not take a work request: the socket is full, or it may not transmit yet.</summary>
    public bool ParkForSend() => _blocked || !_connection.MayTransmit;

    /// <summary>
    /// Runs a send work request over the wire. RDMA Read completes later, when its response arrives; a message the
    /// socket cannot take whole now returns <see cref="TransportOutcome.Blocked"/> and is finished when the engine
    /// executes it again after the loop found room.
    /// </summary>
    public WcStatus Execute(in SendWorkRequest wr, MemoryRegion? local, long localOffset, out TransportOutcome outcome)
    {
        outcome = TransportOutcome.Done;
        if (_connection.IsClosed) return WcStatus.RetryExcErr;
        try
        {
            lock (_sendLock)
            {
                if (_connection.IsClosed) return WcStatus.RetryExcErr;
                // A message parked earlier goes on first (the socket may have room by now).
                bool free = AdvanceLocked();
                if (_current.Owner == OutboundOwner.WorkRequest)
                {
                    // This very request parked earlier: finished now, or still waiting for room.
                    if (_current.Finished)
                    {
                        _current.Owner = OutboundOwner.None;
                        _current.Finished = false;
                        return WcStatus.Success;
                    }
                    outcome = TransportOutcome.Blocked;
                    return WcStatus.Success;
                }
                if (!free || !_connection.MayTransmit || !EnsureRoomLocked())
                {
                    outcome = TransportOutcome.Blocked;
                    return WcStatus.Success;
                }
                switch (wr.Opcode)
                {
                    case WrOpcode.RdmaWrite:
                        return Start(OutboundOwner.WorkRequest, local, localOffset, wr.Local.Length, tagged: true, RdmapOpcode.RdmaWrite, wr.RKey, wr.RemoteAddress, 0, 0, out outcome);
                    case WrOpcode.Send:
                    case WrOpcode.SendWithInvalidate:
                        {
                            bool se = (wr.Flags & SendFlags.Solicited) != 0;
                            var op = wr.Opcode == WrOpcode.Send
                                ? (se ? RdmapOpcode.SendWithSolicitedEvent : RdmapOpcode.Send)
                                : (se ? RdmapOpcode.SendWithSolicitedEventAndInvalidate : RdmapOpcode.SendWithInvalidate);
                            var st = Start(OutboundOwner.WorkRequest, local, localOffset, wr.Local.Length, tagged: false, op, 0, 0, _sendMsn, wr.InvalidateRKey, out outcome);
                            if (st == WcStatus.Success) _sendMsn++;
                            return st;
                        }
                    case WrOpcode.RdmaRead:
                        // ORD 0: the peer takes no RDMA Reads (or this side said it issues none). Refused, not parked:
                        // it would wait forever, and everything posted after it with it.
                        if (_connection.OrdLimit == 0) return WcStatus.LocQpOpErr;
                        break; // queued outside the lock, below
                    default:
                        // RFC 5040 has no immediate data and no atomics (those are RFC 7306 extensions).
                        return WcStatus.LocQpOpErr;
                }
            }
            // The read joins the outstanding reads without the send lock held (a close takes that lock to leave the
            // parked message's region, and the read queue's own lock orders the read against the close).
            if (!_connection.Reads.TryAdd(in wr, local, localOffset)) return WcStatus.RetryExcErr;
            lock (_sendLock)
            {
                // Only this queue pair's turn encodes requests, and room was made above; a Terminate the receive side
                // queued meanwhile ends the connection, which completes the read with an error.
                if (!_connection.IsClosed && _out.HasRoom)
                {
                    // A zero-length read is answered like any other (one empty, last Read Response segment) and
                    // completes in its turn behind the reads before it.
                    var req = new RdmaReadRequest(wr.Local.LKey, wr.Local.Address, wr.Local.Length, wr.RKey, wr.RemoteAddress);
                    _encoder.WriteReadRequest(_out, _readMsn++, req);
                }
            }
            outcome = TransportOutcome.Deferred;
            return WcStatus.Success;
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException)
        {
            _connection.Close($"send failed: {e.Message}");
            return WcStatus.RetryExcErr;
        }
    }

    /// <summary>
    /// Goes on with a parked message unless the socket is known to be full: true when no unfinished message remains
    /// (none was parked, or it finished now).
    /// </summary>
    private bool AdvanceLocked()
    {
        if (_current.Owner == OutboundOwner.None || _current.Finished) return true;
        if (_blocked) return false;
        return PumpLocked();
    }

    /// <summary>Makes room for one FPDU: flushes a full batch; false (and the side parked) when the socket is full.</summary>
    private bool EnsureRoomLocked()
    {
        if (_out.QueuedBytes < SendBatch && _out.HasRoom) return true;
        return FlushLocked();
    }

    /// <summary>Hands the kernel what it takes; false (parked, the loop watches for room) when bytes remain.</summary>
    private bool FlushLocked()
    {
        long before = _out.QueuedBytes;
        if (_out.TryFlush())
        {
            _blocked = false;
            return true;
        }
        if (_out.QueuedBytes != before || !_blocked) Volatile.Write(ref _lastProgress, Environment.TickCount64);
        if (!_blocked)
        {
            _blocked = true;
            _connection.SendBlocked();
        }
        return false;
    }

    /// <summary>
    /// Begins a message from region memory and sends as much as the socket takes now. Success with
    /// <see cref="TransportOutcome.Done"/> when it all went (or is staged), with <see cref="TransportOutcome.Blocked"/>
    /// when the rest waits for room; LocProtErr when the region was revoked.
    /// </summary>
    private WcStatus Start(OutboundOwner owner, MemoryRegion? mr, long offset, uint length, bool tagged, RdmapOpcode op, uint stag, ulong to, uint msn, uint invalidate, out TransportOutcome outcome)
    {
        outcome = TransportOutcome.Done;
        if (length > 0 && !mr!.TryEnter()) return WcStatus.LocProtErr;
        var c = _current;
        c.Owner = owner;
        c.Finished = false;
        c.Region = length > 0 ? mr : null;
        c.Offset = offset;
        c.Length = length;
        c.Done = 0;
        c.Started = false;
        c.Tagged = tagged;
        c.Op = op;
        c.STag = stag;
        c.To = to;
        c.Msn = msn;
        c.Invalidate = invalidate;
        c.ByReference = length >= SendByReferenceMin;
        c.Referenced = false;
        c.Entered = length > 0;
        // A message parked inside the region's drain waits on the peer: a revocation waiting for the drain cuts this
        // connection off rather than wait (the queue is discarded, the drain is left).
        if (c.Entered) mr!.Drain.AddStallHandler(_cutOffForRevoke ??= () => _connection.Close("region revoked while a send to the peer was blocked"));
        if (PumpLocked())
        {
            // Finished at once: the request completes now, nothing stays parked.
            c.Owner = OutboundOwner.None;
            c.Finished = false;
            return WcStatus.Success;
        }
        outcome = TransportOutcome.Blocked;
        return WcStatus.Success;
    }

    /// <summary>
    /// Segments the current message into full-size FPDUs straight from region memory until it is all queued (true:
    /// finished, its region left) or the socket is full (false). In a message of at least
    /// <see cref="SendByReferenceMin"/> bytes, pieces of at least <see cref="ZeroCopyPiece"/> go to the kernel by
    /// reference (gathered send) and the message finishes only once they left; everything else is copied into the stage.
    /// </summary>
    private bool PumpLocked()
    {
        var c = _current;
        int hl = c.Tagged ? DdpRdmapHeader.TaggedLength : DdpRdmapHeader.UntaggedLength;
        int max = _encoder.MaxPayload(hl);
        while (!c.Started || c.Done < c.Length)
        {
            if (!EnsureRoomLocked()) return false;
            c.Started = true;
            int n = (int)Math.Min(max, c.Length - c.Done);
            bool last = c.Done + (uint)n == c.Length;
            var header = c.Tagged
                ? DdpRdmapHeader.ForTagged(c.Op, c.STag, c.To + c.Done, last)
                : DdpRdmapHeader.ForUntagged(c.Op, DdpQueue.Send, c.Msn, c.Done, last, c.Invalidate);
            var mr = c.Region;
            if (n == 0)
            {
                _encoder.Write(_out, header, default);
            }
            else if (mr!.IsOnDemand)
            {
                _scratch ??= GC.AllocateUninitializedArray<byte>(64 * 1024, pinned: true);
                mr.ReadAt(c.Offset + c.Done, _scratch.AsSpan(0, n));
                _encoder.Write(_out, header, _scratch.AsSpan(0, n));
            }
            else
            {
                // One full-size segment even across extents: whole pieces by reference, ragged ones copied.
                uint crc = _encoder.BeginGather(_out, header, n);
                for (int at = 0; at < n;)
                {
                    var piece = mr.Piece(c.Offset + c.Done + at, n - at);
                    bool byReference = c.ByReference && piece.Length >= ZeroCopyPiece;
                    _encoder.Gather(_out, piece, byReference, ref crc);
                    c.Referenced |= byReference;
                    at += piece.Length;
                }
                _encoder.EndGather(_out, header.Length, n, crc);
            }
            c.Done += (uint)n;
        }
        // Referenced payload must reach the kernel before the region's drain is left (and before the work request
        // completes: the caller may reuse the buffer).
        if (c.Referenced && !FlushLocked()) return false;
        LeaveRegionLocked();
        if (c.Owner == OutboundOwner.WorkRequest) c.Finished = true;
        else c.Owner = OutboundOwner.None;
        return true;
    }

    private void LeaveRegionLocked()
    {
        var c = _current;
        if (!c.Entered) return;
        c.Entered = false;
        c.Region!.Drain.RemoveStallHandler(_cutOffForRevoke!);
        c.Region.Exit();
        c.Region = null;
    }

    /// <summary>
    /// I/O loop: the socket has room. Sends what is queued and goes on with the parked message; true when the send side
    /// is free again (the caller rings the queue pair so its turn goes on).
    /// </summary>
    public bool Resume()
    {
        try
        {
            lock (_sendLock)
            {
                if (_connection.IsClosed) return false;
                if (!FlushLocked()) return false;
                if (!AdvanceLocked()) return false;
                return FlushLocked();
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException)
        {
            _connection.Close($"send failed: {e.Message}");
            return false;
        }
    }

    /// <summary>
    /// Answers accepted RDMA Read Requests, in order: in the queue pair's turn, or on the receive side before it sends
    /// a Terminate. Stops (to go on when the loop found room) when the socket is full.
    /// </summary>
    public void ServiceInbound()
    {
        // Inside the QP's gate: a QP in Error or destroyed answers no more Read Requests.
        if (!_qp.TryEnterActive()) return;
        try
        {
            // One servicer at a time keeps responses in request order (the receive side services the rest before a Terminate).
            lock (_serviceLock) ServiceInboundLocked();
        }
        finally
        {
            _qp.ExitActive();
        }
    }

    private void ServiceInboundLocked()
    {
        while (!_connection.IsClosed)
        {
            InboundRead r;
            WcStatus st;
            try
            {
                lock (_sendLock)
                {
                    // A parked message (or a request waiting to be finished) goes first; the loop rings when it has.
                    if (!AdvanceLocked() || _current.Owner != OutboundOwner.None || !_connection.MayTransmit || !EnsureRoomLocked()) return;
                    lock (_inboundReads)
                    {
                        if (!_inboundReads.TryDequeue(out r)) return;
                    }
                    st = Start(OutboundOwner.ReadResponse, r.Source, r.Offset, r.Size, tagged: true, RdmapOpcode.RdmaReadResponse, r.SinkSTag, r.SinkTo, 0, 0, out _);
                }
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException)
            {
                _connection.Close($"send failed: {e.Message}");
                return;
            }
            if (st != WcStatus.Success)
            {
                SendTerminate(TerminateCode.Rdmap(RdmapErrorType.RemoteProtection, RdmapErrorCode.InvalidStag), null, 0);
                _connection.Close("region revoked during an RDMA Read");
                return;
            }
        }
    }

    /// <summary>Whether accepted Read Requests wait for an answer.</summary>
    public bool HasInboundReads
    {
        get { lock (_inboundReads) return _inboundReads.Count > 0; }
    }

    /// <summary>End of a turn: sends what the turn's requests encoded (one system call for many small messages).</summary>
    public void FlushPending()
    {
        if (_connection.IsClosed) return;
        bool more = false;
        try
        {
            lock (_sendLock)
            {
                // A flush that emptied the queue lets a parked message go on (it is nobody else's to resume: the socket
                // is not full, so the loop is not watching it).
                if (FlushLocked() && _current.Owner == OutboundOwner.ReadResponse && AdvanceLocked() && FlushLocked())
                    more = HasInboundReads;
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException)
        {
            _connection.Close($"send failed: {e.Message}");
        }
        if (more) _connection.Engine.Ring(_qp);
    }

    /// <summary>
    /// Sends a Terminate (best effort: a peer that went away, or that does not read, is not an error) and records it.
    /// It goes after the FPDUs already queued; whatever is left when the socket does not take it is dropped at close.
    /// </summary>
    public void SendTerminate(TerminateCode code, DdpRdmapHeader? header, ushort segmentLength)
    {
        _connection.TerminateSent(code);
        try
        {
            lock (_sendLock)
            {
                if (!_out.HasRoom && !FlushLocked()) return;
                var t = new TerminateMessage { Code = code, TerminatedDdpHeader = header, DdpSegmentLength = segmentLength, SegmentLengthValid = header.HasValue };
                _encoder.WriteTerminate(_out, _termMsn++, t);
                FlushLocked();
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException)
        {
        }
    }

    /// <summary>Bytes queued that the socket has not taken (for a lingering close).</summary>
    public long QueuedBytes
    {
        get { lock (_sendLock) return _out.QueuedBytes; }
    }

    /// <summary>
    /// The connection closed: the parked message's region is left and everything queued is dropped (no referenced
    /// byte is touched again). A request parked mid-message completes in error with the queue pair's flush.
    /// </summary>
    public void Abort()
    {
        lock (_sendLock)
        {
            LeaveRegionLocked();
            _current.Owner = OutboundOwner.None;
            _current.Finished = false;
            _out.Discard();
            _blocked = false;
        }
    }
}
