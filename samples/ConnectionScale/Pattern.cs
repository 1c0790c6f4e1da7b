using System.Runtime.InteropServices;

namespace PinnedDma.Samples.ConnectionScale;

/// <summary>The data each operation moves: distinct per server slot and per operation, so a misdirected or stale 4 KiB is caught.</summary>
public static class Pattern
{
    /// <summary>Bytes per operation.</summary>
    public const int Size = 4096;

    /// <summary>Fills <paramref name="into"/> (<see cref="Size"/> bytes) with operation <paramref name="op"/>'s data for <paramref name="slot"/>.</summary>
    public static void Fill(Span<byte> into, int slot, int op)
    {
        var words = MemoryMarshal.Cast<byte, ulong>(into[..Size]);
        ulong seed = ((ulong)(uint)slot << 40) | ((ulong)(uint)op << 12);
        for (int j = 0; j < words.Length; j++) words[j] = (seed | (uint)j) * 0x9E3779B97F4A7C15UL;
    }

    /// <summary>True when <paramref name="data"/> holds exactly operation <paramref name="op"/>'s data for <paramref name="slot"/>.</summary>
    public static bool Check(ReadOnlySpan<byte> data, int slot, int op)
    {
        Span<byte> expected = stackalloc byte[Size];
        Fill(expected, slot, op);
        return data[..Size].SequenceEqual(expected);
    }
}
