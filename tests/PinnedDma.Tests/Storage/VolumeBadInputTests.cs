using System.Buffers.Binary;
using System.Text;
using FsCheck;
using FsCheck.Fluent;
using PinnedDma.Storage;
using Xunit;

using static PinnedDma.Tests.Storage.VolumeTestData;

namespace PinnedDma.Tests.Storage;

/// <summary>
/// Bad arguments, full volumes and damaged volume files: every refusal is the documented error, leaves the volume as
/// it was, and a damaged file either opens to a consistent volume or is reported as corrupt, never anything else.
/// </summary>
public sealed class VolumeBadInputTests : IDisposable
{
    private const int Bs = 4096;
    private readonly string _dir = Directory.CreateTempSubdirectory("pdma-bad-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>A device geometry no device can have is refused before the file is touched: an existing file keeps its bytes.</summary>
    [Theory]
    [InlineData(100, 10L)]
    [InlineData(4096, 0L)]
    [InlineData(4096, -5L)]
    [InlineData(3000, 16L)]
    public void FileBlockDevice_with_a_bad_geometry_leaves_an_existing_file_untouched(int blockSize, long blockCount)
    {
        string path = Path.Combine(_dir, $"existing-{blockSize}-{blockCount}");
        var bytes = new byte[1 << 20];
        new Random(7).NextBytes(bytes);
        File.WriteAllBytes(path, bytes);
        Assert.Throws<ArgumentOutOfRangeException>(() => FileBlockDevice.Open(path, blockSize, blockCount, create: true).Dispose());
        Assert.Equal(bytes, File.ReadAllBytes(path));
        string fresh = Path.Combine(_dir, $"fresh-{blockSize}-{blockCount}");
        Assert.Throws<ArgumentOutOfRangeException>(() => FileBlockDevice.Open(fresh, blockSize, blockCount, create: true).Dispose());
        Assert.False(File.Exists(fresh), "a refused geometry created a file");
    }

    private string PathOf(string name) => Path.Combine(_dir, name);

    private static VolumeOptions Options(long blockCount = 512, int maxFiles = 8) =>
        new() { BlockSize = Bs, BlockCount = blockCount, MaxFiles = maxFiles, TryMapSync = false };

    private static void AssertClean(Volume v)
    {
        var r = v.Fsck();
        Assert.True(r.IsClean, r.ToString());
    }

    /// <summary>Everything observable about the files: names, contents, extent maps; and the free block count.</summary>
    private static string State(Volume v)
    {
        var sb = new StringBuilder();
        foreach (var name in v.FileNames)
        {
            var f = v.OpenFile(name);
            sb.Append(name).Append(' ').Append(f.Length).Append(' ').Append(Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(ReadAll(f))));
            foreach (var e in f.GetExtents()) sb.Append(' ').Append(e);
            sb.AppendLine();
        }
        sb.Append("free ").Append(v.FreeBlocks);
        return sb.ToString();
    }

    private static void AssertError(PinnedDmaError error, Action act)
    {
        var ex = Assert.Throws<PinnedDmaException>(act);
        Assert.Equal(error, ex.Error);
    }

    /// <summary>Asserts that <paramref name="act"/> fails with <paramref name="error"/> and changes nothing.</summary>
    private static void AssertRefused(Volume v, PinnedDmaError error, Action act)
    {
        string before = State(v);
        AssertError(error, act);
        Assert.Equal(before, State(v));
        AssertClean(v);
    }

    private static void AssertOutOfRange(Volume v, Action act)
    {
        string before = State(v);
        Assert.Throws<ArgumentOutOfRangeException>(act);
        Assert.Equal(before, State(v));
    }

    // ---------------------------------------------------------------- arguments

    [Fact]
    public void NegativeOffsetsAndLengths_ThrowArgumentOutOfRange()
    {
        using var v = Volume.Create(PathOf("v.img"), Options());
        var a = v.CreateFile("a");
        a.Write(0, Bytes(1, 3 * Bs + 10));
        var b = v.CreateFile("b");
        b.Write(0, Bytes(2, 2 * Bs));
        v.Commit();
        var buf = new byte[16];
        AssertOutOfRange(v, () => a.Read(-1, buf));
        AssertOutOfRange(v, () => a.Write(-1, buf));
        AssertOutOfRange(v, () => a.Write(long.MaxValue, buf)); // offset + length overflows
        AssertOutOfRange(v, () => a.Truncate(-1));
        AssertOutOfRange(v, () => a.PunchHole(-1, 10));
        AssertOutOfRange(v, () => a.PunchHole(0, -10));
        AssertOutOfRange(v, () => a.ZeroRange(-Bs, Bs));
        AssertOutOfRange(v, () => a.ZeroRange(0, -1, keepSize: true));
        AssertOutOfRange(v, () => a.Allocate(-1, 1));
        AssertOutOfRange(v, () => a.Allocate(0, -1));
        AssertOutOfRange(v, () => a.CollapseRange(-Bs, Bs));
        AssertOutOfRange(v, () => a.CollapseRange(0, -Bs));
        AssertOutOfRange(v, () => a.InsertRange(-Bs, Bs));
        AssertOutOfRange(v, () => a.InsertRange(0, -Bs));
        AssertOutOfRange(v, () => b.CloneRangeFrom(a, -Bs, 0, Bs));
        AssertOutOfRange(v, () => b.CloneRangeFrom(a, 0, -Bs, Bs));
        AssertOutOfRange(v, () => b.CloneRangeFrom(a, 0, 0, -Bs));
        AssertOutOfRange(v, () => b.DedupeRangeFrom(a, -Bs, 0, Bs));
        AssertOutOfRange(v, () => b.DedupeRangeFrom(a, 0, -Bs, Bs));
        AssertOutOfRange(v, () => b.DedupeRangeFrom(a, 0, 0, -Bs));
        AssertOutOfRange(v, () => a.UnshareRange(-1, 1));
        AssertOutOfRange(v, () => a.UnshareRange(0, -1));
        AssertOutOfRange(v, () => a.GetExtents(-1, 10));
        AssertOutOfRange(v, () => a.GetExtents(0, -10));
        AssertOutOfRange(v, () => v.Compact(0));
        AssertClean(v);
    }

    [Fact]
    public void RangesPastTheLargestFileSize_AreInvalid()
    {
        using var v = Volume.Create(PathOf("v.img"), Options());
        var a = v.CreateFile("a");
        a.Write(0, Bytes(1, 100));
        v.Commit();
        AssertRefused(v, PinnedDmaError.InvalidArgument, () => a.Truncate(long.MaxValue / 2));
        AssertRefused(v, PinnedDmaError.InvalidArgument, () => a.Write(long.MaxValue / 2, new byte[1]));
        AssertRefused(v, PinnedDmaError.InvalidArgument, () => a.Allocate(long.MaxValue / 2, Bs));
    }

    [Fact]
    public void UnalignedCollapseAndInsert_AreInvalid()
    {
        using var v = Volume.Create(PathOf("v.img"), Options());
        var a = v.CreateFile("a");
        a.Write(0, Bytes(1, 6 * Bs + 100));
        v.Commit();
        AssertRefused(v, PinnedDmaError.InvalidArgument, () => a.CollapseRange(1, Bs));
        AssertRefused(v, PinnedDmaError.InvalidArgument, () => a.CollapseRange(Bs, Bs - 1));
        AssertRefused(v, PinnedDmaError.InvalidArgument, () => a.CollapseRange(Bs, Bs + 512));
        AssertRefused(v, PinnedDmaError.InvalidArgument, () => a.CollapseRange(Bs, 0));
        AssertRefused(v, PinnedDmaError.InvalidArgument, () => a.InsertRange(Bs / 2, Bs));
        AssertRefused(v, PinnedDmaError.InvalidArgument, () => a.InsertRange(Bs, 100));
        AssertRefused(v, PinnedDmaError.InvalidArgument, () => a.InsertRange(Bs, 0));
    }

    [Fact]
    public void CollapseReachingEof_AndInsertAtEof_AreInvalid()
    {
        using var v = Volume.Create(PathOf("v.img"), Options());
        var aligned = v.CreateFile("aligned");
        var data = Bytes(1, 4 * Bs);
        aligned.Write(0, data);
        var ragged = v.CreateFile("ragged");
        var rdata = Bytes(2, 4 * Bs + 100);
        ragged.Write(0, rdata);
        v.Commit();

        AssertRefused(v, PinnedDmaError.InvalidArgument, () => aligned.CollapseRange(0, 4 * Bs));     // the whole file
        AssertRefused(v, PinnedDmaError.InvalidArgument, () => aligned.CollapseRange(3 * Bs, Bs));    // ends exactly at EOF
        AssertRefused(v, PinnedDmaError.InvalidArgument, () => aligned.CollapseRange(2 * Bs, 4 * Bs)); // past EOF
        AssertRefused(v, PinnedDmaError.InvalidArgument, () => aligned.CollapseRange(8 * Bs, Bs));    // wholly past EOF
        AssertRefused(v, PinnedDmaError.InvalidArgument, () => ragged.CollapseRange(0, 5 * Bs));      // covers the partial tail
        AssertRefused(v, PinnedDmaError.InvalidArgument, () => aligned.InsertRange(4 * Bs, Bs));      // offset at EOF
        AssertRefused(v, PinnedDmaError.InvalidArgument, () => ragged.InsertRange(5 * Bs, Bs));       // offset past EOF

        // The largest collapse that ends before EOF works: it leaves the partial tail.
        ragged.CollapseRange(0, 4 * Bs);
        Assert.Equal(rdata.AsSpan(4 * Bs).ToArray(), ReadAll(ragged));
        // Insert at the block holding EOF works.
        ragged.InsertRange(0, Bs);
        Assert.Equal(new byte[Bs].Concat(rdata.Skip(4 * Bs)).ToArray(), ReadAll(ragged));
        AssertClean(v);
    }

    [Fact]
    public void CloneAndDedupe_RefuseOverlappingSameFileRanges()
    {
        using var v = Volume.Create(PathOf("v.img"), Options());
        var a = v.CreateFile("a");
        var block = Bytes(7, Bs);
        for (int i = 0; i < 8; i++) a.Write((long)i * Bs, block); // every block equal: dedupe would compare equal
        a.Write(8L * Bs, block.AsSpan(0, 100));
        v.Commit();
        AssertRefused(v, PinnedDmaError.InvalidArgument, () => a.CloneRangeFrom(a, 0, Bs, 2 * Bs));
        AssertRefused(v, PinnedDmaError.InvalidArgument, () => a.CloneRangeFrom(a, 2 * Bs, 0, 4 * Bs));
        AssertRefused(v, PinnedDmaError.InvalidArgument, () => a.CloneRangeFrom(a, 0, 0, Bs));
        // The EOF tail [7 blocks, EOF) cloned one block further overlaps itself.
        AssertRefused(v, PinnedDmaError.InvalidArgument, () => a.CloneRangeFrom(a, 7L * Bs, 8L * Bs, Bs + 100));
        AssertRefused(v, PinnedDmaError.InvalidArgument, () => a.DedupeRangeFrom(a, 0, Bs, 2 * Bs));
        // Rounded down to two blocks, [0, 2) and [1, 3) still overlap.
        AssertRefused(v, PinnedDmaError.InvalidArgument, () => a.DedupeRangeFrom(a, 0, Bs, 2 * Bs + 100));

        // Adjacent ranges are fine.
        a.CloneRangeFrom(a, 0, 2 * Bs, 2 * Bs);
        Assert.Equal(2 * Bs, a.DedupeRangeFrom(a, 4 * Bs, 6 * Bs, 2 * Bs));
        Assert.Equal(8 * Bs + 100, a.Length);
        var all = ReadAll(a);
        for (int i = 0; i < 8; i++) Assert.Equal(block, all.AsSpan(i * Bs, Bs).ToArray());
        AssertClean(v);
    }

    [Fact]
    public void CloneRangeChecks_FollowTheRemapRules()
    {
        using var v = Volume.Create(PathOf("v.img"), Options());
        var a = v.CreateFile("a");
        a.Write(0, Bytes(1, 3 * Bs + 100));
        var b = v.CreateFile("b");
        b.Write(0, Bytes(2, 5 * Bs));
        v.Commit();
        AssertRefused(v, PinnedDmaError.InvalidArgument, () => b.CloneRangeFrom(a, 1, 0, Bs));           // unaligned source
        AssertRefused(v, PinnedDmaError.InvalidArgument, () => b.CloneRangeFrom(a, 0, 100, Bs));         // unaligned destination
        AssertRefused(v, PinnedDmaError.InvalidArgument, () => b.CloneRangeFrom(a, 0, 0, Bs + 1));       // partial block mid-source
        AssertRefused(v, PinnedDmaError.InvalidArgument, () => b.CloneRangeFrom(a, 0, 0, 4 * Bs));       // past the source's EOF
        AssertRefused(v, PinnedDmaError.InvalidArgument, () => b.CloneRangeFrom(a, 3 * Bs, 0, 100));     // EOF tail landing mid-destination
        AssertRefused(v, PinnedDmaError.InvalidArgument, () => b.DedupeRangeFrom(a, 0, 4 * Bs, 2 * Bs)); // past the destination's EOF
        AssertRefused(v, PinnedDmaError.RangesDiffer, () => b.DedupeRangeFrom(a, 0, 0, 2 * Bs));
        using var other = Volume.CreateInMemory(new VolumeOptions { BlockSize = Bs, BlockCount = 512, MaxFiles = 4 });
        var foreign = other.CreateFile("x");
        foreign.Write(0, new byte[Bs]);
        Assert.Throws<ArgumentException>(() => b.CloneRangeFrom(foreign, 0, 0, Bs));
        Assert.Throws<ArgumentException>(() => b.DedupeRangeFrom(foreign, 0, 0, Bs));

        // The EOF tail may land at or past the destination's EOF.
        b.CloneRangeFrom(a, 3 * Bs, 5 * Bs, 100);
        Assert.Equal(5 * Bs + 100, b.Length);
        Assert.Equal(ReadAll(a).AsSpan(3 * Bs).ToArray(), ReadAll(b).AsSpan(5 * Bs).ToArray());
        b.CloneRangeFrom(a, 3 * Bs, 5 * Bs, 100); // ending exactly at the destination's EOF
        Assert.Equal(5 * Bs + 100, b.Length);
        AssertClean(v);
    }

    [Fact]
    public void FileNames_AreValidated()
    {
        string path = PathOf("v.img");
        string longest = new string('n', 255);
        using (var v = Volume.Create(path, Options()))
        {
            var a = v.CreateFile("a");
            a.Write(0, Bytes(3, 5000));
            v.Commit();
            string before = State(v);
            Assert.Throws<ArgumentException>(() => v.CreateFile(""));
            Assert.Throws<ArgumentException>(() => v.CreateFile(new string('n', 256)));
            Assert.Throws<ArgumentException>(() => v.CreateFile(string.Concat(Enumerable.Repeat("é", 128)))); // 256 UTF-8 bytes
            Assert.Throws<ArgumentException>(() => v.CreateFile("a\0b"));
            Assert.Throws<ArgumentNullException>(() => v.CreateFile(null!));
            AssertError(PinnedDmaError.AlreadyExists, () => v.CreateFile("a"));
            Assert.Equal(before, State(v));
            v.CreateFile(longest).Write(0, Bytes(4, 10));
            v.CreateFile(string.Concat(Enumerable.Repeat("é", 127)) + "x").Write(0, Bytes(5, 10)); // 255 bytes
            AssertError(PinnedDmaError.AlreadyExists, () => v.CreateFile(longest));
            AssertClean(v);
        }
        using (var v = Volume.Open(path))
        {
            Assert.Equal(3, v.FileNames.Count);
            Assert.Equal(Bytes(4, 10), ReadAll(v.OpenFile(longest)));
            Assert.Equal(Bytes(3, 5000), ReadAll(v.OpenFile("a")));
            AssertClean(v);
        }
    }

    [Fact]
    public void MissingFilesAndVolumes_AreNotFound()
    {
        string path = PathOf("v.img");
        AssertError(PinnedDmaError.NotFound, () => Volume.Open(PathOf("missing.img")));
        AssertError(PinnedDmaError.NotFound, () => Volume.Check(PathOf("missing.img")));
        using var v = Volume.Create(path, Options());
        AssertError(PinnedDmaError.NotFound, () => v.OpenFile("nope"));
        AssertError(PinnedDmaError.NotFound, () => v.DeleteFile("nope"));
        Assert.False(v.FileExists("nope"));
        var a = v.CreateFile("a");
        a.Write(0, Bytes(1, 3 * Bs));
        var b = v.CreateFile("b");
        b.CloneRangeFrom(a, 0, 0, 3 * Bs);
        v.DeleteFile("a");
        Assert.False(a.Exists);
        AssertError(PinnedDmaError.NotFound, () => v.OpenFile("a"));
        AssertError(PinnedDmaError.NotFound, () => a.Read(0, new byte[1]));
        AssertError(PinnedDmaError.NotFound, () => a.Write(0, new byte[1]));
        AssertError(PinnedDmaError.NotFound, () => a.Truncate(0));
        AssertError(PinnedDmaError.NotFound, () => b.CloneRangeFrom(a, 0, 0, Bs));
        AssertError(PinnedDmaError.NotFound, () => a.CloneRangeFrom(b, 0, 0, Bs));
        Assert.Equal(Bytes(1, 3 * Bs), ReadAll(b)); // the clone outlives its source
        AssertClean(v);
    }

    public static TheoryData<int, long, int, int> BadGeometries => new()
    {
        { 1000, 512, 8, 1 },     // block size not a power of two
        { 256, 512, 8, 1 },      // block size too small
        { 131072, 64, 8, 1 },    // block size too large
        { 4096, 0, 8, 1 },       // no blocks
        { 4096, -5, 8, 1 },
        { 4096, 16, 8, 1 },      // no room for data after the metadata
        { 4096, 512, -1, 1 },    // negative file limit (0 picks one)
        { 4096, 512, 8, 0 },     // no COW granule
        { 4096, 512, 8, 5000 },  // COW granule too large
    };

    [Theory]
    [MemberData(nameof(BadGeometries))]
    public void CreateWithBadOptions_ThrowsArgumentException(int blockSize, long blockCount, int maxFiles, int granule)
    {
        var options = new VolumeOptions { BlockSize = blockSize, BlockCount = blockCount, MaxFiles = maxFiles, CowGranuleBlocks = granule, TryMapSync = false };
        Assert.ThrowsAny<ArgumentException>(() => Volume.Create(PathOf("bad.img"), options).Dispose());
        Assert.ThrowsAny<ArgumentException>(() => Volume.CreateInMemory(options).Dispose());
    }

    [Fact]
    public void DisposedVolume_RefusesEverything()
    {
        var v = Volume.Create(PathOf("v.img"), Options());
        var a = v.CreateFile("a");
        v.Dispose();
        v.Dispose(); // idempotent
        Assert.Throws<ObjectDisposedException>(() => v.CreateFile("b"));
        Assert.Throws<ObjectDisposedException>(() => a.Write(0, new byte[1]));
        Assert.Throws<ObjectDisposedException>(() => a.Read(0, new byte[1]));
        Assert.Throws<ObjectDisposedException>(() => v.Commit());
        Assert.Throws<ObjectDisposedException>(() => v.Fsck());
    }

    // ---------------------------------------------------------------- space

    [Fact]
    public void FullVolume_RefusesWithNoSpace_AndChangesNothing()
    {
        string path = PathOf("v.img");
        using (var v = Volume.Create(path, Options(blockCount: 512)))
        {
            long data = v.FreeBlocks;
            Assert.True(data > 300, $"{data} data blocks");
            int shared = (int)(data * 6 / 10);
            var a = v.CreateFile("a");
            a.Write(0, Bytes(1, shared * Bs));
            var b = v.CreateFile("b");
            b.CloneRangeFrom(a, 0, 0, (long)shared * Bs);
            var c = v.CreateFile("c");
            v.Commit(); // no busy blocks: a refusal must leave FreeBlocks exactly as it was
            long free = v.FreeBlocks;
            Assert.Equal(data - shared, free);

            AssertRefused(v, PinnedDmaError.NoSpace, () => c.Write(0, new byte[(free + 1) * Bs]));
            AssertRefused(v, PinnedDmaError.NoSpace, () => c.Allocate(0, (free + 1) * Bs));
            AssertRefused(v, PinnedDmaError.NoSpace, () => c.Allocate(Bs, (free + 1) * Bs, keepSize: true));
            AssertRefused(v, PinnedDmaError.NoSpace, () => b.UnshareRange(0, (long)shared * Bs));
            AssertRefused(v, PinnedDmaError.NoSpace, () => b.Write(0, new byte[(free + 1) * Bs])); // COW of shared blocks

            // Fill the volume exactly; then even one byte into a hole or onto a shared block is refused.
            c.Write(0, Bytes(2, (int)free * Bs));
            v.Commit();
            Assert.Equal(0, v.FreeBlocks);
            AssertRefused(v, PinnedDmaError.NoSpace, () => c.Write(c.Length + Bs, new byte[1]));
            AssertRefused(v, PinnedDmaError.NoSpace, () => a.Write(10, new byte[1]));
            AssertRefused(v, PinnedDmaError.NoSpace, () => b.Truncate(Bs + 1)); // zeroing a shared tail block copies it
            AssertRefused(v, PinnedDmaError.NoSpace, () => a.UnshareRange(0, 1));

            // What needs no blocks still works, and freeing makes room again.
            a.PunchHole(0, Bs);
            b.CollapseRange(0, Bs);
            v.DeleteFile("c");
            v.Commit();
            a.Write(10, new byte[] { 42 });
            AssertClean(v);
        }
        using (var v = Volume.Open(path))
        {
            var a = v.OpenFile("a");
            var expect = Bytes(1, (int)a.Length);
            Array.Clear(expect, 0, Bs);
            expect[10] = 42;
            Assert.Equal(expect, ReadAll(a));
            AssertClean(v);
        }
    }

    [Fact]
    public void FileLimit_RefusesWithNoSpace()
    {
        using var v = Volume.Create(PathOf("v.img"), Options(maxFiles: 3));
        for (int i = 0; i < 3; i++) v.CreateFile("f" + i);
        AssertRefused(v, PinnedDmaError.NoSpace, () => v.CreateFile("f3"));
        v.DeleteFile("f0");
        v.CreateFile("f3");
        Assert.Equal(new[] { "f1", "f2", "f3" }, v.FileNames);
        AssertClean(v);
    }

    // ---------------------------------------------------------------- damaged volume files

    /// <summary>Superblock fields this test reads from the volume image (little endian, at the start of blocks 0 and 1).</summary>
    private sealed record SuperblockView(ulong Sequence, long JournalStart, long JournalBlocks, long Checkpoint0, long Checkpoint1,
        long CheckpointBlocks, long DataStart, int ActiveCheckpoint, long CheckpointLength, ulong JournalBaseSeq)
    {
        /// <summary>The copy, or null when it does not start with the magic (Format writes only one copy).</summary>
        public static SuperblockView? TryRead(byte[] image, int copy)
        {
            var s = image.AsSpan(copy * Bs, 128);
            if (BinaryPrimitives.ReadUInt64LittleEndian(s) != 0x314C4F56414D4450UL) return null; // "PDMAVOL1"
            return new SuperblockView(
                BinaryPrimitives.ReadUInt64LittleEndian(s[72..]),
                BinaryPrimitives.ReadInt64LittleEndian(s[24..]),
                BinaryPrimitives.ReadInt64LittleEndian(s[32..]),
                BinaryPrimitives.ReadInt64LittleEndian(s[40..]),
                BinaryPrimitives.ReadInt64LittleEndian(s[48..]),
                BinaryPrimitives.ReadInt64LittleEndian(s[56..]),
                BinaryPrimitives.ReadInt64LittleEndian(s[64..]),
                BinaryPrimitives.ReadInt32LittleEndian(s[80..]),
                BinaryPrimitives.ReadInt64LittleEndian(s[88..]),
                BinaryPrimitives.ReadUInt64LittleEndian(s[96..]));
        }

        public long ActiveCheckpointOffset => (ActiveCheckpoint == 0 ? Checkpoint0 : Checkpoint1) * Bs;
        public long InactiveCheckpointOffset => (ActiveCheckpoint == 0 ? Checkpoint1 : Checkpoint0) * Bs;
    }

    private static (int Copy, SuperblockView View) Newest(byte[] image)
    {
        var s0 = SuperblockView.TryRead(image, 0);
        var s1 = SuperblockView.TryRead(image, 1);
        Assert.True(s0 is not null || s1 is not null, "no superblock copy");
        return s0 is null || (s1 is not null && s1.Sequence > s0.Sequence) ? (1, s1!) : (0, s0);
    }

    /// <summary>Byte ranges (offset, length) of the journal records that follow the superblock's checkpoint.</summary>
    private static List<(long Offset, int Length)> JournalRecords(byte[] image, SuperblockView sb)
    {
        var list = new List<(long, int)>();
        long start = sb.JournalStart * Bs, capacity = sb.JournalBlocks * Bs, pos = 0;
        ulong seq = sb.JournalBaseSeq;
        while (pos + 32 <= capacity)
        {
            var h = image.AsSpan((int)(start + pos), 32);
            if (BinaryPrimitives.ReadUInt64LittleEndian(h[8..]) != seq) break;
            if (BinaryPrimitives.ReadUInt32LittleEndian(h) == 0x454A4450) // "PDJE": the end of a commit
            {
                pos += 32;
                continue;
            }
            if (BinaryPrimitives.ReadUInt32LittleEndian(h) != 0x524A4450) break; // "PDJR"
            int len = (int)BinaryPrimitives.ReadUInt32LittleEndian(h[4..]);
            list.Add((start + pos, 32 + len));
            pos += 32 + ((len + 7) & ~7);
            seq++;
        }
        return list;
    }

    private static byte[] ReadImage(string path)
    {
        using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        var b = new byte[fs.Length];
        fs.ReadExactly(b);
        return b;
    }

    /// <summary>A closed volume with a few files, clones and holes, whose state went through the journal and a checkpoint.</summary>
    private string MakeClosedVolume(string name) => MakeClosedVolume(name, out _);

    private string MakeClosedVolume(string name, out Dictionary<string, byte[]> contents)
    {
        string path = PathOf(name);
        using var v = Volume.Create(path, Options());
        var a = v.CreateFile("a");
        a.Write(0, Bytes(1, 5 * Bs + 123));
        var b = v.CreateFile("b");
        b.CloneRangeFrom(a, 0, 0, 5 * Bs + 123);
        b.Write(2 * Bs + 7, Bytes(2, 300));
        a.PunchHole(Bs, Bs);
        v.CreateFile("c").Write(3 * Bs, Bytes(3, 2000));
        v.Commit();
        contents = Contents(v);
        return path;
    }

    private static Dictionary<string, byte[]> Contents(Volume v) =>
        v.FileNames.ToDictionary(n => n, n => ReadAll(v.OpenFile(n)));

    private static void AssertOpensCorrupt(string path)
    {
        AssertError(PinnedDmaError.Corrupt, () => Volume.Open(path).Dispose());
        AssertError(PinnedDmaError.Corrupt, () => Volume.Check(path));
    }

    private void AssertImageCorrupt(byte[] image, string name)
    {
        string path = PathOf(name);
        File.WriteAllBytes(path, image);
        AssertOpensCorrupt(path);
    }

    [Fact]
    public void BothSuperblockCopiesDamaged_IsCorrupt()
    {
        var image = File.ReadAllBytes(MakeClosedVolume("v.img"));
        foreach (int at in new[] { 0, 12, 16, 72, 100, 124 })
        {
            var bad = (byte[])image.Clone();
            bad[at] ^= 0x10;
            bad[Bs + at] ^= 0x01;
            AssertImageCorrupt(bad, $"sb{at}.img");
        }
    }

    [Fact]
    public void DamagedActiveCheckpoint_IsCorrupt()
    {
        var image = File.ReadAllBytes(MakeClosedVolume("v.img"));
        var (_, sb) = Newest(image);
        Assert.True(sb.CheckpointLength > 32, "checkpoint holds the files");
        long at = sb.ActiveCheckpointOffset;
        foreach (long off in new[] { 0L, 9, 17, 25, 32, 40, 32 + sb.CheckpointLength / 2, 32 + sb.CheckpointLength - 1 })
        {
            var bad = (byte[])image.Clone();
            bad[at + off] ^= 0x40;
            AssertImageCorrupt(bad, $"ckpt{off}.img");
        }
        // The inactive slot does not matter.
        var ok = (byte[])image.Clone();
        ok.AsSpan((int)sb.InactiveCheckpointOffset, 64).Fill(0xA5);
        string path = PathOf("inactive.img");
        File.WriteAllBytes(path, ok);
        using var v = Volume.Open(path);
        AssertClean(v);
        Assert.Equal(3, v.FileNames.Count);
    }

    [Fact]
    public void TruncatedEmptyAndGarbageFiles_AreCorrupt()
    {
        var image = File.ReadAllBytes(MakeClosedVolume("v.img"));
        foreach (int len in new[] { 0, 1, 100, 127, 128, Bs, Bs + 64, Bs + 128, 2 * Bs, image.Length / 2, image.Length - Bs, image.Length - 1 })
            AssertImageCorrupt(image.AsSpan(0, len).ToArray(), $"trunc{len}.img");
        AssertImageCorrupt(new byte[image.Length], "zeros.img");
        AssertImageCorrupt(Bytes(99, image.Length), "garbage.img");
        AssertImageCorrupt(Bytes(98, 10_000), "garbage-small.img");
        AssertImageCorrupt(Encoding.UTF8.GetBytes(new string('x', 3 * Bs)), "text.img");
        // A superblock copy alone, with nothing behind it.
        AssertImageCorrupt(image.AsSpan(0, 2 * Bs).ToArray(), "sb-only.img");
    }

    [Fact]
    public void OneSuperblockCopyDamaged_OpensFromTheOther()
    {
        // The older copy names the empty checkpoint that Create wrote; falling back to it replays the journal.
        string path = MakeClosedVolume("v.img", out var expect);
        var image = File.ReadAllBytes(path);
        var s0 = SuperblockView.TryRead(image, 0)!;
        var s1 = SuperblockView.TryRead(image, 1)!;
        Assert.NotEqual(s0.Sequence, s1.Sequence);
        Assert.NotEqual(s0.JournalBaseSeq, s1.JournalBaseSeq);
        for (int copy = 0; copy < 2; copy++)
        {
            var bad = (byte[])image.Clone();
            bad[copy * Bs + 20] ^= 0xFF;
            string p = PathOf($"one{copy}.img");
            File.WriteAllBytes(p, bad);
            using (var v = Volume.Open(p))
            {
                AssertClean(v);
                var got = Contents(v);
                Assert.Equal(expect.Keys.Order(), got.Keys.Order());
                foreach (var (name, data) in expect) Assert.Equal(data, got[name]);
                // The volume is usable: a write and a close write a new checkpoint and superblock.
                v.OpenFile("a").Write(0, new byte[] { 1, 2, 3 });
            }
            Assert.True(Volume.Check(p).IsClean);
        }
    }

    [Fact]
    public void OneSuperblockCopyDamaged_AfterACheckpointWithoutCommits_RecoversTheNewestStateExactly()
    {
        // Operations that reach the disk only through a checkpoint (no commit before it), then committed records on
        // top of that checkpoint. Losing the newest superblock copy must neither replay those records onto the older
        // checkpoint (a state that never existed: "b" without "a") nor fall back to the older state (silent loss of
        // "a" and "b"): the newest checkpoint is intact and recovery goes forward to it.
        var image = CheckpointThenCommitImage();
        var (newest, _) = Newest(image);
        image[newest * Bs + 30] ^= 0x04;
        using var recovered = OpenImage(image, "older.img");
        AssertClean(recovered);
        Assert.Null(recovered.RollbackReason);
        Assert.Equal(new[] { "a", "b" }, recovered.FileNames);
        Assert.Equal(Bytes(1, 3 * Bs), ReadAll(recovered.OpenFile("a")));
        Assert.Equal(Bytes(2, 2 * Bs), ReadAll(recovered.OpenFile("b")));
    }

    /// <summary>A crash copy: "a" reached the disk through a checkpoint only, "b" through committed records after it.</summary>
    private byte[] CheckpointThenCommitImage()
    {
        string path = PathOf("live-ckpt.img");
        using var v = Volume.Create(path, Options());
        v.CreateFile("a").Write(0, Bytes(1, 3 * Bs));
        v.Checkpoint();
        v.CreateFile("b").Write(0, Bytes(2, 2 * Bs));
        v.Commit();
        return ReadImage(path);
    }

    /// <summary>
    /// Commits several operations, then copies the volume file while the volume is still open (a crash right after the
    /// commit: the journal holds the records past the last checkpoint).
    /// </summary>
    private byte[] CrashImage(out List<(long Offset, int Length)> records)
    {
        string path = PathOf("live.img");
        byte[] image;
        using (var v = Volume.Create(path, Options()))
        {
            var a = v.CreateFile("a");              // record 1
            a.Write(0, Bytes(1, 8000));             // record 2
            v.Commit();
            a.Write(3 * Bs, Bytes(2, 3000));        // record 3
            v.CreateFile("b");                      // record 4
            v.OpenFile("b").Write(0, Bytes(3, 50)); // record 5
            v.Commit();
            image = ReadImage(path);
        }
        var (_, sb) = Newest(image);
        records = JournalRecords(image, sb);
        Assert.Equal(5, records.Count);
        return image;
    }

    private Volume OpenImage(byte[] image, string name)
    {
        string path = PathOf(name);
        File.WriteAllBytes(path, image);
        return Volume.Open(path);
    }

    [Fact]
    public void CrashImage_ReplaysEveryCommittedRecord()
    {
        var image = CrashImage(out _);
        using var v = OpenImage(image, "crash.img");
        AssertClean(v);
        var a = ReadAll(v.OpenFile("a"));
        Assert.Equal(3 * Bs + 3000, a.Length);
        Assert.Equal(Bytes(1, 8000), a[..8000]);
        Assert.Equal(Bytes(2, 3000), a[(3 * Bs)..]);
        Assert.Equal(Bytes(3, 50), ReadAll(v.OpenFile("b")));
    }

    [Fact]
    public void TornJournalTail_OpensWithTheEarlierRecords()
    {
        // A crash while the last commit was being written: its last record is torn and its end marker was never
        // written (the bytes after the record are whatever the journal held before).
        var image = CrashImage(out var records);
        var (off, len) = records[^1];
        long marker = off + ((len + 7) & ~7);
        var variants = new Dictionary<string, Action<byte[]>>
        {
            ["flipped payload byte"] = img => img[off + len - 1] ^= 0x01,
            ["flipped checksum"] = img => img[off + 16] ^= 0x80,
            ["torn second half"] = img => img.AsSpan((int)(off + len / 2), len - len / 2).Clear(),
            ["stale header only"] = img => img.AsSpan((int)off + 32, len - 32).Fill(0xEE),
        };
        foreach (var (what, damage) in variants)
        {
            var bad = (byte[])image.Clone();
            damage(bad);
            bad.AsSpan((int)marker, 32).Clear();
            string name = $"torn-{what.Replace(' ', '-')}.img";
            using (var v = OpenImage(bad, name))
            {
                AssertClean(v);
                Assert.Null(v.RollbackReason);
                var a = ReadAll(v.OpenFile("a"));
                Assert.Equal(3 * Bs + 3000, a.Length);
                Assert.Equal(Bytes(2, 3000), a[(3 * Bs)..]);
                Assert.True(v.FileExists("b"), what);
                Assert.Equal(0, v.OpenFile("b").Length); // record 5 (the write) is gone
                // New records continue the journal after the last good one.
                v.OpenFile("b").Write(0, new byte[] { 9 });
                v.Commit();
            }
            using (var v = Volume.Open(PathOf(name)))
            {
                AssertClean(v);
                Assert.Equal(new byte[] { 9 }, ReadAll(v.OpenFile("b")));
            }

            // The same damage with the commit's end marker intact is not a torn tail: that commit had finished.
            var finished = (byte[])image.Clone();
            damage(finished);
            string path = PathOf($"finished-{what.Replace(' ', '-')}.img");
            File.WriteAllBytes(path, finished);
            AssertOpensCorrupt(path);
        }
    }

    [Fact]
    public void DamagedMiddleRecord_IsCorrupt_AndAllowRollbackRepairsToTheStateBeforeIt()
    {
        // Record 3 is damaged, but committed records 4 and 5 follow it: dropping them silently would lose committed
        // work, so opening refuses. The repair path keeps records 1 and 2 and says what it dropped.
        var image = CrashImage(out var records);
        var (off, len) = records[2]; // record 3: the second write of a
        var bad = (byte[])image.Clone();
        bad[off + len - 3] ^= 0x20;
        string path = PathOf("mid.img");
        File.WriteAllBytes(path, bad);
        var e = Assert.Throws<PinnedDmaException>(() => Volume.Open(path).Dispose());
        Assert.Equal(PinnedDmaError.Corrupt, e.Error);
        Assert.Contains("AllowRollback", e.Message, StringComparison.Ordinal);
        Assert.Equal(bad, File.ReadAllBytes(path)); // a refusal writes nothing

        using (var v = Volume.Open(path, new VolumeOptions { AllowRollback = true }))
        {
            Assert.NotNull(v.RollbackReason);
            Assert.Contains("dropped", v.RollbackReason, StringComparison.Ordinal);
            AssertClean(v);
            Assert.Equal(new[] { "a" }, v.FileNames);
            Assert.Equal(Bytes(1, 8000), ReadAll(v.OpenFile("a")));
            v.CreateFile("after").Write(0, new byte[] { 5 });
            v.Commit();
            File.Copy(path, PathOf("repaired-crash.img")); // a crash after the repair and one more commit
        }
        foreach (var p in new[] { path, PathOf("repaired-crash.img") })
        {
            using var v = Volume.Open(p);
            Assert.Null(v.RollbackReason);
            AssertClean(v);
            Assert.Equal(new[] { "a", "after" }, v.FileNames);
            Assert.Equal(Bytes(1, 8000), ReadAll(v.OpenFile("a")));
        }
    }

    // ---------------------------------------------------------------- random damage

    public enum Region { Superblock0, Superblock1, ActiveCheckpoint, InactiveCheckpoint, Journal, Anywhere }

    public sealed record Flip(Region Region, int Where, byte Mask)
    {
        public override string ToString() => $"{Region}@{Where}^0x{Mask:X2}";
    }

    public sealed record Damage(int Image, Flip[] Flips)
    {
        public override string ToString() => $"image {Image}: {string.Join(", ", Flips.AsEnumerable())}";
    }

    /// <summary>An undamaged volume image and the file sets (names, in order) its history went through.</summary>
    private sealed record BaseImage(string What, byte[] Bytes, string[] States);

    private static readonly Gen<Flip> FlipGen =
        from region in Gen.Frequency(
            (3, Gen.Constant(Region.Superblock0)),
            (3, Gen.Constant(Region.Superblock1)),
            (3, Gen.Constant(Region.ActiveCheckpoint)),
            (1, Gen.Constant(Region.InactiveCheckpoint)),
            (3, Gen.Constant(Region.Journal)),
            (2, Gen.Constant(Region.Anywhere)))
        from spot in Gen.Choose(0, int.MaxValue)
        from mask in Gen.Choose(1, 255)
        select new Flip(region, spot, (byte)mask);

    private static IEnumerable<Damage> ShrinkDamage(Damage d)
    {
        for (int i = 0; i < d.Flips.Length && d.Flips.Length > 1; i++)
            yield return d with { Flips = d.Flips.Where((_, k) => k != i).ToArray() };
        if (d.Image > 0) yield return d with { Image = 0 };
    }

    /// <summary>Resolves a flip to an offset inside the metadata area (blocks before the data area) of the image.</summary>
    private static long Locate(Flip f, byte[] image, long dataStartBlock)
    {
        var (_, sb) = Newest(image);
        var records = JournalRecords(image, sb);
        // Through the end marker after the last record.
        long journalUsed = records.Count == 0 ? 64 : records[^1].Offset + ((records[^1].Length + 7) & ~7) + 32 - sb.JournalStart * Bs;
        long checkpoint = Math.Max(64, 32 + sb.CheckpointLength);
        long u = (uint)f.Where;
        return f.Region switch
        {
            Region.Superblock0 => u % 128,
            Region.Superblock1 => Bs + u % 128,
            Region.ActiveCheckpoint => sb.ActiveCheckpointOffset + u % checkpoint,
            Region.InactiveCheckpoint => sb.InactiveCheckpointOffset + u % checkpoint,
            Region.Journal => sb.JournalStart * Bs + u % journalUsed,
            _ => u % (dataStartBlock * Bs),
        };
    }

    [Fact]
    public void RandomMetadataDamage_OpensCleanOrReportsCorrupt()
    {
        string closedPath = MakeClosedVolume("base.img");
        long dataStart;
        using (var v = Volume.Open(closedPath)) dataStart = v.DataStartBlock;
        var images = new[]
        {
            new BaseImage("closed volume", File.ReadAllBytes(closedPath), new[] { "", "a", "a,b", "a,b,c" }),
            new BaseImage("crash after commits", CrashImage(out _), new[] { "", "a", "a,b" }),
            new BaseImage("crash after checkpoint and commit", CheckpointThenCommitImage(), new[] { "", "a", "a,b" }),
        };
        int opened = 0, corrupt = 0, run = 0;
        var arb = Arb.From(
            from image in Gen.Choose(0, images.Length - 1)
            from flips in Gen.Choose(1, 6).SelectMany(n => Gen.ArrayOf(FlipGen, n))
            select new Damage(image, flips),
            ShrinkDamage);
        var config = Config.QuickThrowOnFailure.WithMaxTest(150).WithName("metadata damage");
        Check.One(config, Prop.ForAll(arb, (Damage d) =>
        {
            var baseImage = images[d.Image];
            var image = (byte[])baseImage.Bytes.Clone();
            // Resolve all offsets against the undamaged image, then damage.
            var offsets = d.Flips.Select(f => Locate(f, baseImage.Bytes, dataStart)).ToArray();
            for (int i = 0; i < offsets.Length; i++)
            {
                Assert.InRange(offsets[i], 0, dataStart * Bs - 1);
                image[offsets[i]] ^= d.Flips[i].Mask;
            }
            string path = PathOf($"damaged{run++ % 4}.img");
            File.WriteAllBytes(path, image);
            Volume v;
            try
            {
                v = Volume.Open(path);
            }
            catch (PinnedDmaException e) when (e.Error == PinnedDmaError.Corrupt)
            {
                corrupt++;
                return;
            }
            using (v)
            {
                var report = v.Fsck();
                if (!report.IsClean) throw new InvalidOperationException($"{d}: opened but fsck says {report}");
                // Whatever survived is a state the volume went through, never a mix.
                string names = string.Join(",", v.FileNames);
                if (!baseImage.States.Contains(names))
                    throw new InvalidOperationException($"{d} ({baseImage.What}): recovered files [{names}], a set that never existed");
                foreach (var name in v.FileNames) ReadAll(v.OpenFile(name));
                // It stays usable.
                v.CreateFile("after-damage").Write(0, new byte[100]);
                v.Commit();
            }
            if (!Volume.Check(path).IsClean) throw new InvalidOperationException($"{d}: not clean after reopen");
            opened++;
        }));
        // Both outcomes must have been exercised, or the property proved little.
        Assert.True(opened > 0 && corrupt > 0, $"opened {opened}, corrupt {corrupt}");
    }
}
