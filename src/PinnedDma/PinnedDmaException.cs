namespace PinnedDma;

/// <summary>
/// The exception for runtime conditions: it carries a <see cref="PinnedDmaError"/> instead of a zoo of types, so
/// callers switch on <see cref="Error"/>. Nothing is changed on disk or in memory when it is thrown by a volume,
/// layout or verbs operation, unless the message says otherwise.
/// </summary>
/// <remarks>
/// The convention: a caller bug that no state of the system could make right throws an
/// <see cref="ArgumentException"/> as elsewhere in .NET (<see cref="ArgumentNullException"/>; a negative offset or
/// length, an offset plus length that overflows 64 bits (Linux: EINVAL or EFBIG), bad volume options:
/// <see cref="ArgumentOutOfRangeException"/>; a malformed file name, files of another volume). Whatever depends on
/// the state of the volume, a file, the device or a peer throws this exception with the errno-like code: a range past
/// EOF, an unaligned offset for this block size or a range past the largest file size
/// (<see cref="PinnedDmaError.InvalidArgument"/>, EINVAL or EFBIG), a missing or existing file, a pinned range, a file
/// another volume holds (<see cref="PinnedDmaError.Busy"/>), no space, a damaged volume file
/// (<see cref="PinnedDmaError.Corrupt"/>). An object used after disposal throws <see cref="ObjectDisposedException"/>.
/// </remarks>
public sealed class PinnedDmaException : IOException
{
    /// <summary>Creates an exception for <paramref name="error"/>.</summary>
    public PinnedDmaException(PinnedDmaError error, string message, Exception? inner = null)
        : base(message, inner)
    {
        Error = error;
        HResult = unchecked((int)0x80131620) + (int)error;
    }

    /// <summary>What went wrong.</summary>
    public PinnedDmaError Error { get; }
}
