using System.Buffers;
using System.Buffers.Binary;
using System.IO.Pipelines;
using System.Net.Sockets;
using PinnedDma.Interop;
using PinnedDma.Verbs;
using PinnedDma.Verbs.Internal;

namespace PinnedDma.Transports.Iwarp.Internal;

/// <summary>
/// The receive side of an iWARP connection, on its I/O loop's thread: parses FPDUs from its receive pipe and acts on
/// them as the responder (RDMA Write placement, Read Requests queued for the engine, Sends into posted receives) and
/// as the requester (Read Responses into the outstanding read's sink). Without CRC, large tagged segments are placed
/// directly from the socket into the region.
/// </summary>
internal sealed class IwarpReceiver
{
    // Without CRC, tagged segments with at least this much payload are received straight into the region: below it,
    // the copy saved costs less than the extra receive calls.
    private const int PlaceDirectMin = 12 * 1024;
    // Read bound while a large tagged segment is expected: its header (and a previous pad), not its payload.
    private const int HeaderProbe = 64;

    private readonly IwarpConnection _connection;
    private readonly QueuePair _qp;
    private readonly SocketReceivePipe _rx;
    private readonly Socket _socket;
    private readonly FpduDecoder _decoder;
    private uint _expectSendMsn = 1, _expectReadMsn = 1;
    // Responder-side assembly of an incoming multi-segment Send.
    private bool _inSend;
    private RecvWorkRequest _recv;
    private MemoryRegion? _recvMr;
    private long _recvOffset;
    private uint _recvBytes;
    // Pad bytes of a directly placed segment still to be skipped in the pipe.
    private int _skip;
    // Bytes one readiness event receives before the loop serves its other connections (level-triggered epoll reports
    // the socket again).
    private const int ReadBudget = 1 << 20;
    // The next receive takes only a header's worth (a large tagged segment may follow, to be placed directly).
    private bool _probe;
    // A directly placed segment is under way (the rest of its payload comes straight from the socket).
    private bool _directActive;
    // The stream ended or the peer broke the protocol: nothing more is received.
    private bool _ended;
    // Bytes of an incomplete FPDU in the pipe after the last parse (a stream that ends now ends inside an FPDU).
    private long _held;
    // Responder in peer-to-peer mode: the first FPDU must be the negotiated RTR message, which is consumed here.
    private bool _awaitRtr;
    // Whether the peer's first FPDU was received and validated.
    private bool _firstReceived;

    public IwarpReceiver(IwarpConnection connection, SocketReceivePipe rx, FpduOptions options, bool awaitRtr)
    {
        _connection = connection;
        _qp = connection.Qp;
        _rx = rx;
        _socket = rx.Socket;
        _decoder = new FpduDecoder(options);
        _awaitRtr = awaitRtr;
    }

    /// <summary>
    /// Loop thread: the socket is readable (or the connection starts, with bytes that followed the handshake in the
    /// pipe). Receives and acts on what is there, up to <see cref="ReadBudget"/> bytes; once the stream ends or the
    /// peer breaks the protocol, ends the connection (after a Terminate, when one is due).
    /// </summary>
    public void OnReadable()
    {
        if (_ended) return;
        IwarpError? outcome;
        try
        {
            outcome = Pump();
        }
        catch (Exception e) when (e is SocketException or IOException or ObjectDisposedException)
        {
            _ended = true;
            FlushPartialSend();
            _connection.Close($"connection lost: {e.Message}");
            return;
        }
        if (outcome is not { } error) return;
        _ended = true;
        FlushPartialSend();
        if (_pendingTerminate is { } t)
        {
            // Requests that arrived before the bad one are answered first, in order (as far as the socket takes them).
            _connection.Sender.ServiceInbound();
            _connection.Sender.SendTerminate(t.Code, t.Header, t.SegmentLength);
            _connection.CloseAfterTerminate($"protocol error: {t.Why}");
        }
        else if (error.IsError)
        {
            if (error.Kind == IwarpErrorKind.CrcMismatch) Diagnostics.Telemetry.CrcErrors.Add(1);
            _connection.Sender.ServiceInbound();
            _connection.Sender.SendTerminate(error.Terminate, null, 0);
            _connection.CloseAfterTerminate($"protocol error: {error}");
        }
        else
        {
            _connection.Close(_connection.LastTerminateReceived is { } rt ? $"peer terminated: {rt}" : "peer closed the connection");
        }
    }

    private (TerminateCode Code, DdpRdmapHeader? Header, ushort SegmentLength, string Why)? _pendingTerminate;

    /// <summary>A receive taken by the first segment of a Send that never got its last segment is flushed, not lost.</summary>
    private void FlushPartialSend()
    {
        if (!_inSend) return;
        _inSend = false;
        _qp.RecvCq.Push(new WorkCompletion(_recv.WrId, WcStatus.WrFlushErr, WcOpcode.Recv, 0, _qp.QpNumber, WcFlags.None, 0, 0));
    }

    /// <summary>
    /// Receives and handles FPDUs until the socket has nothing more (null: wait for readiness), the read budget is
    /// spent (null as well: level-triggered epoll reports the socket again), or the stream ends or the peer breaks the
    /// protocol (the error, or a pending Terminate, is the result). This thread both fills and drains the receive pipe:
    /// it receives into the pipe and parses what the pipe holds. Without CRC, a large tagged segment whose header is in
    /// the pipe is placed directly: the buffered part of its payload is copied, the rest goes from the socket straight
    /// into the region, and the next read takes only a header's worth of bytes. With CRC nothing is acted on before
    /// its CRC checks, so every FPDU is parsed whole from the pipe.
    /// </summary>
    private IwarpError? Pump()
    {
        bool direct = !_decoder.Options.Crc;
        var reader = _rx.Reader;
        int budget = ReadBudget;
        while (true)
        {
            if (_directActive)
            {
                var placed = ReceiveDirect(_rx.Fd, _direct, ref budget);
                if (placed == Placement.WouldBlock) return null;
                _directActive = false;
                if (placed == Placement.Stop) return default(IwarpError);
                if (placed == Placement.Truncated) return EndOfStream(_direct.WireLength);
                if (!_firstReceived)
                {
                    // A whole, valid first FPDU: the responder may send from now on.
                    _firstReceived = true;
                    _connection.AllowTransmit();
                }
                _probe = true;
                continue;
            }
            if (!reader.TryRead(out ReadResult result))
            {
                if (budget <= 0) return null;
                int got = _rx.FillNow(_probe ? HeaderProbe : int.MaxValue);
                if (got < 0) return null;
                if (got == 0) return EndOfStream(_held);
                budget -= got;
                continue;
            }
            ReadOnlySequence<byte> buffer = result.Buffer;
            if (_skip > 0)
            {
                int k = (int)Math.Min(_skip, buffer.Length);
                buffer = buffer.Slice(k);
                _skip -= k;
            }
            IwarpError error = default;
            bool stop = false;
            while (true)
            {
                ParseStatus status = _decoder.TryParse(ref buffer, out Fpdu fpdu, out error);
                if (status != ParseStatus.Frame) break;
                _probe = direct && fpdu.Payload.Length >= PlaceDirectMin;
                if (!OnFpduInsideQp(fpdu))
                {
                    stop = true;
                    break;
                }
            }
            if (error.IsError || stop)
            {
                reader.AdvanceTo(buffer.Start);
                return error;
            }
            if (direct && !_awaitRtr && TryDirectTarget(buffer, out var target))
            {
                // Everything buffered belongs to this segment: place it, empty the pipe, receive the rest.
                var placed = _qp.TryEnterActive() ? PlaceBufferedInsideQp(target, buffer) : Placement.Stop;
                reader.AdvanceTo(buffer.End);
                _held = 0;
                if (placed == Placement.Stop) return default(IwarpError);
                _directActive = true;
                continue;
            }
            reader.AdvanceTo(buffer.Start, buffer.End);
            _held = buffer.Length;
            if (budget <= 0) return null;
            int n = _rx.FillNow(_probe ? HeaderProbe : int.MaxValue);
            if (n < 0) return null;
            if (n == 0) return EndOfStream(buffer.Length);
            budget -= n;
            _probe = false;
        }
    }

    /// <summary>The stream ended: cleanly at an FPDU boundary, or inside one (<paramref name="pending"/> bytes held).</summary>
    private IwarpError EndOfStream(long pending) => pending == 0 && _skip == 0
        ? IwarpError.None
        : IwarpError.Mpa(IwarpErrorKind.StreamTruncated, MpaErrorCode.TcpConnectionLost, $"Stream ended inside an FPDU ({pending} bytes held).");

    private enum Placement { Done, Stop, Truncated, WouldBlock }

    /// <summary>A tagged segment being placed directly: where its payload goes and how much of it arrived so far.</summary>
    private sealed class DirectTarget
    {
        public DdpRdmapHeader Header;
        public MemoryRegion? Region;
        public long Offset;
        public int PayloadLength;
        public int Placed;
        public int WireLength;
        public IwarpReadQueue.PendingRead? Read;
    }

    private readonly DirectTarget _direct = new();
    private readonly byte[] _headBytes = new byte[Fpdu.LengthFieldSize + DdpRdmapHeader.TaggedLength];

    /// <summary>
    /// Whether the incomplete FPDU at the front of <paramref name="buffer"/> is a large tagged segment for a valid
    /// region (or outstanding read) of this stream. Anything unusual returns false: the ordinary path then parses the
    /// whole FPDU and reports exactly what is wrong with it.
    /// </summary>
    private bool TryDirectTarget(in ReadOnlySequence<byte> buffer, out DirectTarget target)
    {
        target = _direct;
        const int head = Fpdu.LengthFieldSize + DdpRdmapHeader.TaggedLength;
        if (buffer.Length < head) return false;
        byte[] bytes = _headBytes;
        buffer.Slice(0, head).CopyTo(bytes);
        int ulpdu = BinaryPrimitives.ReadUInt16BigEndian(bytes);
        if ((bytes[Fpdu.LengthFieldSize] & 0x80) == 0 || ulpdu > _decoder.Options.ReceiveLimit || ulpdu - DdpRdmapHeader.TaggedLength < PlaceDirectMin)
            return false;
        var ulpduHead = new ReadOnlySequence<byte>(bytes, Fpdu.LengthFieldSize, DdpRdmapHeader.TaggedLength);
        if (!FpduDecoder.TryDecodeUlpdu(ulpduHead, out var h, out _, out _, out _, out _)) return false;
        uint len = (uint)(ulpdu - DdpRdmapHeader.TaggedLength);
        MemoryRegion? mr;
        long off;
        IwarpReadQueue.PendingRead? p = null;
        if (h.Opcode == RdmapOpcode.RdmaWrite)
        {
            if (Responder.ResolveRemote(_qp, h.STag, h.TaggedOffset, len, AccessFlags.RemoteWrite, out mr, out off) != WcStatus.Success) return false;
        }
        else if (h.Opcode == RdmapOpcode.RdmaReadResponse)
        {
            if (!ReadResponseFits(h, len, out p)) return false;
            mr = p!.Sink;
            off = p.SinkOffset + p.Received;
        }
        else
        {
            return false;
        }
        if (mr is null || mr.IsOnDemand) return false;
        target.Header = h;
        target.Region = mr;
        target.Offset = off;
        target.PayloadLength = (int)len;
        target.Placed = 0;
        target.WireLength = Fpdu.WireLengthFor(ulpdu);
        target.Read = p;
        return true;
    }

    /// <summary>Copies the part of the segment already in the pipe (payload, then perhaps some pad).</summary>
    private Placement PlaceBuffered(DirectTarget t, in ReadOnlySequence<byte> buffer)
    {
        const int head = Fpdu.LengthFieldSize + DdpRdmapHeader.TaggedLength;
        int inPipe = (int)(buffer.Length - head);
        int payload = Math.Min(inPipe, t.PayloadLength);
        if (!CopyIn(t.Region!, t.Offset, buffer.Slice(head, payload))) return RevokedDuringPlacement(t);
        t.Placed = payload;
        _skip = t.WireLength - head - t.PayloadLength - (inPipe - payload);
        return Placement.Done;
    }

    /// <summary>
    /// Receives the rest of the payload from the socket into the region, as far as the socket holds it now
    /// (<see cref="Placement.WouldBlock"/>: the loop calls again when more arrived). The region's drain is held only
    /// around a receive of bytes already in the socket, never while waiting for the peer, so a stalled peer cannot hold
    /// off a lease break.
    /// </summary>
    private unsafe Placement ReceiveDirect(int fd, DirectTarget t, ref int budget)
    {
        var mr = t.Region!;
        while (t.Placed < t.PayloadLength)
        {
            if (budget <= 0) return Placement.WouldBlock;
            // The QP's gate around each piece, as the region's drain: never held while waiting for the peer.
            if (!_qp.TryEnterActive()) return Placement.Stop;
            if (!mr.TryEnter())
            {
                _qp.ExitActive();
                return RevokedDuringPlacement(t);
            }
            int n;
            try
            {
                // Only what is already there (-1 when nothing is): the region is never held while waiting.
                var piece = mr.Piece(t.Offset + t.Placed, t.PayloadLength - t.Placed);
                fixed (byte* p = piece) n = SocketInterop.ReceiveAvailable(fd, p, piece.Length);
            }
            finally
            {
                mr.Exit();
                _qp.ExitActive();
            }
            if (n < 0) return Placement.WouldBlock;
            if (n == 0) return Placement.Truncated;
            t.Placed += n;
            budget -= n;
        }
        var f = new Fpdu(t.Header, default, default, default, t.Header.Length + t.PayloadLength);
        if (t.Read is { } p2 && !FinishReadResponse(f, p2, (uint)t.PayloadLength)) return Placement.Stop;
        return Placement.Done;
    }

    private Placement RevokedDuringPlacement(DirectTarget t)
    {
        RegionRevoked(new Fpdu(t.Header, default, default, default, t.Header.Length + t.PayloadLength), isReadResponse: t.Read is not null);
        return Placement.Stop;
    }

    /// <summary>
    /// The target region was revoked under a tagged segment (a lease break): an RDMA Write gets a Terminate for the
    /// STag; a Read Response fails the outstanding read locally. Always false (stop receiving).
    /// </summary>
    private bool RegionRevoked(in Fpdu f, bool isReadResponse)
    {
        if (!isReadResponse) return Fail(TerminateCode.Ddp(DdpErrorType.TaggedBuffer, DdpErrorCode.TaggedInvalidStag), f, "region revoked during RDMA Write");
        _connection.Reads.CompleteHead(WcStatus.LocProtErr);
        return false;
    }

    /// <summary>
    /// Acts on one FPDU inside the QP's gate: a QP moved to Error, reset or destroyed serves nothing more, not even what
    /// is already buffered (false: stop receiving), and whoever moved it waits for the FPDU being handled.
    /// </summary>
    private bool OnFpduInsideQp(Fpdu f)
    {
        if (!_qp.TryEnterActive()) return false;
        try
        {
            return _firstReceived ? OnFpdu(f) : OnFirstFpdu(f);
        }
        finally
        {
            _qp.ExitActive();
        }
    }

    private Placement PlaceBufferedInsideQp(DirectTarget t, in ReadOnlySequence<byte> buffer)
    {
        try
        {
            return PlaceBuffered(t, buffer);
        }
        finally
        {
            _qp.ExitActive();
        }
    }

    /// <summary>Set by the listener when it limits peers that name invalid STags (IwarpOptions.MaxInvalidStagConnections).</summary>
    public Action? InvalidStagNamed { get; set; }

    /// <summary>Reports a request that named no valid region of this stream's PD (not one that lacked access or bounds); always false.</summary>
    private bool InvalidStag(uint stag)
    {
        var mr = _qp.Pd.Device.Keys.Lookup(stag);
        if (mr is null || !mr.IsValid || mr.Pd != _qp.Pd) InvalidStagNamed?.Invoke();
        return false;
    }

    /// <summary>
    /// Records the Terminate for <paramref name="f"/>: its DDP header and, in the DDP Segment Length field, the length of
    /// its DDP segment (DDP/RDMAP header and payload, i.e. ULPDU_Length; not the FPDU's wire length with framing, pad
    /// and CRC) as RFC 5040 §4.8 (Terminate Header) defines it.
    /// </summary>
    private bool Fail(TerminateCode code, in Fpdu f, string why)
    {
        _pendingTerminate = (code, f.Header, (ushort)f.DdpSegmentLength, why);
        return false;
    }

    /// <summary>
    /// The peer's first FPDU. A responder in peer-to-peer mode requires the negotiated RTR message and consumes it
    /// (RFC 6581 §7): a zero-length Send takes MSN 1 but no receive and completes nothing; a zero-length RDMA Write
    /// places nothing; a zero-length RDMA Read Request gets its zero-length Read Response. Once the first FPDU is
    /// validated, a responder may send (RFC 5044 §7.1.2).
    /// </summary>
    private bool OnFirstFpdu(in Fpdu f)
    {
        if (_awaitRtr)
        {
            var h = f.Header;
            bool rtr = h.Last && _connection.Negotiated.Rtr switch
            {
                MpaRtrTypes.ZeroLengthSend => h.Opcode == RdmapOpcode.Send && f.Payload.IsEmpty && h.MessageSequenceNumber == _expectSendMsn && h.MessageOffset == 0,
                MpaRtrTypes.ZeroLengthRdmaWrite => h.Opcode == RdmapOpcode.RdmaWrite && f.Payload.IsEmpty,
                MpaRtrTypes.ZeroLengthRdmaRead => h.Opcode == RdmapOpcode.RdmaReadRequest && h.MessageSequenceNumber == _expectReadMsn && f.ReadRequest.MessageSize == 0,
                _ => false,
            };
            if (!rtr && h.Opcode != RdmapOpcode.Terminate)
                return Fail(TerminateCode.Rdmap(RdmapErrorType.RemoteOperation, RdmapErrorCode.UnexpectedOpcode), f,
                    $"the first FPDU ({h.Opcode}, {f.Payload.Length} bytes) is not the negotiated {_connection.Negotiated.Rtr} RTR message");
            if (!rtr) return OnFpdu(f);
            _awaitRtr = false;
            if (h.Opcode == RdmapOpcode.Send) _expectSendMsn++;
            if (h.Opcode == RdmapOpcode.RdmaReadRequest)
            {
                // Answered here, before anything this side has waiting: the zero-length Read Response is the first FPDU
                // the responder sends (a few bytes into an empty socket buffer).
                _expectReadMsn++;
                _connection.Sender.SendRtrReadResponse(f.ReadRequest);
            }
            _firstReceived = true;
            _connection.AllowTransmit();
            return true;
        }
        if (!OnFpdu(f)) return false;
        _firstReceived = true;
        _connection.AllowTransmit();
        return true;
    }

    private bool OnFpdu(Fpdu f)
    {
        var h = f.Header;
        uint len = (uint)f.Payload.Length;
        switch (h.Opcode)
        {
            case RdmapOpcode.RdmaWrite:
                {
                    var st = Responder.ResolveRemote(_qp, h.STag, h.TaggedOffset, len, AccessFlags.RemoteWrite, out var mr, out long off);
                    if (st != WcStatus.Success) return InvalidStag(h.STag) || Fail(TaggedError(h.STag, h.TaggedOffset, len, AccessFlags.RemoteWrite), f, "RDMA Write to an invalid or foreign region");
                    return CopyIn(mr!, off, f.Payload) || RegionRevoked(f, isReadResponse: false);
                }
            case RdmapOpcode.RdmaReadRequest:
                {
                    if (h.MessageSequenceNumber != _expectReadMsn)
                        return Fail(TerminateCode.Ddp(DdpErrorType.UntaggedBuffer, DdpErrorCode.UntaggedInvalidMsnRange), f, "Read Request out of sequence");
                    _expectReadMsn++;
                    var rr = f.ReadRequest;
                    var st = Responder.ResolveRemote(_qp, rr.SourceSTag, rr.SourceTaggedOffset, rr.MessageSize, AccessFlags.RemoteRead, out var mr, out long off);
                    if (st != WcStatus.Success)
                        return InvalidStag(rr.SourceSTag) || Fail(ReadSourceError(rr.SourceSTag), f, "RDMA Read of an invalid or foreign region");
                    // The response goes out in the queue pair's turn (later on this loop), in order with the queue pair's
                    // other sends, and parks there if the peer's window is full.
                    if (!_connection.Sender.TryQueueInboundRead(new IwarpSender.InboundRead(mr!, off, rr.MessageSize, rr.SinkSTag, rr.SinkTaggedOffset), _connection.IrdLimit))
                        return Fail(TerminateCode.Rdmap(RdmapErrorType.RemoteOperation, RdmapErrorCode.Unspecified), f, "too many outstanding RDMA Read Requests");
                    _connection.Engine.Ring(_qp);
                    return true;
                }
            case RdmapOpcode.RdmaReadResponse:
                return OnReadResponse(f);
            case RdmapOpcode.Send:
            case RdmapOpcode.SendWithSolicitedEvent:
            case RdmapOpcode.SendWithInvalidate:
            case RdmapOpcode.SendWithSolicitedEventAndInvalidate:
                return OnSend(f);
            case RdmapOpcode.Terminate:
                _connection.TerminateReceived(f.Terminate.Code);
                return false;
            default:
                return Fail(TerminateCode.Rdmap(RdmapErrorType.RemoteOperation, RdmapErrorCode.UnexpectedOpcode), f, $"unexpected opcode {h.Opcode}");
        }
    }

    private TerminateCode TaggedError(uint stag, ulong to, uint len, AccessFlags need)
    {
        var mr = _qp.Pd.Device.Keys.Lookup(stag);
        if (mr is null || !mr.IsValid) return TerminateCode.Ddp(DdpErrorType.TaggedBuffer, DdpErrorCode.TaggedInvalidStag);
        // A region of another protection domain is not associated with this stream (RFC 5041 §7.2, code 0x02).
        if (mr.Pd != _qp.Pd) return TerminateCode.Ddp(DdpErrorType.TaggedBuffer, DdpErrorCode.TaggedStagNotAssociated);
        if ((mr.Access & need) != need || (_qp.RemoteAccess & need) == 0) return TerminateCode.Rdmap(RdmapErrorType.RemoteProtection, RdmapErrorCode.AccessRightsViolation);
        return TerminateCode.Ddp(DdpErrorType.TaggedBuffer, DdpErrorCode.TaggedBaseOrBounds);
    }

    /// <summary>RDMAP Remote Protection code for an RDMA Read Request whose source failed validation (RFC 5040 §7.2).</summary>
    private TerminateCode ReadSourceError(uint stag)
    {
        var mr = _qp.Pd.Device.Keys.Lookup(stag);
        byte code = mr is null || !mr.IsValid ? RdmapErrorCode.InvalidStag
            : mr.Pd != _qp.Pd ? RdmapErrorCode.StagNotAssociated
            : (mr.Access & AccessFlags.RemoteRead) == 0 || (_qp.RemoteAccess & AccessFlags.RemoteRead) == 0 ? RdmapErrorCode.AccessRightsViolation
            : RdmapErrorCode.BaseOrBoundsViolation;
        return TerminateCode.Rdmap(RdmapErrorType.RemoteProtection, code);
    }

    private static bool CopyIn(MemoryRegion mr, long off, in ReadOnlySequence<byte> payload)
    {
        if (payload.IsEmpty) return true;
        if (!mr.TryEnter()) return false;
        try
        {
            foreach (var seg in payload)
            {
                mr.WriteAt(off, seg.Span);
                off += seg.Length;
            }
        }
        finally
        {
            mr.Exit();
        }
        return true;
    }

    private bool OnReadResponse(in Fpdu f)
    {
        uint len = (uint)f.Payload.Length;
        if (!ReadResponseFits(f.Header, len, out var p))
            return Fail(TerminateCode.Ddp(DdpErrorType.TaggedBuffer, DdpErrorCode.TaggedBaseOrBounds), f, p is null
                ? $"Read Response (STag 0x{f.Header.STag:x8}, TO 0x{f.Header.TaggedOffset:x}) with no read outstanding"
                : $"Read Response (STag 0x{f.Header.STag:x8}, TO 0x{f.Header.TaggedOffset:x}, {len} bytes) outside the outstanding read's sink (STag 0x{p.SinkSTag:x8}, next TO 0x{p.SinkTo + p.Received:x}, {p.Length - p.Received} bytes left)");
        if (len > 0 && !CopyIn(p!.Sink!, p.SinkOffset + p.Received, f.Payload)) return RegionRevoked(f, isReadResponse: true);
        return FinishReadResponse(f, p!, len);
    }

    /// <summary>Whether a Read Response segment continues the oldest outstanding read exactly, within its sink.</summary>
    private bool ReadResponseFits(in DdpRdmapHeader h, uint len, out IwarpReadQueue.PendingRead? p)
    {
        p = _connection.Reads.Head;
        return p is not null && h.STag == p.SinkSTag && h.TaggedOffset == p.SinkTo + p.Received && p.Received + len <= p.Length;
    }

    /// <summary>Accounts a placed Read Response segment; the last one completes the read.</summary>
    private bool FinishReadResponse(in Fpdu f, IwarpReadQueue.PendingRead p, uint len)
    {
        p.Received += len;
        if (f.Header.Last)
        {
            if (p.Received != p.Length)
                return Fail(TerminateCode.Ddp(DdpErrorType.TaggedBuffer, DdpErrorCode.TaggedBaseOrBounds), f, "short Read Response");
            _connection.Reads.CompleteHead(WcStatus.Success);
        }
        return true;
    }

    private bool OnSend(in Fpdu f)
    {
        var h = f.Header;
        if (h.MessageOffset == 0 && !_inSend)
        {
            if (h.MessageSequenceNumber != _expectSendMsn)
                return Fail(TerminateCode.Ddp(DdpErrorType.UntaggedBuffer, DdpErrorCode.UntaggedInvalidMsnRange), f, "Send out of sequence");
            if (!_qp.TryTakeRecv(out _recv))
                return Fail(TerminateCode.Ddp(DdpErrorType.UntaggedBuffer, DdpErrorCode.UntaggedInvalidMsnNoBuffer), f, "no receive posted");
            var sge = _recv.Local;
            var st = DmaEngine.ResolveLocal(_qp, in sge, write: true, out _recvMr, out _recvOffset);
            if (st != WcStatus.Success)
            {
                _qp.RecvCq.Push(new WorkCompletion(_recv.WrId, st, WcOpcode.Recv, 0, _qp.QpNumber, WcFlags.None, 0, 0));
                return Fail(TerminateCode.Rdmap(RdmapErrorType.RemoteOperation, RdmapErrorCode.CatastrophicLocalizedToStream), f, "receive buffer invalid");
            }
            _inSend = true;
            _recvBytes = 0;
        }
        else if (!_inSend || h.MessageSequenceNumber != _expectSendMsn || h.MessageOffset != _recvBytes)
        {
            return Fail(TerminateCode.Ddp(DdpErrorType.UntaggedBuffer, DdpErrorCode.UntaggedInvalidMo), f, "Send segment out of order");
        }
        uint len = (uint)f.Payload.Length;
        if (_recvBytes + len > _recv.Local.Length)
        {
            _qp.RecvCq.Push(new WorkCompletion(_recv.WrId, WcStatus.LocLenErr, WcOpcode.Recv, 0, _qp.QpNumber, WcFlags.None, 0, 0));
            _inSend = false;
            return Fail(TerminateCode.Ddp(DdpErrorType.UntaggedBuffer, DdpErrorCode.UntaggedMessageTooLong), f, "Send longer than the posted receive");
        }
        if (len > 0 && !CopyIn(_recvMr!, _recvOffset + _recvBytes, f.Payload))
        {
            _inSend = false;
            _qp.RecvCq.Push(new WorkCompletion(_recv.WrId, WcStatus.LocProtErr, WcOpcode.Recv, 0, _qp.QpNumber, WcFlags.None, 0, 0));
            return Fail(TerminateCode.Rdmap(RdmapErrorType.RemoteOperation, RdmapErrorCode.CatastrophicLocalizedToStream), f, "receive region revoked");
        }
        _recvBytes += len;
        if (!h.Last) return true;
        _inSend = false;
        _expectSendMsn++;
        var flags = WcFlags.None;
        uint invalidated = 0;
        if (h.Opcode is RdmapOpcode.SendWithInvalidate or RdmapOpcode.SendWithSolicitedEventAndInvalidate)
        {
            var target = _qp.Pd.Device.Keys.Lookup(h.InvalidateSTag);
            if (target is null || target.Pd != _qp.Pd)
            {
                // The receive was consumed: it completes with an error instead of vanishing.
                _qp.RecvCq.Push(new WorkCompletion(_recv.WrId, WcStatus.RemInvReqErr, WcOpcode.Recv, 0, _qp.QpNumber, WcFlags.None, 0, 0));
                return Fail(TerminateCode.Rdmap(RdmapErrorType.RemoteOperation, RdmapErrorCode.StagCannotBeInvalidated), f, "Send with Invalidate names a foreign STag");
            }
            target.Invalidate();
            flags |= WcFlags.WithInv;
            invalidated = h.InvalidateSTag;
        }
        _qp.RecvCq.Push(new WorkCompletion(_recv.WrId, WcStatus.Success, WcOpcode.Recv, _recvBytes, _qp.QpNumber, flags, 0, invalidated));
        return true;
    }
}
