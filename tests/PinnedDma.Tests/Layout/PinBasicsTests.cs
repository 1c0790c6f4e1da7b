using PinnedDma.Storage;
using Xunit;

namespace PinnedDma.Tests.Layout;

public sealed class PinBasicsTests : IDisposable
{
    private readonly Volume _v = Volume.CreateInMemory(new VolumeOptions { BlockCount = 1024 });

    public void Dispose() => _v.Dispose();

    private VolumeFile NewFile(string name, int bytes, byte fill)
    {
        var f = _v.CreateFile(name);
        var d = new byte[bytes];
        Array.Fill(d, fill);
        f.Write(0, d);
        return f;
    }

    [Fact]
    public void ReadPinBreaksCowAndKeepsTranslationUnderCloneAndWrite()
    {
        var a = NewFile("a", 8 * 4096, 1);
        var b = _v.CreateFile("b");
        b.CloneRangeFrom(a, 0, 0, a.Length);
        using var owner = new PinOwner(_v, 1 << 20);
        using var pin = owner.Pin(a, 0, 4 * 4096, PinAccess.Read);
        Assert.All(a.GetExtents(0, 4 * 4096), e => Assert.False(e.Flags.HasFlag(FileExtentFlags.Shared)));
        var sgl = pin.ScatterGatherList.ToArray();
        b.Write(0, new byte[4096]);                  // the other sharer writes
        a.Write(0, new byte[] { 9 });                // the pinned file writes in place
        var c = _v.CreateFile("c");
        c.CloneRangeFrom(a, 0, 0, a.Length);         // clone from the pinned file: shared again
        a.Write(4096, new byte[] { 7 });             // pinned side keeps the block, c gets the copy
        Assert.Equal(sgl, pin.ScatterGatherList.ToArray());
        Assert.Empty(_v.CheckSealInvariants());
        var one = new byte[1];
        pin.Read(4096, one);
        Assert.Equal(7, one[0]);
        c.Read(4096, one);
        Assert.Equal(1, one[0]);
        Assert.Equal(4 * 4096, owner.LockedBytes);
        Assert.True(_v.Fsck().IsClean, _v.Fsck().ToString());
    }

    [Fact]
    public void DenyWaitBreakDefer()
    {
        var a = NewFile("a", 8 * 4096, 1);
        using var owner = new PinOwner(_v, 1 << 20);
        var pin = owner.Pin(a, 0, 4096, PinAccess.Write);
        var ex = Assert.Throws<PinnedDmaException>(() => a.PunchHole(0, 4096));
        Assert.Equal(PinnedDmaError.Busy, ex.Error);
        ex = Assert.Throws<PinnedDmaException>(() => a.Truncate(100, ConflictPolicy.Wait(TimeSpan.FromMilliseconds(50))));
        Assert.Equal(PinnedDmaError.Busy, ex.Error);

        // Break: the holder releases when asked.
        pin.LeaseBreaking += (_, _) => pin.Dispose();
        a.Truncate(100, ConflictPolicy.Break(TimeSpan.FromSeconds(5)));
        Assert.Equal(PinStatus.Released, pin.Status);

        // Break: the holder ignores it; revoked at the timeout.
        a.Write(0, new byte[4 * 4096]);
        var p2 = owner.Pin(a, 0, 4096, PinAccess.Write);
        a.PunchHole(0, 4096, ConflictPolicy.Break(TimeSpan.FromMilliseconds(20)));
        Assert.Equal(PinStatus.Revoked, p2.Status);
        Assert.False(p2.TryWrite(0, new byte[] { 1 }));
        Assert.Equal(PinnedDmaError.Revoked, Assert.Throws<PinnedDmaException>(() => p2.Write(0, new byte[1])).Error);

        // Defer: punch proceeds, the pin keeps its blocks.
        a.Write(0, new byte[4 * 4096]);
        var p3 = owner.Pin(a, 4096, 4096, PinAccess.Write);
        p3.Write(0, new byte[] { 5 });
        long free = _v.FreeBlocks;
        a.PunchHole(0, 4 * 4096, ConflictPolicy.Defer);
        Assert.Equal(PinStatus.Detached, p3.Status);
        Assert.Empty(_v.CheckSealInvariants());
        p3.Write(1, new byte[] { 6 });
        var two = new byte[2];
        p3.Read(0, two);
        Assert.Equal(new byte[] { 5, 6 }, two);
        p3.Dispose();
        _v.Commit();
        Assert.True(_v.Fsck().IsClean, _v.Fsck().ToString());
        Assert.Equal(0, owner.LockedBytes);
    }

    [Fact]
    public void MemlockLimitAndOwnerDispose()
    {
        var a = NewFile("a", 8 * 4096, 1);
        var owner = new PinOwner(_v, 2 * 4096);
        var p = owner.Pin(a, 0, 2 * 4096, PinAccess.Read);
        var ex = Assert.Throws<PinnedDmaException>(() => owner.Pin(a, 4 * 4096, 1, PinAccess.Read));
        Assert.Equal(PinnedDmaError.MemlockLimitExceeded, ex.Error);
        owner.Dispose();
        Assert.Equal(PinStatus.Released, p.Status);
        Assert.Equal(0, owner.LockedBytes);
        a.PunchHole(0, 8 * 4096);
    }

    [Fact]
    public void DirectMappingSealsRange()
    {
        var a = NewFile("a", 8 * 4096, 1);
        using var owner = new PinOwner(_v, 1 << 20);
        using (var m = owner.Map(a, 0, 8 * 4096, MapFlags.Shared | MapFlags.Direct))
        {
            m.GetExtentSpan(0)[0] = 42;
            Assert.Equal(PinnedDmaError.Busy, Assert.Throws<PinnedDmaException>(() => a.PunchHole(0, 4096, ConflictPolicy.Break(TimeSpan.Zero))).Error);
            Assert.Equal(PinnedDmaError.Busy, Assert.Throws<PinnedDmaException>(() => a.PunchHole(0, 4096, ConflictPolicy.Defer)).Error);
            var one = new byte[1];
            a.Read(0, one);
            Assert.Equal(42, one[0]);
        }
        a.PunchHole(0, 4096);
    }
}
