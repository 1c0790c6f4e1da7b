using System.Buffers.Binary;
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

    internal static uint AppendSoftware(uint state, ReadOnlySpan<byte> data)
    {
        foreach (byte b in data) state = Table[(state ^ b) & 0xFF] ^ (state >> 8);
        return state;
    }

    public static uint Compute<T>(ReadOnlySpan<T> data) where T : unmanaged => Compute(MemoryMarshal.AsBytes(data));
}
