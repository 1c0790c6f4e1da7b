using System.Buffers;
using System.Buffers.Binary;

namespace PinnedDma.Transports.Iwarp.Internal;

/// <summary>Which connection-setup frame: the initiator's request or the responder's reply.</summary>
internal enum MpaFrameKind
{
    Request,
    Reply,
}

/// <summary>Zero-length RTR message types of RFC 6581 (bits B, C and D of the enhanced setup data).</summary>
[Flags]
internal enum MpaRtrTypes
{
    None = 0,
    /// <summary>B: a zero-length Send (FPDU) may be the ready-to-receive message.</summary>
    ZeroLengthSend = 1,
    /// <summary>C: a zero-length RDMA Write may be the ready-to-receive message.</summary>
    ZeroLengthRdmaWrite = 2,
    /// <summary>D: a zero-length RDMA Read may be the ready-to-receive message.</summary>
    ZeroLengthRdmaRead = 4,
}

/// <summary>
/// The 4-byte enhanced connection setup data that starts the private data of an MPA revision 2 frame
/// (RFC 6581): <c>|A|B| IRD (14) |C|D| ORD (14)|</c>, A = peer-to-peer, B/C/D = RTR types.
/// </summary>
internal readonly record struct MpaEnhancedParameters(ushort Ird, ushort Ord, bool PeerToPeer, MpaRtrTypes RtrTypes)
{
    public const int Size = 4;
    public const ushort MaxQueueDepth = 0x3FFF;

    public void WriteTo(Span<byte> destination)
    {
        if (Ird > MaxQueueDepth) throw new ArgumentOutOfRangeException(nameof(Ird), Ird, "IRD is a 14-bit field.");
        if (Ord > MaxQueueDepth) throw new ArgumentOutOfRangeException(nameof(Ord), Ord, "ORD is a 14-bit field.");
        ushort w0 = (ushort)(Ird | (PeerToPeer ? 0x8000 : 0) | ((RtrTypes & MpaRtrTypes.ZeroLengthSend) != 0 ? 0x4000 : 0));
        ushort w1 = (ushort)(Ord | ((RtrTypes & MpaRtrTypes.ZeroLengthRdmaWrite) != 0 ? 0x8000 : 0)
                                 | ((RtrTypes & MpaRtrTypes.ZeroLengthRdmaRead) != 0 ? 0x4000 : 0));
        BinaryPrimitives.WriteUInt16BigEndian(destination, w0);
        BinaryPrimitives.WriteUInt16BigEndian(destination.Slice(2), w1);
    }

    public static MpaEnhancedParameters Read(ReadOnlySpan<byte> source)
    {
        ushort w0 = BinaryPrimitives.ReadUInt16BigEndian(source);
        ushort w1 = BinaryPrimitives.ReadUInt16BigEndian(source.Slice(2));
        var rtr = MpaRtrTypes.None;
        if ((w0 & 0x4000) != 0) rtr |= MpaRtrTypes.ZeroLengthSend;
        if ((w1 & 0x8000) != 0) rtr |= MpaRtrTypes.ZeroLengthRdmaWrite;
        if ((w1 & 0x4000) != 0) rtr |= MpaRtrTypes.ZeroLengthRdmaRead;
        return new MpaEnhancedParameters((ushort)(w0 & MaxQueueDepth), (ushort)(w1 & MaxQueueDepth), (w0 & 0x8000) != 0, rtr);
    }
}

/// <summary>
/// An MPA Request or Reply frame (RFC 5044 §7.1, RFC 6581 §5): 16-byte key, flags <c>M C R S Res(4)</c>, Rev,
/// PD_Length and private data. For revision 2 frames with the S (enhanced) flag the private data starts with
/// <see cref="MpaEnhancedParameters"/>; <see cref="PrivateData"/> holds only the ULP part after it.
/// </summary>
internal sealed record MpaFrame
{
    public const int HeaderSize = 20;
    public const int MaxPrivateDataLength = 512;
    public const byte FlagMarkers = 0x80;
    public const byte FlagCrc = 0x40;
    public const byte FlagReject = 0x20;
    public const byte FlagEnhanced = 0x10;

    /// <summary>"MPA ID Req Frame".</summary>
    public static ReadOnlySpan<byte> RequestKey => "MPA ID Req Frame"u8;

    /// <summary>"MPA ID Rep Frame".</summary>
    public static ReadOnlySpan<byte> ReplyKey => "MPA ID Rep Frame"u8;

    public MpaFrameKind Kind { get; init; }
    public bool Markers { get; init; }
    public bool Crc { get; init; }
    public bool Reject { get; init; }
    public byte Revision { get; init; } = 1;

    /// <summary>RFC 6581 setup data (revision 2 only); null when absent.</summary>
    public MpaEnhancedParameters? Enhanced { get; init; }

    /// <summary>ULP private data (excluding the enhanced setup data).</summary>
    public ReadOnlyMemory<byte> PrivateData { get; init; } = ReadOnlyMemory<byte>.Empty;

    /// <summary>Value of the PD_Length field this frame encodes to.</summary>
    public int PrivateDataLengthField => PrivateData.Length + (Enhanced.HasValue ? MpaEnhancedParameters.Size : 0);

    public int EncodedLength => HeaderSize + PrivateDataLengthField;

    /// <summary>Throws <see cref="ArgumentException"/> if the frame cannot be encoded as given.</summary>
    public void Validate()
    {
        if (Revision is not (1 or 2)) throw new ArgumentOutOfRangeException(nameof(Revision), Revision, "MPA revision must be 1 or 2.");
        if (Enhanced.HasValue && Revision != 2) throw new ArgumentException("Enhanced connection setup data requires MPA revision 2.");
        if (PrivateDataLengthField > MaxPrivateDataLength)
            throw new ArgumentException($"MPA private data is limited to {MaxPrivateDataLength} bytes (including enhanced setup data).");
    }

    /// <summary>Writes the frame into <paramref name="writer"/>.</summary>
    public void WriteTo(IBufferWriter<byte> writer)
    {
        ArgumentNullException.ThrowIfNull(writer);
        Validate();
        int len = EncodedLength;
        Span<byte> span = writer.GetSpan(len).Slice(0, len);
        (Kind == MpaFrameKind.Request ? RequestKey : ReplyKey).CopyTo(span);
        byte flags = 0;
        if (Markers) flags |= FlagMarkers;
        if (Crc) flags |= FlagCrc;
        if (Reject) flags |= FlagReject;
        if (Enhanced.HasValue) flags |= FlagEnhanced;
        span[16] = flags;
        span[17] = Revision;
        BinaryPrimitives.WriteUInt16BigEndian(span.Slice(18), (ushort)PrivateDataLengthField);
        int offset = HeaderSize;
        if (Enhanced is { } e)
        {
            e.WriteTo(span.Slice(offset));
            offset += MpaEnhancedParameters.Size;
        }
        PrivateData.Span.CopyTo(span.Slice(offset));
        writer.Advance(len);
    }

    public byte[] ToArray()
    {
        var w = new ArrayBufferWriter<byte>(EncodedLength);
        WriteTo(w);
        return w.WrittenSpan.ToArray();
    }

    /// <summary>
    /// Decodes one frame of the <paramref name="expected"/> kind from the front of <paramref name="buffer"/>. On
    /// <see cref="ParseStatus.Frame"/> the frame's bytes are sliced off the buffer; otherwise it is left unchanged.
    /// Never reads past the buffer and never throws for malformed input.
    /// </summary>
    public static ParseStatus TryParse(ref ReadOnlySequence<byte> buffer, MpaFrameKind expected, out MpaFrame? frame, out IwarpError error)
    {
        frame = null;
        error = default;
        if (buffer.Length < HeaderSize)
        {
            // Reject a wrong key as early as possible (bytes so far must be a prefix of the key).
            Span<byte> partial = stackalloc byte[HeaderSize];
            int have = (int)Math.Min(buffer.Length, 16);
            buffer.Slice(0, have).CopyTo(partial);
            ReadOnlySpan<byte> key = expected == MpaFrameKind.Request ? RequestKey : ReplyKey;
            if (!partial.Slice(0, have).SequenceEqual(key.Slice(0, have)))
            {
                error = InvalidKey(expected);
                return ParseStatus.Error;
            }
            return ParseStatus.NeedMoreData;
        }

        Span<byte> header = stackalloc byte[HeaderSize];
        buffer.Slice(0, HeaderSize).CopyTo(header);
        if (!header.Slice(0, 16).SequenceEqual(expected == MpaFrameKind.Request ? RequestKey : ReplyKey))
        {
            error = InvalidKey(expected);
            return ParseStatus.Error;
        }
        byte flags = header[16];
        byte rev = header[17];
        int pdLength = BinaryPrimitives.ReadUInt16BigEndian(header.Slice(18));
        if (rev is not (1 or 2))
        {
            error = IwarpError.Mpa(IwarpErrorKind.MpaUnsupportedRevision, MpaErrorCode.InvalidRequestOrReply, $"MPA revision {rev} is not supported (1 or 2).");
            return ParseStatus.Error;
        }
        if (pdLength > MaxPrivateDataLength)
        {
            error = IwarpError.Mpa(IwarpErrorKind.MpaPrivateDataTooLong, MpaErrorCode.InvalidRequestOrReply, $"PD_Length {pdLength} exceeds {MaxPrivateDataLength}.");
            return ParseStatus.Error;
        }
        bool enhanced = rev == 2 && (flags & FlagEnhanced) != 0;
        if (enhanced && pdLength < MpaEnhancedParameters.Size)
        {
            error = IwarpError.Mpa(IwarpErrorKind.MpaEnhancedDataMissing, MpaErrorCode.InvalidRequestOrReply, $"Revision 2 enhanced frame with PD_Length {pdLength} < 4.");
            return ParseStatus.Error;
        }
        if (buffer.Length < HeaderSize + pdLength) return ParseStatus.NeedMoreData;

        byte[] pd = buffer.Slice(HeaderSize, pdLength).ToArray();
        MpaEnhancedParameters? ep = null;
        ReadOnlyMemory<byte> ulpData = pd;
        if (enhanced)
        {
            ep = MpaEnhancedParameters.Read(pd);
            ulpData = pd.AsMemory(MpaEnhancedParameters.Size);
        }
        frame = new MpaFrame
        {
            Kind = expected,
            Markers = (flags & FlagMarkers) != 0,
            Crc = (flags & FlagCrc) != 0,
            Reject = (flags & FlagReject) != 0,
            Revision = rev,
            Enhanced = ep,
            PrivateData = ulpData,
        };
        buffer = buffer.Slice(HeaderSize + pdLength);
        return ParseStatus.Frame;
    }

    private static IwarpError InvalidKey(MpaFrameKind expected) =>
        IwarpError.Mpa(IwarpErrorKind.MpaInvalidKey, MpaErrorCode.InvalidRequestOrReply,
            expected == MpaFrameKind.Request ? "Expected the key \"MPA ID Req Frame\"." : "Expected the key \"MPA ID Rep Frame\".");

    public bool Equals(MpaFrame? other) =>
        other is not null && Kind == other.Kind && Markers == other.Markers && Crc == other.Crc && Reject == other.Reject
        && Revision == other.Revision && Enhanced == other.Enhanced && PrivateData.Span.SequenceEqual(other.PrivateData.Span);

    public override int GetHashCode() => HashCode.Combine(Kind, Markers, Crc, Reject, Revision, Enhanced, PrivateData.Length);
}

/// <summary>Local settings for MPA connection setup.</summary>
internal sealed record MpaLocalSettings
{
    /// <summary>Highest revision to offer/accept (2, RFC 6581 enhanced setup, by default; or 1).</summary>
    public byte Revision { get; init; } = 2;

    /// <summary>Whether this side wants CRC; CRC is used when either side asks for it.</summary>
    public bool WantCrc { get; init; } = true;

    /// <summary>Inbound RDMA Read queue depth advertised in revision 2.</summary>
    public ushort Ird { get; init; } = 16;

    /// <summary>Outbound RDMA Read queue depth advertised in revision 2.</summary>
    public ushort Ord { get; init; } = 16;

    /// <summary>Revision 2, initiator: request peer-to-peer mode. A responder accepts it whenever an RTR type matches.</summary>
    public bool PeerToPeer { get; init; }

    /// <summary>Revision 2: RTR message types this side supports (offers as initiator, accepts as responder).</summary>
    public MpaRtrTypes RtrTypes { get; init; } = MpaRtrTypes.ZeroLengthSend | MpaRtrTypes.ZeroLengthRdmaWrite | MpaRtrTypes.ZeroLengthRdmaRead;

    /// <summary>Private data for the ULP.</summary>
    public ReadOnlyMemory<byte> PrivateData { get; init; } = ReadOnlyMemory<byte>.Empty;
}

/// <summary>The parameters both sides operate with after a successful setup.</summary>
internal readonly record struct MpaNegotiated(byte Revision, bool Crc, ushort Ird, ushort Ord, bool PeerToPeer, MpaRtrTypes Rtr);

/// <summary>The responder's decision: always a reply frame to send, plus an error when it is a reject.</summary>
internal sealed record MpaResponderDecision(MpaFrame Reply, IwarpError Error, MpaNegotiated Negotiated)
{
    public bool Accepted => !Error.IsError;
}

/// <summary>MPA connection setup rules (RFC 5044 §7.1, RFC 6581 §5-§9). Markers are never used.</summary>
internal static class MpaNegotiation
{
    public static MpaFrame BuildRequest(MpaLocalSettings local)
    {
        ArgumentNullException.ThrowIfNull(local);
        var req = new MpaFrame
        {
            Kind = MpaFrameKind.Request,
            Crc = local.WantCrc,
            Revision = local.Revision,
            Enhanced = local.Revision == 2 ? new MpaEnhancedParameters(local.Ird, local.Ord, local.PeerToPeer, local.PeerToPeer ? local.RtrTypes : MpaRtrTypes.None) : null,
            PrivateData = local.PrivateData,
        };
        req.Validate();
        return req;
    }

    /// <summary>Responder side: decides on an incoming request and builds the reply (a reject on error).</summary>
    public static MpaResponderDecision Respond(MpaFrame request, MpaLocalSettings local)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(local);
        byte rev = Math.Min(request.Revision, local.Revision);
        bool crc = request.Crc || local.WantCrc;
        MpaEnhancedParameters? replyEnhanced = null;
        var negotiated = new MpaNegotiated(rev, crc, local.Ird, local.Ord, false, MpaRtrTypes.None);
        IwarpError error = default;

        if (request.Kind != MpaFrameKind.Request)
            error = IwarpError.Mpa(IwarpErrorKind.MpaInvalidKey, MpaErrorCode.InvalidRequestOrReply, "Not an MPA request.");
        else if (request.Markers)
            error = IwarpError.Mpa(IwarpErrorKind.MpaMarkersRequested, MpaErrorCode.InvalidRequestOrReply, "Peer requested MPA markers, which this implementation never inserts.");
        else if (request.Reject)
            error = IwarpError.Mpa(IwarpErrorKind.MpaInvalidReply, MpaErrorCode.InvalidRequestOrReply, "Request has the R (reject) flag set.");

        if (rev == 2 && request.Enhanced is { } peer)
        {
            ushort ord = Math.Min(local.Ord, peer.Ird);
            ushort ird = local.Ird;
            MpaRtrTypes chosen = MpaRtrTypes.None;
            if (peer.PeerToPeer && !error.IsError)
            {
                // RFC 6581 §7.1: the responder picks one RTR type of those offered that it supports and echoes it; "no
                // matching RTR option" (0x07) only when there is none. A zero-length RDMA Read needs an IRD of 1.
                MpaRtrTypes supported = local.RtrTypes & (local.Ird == 0 ? ~MpaRtrTypes.ZeroLengthRdmaRead : ~MpaRtrTypes.None);
                chosen = Preferred(peer.RtrTypes & supported);
                if (chosen == MpaRtrTypes.None)
                    error = IwarpError.Mpa(IwarpErrorKind.MpaNoMatchingRtr, MpaErrorCode.NoMatchingRtr, $"No common RTR type (peer {peer.RtrTypes}, local {supported}).");
            }
            replyEnhanced = new MpaEnhancedParameters(ird, ord, peer.PeerToPeer && chosen != MpaRtrTypes.None, chosen);
            negotiated = negotiated with { Ird = ird, Ord = ord, PeerToPeer = peer.PeerToPeer && chosen != MpaRtrTypes.None, Rtr = chosen };
        }

        var reply = new MpaFrame
        {
            Kind = MpaFrameKind.Reply,
            Crc = crc,
            Reject = error.IsError,
            Revision = rev,
            Enhanced = replyEnhanced,
            PrivateData = local.PrivateData,
        };
        return new MpaResponderDecision(reply, error, negotiated);
    }

    /// <summary>
    /// A reject reply (R set) to <paramref name="request"/>, in the revision the request gets answered with (the lower of
    /// the two sides'), with the enhanced setup data when that revision is 2 and the request carried it.
    /// </summary>
    public static MpaFrame BuildReject(MpaFrame request, MpaLocalSettings local)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(local);
        byte rev = Math.Min(request.Revision, local.Revision);
        return new MpaFrame
        {
            Kind = MpaFrameKind.Reply,
            Reject = true,
            Revision = rev,
            Crc = request.Crc || local.WantCrc,
            Enhanced = rev == 2 && request.Enhanced.HasValue ? new MpaEnhancedParameters(local.Ird, local.Ord, false, MpaRtrTypes.None) : null,
            PrivateData = local.PrivateData,
        };
    }

    /// <summary>Initiator side: checks the reply against the request that was sent.</summary>
    public static IwarpError CompleteInitiator(MpaFrame request, MpaFrame reply, out MpaNegotiated negotiated)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(reply);
        negotiated = default;
        if (reply.Kind != MpaFrameKind.Reply)
            return IwarpError.Mpa(IwarpErrorKind.MpaInvalidKey, MpaErrorCode.InvalidRequestOrReply, "Not an MPA reply.");
        if (reply.Reject)
            return IwarpError.Mpa(IwarpErrorKind.MpaRejectedByPeer, MpaErrorCode.InvalidRequestOrReply, "The responder rejected the connection.");
        if (reply.Markers)
            return IwarpError.Mpa(IwarpErrorKind.MpaMarkersRequested, MpaErrorCode.InvalidRequestOrReply, "Responder requested MPA markers, which this implementation never inserts.");
        if (reply.Revision > request.Revision)
            return IwarpError.Mpa(IwarpErrorKind.MpaUnsupportedRevision, MpaErrorCode.InvalidRequestOrReply, $"Reply revision {reply.Revision} is above the requested {request.Revision}.");
        if (request.Crc && !reply.Crc)
            return IwarpError.Mpa(IwarpErrorKind.MpaInvalidReply, MpaErrorCode.InvalidRequestOrReply, "CRC was requested but the reply has C=0.");

        ushort ird = 0, ord = 0;
        bool p2p = false;
        MpaRtrTypes rtr = MpaRtrTypes.None;
        if (request.Enhanced is { } mine && reply.Revision == 2)
        {
            if (reply.Enhanced is not { } theirs)
                return IwarpError.Mpa(IwarpErrorKind.MpaEnhancedDataMissing, MpaErrorCode.InvalidRequestOrReply, "Revision 2 reply without enhanced setup data.");
            ird = mine.Ird;
            ord = Math.Min(mine.Ord, theirs.Ird);
            if (mine.PeerToPeer)
            {
                int count = System.Numerics.BitOperations.PopCount((uint)theirs.RtrTypes);
                if (count != 1 || (theirs.RtrTypes & mine.RtrTypes) == 0)
                    return IwarpError.Mpa(IwarpErrorKind.MpaNoMatchingRtr, MpaErrorCode.NoMatchingRtr, $"Reply RTR selection {theirs.RtrTypes} does not pick exactly one of {mine.RtrTypes}.");
                p2p = true;
                rtr = theirs.RtrTypes;
            }
            if (mine.Ord > 0 && theirs.Ird == 0)
                return IwarpError.Mpa(IwarpErrorKind.MpaInsufficientIrd, MpaErrorCode.InsufficientIrd, "Responder IRD is 0 but this side needs outbound RDMA Reads.");
        }
        negotiated = new MpaNegotiated(reply.Revision, request.Crc || reply.Crc, ird, ord, p2p, rtr);
        return default;
    }

    /// <summary>
    /// The RTR type to use among <paramref name="common"/>: a zero-length RDMA Write (needs no receive and no read
    /// credit), then an RDMA Read, then a Send.
    /// </summary>
    private static MpaRtrTypes Preferred(MpaRtrTypes common) =>
        (common & MpaRtrTypes.ZeroLengthRdmaWrite) != 0 ? MpaRtrTypes.ZeroLengthRdmaWrite
        : (common & MpaRtrTypes.ZeroLengthRdmaRead) != 0 ? MpaRtrTypes.ZeroLengthRdmaRead
        : common & MpaRtrTypes.ZeroLengthSend;
}
