namespace PinnedDma.Transports.Iwarp.Internal;

/// <summary>Layer field of the RDMAP Terminate control field (RFC 5040 §4.8, §7).</summary>
internal enum TerminateLayer : byte
{
    /// <summary>Error detected by RDMAP.</summary>
    Rdmap = 0,
    /// <summary>Error detected by DDP.</summary>
    Ddp = 1,
    /// <summary>Error detected by the lower layer protocol (MPA).</summary>
    Llp = 2,
}

/// <summary>RDMAP error types (RFC 5040 §7.2).</summary>
internal static class RdmapErrorType
{
    public const byte LocalCatastrophic = 0;
    public const byte RemoteProtection = 1;
    public const byte RemoteOperation = 2;
}

/// <summary>RDMAP error codes (RFC 5040 §7.2).</summary>
internal static class RdmapErrorCode
{
    public const byte InvalidStag = 0x00;
    public const byte BaseOrBoundsViolation = 0x01;
    public const byte AccessRightsViolation = 0x02;
    public const byte StagNotAssociated = 0x03;
    public const byte ToWrap = 0x04;
    public const byte InvalidRdmapVersion = 0x05;
    public const byte UnexpectedOpcode = 0x06;
    public const byte CatastrophicLocalizedToStream = 0x07;
    public const byte CatastrophicGlobal = 0x08;
    public const byte StagCannotBeInvalidated = 0x09;
    public const byte Unspecified = 0xFF;
}

/// <summary>DDP error types (RFC 5041 §7).</summary>
internal static class DdpErrorType
{
    public const byte LocalCatastrophic = 0;
    public const byte TaggedBuffer = 1;
    public const byte UntaggedBuffer = 2;
    public const byte ReservedForLlp = 3;
}

/// <summary>DDP error codes (RFC 5041 §7).</summary>
internal static class DdpErrorCode
{
    public const byte Catastrophic = 0x00;
    public const byte TaggedInvalidStag = 0x00;
    public const byte TaggedBaseOrBounds = 0x01;
    public const byte TaggedStagNotAssociated = 0x02;
    public const byte TaggedToWrap = 0x03;
    public const byte TaggedInvalidDdpVersion = 0x04;
    public const byte UntaggedInvalidQn = 0x01;
    public const byte UntaggedInvalidMsnNoBuffer = 0x02;
    public const byte UntaggedInvalidMsnRange = 0x03;
    public const byte UntaggedInvalidMo = 0x04;
    public const byte UntaggedMessageTooLong = 0x05;
    public const byte UntaggedInvalidDdpVersion = 0x06;
}

/// <summary>MPA (LLP) error type and codes (RFC 5044 §8, RFC 6581 §9).</summary>
internal static class MpaErrorCode
{
    /// <summary>The only LLP error type MPA defines.</summary>
    public const byte ErrorTypeMpa = 0;
    public const byte TcpConnectionLost = 0x01;
    public const byte CrcMismatch = 0x02;
    public const byte FramingError = 0x03;
    public const byte InvalidRequestOrReply = 0x04;
    public const byte LocalCatastrophic = 0x05;
    public const byte InsufficientIrd = 0x06;
    public const byte NoMatchingRtr = 0x07;
}

/// <summary>The (layer, error type, error code) triple carried by a Terminate message.</summary>
internal readonly record struct TerminateCode(TerminateLayer Layer, byte ErrorType, byte ErrorCode)
{
    /// <summary>Packs layer (4 bits) and error type (4 bits) into the first Terminate control byte.</summary>
    public byte LayerAndType => (byte)(((byte)Layer << 4) | (ErrorType & 0x0F));

    public static TerminateCode Mpa(byte code) => new(TerminateLayer.Llp, MpaErrorCode.ErrorTypeMpa, code);
    public static TerminateCode Ddp(byte type, byte code) => new(TerminateLayer.Ddp, type, code);
    public static TerminateCode Rdmap(byte type, byte code) => new(TerminateLayer.Rdmap, type, code);

    public override string ToString() => $"{Layer}/etype 0x{ErrorType:X}/code 0x{ErrorCode:X2}";
}

/// <summary>What went wrong while decoding or negotiating iWARP traffic.</summary>
internal enum IwarpErrorKind
{
    None = 0,
    // MPA connection setup (RFC 5044 §7, RFC 6581)
    MpaInvalidKey,
    MpaUnsupportedRevision,
    MpaPrivateDataTooLong,
    MpaMarkersRequested,
    MpaEnhancedDataMissing,
    MpaRejectedByPeer,
    MpaInvalidReply,
    MpaNoMatchingRtr,
    MpaInsufficientIrd,
    // MPA framing (RFC 5044 §4)
    StreamTruncated,
    FpduLengthTooLarge,
    CrcMismatch,
    // DDP (RFC 5041)
    UlpduTooShort,
    InvalidDdpVersion,
    InvalidQueueNumber,
    InvalidMessageOffset,
    // RDMAP (RFC 5040)
    InvalidRdmapVersion,
    UnknownOpcode,
    OpcodeBufferModelMismatch,
    OpcodeQueueMismatch,
    MalformedReadRequest,
    MalformedTerminate,
}

/// <summary>A typed protocol error together with the Terminate code that reports it to the peer.</summary>
internal readonly record struct IwarpError(IwarpErrorKind Kind, TerminateCode Terminate, string Detail)
{
    public bool IsError => Kind != IwarpErrorKind.None;

    public static IwarpError None => default;

    public override string ToString() => IsError ? $"{Kind} ({Terminate}): {Detail}" : "None";

    internal static IwarpError Mpa(IwarpErrorKind kind, byte code, string detail) => new(kind, TerminateCode.Mpa(code), detail);
}

/// <summary>Exception form of <see cref="IwarpError"/> for callers that prefer exceptions (e.g. handshake helpers).</summary>
internal sealed class IwarpProtocolException : Exception
{
    public IwarpProtocolException(IwarpError error) : base(error.ToString()) => Error = error;

    public IwarpError Error { get; }
}

/// <summary>Outcome of a non-throwing parse attempt over a possibly incomplete buffer.</summary>
internal enum ParseStatus
{
    /// <summary>The buffer does not yet hold a whole frame; nothing was consumed.</summary>
    NeedMoreData,
    /// <summary>A frame was decoded and consumed from the buffer.</summary>
    Frame,
    /// <summary>The bytes are not a valid frame; see the error. Nothing was consumed.</summary>
    Error,
}
