using System.Net.Sockets;
using PinnedDma.Verbs;
using PinnedDma.Verbs.Internal;

namespace PinnedDma.Transports.Iwarp.Internal;

/// <summary>
/// The send side of an iWARP connection, on the connection's DMA engine thread: requester work requests (RDMA Write,
/// Send, RDMA Read Request) and the answers to accepted RDMA Read Requests, segmented into FPDUs straight from region
/// memory and flushed in batches; also the RTR message, the Terminate and the RTR's Read Response, which the connection
/// and its receive thread send. Every write to the stream is under one lock, so FPDUs never interleave.
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
    private readonly byte[] _scratch = GC.AllocateUninitializedArray<byte>(64 * 1024, pinned: true);
    private readonly Queue<InboundRead> _inboundReads = new();
    private readonly object _serviceLock = new();
    private uint _sendMsn = 1, _readMsn = 1, _termMsn = 1;
    private Action? _cutOffForRevoke;

    public IwarpSender(IwarpConnection connection, FpduOptions options, int maxFpduSize, TimeSpan stallTimeout)
    {
        _connection = connection;
        _qp = connection.Qp;
        _encoder = new FpduEncoder(options);
        _out = new FpduSendQueue(connection.Socket, SendBatch + 2 * maxFpduSize, stallTimeout);
    }

    /// <summary>MULPDU: the largest ULPDU this side sends.</summary>
    public int MaxUlpduLength => _encoder.Options.MaxUlpduLength;

    /// <summary>Test hook: the next <paramref name="count"/> FPDUs sent go out with a wrong CRC (see <see cref="FpduEncoder.CorruptNextCrcs"/>).</summary>
    public void CorruptNextCrcs(int count) => _encoder.CorruptNextCrcs(count);

    /// <summary>An RDMA Read Request accepted by the receive loop, answered by the DMA engine thread.</summary>
    public readonly record struct InboundRead(MemoryRegion Source, long Offset, uint Size, uint SinkSTag, ulong SinkTo);

    /// <summary>
    /// Receive thread: queues an accepted RDMA Read Request for the engine (a receive loop that blocked in a send could
    /// deadlock with a peer doing the same); false when <paramref name="limit"/> are queued already.
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
            _out.Flush();
        }
    }

    /// <summary>
    /// Receive thread, responder in peer-to-peer mode: answers the initiator's zero-length RTR Read Request at once, the
    /// first FPDU this side sends (a few bytes into an empty socket buffer).
    /// </summary>
    public void SendRtrReadResponse(in RdmaReadRequest rr)
    {
        lock (_sendLock)
        {
            _encoder.WriteReadResponse(_out, rr.SinkSTag, rr.SinkTaggedOffset, true, default);
            _out.Flush();
        }
    }

    /// <summary>Runs a send work request over the wire. RDMA Read completes later, when its response arrives.</summary>
    public WcStatus Execute(in SendWorkRequest wr, MemoryRegion? local, long localOffset, out TransportOutcome outcome)
    {
        outcome = TransportOutcome.Done;
        if (_connection.IsClosed || !_connection.WaitUntilMayTransmit()) return WcStatus.RetryExcErr;
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
                        if (_connection.OrdLimit == 0) return WcStatus.LocQpOpErr;
                        if (!_connection.Reads.TryAdd(in wr, local, localOffset)) return WcStatus.RetryExcErr;
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
            _connection.Close($"send failed: {e.Message}");
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
        if (length > 0) mr!.Drain.AddStallHandler(_cutOffForRevoke ??= () => _connection.Close("region revoked while a send to the peer was blocked"));
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

    /// <summary>
    /// Answers accepted RDMA Read Requests, in order: on the DMA engine thread (the start of the queue pair's turn), or
    /// on the receive thread before it sends a Terminate.
    /// </summary>
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

    private void ServiceInboundLocked()
    {
        while (!_connection.IsClosed)
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

    /// <summary>DMA engine thread: sends what the last batch of work requests encoded (one system call for many small messages).</summary>
    public void FlushPending()
    {
        if (_connection.IsClosed) return;
        try
        {
            lock (_sendLock) _out.Flush();
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException)
        {
            _connection.Close($"send failed: {e.Message}");
        }
    }

    /// <summary>Sends a Terminate (best effort: a peer that went away is not an error) and records it.</summary>
    public void SendTerminate(TerminateCode code, DdpRdmapHeader? header, ushort segmentLength)
    {
        _connection.TerminateSent(code);
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
}
