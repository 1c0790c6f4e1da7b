using System.Runtime.InteropServices;
using FsCheck.Xunit;
using PinnedDma.Internal;
using Xunit;

namespace PinnedDma.Tests.Internal;

/// <summary>
/// CRC32C against a bit-at-a-time restatement of the definition (reflected polynomial 0x82F63B78): every path
/// (AVX-512 folding, three streams at each chunk size, one stream, the slicing table, the fused copies) over random
/// lengths, start offsets, initial states and split points. Paths this machine lacks fall back to one it has, so each
/// check still holds (and checks that path).
/// </summary>
public sealed partial class Crc32CTests
{
    private const int MaxLength = 200 * 1024;

    /// <summary>The definition: one bit at a time, no tables, no instructions.</summary>
    private static uint Reference(uint state, ReadOnlySpan<byte> data)
    {
        foreach (byte b in data)
        {
            state ^= b;
            for (int i = 0; i < 8; i++) state = (state & 1) != 0 ? (state >> 1) ^ 0x82F63B78u : state >> 1;
        }
        return state;
    }

    /// <summary>Random bytes with 64 spare bytes in front, so that any start offset 0..63 has a whole input after it.</summary>
    private static byte[] RandomBytes(Random rng, int length)
    {
        var data = new byte[length + 64];
        rng.NextBytes(data);
        return data;
    }

    /// <summary>Lengths spread over 0..200 KiB, half of them below 4 KiB where the chunk sizes change most often.</summary>
    private static int RandomLength(Random rng) => rng.Next(2) == 0 ? rng.Next(4096) : rng.Next(MaxLength + 1);

    [Fact]
    public void Known_answer_of_the_standard_check_string()
    {
        Assert.Equal(0xE3069283u, Crc32C.Compute("123456789"u8));
        Assert.Equal(0xE3069283u, ~Reference(0xFFFFFFFF, "123456789"u8));
    }

    [Property(MaxTest = 150)]
    public void Append_equals_the_bitwise_definition(int seed)
    {
        var rng = new Random(seed);
        int length = RandomLength(rng);
        int offset = rng.Next(64);
        uint state = (uint)rng.NextInt64(0, 1L << 32);
        var data = RandomBytes(rng, length).AsSpan(offset, length);
        uint expected = Reference(state, data);
        Assert.Equal(expected, Crc32C.Append(state, data));
        Assert.Equal(expected, Crc32C.AppendStreams(state, data));
        Assert.Equal(expected, Crc32C.AppendSoftware(state, data));
        Assert.Equal(expected, Crc32C.AppendOneStream(state, data));
    }

    [Property(MaxTest = 100)]
    public void Append_in_pieces_equals_one_append(int seed)
    {
        var rng = new Random(seed);
        int length = RandomLength(rng);
        int offset = rng.Next(64);
        uint state = (uint)rng.NextInt64(0, 1L << 32);
        var data = RandomBytes(rng, length).AsSpan(offset, length);
        uint whole = Crc32C.Append(state, data);
        Assert.Equal(Reference(state, data), whole);
        int[] cuts = Enumerable.Range(0, rng.Next(1, 6)).Select(_ => rng.Next(length + 1)).Order().ToArray();
        uint pieces = state;
        int at = 0;
        foreach (int cut in cuts.Append(length))
        {
            pieces = cut % 2 == 0 ? Crc32C.Append(pieces, data[at..cut]) : Crc32C.AppendStreams(pieces, data[at..cut]);
            at = cut;
        }
        Assert.Equal(whole, pieces);
    }

    /// <summary>Lengths at and around every switch between chunk sizes and to the one-stream tail.</summary>
    [Theory]
    [MemberData(nameof(BoundaryLengths))]
    public void Append_at_chunk_boundaries_equals_the_definition(int length)
    {
        var rng = new Random(length);
        foreach (int offset in new[] { 0, 1, 3, 4, 7 })
        {
            var data = RandomBytes(rng, length).AsSpan(offset, length);
            foreach (uint state in new[] { 0u, 0xFFFFFFFFu, (uint)rng.Next() })
            {
                uint expected = Reference(state, data);
                Assert.Equal(expected, Crc32C.Append(state, data));
                Assert.Equal(expected, Crc32C.AppendStreams(state, data));
                Assert.Equal(expected, Crc32C.AppendSoftware(state, data));
                var copy = new byte[length];
                Assert.Equal(expected, Crc32C.CopyAndAppend(data, copy, state));
                Assert.True(data.SequenceEqual(copy));
                copy.AsSpan().Clear();
                Assert.Equal(expected, Crc32C.CopyAndAppendStreams(data, copy, state));
                Assert.True(data.SequenceEqual(copy));
            }
        }
    }

    public static TheoryData<int> BoundaryLengths() => new(BoundaryLengthList());

    private static int[] BoundaryLengthList()
    {
        var lengths = new List<int>();
        foreach (int block in new[] { 3 * Crc32C.SmallChunk, 3 * Crc32C.MediumChunk, 3 * Crc32C.LargeChunk, Crc32C.VectorMin, Crc32C.VectorMin + 64 })
            foreach (int k in new[] { 1, 2 })
                for (int d = -9; d <= 9; d++) lengths.Add(k * block + d);
        lengths.AddRange([0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17]);
        return lengths.ToArray();
    }

    /// <summary>The constants the code carries as literals are the powers of x they stand for.</summary>
    [Fact]
    public void Carried_constants_are_the_powers_of_x_they_stand_for()
    {
        Assert.Equal(0x80000000u, Crc32C.XPowMod(0)); // x^0, bit-reflected
        Assert.Equal(0x82F63B78u, Crc32C.XPowMod(32)); // x^32 mod P: the reflected polynomial
        foreach (var (chunk, k1, k2) in new[] { (Crc32C.LargeChunk, Crc32C.LargeK1, Crc32C.LargeK2), (Crc32C.MediumChunk, Crc32C.MediumK1, Crc32C.MediumK2), (Crc32C.SmallChunk, Crc32C.SmallK1, Crc32C.SmallK2) })
        {
            Assert.Equal(Crc32C.XPowMod(8 * chunk - 33), k1);
            Assert.Equal(Crc32C.XPowMod(16 * chunk - 33), k2);
        }
        foreach (var (bits, low, high) in new[] { (2048, Crc32C.Fold2048Low, Crc32C.Fold2048High), (512, Crc32C.Fold512Low, Crc32C.Fold512High),
            (384, Crc32C.Fold384Low, Crc32C.Fold384High), (256, Crc32C.Fold256Low, Crc32C.Fold256High), (128, Crc32C.Fold128Low, Crc32C.Fold128High) })
        {
            Assert.Equal(Crc32C.XPowMod(bits + 31), low);
            Assert.Equal(Crc32C.XPowMod(bits - 33), high);
        }
    }

    /// <summary>The joining step alone: a state advanced over n zero bytes by multiplication equals feeding the zeros.</summary>
    [Property(MaxTest = 100)]
    public void Shift_by_multiplication_equals_appending_zeros(uint state, int seed)
    {
        int n = 5 + new Random(seed).Next(20_000);
        Assert.Equal(Reference(state, new byte[n]), Crc32C.ShiftByMultiply(state, n));
    }

    [Property(MaxTest = 150)]
    public void CopyAndAppend_equals_CopyTo_then_Append(int seed)
    {
        var rng = new Random(seed);
        int length = RandomLength(rng);
        int sourceOffset = rng.Next(64);
        int destinationOffset = rng.Next(64);
        int slack = rng.Next(16);
        uint state = (uint)rng.NextInt64(0, 1L << 32);
        var source = RandomBytes(rng, length);
        byte[] sourceBefore = source.ToArray();
        var destination = new byte[destinationOffset + length + slack + 64];
        rng.NextBytes(destination);
        byte[] expected = destination.ToArray();
        source.AsSpan(sourceOffset, length).CopyTo(expected.AsSpan(destinationOffset));

        byte[] untouched = destination.ToArray();
        foreach (bool vector in new[] { true, false })
        {
            untouched.CopyTo(destination, 0);
            var from = source.AsSpan(sourceOffset, length);
            var to = destination.AsSpan(destinationOffset, length + slack);
            uint crc = vector ? Crc32C.CopyAndAppend(from, to, state) : Crc32C.CopyAndAppendStreams(from, to, state);

            Assert.Equal(Crc32C.Append(state, sourceBefore.AsSpan(sourceOffset, length)), crc);
            Assert.Equal(Reference(state, sourceBefore.AsSpan(sourceOffset, length)), crc);
            Assert.Equal(expected, destination); // the payload in place, every byte around it untouched
            Assert.Equal(sourceBefore, source);
        }
    }

    /// <summary>Overlapping spans (either direction) copy as memmove does, and the CRC is the source's as it was.</summary>
    [Property(MaxTest = 100)]
    public void CopyAndAppend_with_overlapping_spans_moves_like_CopyTo(int seed)
    {
        var rng = new Random(seed);
        int length = rng.Next(1, 40_000);
        int sourceOffset = rng.Next(0, 20_000);
        int destinationOffset = Math.Max(0, sourceOffset + rng.Next(-length + 1, length));
        var buffer = new byte[Math.Max(sourceOffset, destinationOffset) + length];
        rng.NextBytes(buffer);
        byte[] expected = buffer.ToArray();
        expected.AsSpan(sourceOffset, length).CopyTo(expected.AsSpan(destinationOffset));
        uint expectedCrc = Reference(7, buffer.AsSpan(sourceOffset, length));

        byte[] before = buffer.ToArray();
        uint crc = Crc32C.CopyAndAppend(buffer.AsSpan(sourceOffset, length), buffer.AsSpan(destinationOffset, length), 7);
        Assert.Equal(expectedCrc, crc);
        Assert.Equal(expected, buffer);

        before.CopyTo(buffer, 0);
        crc = Crc32C.CopyAndAppendStreams(buffer.AsSpan(sourceOffset, length), buffer.AsSpan(destinationOffset, length), 7);
        Assert.Equal(expectedCrc, crc);
        Assert.Equal(expected, buffer);
    }

    [Fact]
    public void CopyAndAppend_into_a_shorter_destination_throws_and_writes_nothing()
    {
        var source = new byte[100];
        new Random(1).NextBytes(source);
        var destination = new byte[99];
        var ex = Assert.Throws<ArgumentException>(() => Crc32C.CopyAndAppend(source, destination, 0));
        Assert.Equal("destination", ex.ParamName);
        Assert.All(destination, b => Assert.Equal(0, b));
    }

    /// <summary>
    /// Inputs that end where readable memory ends (an inaccessible page follows) or start where it starts: no path reads
    /// a byte outside its input (a stray read here is a crash, not a wrong answer). The streams' prefetches do reach
    /// past the end; a prefetch never faults.
    /// </summary>
    [Fact]
    public unsafe void No_path_reads_outside_its_input()
    {
        const int Page = 4096, Pages = 32;
        nint map = Native.Mmap(0, (nuint)((Pages + 2) * Page), ProtRead | ProtWrite, MapPrivate | MapAnonymous, -1, 0);
        Assert.NotEqual(-1, map);
        try
        {
            Assert.Equal(0, Native.Mprotect(map, Page, ProtNone));
            Assert.Equal(0, Native.Mprotect(map + (Pages + 1) * Page, Page, ProtNone));
            var readable = new Span<byte>((byte*)map + Page, Pages * Page);
            new Random(5).NextBytes(readable);
            var destination = new byte[readable.Length];
            var rng = new Random(6);
            int total = Pages * Page;
            var lengths = Enumerable.Range(0, 200).Concat(BoundaryLengthList()).Concat(Enumerable.Range(0, 100).Select(_ => rng.Next(total + 1)));
            foreach (int length in lengths)
            {
                for (int side = 0; side < 2; side++)
                {
                    var input = side == 0 ? readable[^length..] : readable[..length];
                    uint expected = Reference(0x1234, input);
                    Assert.Equal(expected, Crc32C.Append(0x1234, input));
                    Assert.Equal(expected, Crc32C.AppendStreams(0x1234, input));
                    Assert.Equal(expected, Crc32C.AppendSoftware(0x1234, input));
                    Assert.Equal(expected, Crc32C.AppendOneStream(0x1234, input));
                    Assert.Equal(expected, Crc32C.CopyAndAppend(input, destination, 0x1234));
                    Assert.Equal(expected, Crc32C.CopyAndAppendStreams(input, destination, 0x1234));
                }
            }
        }
        finally
        {
            Native.Munmap(map, (nuint)((Pages + 2) * Page));
        }
    }

    private const int ProtNone = 0, ProtRead = 1, ProtWrite = 2, MapPrivate = 0x02, MapAnonymous = 0x20;

    private static partial class Native
    {
        [LibraryImport("libc", EntryPoint = "mmap", SetLastError = true)]
        public static partial nint Mmap(nint address, nuint length, int protection, int flags, int fd, long offset);

        [LibraryImport("libc", EntryPoint = "mprotect", SetLastError = true)]
        public static partial int Mprotect(nint address, nuint length, int protection);

        [LibraryImport("libc", EntryPoint = "munmap", SetLastError = true)]
        public static partial int Munmap(nint address, nuint length);
    }
}
