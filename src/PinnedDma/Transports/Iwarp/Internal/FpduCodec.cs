using System.Buffers;
using System.Buffers.Binary;
using System.IO.Pipelines;
using PinnedDma.Internal;

namespace PinnedDma.Transports.Iwarp.Internal;

/// <summary>Framing parameters fixed by the MPA setup.</summary>
internal sealed record FpduOptions
{
    /// <summary>Default upper bound of a whole FPDU (length field, ULPDU, pad, CRC).</summary>
    public const int DefaultMaxFpduSize = 16 * 1024;

    /// <summary>Whether FPDUs carry (and must carry a valid) CRC32c.</summary>
    public bool Crc { get; init; } = true;

    /// <summary>MULPDU: the largest ULPDU (DDP segment) this side sends; also the receive limit unless overridden.</summary>
    public int MaxUlpduLength { get; init; } = MaxUlpduForFpduSize(DefaultMaxFpduSize);

    /// <summary>Largest ULPDU accepted from the peer (defaults to <see cref="MaxUlpduLength"/>).</summary>
    public int? MaxReceiveUlpduLength { get; init; }

    public int ReceiveLimit => MaxReceiveUlpduLength ?? MaxUlpduLength;

    /// <summary>The largest ULPDU whose FPDU (2 + ULPDU + pad + 4) fits in <paramref name="fpduSize"/> bytes.</summary>
    public static int MaxUlpduForFpduSize(int fpduSize)
    {
        int ulpdu = ((fpduSize - Fpdu.CrcSize) & ~3) - Fpdu.LengthFieldSize;
        return Math.Clamp(ulpdu, DdpRdmapHeader.UntaggedLength, ushort.MaxValue);
    }

    /// <summary>MULPDU from an effective TCP MSS (RFC 5044 §5.1, no markers): EMSS - 6, rounded to keep alignment.</summary>
    public static int MaxUlpduForMss(int emss) => MaxUlpduForFpduSize(emss);

    public void Validate()
    {
        if (MaxUlpduLength is < DdpRdmapHeader.UntaggedLength or > ushort.MaxValue)
            throw new ArgumentOutOfRangeException(nameof(MaxUlpduLength), MaxUlpduLength, "MULPDU must hold an untagged DDP header and fit the 16-bit ULPDU_Length.");
        if (ReceiveLimit is < DdpRdmapHeader.UntaggedLength or > ushort.MaxValue)
            throw new ArgumentOutOfRangeException(nameof(MaxReceiveUlpduLength), ReceiveLimit, "Receive limit must fit the 16-bit ULPDU_Length.");
    }
}

/// <summary>
/// One decoded FPDU. <see cref="Payload"/> is a slice of the parser's input buffer: it stays valid only until the
/// caller advances the underlying <see cref="PipeReader"/> past it.
/// </summary>
internal readonly struct Fpdu
{
    public const int LengthFieldSize = 2;
    public const int CrcSize = 4;

    public Fpdu(DdpRdmapHeader header, ReadOnlySequence<byte> payload, RdmaReadRequest readRequest, TerminateMessage terminate, int ulpduLength)
    {
        Header = header;
        Payload = payload;
        ReadRequest = readRequest;
        Terminate = terminate;
        DdpSegmentLength = ulpduLength;
    }

    public DdpRdmapHeader Header { get; }

    /// <summary>ULP payload after the DDP/RDMAP header (for Read Request and Terminate: their raw body).</summary>
    public ReadOnlySequence<byte> Payload { get; }

    /// <summary>Valid when <see cref="Header"/>.Opcode is RDMA Read Request.</summary>
    public RdmaReadRequest ReadRequest { get; }

    /// <summary>Valid when <see cref="Header"/>.Opcode is Terminate.</summary>
    public TerminateMessage Terminate { get; }

    /// <summary>Bytes the FPDU occupied on the wire, including length field, pad and CRC field.</summary>
    public int WireLength => WireLengthFor(DdpSegmentLength);

    /// <summary>
    /// The DDP segment's length (ULPDU_Length: DDP/RDMAP header and payload), which a Terminate's DDP Segment Length
    /// field reports (RFC 5040 §4.8).
    /// </summary>
    public int DdpSegmentLength { get; }

    /// <summary>ULPDU_Length value for a given header and payload length.</summary>
    public static int UlpduLength(int headerLength, int payloadLength) => headerLength + payloadLength;

    /// <summary>Pad bytes after the ULPDU so that length field + ULPDU is a multiple of 4.</summary>
    public static int PadLength(int ulpduLength) => (4 - ((ulpduLength + LengthFieldSize) & 3)) & 3;

    /// <summary>
    /// Wire length of an FPDU carrying <paramref name="ulpduLength"/> bytes: length field, ULPDU, pad and the CRC field.
    /// The 4-byte CRC field is always present (RFC 5044 §4.1); when CRC was not negotiated it carries zero and is not
    /// checked (RFC 5044 §4.4).
    /// </summary>
    public static int WireLengthFor(int ulpduLength) => LengthFieldSize + ulpduLength + PadLength(ulpduLength) + CrcSize;
}

/// <summary>
/// Writes FPDUs (RFC 5044 §4: ULPDU_Length, DDP/RDMAP header, payload, pad, CRC field: the CRC32c over everything
/// before it, or zero when CRC was not negotiated) straight
/// into an <see cref="IBufferWriter{T}"/>. No per-frame allocations: the payload is copied directly into the writer, and checksummed in the same pass.
/// </summary>
internal sealed class FpduEncoder
{
    public FpduEncoder(FpduOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        Options = options;
    }

    public FpduOptions Options { get; }

    /// <summary>Largest payload a single segment with a header of <paramref name="headerLength"/> bytes may carry.</summary>
    public int MaxPayload(int headerLength) => Options.MaxUlpduLength - headerLength;

    /// <summary>Writes one FPDU carrying <paramref name="header"/> and <paramref name="payload"/>; returns its wire length.</summary>
    public int Write(IBufferWriter<byte> writer, in DdpRdmapHeader header, ReadOnlySpan<byte> payload)
    {
        var span = Begin(writer, header, payload.Length, out int payloadAt, out int ulpdu, out uint crc);
        crc = CopyPayload(payload, span.Slice(payloadAt), crc);
        return End(writer, span, ulpdu, crc);
    }

    /// <summary>Same as <see cref="Write(IBufferWriter{byte}, in DdpRdmapHeader, ReadOnlySpan{byte})"/> for a segmented payload.</summary>
    public int Write(IBufferWriter<byte> writer, in DdpRdmapHeader header, in ReadOnlySequence<byte> payload)
    {
        if (payload.IsSingleSegment) return Write(writer, header, payload.FirstSpan);
        var span = Begin(writer, header, payload.Length > int.MaxValue ? int.MaxValue : (int)payload.Length, out int payloadAt, out int ulpdu, out uint crc);
        foreach (ReadOnlyMemory<byte> segment in payload)
        {
            crc = CopyPayload(segment.Span, span.Slice(payloadAt), crc);
            payloadAt += segment.Length;
        }
        return End(writer, span, ulpdu, crc);
    }

    /// <summary>
    /// Reserves the whole FPDU in the writer and fills in the length field and the header; <paramref name="crc"/> is the
    /// running CRC32c state over them (when CRC is on).
    /// </summary>
    private Span<byte> Begin(IBufferWriter<byte> writer, in DdpRdmapHeader header, int payloadLength, out int payloadAt, out int ulpdu, out uint crc)
    {
        ArgumentNullException.ThrowIfNull(writer);
        int hl = header.Length;
        ulpdu = CheckedUlpdu(hl, payloadLength);
        int total = Fpdu.WireLengthFor(ulpdu);
        Span<byte> span = writer.GetSpan(total).Slice(0, total);
        BinaryPrimitives.WriteUInt16BigEndian(span, (ushort)ulpdu);
        header.WriteTo(span.Slice(Fpdu.LengthFieldSize));
        payloadAt = Fpdu.LengthFieldSize + hl;
        crc = Options.Crc ? Crc32C.Append(0xFFFFFFFFu, span.Slice(0, payloadAt)) : 0;
        return span;
    }

    /// <summary>
    /// Copies payload bytes into the FPDU: with CRC on, in the same pass that continues the CRC state over them (the
    /// bytes are read once), otherwise a plain copy.
    /// </summary>
    private uint CopyPayload(ReadOnlySpan<byte> payload, Span<byte> destination, uint crc)
    {
        if (Options.Crc) return Crc32C.CopyAndAppend(payload, destination, crc);
        payload.CopyTo(destination);
        return crc;
    }

    /// <summary>Pads, appends the CRC (<paramref name="crc"/>: the running state over everything before the pad) and commits the FPDU to the writer.</summary>
    private int End(IBufferWriter<byte> writer, Span<byte> span, int ulpdu, uint crc)
    {
        Finish(span, ulpdu, crc);
        writer.Advance(span.Length);
        return span.Length;
    }

    /// <summary>
    /// Starts a gathered FPDU carrying <paramref name="payloadLength"/> payload bytes: queues the length field and the
    /// header and returns the running CRC32c state. The payload follows in parts (<see cref="Gather"/>), then
    /// <see cref="EndGather"/> adds pad and CRC.
    /// </summary>
    public uint BeginGather(FpduSendQueue queue, in DdpRdmapHeader header, int payloadLength)
    {
        ArgumentNullException.ThrowIfNull(queue);
        int head = Fpdu.LengthFieldSize + header.Length;
        int ulpdu = CheckedUlpdu(header.Length, payloadLength);
        Span<byte> span = queue.GetSpan(head).Slice(0, head);
        BinaryPrimitives.WriteUInt16BigEndian(span, (ushort)ulpdu);
        header.WriteTo(span.Slice(Fpdu.LengthFieldSize));
        uint crc = Options.Crc ? Crc32C.Append(0xFFFFFFFFu, span) : 0;
        queue.Advance(head);
        return crc;
    }

    /// <summary>
    /// Adds one part of a gathered FPDU's payload: by reference (native memory that stays valid until the queue
    /// flushes: nothing is copied in user space) or copied into the queue's stage (for small parts).
    /// </summary>
    public void Gather(FpduSendQueue queue, ReadOnlySpan<byte> part, bool byReference, ref uint crc)
    {
        if (part.IsEmpty) return;
        if (byReference)
        {
            queue.Reference(part);
        }
        else
        {
            // Copied parts are checksummed in the copy's pass; referenced ones in a pass of their own.
            Span<byte> stage = queue.GetSpan(part.Length).Slice(0, part.Length);
            crc = CopyPayload(part, stage, crc);
            queue.Advance(part.Length);
            return;
        }
        if (Options.Crc) crc = Crc32C.Append(crc, part);
    }

    /// <summary>Ends a gathered FPDU: pad, then the CRC field (the CRC32c when negotiated, zero otherwise).</summary>
    public void EndGather(FpduSendQueue queue, int headerLength, int payloadLength, uint crc)
    {
        int pad = Fpdu.PadLength(headerLength + payloadLength);
        int tail = pad + Fpdu.CrcSize;
        Span<byte> trailer = queue.GetSpan(tail).Slice(0, tail);
        trailer.Slice(0, pad).Clear();
        if (Options.Crc) crc = ~Crc32C.Append(crc, trailer.Slice(0, pad)) ^ TakeCrcFault();
        BinaryPrimitives.WriteUInt32LittleEndian(trailer.Slice(pad), Options.Crc ? crc : 0);
        queue.Advance(tail);
    }

    private int _crcFaults;

    /// <summary>
    /// Fault injection for conformance tests against other peers: the next <paramref name="count"/> CRC-carrying FPDUs
    /// this encoder ends go out with one CRC bit flipped (never used outside tests).
    /// </summary>
    internal void CorruptNextCrcs(int count) => Volatile.Write(ref _crcFaults, count);

    private uint TakeCrcFault()
    {
        if (Volatile.Read(ref _crcFaults) <= 0) return 0;
        return Interlocked.Decrement(ref _crcFaults) >= 0 ? 1u : 0;
    }

    public int WriteRdmaWrite(IBufferWriter<byte> writer, uint sinkSTag, ulong sinkTaggedOffset, bool last, ReadOnlySpan<byte> payload) =>
        Write(writer, DdpRdmapHeader.ForTagged(RdmapOpcode.RdmaWrite, sinkSTag, sinkTaggedOffset, last), payload);

    public int WriteReadResponse(IBufferWriter<byte> writer, uint sinkSTag, ulong sinkTaggedOffset, bool last, ReadOnlySpan<byte> payload) =>
        Write(writer, DdpRdmapHeader.ForTagged(RdmapOpcode.RdmaReadResponse, sinkSTag, sinkTaggedOffset, last), payload);

    /// <summary>Send, Send with SE, Send with Invalidate or Send with SE and Invalidate on QN 0.</summary>
    public int WriteSend(IBufferWriter<byte> writer, RdmapOpcode sendOpcode, uint msn, uint messageOffset, bool last, ReadOnlySpan<byte> payload, uint invalidateSTag = 0)
    {
        if (sendOpcode is not (RdmapOpcode.Send or RdmapOpcode.SendWithInvalidate or RdmapOpcode.SendWithSolicitedEvent or RdmapOpcode.SendWithSolicitedEventAndInvalidate))
            throw new ArgumentOutOfRangeException(nameof(sendOpcode), sendOpcode, "Not a Send opcode.");
        bool invalidates = sendOpcode is RdmapOpcode.SendWithInvalidate or RdmapOpcode.SendWithSolicitedEventAndInvalidate;
        return Write(writer, DdpRdmapHeader.ForUntagged(sendOpcode, DdpQueue.Send, msn, messageOffset, last, invalidates ? invalidateSTag : 0), payload);
    }

    public int WriteReadRequest(IBufferWriter<byte> writer, uint msn, in RdmaReadRequest request)
    {
        Span<byte> body = stackalloc byte[RdmaReadRequest.Size];
        request.WriteTo(body);
        return Write(writer, DdpRdmapHeader.ForUntagged(RdmapOpcode.RdmaReadRequest, DdpQueue.RdmaReadRequest, msn, 0, true), body);
    }

    public int WriteTerminate(IBufferWriter<byte> writer, uint msn, in TerminateMessage terminate)
    {
        Span<byte> body = stackalloc byte[TerminateMessage.MaxSize];
        int len = terminate.Length;
        terminate.WriteTo(body);
        return Write(writer, DdpRdmapHeader.ForUntagged(RdmapOpcode.Terminate, DdpQueue.Terminate, msn, 0, true), body.Slice(0, len));
    }

    private int CheckedUlpdu(int headerLength, int payloadLength)
    {
        int max = Options.MaxUlpduLength - headerLength;
        if (payloadLength > max)
            throw new ArgumentOutOfRangeException(nameof(payloadLength), payloadLength, $"Payload exceeds the {max} bytes one DDP segment may carry (MULPDU {Options.MaxUlpduLength}).");
        return headerLength + payloadLength;
    }

    private void Finish(Span<byte> span, int ulpdu, uint crc)
    {
        int padStart = Fpdu.LengthFieldSize + ulpdu;
        int pad = Fpdu.PadLength(ulpdu);
        span.Slice(padStart, pad).Clear();
        int covered = padStart + pad;
        BinaryPrimitives.WriteUInt32LittleEndian(span.Slice(covered), Options.Crc ? ~Crc32C.Append(crc, span.Slice(padStart, pad)) ^ TakeCrcFault() : 0);
    }
}

/// <summary>
/// Parses FPDUs from the front of a byte sequence, validating MPA framing (length bound, CRC), DDP (DV, QN, MO,
/// buffer model) and RDMAP (RV, opcode, Read Request and Terminate bodies). Malformed input yields a typed
/// <see cref="IwarpError"/> whose <see cref="IwarpError.Terminate"/> is the code to report to the peer.
/// </summary>
internal sealed class FpduDecoder
{
    public FpduDecoder(FpduOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        Options = options;
    }

    public FpduOptions Options { get; }

    /// <summary>
    /// Tries to decode one FPDU. On <see cref="ParseStatus.Frame"/>, <paramref name="buffer"/> is advanced past it and
    /// <paramref name="fpdu"/>.Payload slices the original buffer; otherwise <paramref name="buffer"/> is unchanged.
    /// Never throws for malformed input and never reads outside <paramref name="buffer"/>.
    /// </summary>
    public ParseStatus TryParse(ref ReadOnlySequence<byte> buffer, out Fpdu fpdu, out IwarpError error)
    {
        fpdu = default;
        error = default;
        if (buffer.Length < Fpdu.LengthFieldSize) return ParseStatus.NeedMoreData;
        Span<byte> lenBytes = stackalloc byte[Fpdu.LengthFieldSize];
        buffer.Slice(0, Fpdu.LengthFieldSize).CopyTo(lenBytes);
        int ulpdu = BinaryPrimitives.ReadUInt16BigEndian(lenBytes);
        if (ulpdu > Options.ReceiveLimit)
        {
            error = IwarpError.Mpa(IwarpErrorKind.FpduLengthTooLarge, MpaErrorCode.FramingError,
                $"ULPDU_Length {ulpdu} exceeds the receive limit {Options.ReceiveLimit}; FPDU framing is lost.");
            return ParseStatus.Error;
        }
        // The CRC field is always there (RFC 5044 §4.1); without CRC it is skipped unchecked (RFC 5044 §4.4).
        int total = Fpdu.WireLengthFor(ulpdu);
        if (buffer.Length < total) return ParseStatus.NeedMoreData;
        ReadOnlySequence<byte> frame = buffer.Slice(0, total);

        if (Options.Crc)
        {
            int covered = total - Fpdu.CrcSize;
            uint state = 0xFFFFFFFFu;
            foreach (ReadOnlyMemory<byte> segment in frame.Slice(0, covered))
                state = Crc32C.Append(state, segment.Span);
            Span<byte> crcBytes = stackalloc byte[Fpdu.CrcSize];
            frame.Slice(covered, Fpdu.CrcSize).CopyTo(crcBytes);
            uint expected = ~state;
            uint received = BinaryPrimitives.ReadUInt32LittleEndian(crcBytes);
            if (expected != received)
            {
                error = IwarpError.Mpa(IwarpErrorKind.CrcMismatch, MpaErrorCode.CrcMismatch, $"FPDU CRC32c 0x{received:X8} != computed 0x{expected:X8}.");
                return ParseStatus.Error;
            }
        }

        ReadOnlySequence<byte> ulpduBytes = frame.Slice(Fpdu.LengthFieldSize, ulpdu);
        if (!TryDecodeUlpdu(ulpduBytes, out DdpRdmapHeader header, out ReadOnlySequence<byte> payload, out RdmaReadRequest rr, out TerminateMessage term, out error))
            return ParseStatus.Error;

        fpdu = new Fpdu(header, payload, rr, term, ulpdu);
        buffer = buffer.Slice(total);
        return ParseStatus.Frame;
    }

    /// <summary>Validates and decodes a DDP segment (the ULPDU of an FPDU).</summary>
    public static bool TryDecodeUlpdu(in ReadOnlySequence<byte> ulpdu, out DdpRdmapHeader header, out ReadOnlySequence<byte> payload,
        out RdmaReadRequest readRequest, out TerminateMessage terminate, out IwarpError error)
    {
        header = default;
        payload = default;
        readRequest = default;
        terminate = default;
        error = default;
        long length = ulpdu.Length;
        if (length < 2)
        {
            error = new IwarpError(IwarpErrorKind.UlpduTooShort, TerminateCode.Ddp(DdpErrorType.LocalCatastrophic, DdpErrorCode.Catastrophic), $"ULPDU of {length} bytes has no DDP control field.");
            return false;
        }
        Span<byte> hb = stackalloc byte[DdpRdmapHeader.UntaggedLength];
        ulpdu.Slice(0, 1).CopyTo(hb);
        bool tagged = (hb[0] & 0x80) != 0;
        int hl = DdpRdmapHeader.LengthFor(hb[0]);
        if (length < hl)
        {
            error = new IwarpError(IwarpErrorKind.UlpduTooShort, TerminateCode.Ddp(DdpErrorType.LocalCatastrophic, DdpErrorCode.Catastrophic), $"ULPDU of {length} bytes is shorter than the {hl}-byte DDP header.");
            return false;
        }
        ulpdu.Slice(0, hl).CopyTo(hb);
        header = DdpRdmapHeader.ReadRaw(hb.Slice(0, hl));

        if (header.DdpVersion != DdpRdmapHeader.DdpVersion1)
        {
            error = tagged
                ? new IwarpError(IwarpErrorKind.InvalidDdpVersion, TerminateCode.Ddp(DdpErrorType.TaggedBuffer, DdpErrorCode.TaggedInvalidDdpVersion), $"DDP version {header.DdpVersion}.")
                : new IwarpError(IwarpErrorKind.InvalidDdpVersion, TerminateCode.Ddp(DdpErrorType.UntaggedBuffer, DdpErrorCode.UntaggedInvalidDdpVersion), $"DDP version {header.DdpVersion}.");
            return false;
        }
        if (!tagged && header.QueueNumber > DdpQueue.Terminate)
        {
            error = new IwarpError(IwarpErrorKind.InvalidQueueNumber, TerminateCode.Ddp(DdpErrorType.UntaggedBuffer, DdpErrorCode.UntaggedInvalidQn), $"Queue number {header.QueueNumber}.");
            return false;
        }
        if (header.RdmapVersion != DdpRdmapHeader.RdmapVersion1)
        {
            error = new IwarpError(IwarpErrorKind.InvalidRdmapVersion, TerminateCode.Rdmap(RdmapErrorType.RemoteOperation, RdmapErrorCode.InvalidRdmapVersion), $"RDMAP version {header.RdmapVersion}.");
            return false;
        }
        int opcode = header.RdmapControl & 0x0F;
        if (opcode > (int)RdmapOpcode.Terminate)
        {
            error = new IwarpError(IwarpErrorKind.UnknownOpcode, TerminateCode.Rdmap(RdmapErrorType.RemoteOperation, RdmapErrorCode.UnexpectedOpcode), $"Opcode {opcode}.");
            return false;
        }
        var op = (RdmapOpcode)opcode;
        bool opTagged = op is RdmapOpcode.RdmaWrite or RdmapOpcode.RdmaReadResponse;
        if (opTagged != tagged)
        {
            error = new IwarpError(IwarpErrorKind.OpcodeBufferModelMismatch, TerminateCode.Rdmap(RdmapErrorType.RemoteOperation, RdmapErrorCode.UnexpectedOpcode),
                $"{op} must use the {(opTagged ? "tagged" : "untagged")} buffer model.");
            return false;
        }
        if (!tagged)
        {
            uint wantQn = op switch
            {
                RdmapOpcode.RdmaReadRequest => DdpQueue.RdmaReadRequest,
                RdmapOpcode.Terminate => DdpQueue.Terminate,
                _ => DdpQueue.Send,
            };
            if (header.QueueNumber != wantQn)
            {
                error = new IwarpError(IwarpErrorKind.OpcodeQueueMismatch, TerminateCode.Rdmap(RdmapErrorType.RemoteOperation, RdmapErrorCode.UnexpectedOpcode),
                    $"{op} arrived on QN {header.QueueNumber}, expected {wantQn}.");
                return false;
            }
            if (op is RdmapOpcode.RdmaReadRequest or RdmapOpcode.Terminate && (header.MessageOffset != 0 || !header.Last))
            {
                error = new IwarpError(IwarpErrorKind.InvalidMessageOffset, TerminateCode.Ddp(DdpErrorType.UntaggedBuffer, DdpErrorCode.UntaggedInvalidMo),
                    $"{op} must be a single DDP segment (MO={header.MessageOffset}, L={header.Last}).");
                return false;
            }
        }
        payload = ulpdu.Slice(hl);
        int bodyLength = (int)payload.Length;
        if (op == RdmapOpcode.RdmaReadRequest)
        {
            if (bodyLength != RdmaReadRequest.Size)
            {
                error = new IwarpError(IwarpErrorKind.MalformedReadRequest, TerminateCode.Rdmap(RdmapErrorType.RemoteOperation, RdmapErrorCode.Unspecified),
                    $"RDMA Read Request body is {bodyLength} bytes, expected {RdmaReadRequest.Size}.");
                return false;
            }
            Span<byte> body = stackalloc byte[RdmaReadRequest.Size];
            payload.CopyTo(body);
            readRequest = RdmaReadRequest.Read(body);
        }
        else if (op == RdmapOpcode.Terminate)
        {
            if (bodyLength < TerminateMessage.ControlSize)
            {
                error = new IwarpError(IwarpErrorKind.MalformedTerminate, TerminateCode.Rdmap(RdmapErrorType.RemoteOperation, RdmapErrorCode.Unspecified),
                    $"Terminate body of {bodyLength} bytes.");
                return false;
            }
            // A body longer than any valid one keeps its control word; its copies are then unreadable by definition.
            Span<byte> body = stackalloc byte[TerminateMessage.MaxSize + 1];
            int kept = Math.Min(bodyLength, body.Length);
            payload.Slice(0, kept).CopyTo(body);
            TerminateMessage.TryRead(body.Slice(0, kept), out terminate);
        }
        return true;
    }
}
