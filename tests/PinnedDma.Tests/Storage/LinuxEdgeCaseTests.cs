using PinnedDma.Storage;
using Xunit;

namespace PinnedDma.Tests.Storage;

/// <summary>
/// Linux-exact answers at the edges that the XFS differential found (and checks against XFS itself where it can run):
/// unshare past EOF, zero-length remaps past EOF, and the byte count a dedupe reports.
/// </summary>
public sealed class LinuxEdgeCaseTests
{
    private const int Bs = 4096;

    private static Volume NewVolume() => Volume.CreateInMemory(new VolumeOptions { BlockCount = 512, DurableCommits = false });

    private static byte[] Bytes(int seed, int length)
    {
        var b = new byte[length];
        new Random(seed).NextBytes(b);
        return b;
    }

    private static void AssertInvalid(Action act)
    {
        var e = Assert.Throws<PinnedDmaException>(act);
        Assert.Equal(PinnedDmaError.InvalidArgument, e.Error);
    }

    [Fact]
    public void UnsharePastOrStraddlingEof_GrowsTheFile_UnlessKeepSize()
    {
        using var v = NewVolume();
        var a = v.CreateFile("a");
        a.Write(0, Bytes(1, 10_000));
        var b = v.CreateFile("b");
        b.CloneRangeFrom(a, 0, 0, 10_000);

        b.UnshareRange(8192, 5000, keepSize: true);
        Assert.Equal(10_000, b.Length);
        b.UnshareRange(8192, 5000); // straddles EOF: FALLOC_FL_UNSHARE_RANGE alone grows the file to 13192
        Assert.Equal(13_192, b.Length);
        b.UnshareRange(20_000, 100); // wholly past EOF
        Assert.Equal(20_100, b.Length);
        var got = new byte[20_100];
        Assert.Equal(got.Length, b.Read(0, got));
        Assert.Equal(Bytes(1, 10_000), got[..10_000]);
        Assert.True(got.AsSpan(10_000).IndexOfAnyExcept((byte)0) < 0);
        Assert.True(v.Fsck().IsClean);
    }

    [Fact]
    public void ZeroLengthCloneAndDedupe_WithTheSourceOffsetPastEof_AreEinval()
    {
        using var v = NewVolume();
        var a = v.CreateFile("a");
        a.Write(0, Bytes(1, 3 * Bs));
        var b = v.CreateFile("b");
        b.Write(0, Bytes(2, Bs));
        AssertInvalid(() => b.CloneRangeFrom(a, 4 * Bs, 0, 0));
        AssertInvalid(() => b.CloneRangeFrom(a, 3 * Bs + 1, 0, 0));
        AssertInvalid(() => b.DedupeRangeFrom(a, 4 * Bs, 0, 0));
        AssertInvalid(() => b.DedupeRangeFrom(a, 3 * Bs + 1, 0, 0));
        // At the EOF itself: nothing to do, no error.
        b.CloneRangeFrom(a, 3 * Bs, 0, 0);
        Assert.Equal(0, b.DedupeRangeFrom(a, 3 * Bs, 0, 0));
        Assert.Equal(0, b.DedupeRangeFrom(a, 0, 10 * Bs, 0));
        Assert.Equal(Bs, b.Length);
        Assert.Equal(Bytes(2, Bs), ReadAll(b));
    }

    [Fact]
    public void Dedupe_ReportsTheLengthAskedFor()
    {
        using var v = NewVolume();
        var data = Bytes(3, 20_000);
        var a = v.CreateFile("a");
        a.Write(0, data);
        var b = v.CreateFile("b");
        b.Write(0, data.AsSpan(0, 12_000));
        Assert.Equal(10_000, b.DedupeRangeFrom(a, 0, 0, 10_000)); // two blocks shared, 10000 reported (as Linux)
        Assert.Equal(5000, b.DedupeRangeFrom(a, 4096, 4096, 5000));
        Assert.Equal(3808, b.DedupeRangeFrom(a, 8192, 8192, 3808)); // rounds down to no block at all
        Assert.Equal(data[..12_000], ReadAll(b));
        // Only whole blocks were shared: blocks 0 and 1 (the partial third block ends neither file).
        Assert.Equal(2 * Bs, b.GetExtents().Where(e => (e.Flags & FileExtentFlags.Shared) != 0).Sum(e => e.Length));
        Assert.True(v.Fsck().IsClean);
    }

    [Fact]
    public void OverflowingOffsetPlusLength_IsACallerBug_ArgumentOutOfRange()
    {
        using var v = NewVolume();
        var a = v.CreateFile("a");
        a.Write(0, new byte[10]);
        Assert.Throws<ArgumentOutOfRangeException>(() => a.PunchHole(long.MaxValue - 5, 10));
        Assert.Throws<ArgumentOutOfRangeException>(() => a.Allocate(long.MaxValue, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => a.UnshareRange(long.MaxValue - 1, 2));
        Assert.Throws<ArgumentOutOfRangeException>(() => a.CloneRangeFrom(a, long.MaxValue - Bs + 1, 0, Bs));
        // Within 64 bits but past the largest file size: a runtime limit (EFBIG), not a caller bug.
        AssertInvalid(() => a.Allocate(1L << 50, 1));
    }

    private static byte[] ReadAll(VolumeFile f)
    {
        var b = new byte[f.Length];
        Assert.Equal(b.Length, f.Read(0, b));
        return b;
    }
}
