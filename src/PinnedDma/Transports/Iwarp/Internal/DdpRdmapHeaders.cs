using System.Buffers.Binary;

namespace PinnedDma.Transports.Iwarp.Internal;

/// <summary>RDMAP opcodes (RFC 5040 §4.3).</summary>
internal enum RdmapOpcode : byte
{
    RdmaWrite = 0,
    RdmaReadRequest = 1,
    RdmaReadResponse = 2,
    Send = 3,
    SendWithInvalidate = 4,
    SendWithSolicitedEvent = 5,
    SendWithSolicitedEventAndInvalidate = 6,
    Terminate = 7,
}

/// <summary>Untagged DDP queue numbers used by RDMAP (RFC 5040 §5.1).</summary>
internal static class DdpQueue
{
    public const uint Send = 0;
    public const uint RdmaReadRequest = 1;
    public const uint Terminate = 2;
}

/// <summary>
/// A DDP segment header with the RDMAP control byte in its RsvdULP field (RFC 5041 §4, RFC 5040 §4). Raw control
/// bytes are kept as received so copied (terminated) headers round-trip even when invalid.
/// Tagged: <c>ctrl(2) STag(4) TO(8)</c> = 14 bytes. Untagged: <c>ctrl(2) InvalidateSTag/Rsvd(4) QN(4) MSN(4) MO(4)</c> = 18 bytes.
/// </summary>
internal readonly record struct DdpRdmapHeader
{
    public const int TaggedLength = 14;
    public const int UntaggedLength = 18;
    public const byte DdpVersion1 = 1;
    public const byte RdmapVersion1 = 1;

    public byte DdpControl { get; init; }
    public byte RdmapControl { get; init; }
    /// <summary>Tagged: Data Sink STag.</summary>
    public uint STag { get; init; }
    /// <summary>Tagged: Data Sink Tagged Offset.</summary>
    public ulong TaggedOffset { get; init; }
    /// <summary>Untagged: Invalidate STag (Send with Invalidate) or the reserved field.</summary>
    public uint InvalidateSTag { get; init; }
    public uint QueueNumber { get; init; }
    public uint MessageSequenceNumber { get; init; }
    public uint MessageOffset { get; init; }

    public bool Tagged => (DdpControl & 0x80) != 0;
    public bool Last => (DdpControl & 0x40) != 0;
    public byte DdpVersion => (byte)(DdpControl & 0x03);
    public byte RdmapVersion => (byte)(RdmapControl >> 6);
    public RdmapOpcode Opcode => (RdmapOpcode)(RdmapControl & 0x0F);
    public int Length => Tagged ? TaggedLength : UntaggedLength;

    public static byte MakeDdpControl(bool tagged, bool last) => (byte)((tagged ? 0x80 : 0) | (last ? 0x40 : 0) | DdpVersion1);
    public static byte MakeRdmapControl(RdmapOpcode opcode) => (byte)((RdmapVersion1 << 6) | ((byte)opcode & 0x0F));

    public static DdpRdmapHeader ForTagged(RdmapOpcode opcode, uint stag, ulong taggedOffset, bool last) => new()
    {
        DdpControl = MakeDdpControl(true, last),
        RdmapControl = MakeRdmapControl(opcode),
        STag = stag,
        TaggedOffset = taggedOffset,
    };

    public static DdpRdmapHeader ForUntagged(RdmapOpcode opcode, uint queueNumber, uint msn, uint messageOffset, bool last, uint invalidateSTag = 0) => new()
    {
        DdpControl = MakeDdpControl(false, last),
        RdmapControl = MakeRdmapControl(opcode),
        InvalidateSTag = invalidateSTag,
        QueueNumber = queueNumber,
        MessageSequenceNumber = msn,
        MessageOffset = messageOffset,
    };

    /// <summary>Writes <see cref="Length"/> bytes.</summary>
    public void WriteTo(Span<byte> destination)
    {
        destination[0] = DdpControl;
        destination[1] = RdmapControl;
        if (Tagged)
        {
            BinaryPrimitives.WriteUInt32BigEndian(destination.Slice(2), STag);
            BinaryPrimitives.WriteUInt64BigEndian(destination.Slice(6), TaggedOffset);
        }
        else
        {
            BinaryPrimitives.WriteUInt32BigEndian(destination.Slice(2), InvalidateSTag);
            BinaryPrimitives.WriteUInt32BigEndian(destination.Slice(6), QueueNumber);
            BinaryPrimitives.WriteUInt32BigEndian(destination.Slice(10), MessageSequenceNumber);
            BinaryPrimitives.WriteUInt32BigEndian(destination.Slice(14), MessageOffset);
        }
    }

    /// <summary>Length the header starting with <paramref name="ddpControl"/> occupies.</summary>
    public static int LengthFor(byte ddpControl) => (ddpControl & 0x80) != 0 ? TaggedLength : UntaggedLength;

    /// <summary>Reads a header without validating it; <paramref name="source"/> must hold <see cref="LengthFor"/> bytes.</summary>
    public static DdpRdmapHeader ReadRaw(ReadOnlySpan<byte> source)
    {
        byte ddp = source[0];
        if ((ddp & 0x80) != 0)
        {
            return new DdpRdmapHeader
            {
                DdpControl = ddp,
                RdmapControl = source[1],
                STag = BinaryPrimitives.ReadUInt32BigEndian(source.Slice(2)),
                TaggedOffset = BinaryPrimitives.ReadUInt64BigEndian(source.Slice(6)),
            };
        }
        return new DdpRdmapHeader
        {
            DdpControl = ddp,
            RdmapControl = source[1],
            InvalidateSTag = BinaryPrimitives.ReadUInt32BigEndian(source.Slice(2)),
            QueueNumber = BinaryPrimitives.ReadUInt32BigEndian(source.Slice(6)),
            MessageSequenceNumber = BinaryPrimitives.ReadUInt32BigEndian(source.Slice(10)),
            MessageOffset = BinaryPrimitives.ReadUInt32BigEndian(source.Slice(14)),
        };
    }

    public override string ToString() => Tagged
        ? $"{Opcode} T L={Last} STag=0x{STag:X8} TO=0x{TaggedOffset:X}"
        : $"{Opcode} U L={Last} QN={QueueNumber} MSN={MessageSequenceNumber} MO={MessageOffset} InvSTag=0x{InvalidateSTag:X8}";
}

/// <summary>RDMA Read Request header, the body of an untagged message on QN 1 (RFC 5040 §4.4). 28 bytes.</summary>
internal readonly record struct RdmaReadRequest(uint SinkSTag, ulong SinkTaggedOffset, uint MessageSize, uint SourceSTag, ulong SourceTaggedOffset)
{
    public const int Size = 28;

    public void WriteTo(Span<byte> destination)
    {
        BinaryPrimitives.WriteUInt32BigEndian(destination, SinkSTag);
        BinaryPrimitives.WriteUInt64BigEndian(destination.Slice(4), SinkTaggedOffset);
        BinaryPrimitives.WriteUInt32BigEndian(destination.Slice(12), MessageSize);
        BinaryPrimitives.WriteUInt32BigEndian(destination.Slice(16), SourceSTag);
        BinaryPrimitives.WriteUInt64BigEndian(destination.Slice(20), SourceTaggedOffset);
    }

    public static RdmaReadRequest Read(ReadOnlySpan<byte> source) => new(
        BinaryPrimitives.ReadUInt32BigEndian(source),
        BinaryPrimitives.ReadUInt64BigEndian(source.Slice(4)),
        BinaryPrimitives.ReadUInt32BigEndian(source.Slice(12)),
        BinaryPrimitives.ReadUInt32BigEndian(source.Slice(16)),
        BinaryPrimitives.ReadUInt64BigEndian(source.Slice(20)));
}

/// <summary>
/// Terminate message body, an untagged message on QN 2 (RFC 5040 §4.8):
/// <c>Layer(4) EType(4) ErrorCode(8) M D R Rsvd(13)</c>, then, when D is set, the 16-bit DDP Segment Length and the
/// terminated DDP header (14 or 18 bytes by its T bit), then, when R is set, the terminated 28-byte RDMA Read Request
/// header. M says whether the DDP Segment Length value is valid.
/// </summary>
internal readonly record struct TerminateMessage
{
    public const int ControlSize = 4;
    public const int MaxSize = ControlSize + 2 + DdpRdmapHeader.UntaggedLength + RdmaReadRequest.Size;

    public TerminateCode Code { get; init; }

    /// <summary>M flag: <see cref="DdpSegmentLength"/> is valid.</summary>
    public bool SegmentLengthValid { get; init; }

    /// <summary>Length of the DDP segment that caused the error (sent only with a terminated DDP header).</summary>
    public ushort DdpSegmentLength { get; init; }

    /// <summary>D flag: the DDP header of the offending segment, when included.</summary>
    public DdpRdmapHeader? TerminatedDdpHeader { get; init; }

    /// <summary>R flag: the RDMA Read Request header of the offending message, when included.</summary>
    public RdmaReadRequest? TerminatedReadRequest { get; init; }

    public int Length => ControlSize
        + (TerminatedDdpHeader is { } h ? 2 + h.Length : 0)
        + (TerminatedReadRequest.HasValue ? RdmaReadRequest.Size : 0);

    public void WriteTo(Span<byte> destination)
    {
        if ((byte)Code.Layer > 0x0F || Code.ErrorType > 0x0F) throw new ArgumentOutOfRangeException(nameof(Code), Code, "Layer and error type are 4-bit fields.");
        destination[0] = Code.LayerAndType;
        destination[1] = Code.ErrorCode;
        byte hdrct = (byte)((SegmentLengthValid ? 0x80 : 0) | (TerminatedDdpHeader.HasValue ? 0x40 : 0) | (TerminatedReadRequest.HasValue ? 0x20 : 0));
        destination[2] = hdrct;
        destination[3] = 0;
        int offset = ControlSize;
        if (TerminatedDdpHeader is { } h)
        {
            BinaryPrimitives.WriteUInt16BigEndian(destination.Slice(offset), DdpSegmentLength);
            offset += 2;
            h.WriteTo(destination.Slice(offset));
            offset += h.Length;
        }
        if (TerminatedReadRequest is { } rr) rr.WriteTo(destination.Slice(offset));
    }

    /// <summary>
    /// The header copies were not laid out as the M/D/R bits say (the body's length disagrees with them); the error
    /// code was still read. A Terminate ends the connection whatever follows its control word, and no Terminate may
    /// answer a Terminate (RFC 5040 §7.2), so the receiver keeps the code and ignores the copies. siw (Linux 6.1) on
    /// little-endian hosts writes M/D/R into the low bits of the third byte rather than the high ones.
    /// </summary>
    public bool HeaderCopiesUnreadable { get; init; }

    /// <summary>
    /// Decodes a body of exactly <paramref name="source"/>.Length bytes; false only if it is shorter than the control
    /// word. Header copies that do not match the flags leave <see cref="HeaderCopiesUnreadable"/> set.
    /// </summary>
    public static bool TryRead(ReadOnlySpan<byte> source, out TerminateMessage message)
    {
        message = default;
        if (source.Length < ControlSize) return false;
        var code = new TerminateCode((TerminateLayer)(source[0] >> 4), (byte)(source[0] & 0x0F), source[1]);
        if (!TryReadCopies(source, out message))
            message = new TerminateMessage { Code = code, HeaderCopiesUnreadable = true };
        return true;
    }

    private static bool TryReadCopies(ReadOnlySpan<byte> source, out TerminateMessage message)
    {
        message = default;
        byte hdrct = source[2];
        bool m = (hdrct & 0x80) != 0, d = (hdrct & 0x40) != 0, r = (hdrct & 0x20) != 0;
        int offset = ControlSize;
        DdpRdmapHeader? ddp = null;
        ushort segLen = 0;
        if (d)
        {
            if (source.Length < offset + 3) return false;
            segLen = BinaryPrimitives.ReadUInt16BigEndian(source.Slice(offset));
            offset += 2;
            int hl = DdpRdmapHeader.LengthFor(source[offset]);
            if (source.Length < offset + hl) return false;
            ddp = DdpRdmapHeader.ReadRaw(source.Slice(offset, hl));
            offset += hl;
        }
        RdmaReadRequest? rr = null;
        if (r)
        {
            if (source.Length < offset + RdmaReadRequest.Size) return false;
            rr = RdmaReadRequest.Read(source.Slice(offset));
            offset += RdmaReadRequest.Size;
        }
        if (offset != source.Length) return false;
        message = new TerminateMessage
        {
            Code = new TerminateCode((TerminateLayer)(source[0] >> 4), (byte)(source[0] & 0x0F), source[1]),
            SegmentLengthValid = m,
            DdpSegmentLength = segLen,
            TerminatedDdpHeader = ddp,
            TerminatedReadRequest = rr,
        };
        return true;
    }
}
