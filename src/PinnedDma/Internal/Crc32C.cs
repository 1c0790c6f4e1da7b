using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;

namespace PinnedDma.Internal;

/// <summary>
/// CRC32C (Castagnoli), the checksum of iSCSI, ext4/XFS metadata and MPA (RFC 5044 §8). Uses the SSE4.2
/// instruction when present and a slicing table otherwise; the two are checked against each other in tests.
/// </summary>
internal static class Crc32C
{
    private const uint Polynomial = 0x82F63B78u; // reflected 0x1EDC6F41
    private static readonly uint[] Table = BuildTable();

    private static uint[] BuildTable()
    {
        var t = new uint[256];
        for (uint i = 0; i < 256; i++)
        {
            uint c = i;
            for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? (c >> 1) ^ Polynomial : c >> 1;
            t[i] = c;
        }
        return t;
    }

    /// <summary>CRC32C of <paramref name="data"/> (initial value and final xor 0xFFFFFFFF, as RFC 3720 specifies).</summary>
    public static uint Compute(ReadOnlySpan<byte> data) => ~Append(0xFFFFFFFFu, data);

    /// <summary>Continues a running (non-finalized) CRC state.</summary>
    public static uint Append(uint state, ReadOnlySpan<byte> data)
    {
        if (Sse42.X64.IsSupported)
        {
            // The crc32 instruction has a latency of 3 cycles and a throughput of 1: three independent streams over
            // consecutive chunks keep it busy, and the linearity of the CRC joins them (state after A||B||C =
            // T^2K(state after A) ^ T^K(crc of B from 0) ^ crc of C from 0, where T^K advances a state over K zero bytes).
            while (data.Length >= 3 * StreamChunk)
            {
                state = AppendThreeStreams(state, data[..(3 * StreamChunk)]);
                data = data[(3 * StreamChunk)..];
            }
            ulong s = state;
            while (data.Length >= 8)
            {
                s = Sse42.X64.Crc32(s, BinaryPrimitives.ReadUInt64LittleEndian(data));
                data = data.Slice(8);
            }
            state = (uint)s;
            foreach (byte b in data) state = Sse42.Crc32(state, b);
            return state;
        }
        return AppendSoftware(state, data);
    }

    internal const int StreamChunk = 4096;
    private static uint[]? s_shiftTable; // T^K as four byte-indexed tables

    private static uint AppendThreeStreams(uint state, ReadOnlySpan<byte> data)
    {
        var shift = s_shiftTable ??= BuildShiftTable();
        ulong a = state, b = 0, c = 0;
        ref byte p = ref MemoryMarshal.GetReference(data);
        for (int i = 0; i < StreamChunk; i += 8)
        {
            a = Sse42.X64.Crc32(a, Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref p, i)));
            b = Sse42.X64.Crc32(b, Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref p, StreamChunk + i)));
            c = Sse42.X64.Crc32(c, Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref p, 2 * StreamChunk + i)));
        }
        uint ab = Shift(shift, (uint)a) ^ (uint)b;
        return Shift(shift, ab) ^ (uint)c;
    }

    private static uint Shift(uint[] t, uint x) =>
        t[x & 0xFF] ^ t[256 + ((x >> 8) & 0xFF)] ^ t[512 + ((x >> 16) & 0xFF)] ^ t[768 + (x >> 24)];

    /// <summary>T^K is linear: tabulate it on every byte of every byte position.</summary>
    private static uint[] BuildShiftTable()
    {
        var t = new uint[1024];
        Span<byte> zeros = stackalloc byte[StreamChunk];
        zeros.Clear();
        for (int pos = 0; pos < 4; pos++)
            for (int v = 0; v < 256; v++)
                t[pos * 256 + v] = AdvanceOverZeros((uint)v << (8 * pos), zeros);
        return t;
    }

    private static uint AdvanceOverZeros(uint state, ReadOnlySpan<byte> zeros)
    {
        ulong s = state;
        for (int i = 0; i < zeros.Length; i += 8) s = Sse42.X64.Crc32(s, 0UL);
        return (uint)s;
    }

    internal static uint AppendSoftware(uint state, ReadOnlySpan<byte> data)
    {
        foreach (byte b in data) state = Table[(state ^ b) & 0xFF] ^ (state >> 8);
        return state;
    }

    public static uint Compute<T>(ReadOnlySpan<T> data) where T : unmanaged => Compute(MemoryMarshal.AsBytes(data));
}
