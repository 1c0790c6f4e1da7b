using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.Arm;
using System.Runtime.Intrinsics.X86;

namespace PinnedDma.Internal;

/// <summary>
/// CRC32C (Castagnoli), the checksum of iSCSI, ext4/XFS metadata and MPA (RFC 5044 §8).
/// <para>On x64 with AVX-512 VPCLMULQDQ, inputs of 256 bytes or more are folded 64 bytes at a time by carry-less
/// multiplication (<see cref="FoldBlocks"/>), which runs about as fast as copying the bytes. Without it, x64 with SSE4.2
/// and PCLMULQDQ runs three independent streams of the <c>crc32</c> instruction (latency 3, throughput 1: one stream
/// alone runs at a third of the instruction's rate) over three consecutive chunks of a block, joined by carry-less
/// multiplication; SSE4.2 alone gives one stream; Arm64 uses its CRC32C instructions; everything else a slicing-by-8
/// table. <see cref="CopyAndAppend(ReadOnlySpan{byte}, Span{byte}, uint)"/> copies and checksums in one pass over the
/// data.</para>
/// </summary>
internal static unsafe class Crc32C
{
    private const uint Polynomial = 0x82F63B78u; // reflected 0x1EDC6F41

    /// <summary>Slicing-by-8 tables: <c>Table[k * 256 + b]</c> is the CRC of byte b followed by k zero bytes.</summary>
    private static readonly uint[] Table = BuildTable();

    // Stream chunk sizes (bytes per stream per block; multiples of 8), largest first. A block is three chunks.
    internal const int LargeChunk = 4096;
    internal const int MediumChunk = 512;
    internal const int SmallChunk = 64;

    /// <summary>
    /// How far ahead of each stream the large and medium blocks prefetch: three streams are three sequential read
    /// streams, which memory that is not in cache (a region the sender checksums before the kernel copies it) does
    /// not deliver at the instruction's rate without help (1 MiB of uncached data: about 25% faster).
    /// </summary>
    private const int PrefetchDistance = 256;

    // x^(8n - 33) mod P for n = chunk and 2 * chunk: a state times one of them, reduced by crc32(0, ·), is the state
    // advanced over n zero bytes (see ShiftTwo). Literals, so that every tier of the JIT sees constants; a test
    // recomputes them with XPowMod.
    internal const ulong LargeK1 = 0x82F89C77, LargeK2 = 0x54A86326;
    internal const ulong MediumK1 = 0xDD7E3B0C, MediumK2 = 0x170076FA;
    internal const ulong SmallK1 = 0x9E4ADDF8, SmallK2 = 0x0D3B6092;

    private static uint[] BuildTable()
    {
        var t = new uint[8 * 256];
        for (uint i = 0; i < 256; i++)
        {
            uint c = i;
            for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? (c >> 1) ^ Polynomial : c >> 1;
            t[i] = c;
        }
        for (int k = 1; k < 8; k++)
            for (int i = 0; i < 256; i++)
                t[k * 256 + i] = (t[(k - 1) * 256 + i] >> 8) ^ t[t[(k - 1) * 256 + i] & 0xFF];
        return t;
    }

    /// <summary>x^<paramref name="power"/> mod P, bit-reflected (bit 31 is x^0).</summary>
    internal static uint XPowMod(int power)
    {
        uint v = 0x80000000u; // x^0
        for (int i = 0; i < power; i++) v = (v & 1) != 0 ? (v >> 1) ^ Polynomial : v >> 1;
        return v;
    }

    /// <summary>Whether the three-stream x64 path is available on this machine.</summary>
    internal static bool IsThreeStream => Sse42.X64.IsSupported && Pclmulqdq.IsSupported;

    /// <summary>Whether inputs of at least <see cref="VectorMin"/> bytes take the AVX-512 folding path on this machine.</summary>
    internal static bool IsVector512 => Sse42.X64.IsSupported && Pclmulqdq.V512.IsSupported;

    /// <summary>Shortest input for the folding path: one round of its four 64-byte accumulators.</summary>
    internal const int VectorMin = 256;

    // Folding constants for a distance of N bits, per 128-bit lane: x^(N+31) mod P for the lane's low quadword (the
    // earlier bytes), x^(N-33) mod P for its high quadword (see Fold). Literals, as above; a test recomputes them.
    internal const ulong Fold2048Low = 0xDCB17AA4, Fold2048High = 0xB9E02B86;
    internal const ulong Fold512Low = 0x740EEF02, Fold512High = 0x9E4ADDF8;
    internal const ulong Fold384Low = 0x1C291D04, Fold384High = 0xDDC0152B;
    internal const ulong Fold256Low = 0x3DA6D0CB, Fold256High = 0xBA4FC28E;
    internal const ulong Fold128Low = 0xF20C0DFE, Fold128High = 0x493C7D27;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<ulong> Lanes(ulong low, ulong high) => Vector512.Create(low, high, low, high, low, high, low, high);

    /// <summary>CRC32C of <paramref name="data"/> (initial value and final xor 0xFFFFFFFF, as RFC 3720 specifies).</summary>
    public static uint Compute(ReadOnlySpan<byte> data) => ~Append(0xFFFFFFFFu, data);

    /// <summary>CRC32C of the bytes of <paramref name="data"/>.</summary>
    public static uint Compute<T>(ReadOnlySpan<T> data) where T : unmanaged => Compute(MemoryMarshal.AsBytes(data));

    /// <summary>Continues a running (non-finalized) CRC state.</summary>
    public static uint Append(uint state, ReadOnlySpan<byte> data) => Append(state, data, vector: true);

    /// <summary><see cref="Append(uint, ReadOnlySpan{byte})"/> without the AVX-512 path (for tests and benchmarks of the three streams).</summary>
    internal static uint AppendStreams(uint state, ReadOnlySpan<byte> data) => Append(state, data, vector: false);

    // Fully optimized from the first call: a loop entered a few times with long inputs would otherwise run as
    // unoptimized or on-stack-replaced code for a while (measured: the fused copy at a quarter of its speed).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static uint Append(uint state, ReadOnlySpan<byte> data, bool vector)
    {
        if (Sse42.X64.IsSupported)
        {
            ref byte p = ref MemoryMarshal.GetReference(data);
            nuint n = (nuint)data.Length;
            if (vector && IsVector512 && n >= VectorMin)
            {
                state = FoldBlocks(state, ref p, ref p, n, copy: false, out nuint folded);
                p = ref Unsafe.Add(ref p, folded);
                n -= folded;
            }
            else if (Pclmulqdq.IsSupported && n >= 3 * SmallChunk)
            {
                // Align the streams' loads to 8 bytes: a misaligned start would split every eighth load across cache lines.
                nuint head = (nuint)(-(nint)Unsafe.AsPointer(ref p)) & 7;
                state = AppendTail(state, ref p, head);
                p = ref Unsafe.Add(ref p, head);
                n -= head;
                state = AppendBlocks(state, ref p, n, out nuint done);
                p = ref Unsafe.Add(ref p, done);
                n -= done;
            }
            return AppendTail(state, ref p, n);
        }
        if (Crc32.Arm64.IsSupported) return AppendArm64(state, data);
        return AppendSoftware(state, data);
    }

    /// <summary>
    /// Copies <paramref name="source"/> to the start of <paramref name="destination"/> and returns
    /// <paramref name="crc"/> continued over <paramref name="source"/> (as <see cref="Append(uint, ReadOnlySpan{byte})"/>): one pass that loads
    /// each byte once, checksums it and stores it (64 bytes at a time with AVX-512, 8 per stream otherwise). Overlapping spans are handled as <see cref="Span{T}.CopyTo"/>
    /// does (the CRC is then computed first, over the source as it was).
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="destination"/> is shorter than <paramref name="source"/>.</exception>
    public static uint CopyAndAppend(ReadOnlySpan<byte> source, Span<byte> destination, uint crc) =>
        CopyAndAppend(source, destination, crc, vector: true);

    /// <summary><see cref="CopyAndAppend(ReadOnlySpan{byte}, Span{byte}, uint)"/> without the AVX-512 path (for tests and benchmarks).</summary>
    internal static uint CopyAndAppendStreams(ReadOnlySpan<byte> source, Span<byte> destination, uint crc) =>
        CopyAndAppend(source, destination, crc, vector: false);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static uint CopyAndAppend(ReadOnlySpan<byte> source, Span<byte> destination, uint crc, bool vector)
    {
        if (destination.Length < source.Length)
            throw new ArgumentException($"Destination of {destination.Length} bytes cannot hold the {source.Length}-byte source.", nameof(destination));
        if (!Sse42.X64.IsSupported || source.Overlaps(destination))
        {
            crc = Append(crc, source);
            source.CopyTo(destination);
            return crc;
        }
        ref byte s = ref MemoryMarshal.GetReference(source);
        ref byte d = ref MemoryMarshal.GetReference(destination);
        nuint n = (nuint)source.Length;
        if (vector && IsVector512 && n >= VectorMin)
        {
            crc = FoldBlocks(crc, ref s, ref d, n, copy: true, out nuint folded);
            s = ref Unsafe.Add(ref s, folded);
            d = ref Unsafe.Add(ref d, folded);
            n -= folded;
        }
        else if (Pclmulqdq.IsSupported)
        {
            while (n >= 3 * LargeChunk)
            {
                crc = CopyThreeStreams(crc, ref s, ref d, LargeChunk, LargeK1, LargeK2);
                s = ref Unsafe.Add(ref s, 3 * LargeChunk);
                d = ref Unsafe.Add(ref d, 3 * LargeChunk);
                n -= 3 * LargeChunk;
            }
            while (n >= 3 * MediumChunk)
            {
                crc = CopyThreeStreams(crc, ref s, ref d, MediumChunk, MediumK1, MediumK2);
                s = ref Unsafe.Add(ref s, 3 * MediumChunk);
                d = ref Unsafe.Add(ref d, 3 * MediumChunk);
                n -= 3 * MediumChunk;
            }
        }
        ulong c = crc;
        while (n >= 8)
        {
            ulong v = Unsafe.ReadUnaligned<ulong>(ref s);
            c = Sse42.X64.Crc32(c, v);
            Unsafe.WriteUnaligned(ref d, v);
            s = ref Unsafe.Add(ref s, 8);
            d = ref Unsafe.Add(ref d, 8);
            n -= 8;
        }
        crc = (uint)c;
        while (n > 0)
        {
            byte b = s;
            crc = Sse42.Crc32(crc, b);
            d = b;
            s = ref Unsafe.Add(ref s, 1);
            d = ref Unsafe.Add(ref d, 1);
            n--;
        }
        return crc;
    }

    /// <summary>
    /// Three-stream blocks over the first <paramref name="n"/> bytes at <paramref name="start"/>, largest chunk size
    /// first, until fewer than 3 * <see cref="SmallChunk"/> bytes are left; <paramref name="done"/> is the bytes covered.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static uint AppendBlocks(uint state, ref byte start, nuint n, out nuint done)
    {
        ref byte p = ref start;
        nuint total = n;
        while (n >= 3 * LargeChunk)
        {
            state = ThreeStreams(state, ref p, LargeChunk, LargeK1, LargeK2);
            p = ref Unsafe.Add(ref p, 3 * LargeChunk);
            n -= 3 * LargeChunk;
        }
        while (n >= 3 * MediumChunk)
        {
            state = ThreeStreams(state, ref p, MediumChunk, MediumK1, MediumK2);
            p = ref Unsafe.Add(ref p, 3 * MediumChunk);
            n -= 3 * MediumChunk;
        }
        while (n >= 3 * SmallChunk)
        {
            state = ThreeStreams(state, ref p, SmallChunk, SmallK1, SmallK2);
            p = ref Unsafe.Add(ref p, 3 * SmallChunk);
            n -= 3 * SmallChunk;
        }
        done = total - n;
        return state;
    }

    /// <summary>One hardware stream over what is left (any length).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static uint AppendTail(uint state, ref byte p, nuint n)
    {
        ulong s = state;
        while (n >= 8)
        {
            s = Sse42.X64.Crc32(s, Unsafe.ReadUnaligned<ulong>(ref p));
            p = ref Unsafe.Add(ref p, 8);
            n -= 8;
        }
        state = (uint)s;
        if ((n & 4) != 0)
        {
            state = Sse42.Crc32(state, Unsafe.ReadUnaligned<uint>(ref p));
            p = ref Unsafe.Add(ref p, 4);
        }
        if ((n & 2) != 0)
        {
            state = Sse42.Crc32(state, Unsafe.ReadUnaligned<ushort>(ref p));
            p = ref Unsafe.Add(ref p, 2);
        }
        if ((n & 1) != 0) state = Sse42.Crc32(state, p);
        return state;
    }

    /// <summary>
    /// CRC state after the 3 * <paramref name="chunk"/> bytes at <paramref name="p"/>: streams A, B and C run over the
    /// three chunks (B and C from zero), and linearity joins them: state(A||B||C) = A·x^(16·chunk) ^ B·x^(8·chunk) ^ C.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static uint ThreeStreams(uint state, ref byte p, nuint chunk, ulong k1, ulong k2)
    {
        ulong a = state, b = 0, c = 0;
        ref byte pb = ref Unsafe.Add(ref p, chunk);
        ref byte pc = ref Unsafe.Add(ref p, 2 * chunk);
        for (nuint i = 0; i < chunk; i += 64)
        {
            if (chunk >= MediumChunk)
            {
                // A hint, never a fault: it may point past the input, or (the input being movable managed memory) at
                // where the bytes were before a collection moved them; the loads below go through tracked references.
                Sse.Prefetch0((byte*)Unsafe.AsPointer(ref Unsafe.Add(ref p, i)) + PrefetchDistance);
                Sse.Prefetch0((byte*)Unsafe.AsPointer(ref Unsafe.Add(ref pb, i)) + PrefetchDistance);
                Sse.Prefetch0((byte*)Unsafe.AsPointer(ref Unsafe.Add(ref pc, i)) + PrefetchDistance);
            }
            for (nuint j = i; j < i + 64; j += 8)
            {
                a = Sse42.X64.Crc32(a, Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref p, j)));
                b = Sse42.X64.Crc32(b, Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref pb, j)));
                c = Sse42.X64.Crc32(c, Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref pc, j)));
            }
        }
        return ShiftTwo((uint)a, k2, (uint)b, k1) ^ (uint)c;
    }

    /// <summary><see cref="ThreeStreams"/> that also stores every loaded word at the same offset of <paramref name="d"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static uint CopyThreeStreams(uint state, ref byte s, ref byte d, nuint chunk, ulong k1, ulong k2)
    {
        ulong a = state, b = 0, c = 0;
        ref byte sb = ref Unsafe.Add(ref s, chunk);
        ref byte sc = ref Unsafe.Add(ref s, 2 * chunk);
        ref byte db = ref Unsafe.Add(ref d, chunk);
        ref byte dc = ref Unsafe.Add(ref d, 2 * chunk);
        for (nuint i = 0; i < chunk; i += 8)
        {
            ulong va = Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref s, i));
            ulong vb = Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref sb, i));
            ulong vc = Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref sc, i));
            a = Sse42.X64.Crc32(a, va);
            b = Sse42.X64.Crc32(b, vb);
            c = Sse42.X64.Crc32(c, vc);
            Unsafe.WriteUnaligned(ref Unsafe.Add(ref d, i), va);
            Unsafe.WriteUnaligned(ref Unsafe.Add(ref db, i), vb);
            Unsafe.WriteUnaligned(ref Unsafe.Add(ref dc, i), vc);
        }
        return ShiftTwo((uint)a, k2, (uint)b, k1) ^ (uint)c;
    }

    /// <summary>
    /// The AVX-512 path: four 64-byte accumulators (16 lanes of 128 bits) over the input; each round folds every lane
    /// 2048 bits forward onto the bytes 256 further on with carry-less multiplications (VPCLMULQDQ), so the work per
    /// byte is independent of the bytes before it: no dependency chain, and the loads, the multiplications and (with
    /// <paramref name="copy"/>) the stores of the same bytes to <paramref name="d"/> run at the width of the vector
    /// unit. The accumulators then fold into one 128-bit lane whose CRC, taken by two <c>crc32</c> instructions, is
    /// the CRC of everything folded (the state enters as an xor into the first four bytes). Leaves fewer than 64
    /// bytes; <paramref name="done"/> is the bytes covered. Needs <paramref name="n"/> of at least <see cref="VectorMin"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static uint FoldBlocks(uint state, ref byte s, ref byte d, nuint n, bool copy, out nuint done)
    {
        Vector512<ulong> v0 = Load(ref s, 0), v1 = Load(ref s, 64), v2 = Load(ref s, 128), v3 = Load(ref s, 192);
        if (copy)
        {
            Store(v0, ref d, 0);
            Store(v1, ref d, 64);
            Store(v2, ref d, 128);
            Store(v3, ref d, 192);
        }
        Vector512<ulong> x0 = v0 ^ Vector512.CreateScalar((ulong)state), x1 = v1, x2 = v2, x3 = v3;
        Vector512<ulong> k2048 = Lanes(Fold2048Low, Fold2048High);
        nuint at = 256;
        while (n - at >= 256)
        {
            v0 = Load(ref s, at);
            v1 = Load(ref s, at + 64);
            v2 = Load(ref s, at + 128);
            v3 = Load(ref s, at + 192);
            if (copy)
            {
                Store(v0, ref d, at);
                Store(v1, ref d, at + 64);
                Store(v2, ref d, at + 128);
                Store(v3, ref d, at + 192);
            }
            x0 = Fold(x0, k2048) ^ v0;
            x1 = Fold(x1, k2048) ^ v1;
            x2 = Fold(x2, k2048) ^ v2;
            x3 = Fold(x3, k2048) ^ v3;
            at += 256;
        }
        Vector512<ulong> k512 = Lanes(Fold512Low, Fold512High);
        x1 ^= Fold(x0, k512);
        x2 ^= Fold(x1, k512);
        x3 ^= Fold(x2, k512);
        while (n - at >= 64)
        {
            v0 = Load(ref s, at);
            if (copy) Store(v0, ref d, at);
            x3 = Fold(x3, k512) ^ v0;
            at += 64;
        }
        Vector256<ulong> low = x3.GetLower(), high = x3.GetUpper();
        Vector128<ulong> lane = Fold(low.GetLower(), Vector128.Create(Fold384Low, Fold384High))
            ^ Fold(low.GetUpper(), Vector128.Create(Fold256Low, Fold256High))
            ^ Fold(high.GetLower(), Vector128.Create(Fold128Low, Fold128High))
            ^ high.GetUpper();
        done = at;
        return (uint)Sse42.X64.Crc32(Sse42.X64.Crc32(0UL, lane.ToScalar()), lane.GetElement(1));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<ulong> Load(ref byte p, nuint offset) => Vector512.LoadUnsafe(ref Unsafe.As<byte, ulong>(ref Unsafe.Add(ref p, offset)));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store(Vector512<ulong> v, ref byte p, nuint offset) => v.StoreUnsafe(ref Unsafe.As<byte, ulong>(ref Unsafe.Add(ref p, offset)));

    /// <summary>
    /// A 128-bit lane (per lane of the vector) moved N bits forward, reduced below 128 bits: with L = A·x^64 + B
    /// (A the low quadword, B the high one, bit-reflected), L·x^N ≡ A·(x^(N+64) mod P) + B·(x^N mod P), and a
    /// carry-less multiply of reflected values carries an extra factor x^33 when the constant is 32 bits wide, which
    /// the constants (x^(N+31), x^(N-33)) take out.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<ulong> Fold(Vector512<ulong> x, Vector512<ulong> k) =>
        Pclmulqdq.V512.CarrylessMultiply(x, k, 0x00) ^ Pclmulqdq.V512.CarrylessMultiply(x, k, 0x11);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<ulong> Fold(Vector128<ulong> x, Vector128<ulong> k) =>
        Pclmulqdq.CarrylessMultiply(x, k, 0x00) ^ Pclmulqdq.CarrylessMultiply(x, k, 0x11);

    /// <summary>
    /// x·ka·a ^ x·kb·b as a 64-bit reflected product (carry-less multiply of bit-reflected values yields the product
    /// times x), reduced by crc32(0, ·), which multiplies by x^32 mod P: with k = x^(8n - 33) the result is the
    /// state advanced over n zero bytes.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static uint ShiftTwo(uint a, ulong ka, uint b, ulong kb)
    {
        Vector128<ulong> pa = Pclmulqdq.CarrylessMultiply(Vector128.CreateScalar((ulong)a), Vector128.CreateScalar(ka), 0x00);
        Vector128<ulong> pb = Pclmulqdq.CarrylessMultiply(Vector128.CreateScalar((ulong)b), Vector128.CreateScalar(kb), 0x00);
        return (uint)Sse42.X64.Crc32(0UL, (pa ^ pb).ToScalar());
    }

    /// <summary>
    /// <paramref name="state"/> advanced over <paramref name="zeroBytes"/> (at least 5) zero bytes by carry-less
    /// multiplication, the joining step of the three streams (for tests; without PCLMULQDQ, by feeding the zeros).
    /// </summary>
    internal static uint ShiftByMultiply(uint state, int zeroBytes) =>
        IsThreeStream ? ShiftTwo(state, XPowMod(8 * zeroBytes - 33), 0, 0) : Append(state, new byte[zeroBytes]);

    private static uint AppendArm64(uint state, ReadOnlySpan<byte> data)
    {
        ref byte p = ref MemoryMarshal.GetReference(data);
        nuint n = (nuint)data.Length;
        while (n >= 8)
        {
            state = Crc32.Arm64.ComputeCrc32C(state, Unsafe.ReadUnaligned<ulong>(ref p));
            p = ref Unsafe.Add(ref p, 8);
            n -= 8;
        }
        while (n > 0)
        {
            state = Crc32.ComputeCrc32C(state, p);
            p = ref Unsafe.Add(ref p, 1);
            n--;
        }
        return state;
    }

    /// <summary>The portable path: slicing-by-8 over whole words, one table step per byte for the rest.</summary>
    internal static uint AppendSoftware(uint state, ReadOnlySpan<byte> data)
    {
        uint[] t = Table;
        while (data.Length >= 8)
        {
            uint lo = BinaryPrimitives.ReadUInt32LittleEndian(data) ^ state;
            uint hi = BinaryPrimitives.ReadUInt32LittleEndian(data.Slice(4));
            state = t[7 * 256 + (lo & 0xFF)] ^ t[6 * 256 + ((lo >> 8) & 0xFF)] ^ t[5 * 256 + ((lo >> 16) & 0xFF)] ^ t[4 * 256 + (lo >> 24)]
                ^ t[3 * 256 + (hi & 0xFF)] ^ t[2 * 256 + ((hi >> 8) & 0xFF)] ^ t[256 + ((hi >> 16) & 0xFF)] ^ t[hi >> 24];
            data = data.Slice(8);
        }
        foreach (byte b in data) state = t[(state ^ b) & 0xFF] ^ (state >> 8);
        return state;
    }

    /// <summary>The single-chain hardware path (one <c>crc32</c> per 8 bytes, each waiting for the last): the baseline the benchmarks compare against.</summary>
    internal static uint AppendOneStream(uint state, ReadOnlySpan<byte> data)
    {
        if (!Sse42.X64.IsSupported) return Append(state, data);
        return AppendTail(state, ref MemoryMarshal.GetReference(data), (nuint)data.Length);
    }
}
