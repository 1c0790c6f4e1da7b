using System.Diagnostics.CodeAnalysis;

namespace PinnedDma.Internal;

/// <summary>Throwing kept out of line so that callers on hot paths stay small and inlinable.</summary>
internal static class ThrowHelper
{
    [DoesNotReturn]
    public static void Throw(PinnedDmaError error, string message) => throw new PinnedDmaException(error, message);

    [DoesNotReturn]
    public static T Throw<T>(PinnedDmaError error, string message) => throw new PinnedDmaException(error, message);

    [DoesNotReturn]
    public static void ThrowObjectDisposed(object o) => throw new ObjectDisposedException(o.GetType().Name);

    public static void CheckRange(long offset, long length, string offsetName = "offset", string lengthName = "length")
    {
        if (offset < 0) ThrowNegative(offsetName, offset);
        if (length < 0) ThrowNegative(lengthName, length);
        if (offset > long.MaxValue - length) ThrowOverflow(offsetName);
    }

    [DoesNotReturn]
    private static void ThrowNegative(string name, long value) =>
        throw new ArgumentOutOfRangeException(name, value, $"{name} must not be negative.");

    [DoesNotReturn]
    private static void ThrowOverflow(string name) =>
        throw new ArgumentOutOfRangeException(name, $"{name} plus length overflows a 64-bit offset.");
}
