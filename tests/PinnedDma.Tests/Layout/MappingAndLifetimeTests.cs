using System.Runtime.CompilerServices;
using PinnedDma.Storage;
using Xunit;

namespace PinnedDma.Tests.Layout;

public sealed class MappingAndLifetimeTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("pdma-map-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private Volume NewVolume(string name = "v.img") => Volume.Create(Path.Combine(_dir, name), new VolumeOptions { BlockCount = 1024 });

    [Fact]
    public void FileDeviceReportsTheMappingModeInForce()
    {
        using var v = NewVolume();
        // MAP_SYNC needs DAX; a temp directory is not DAX, so the fallback to MAP_SHARED must be in force and reported.
        Assert.Equal(DeviceMappingMode.MapShared, v.Device.MappingMode);
        using var mem = Volume.CreateInMemory(new VolumeOptions { BlockCount = 256 });
        Assert.Equal(DeviceMappingMode.Memory, mem.Device.MappingMode);
    }

    [Fact]
    public void SyncMappingCommitsAllocationBeforeTheWriteReturns()
    {
        string path = Path.Combine(_dir, "sync.img");
        using var v = Volume.Create(path, new VolumeOptions { BlockCount = 1024 });
        var f = v.CreateFile("f");
        f.Truncate(64 * 1024);
        v.Commit();
        using var owner = new PinOwner(v, 1 << 20);
        using var sync = owner.Map(f, 0, 64 * 1024, MapFlags.Shared | MapFlags.Sync);
        using var plain = owner.Map(f, 0, 64 * 1024, MapFlags.Shared);
        sync.Write(8192, "synced"u8);          // allocates a block: committed before returning
        plain.Write(32768, "not yet"u8);      // allocates a block: durable only at the next commit

        // What a crash right now leaves: a copy of the file, recovered.
        string copy = Path.Combine(_dir, "crash-copy.img");
        File.Copy(path, copy);
        using var r = Volume.Open(copy);
        Assert.True(r.Fsck().IsClean);
        var g = r.OpenFile("f");
        var buf = new byte[6];
        g.Read(8192, buf);
        Assert.Equal("synced"u8.ToArray(), buf);
        Assert.DoesNotContain(g.GetExtents(), e => e.FileOffset == 32768);
    }

    [Fact]
    public void PopulateAllocatesAndUnsharesDirectSealsAndExposesDeviceSpans()
    {
        using var v = NewVolume();
        var a = v.CreateFile("a");
        a.Write(0, new byte[8 * 4096]);
        a.PunchHole(4096, 4096);
        var b = v.CreateFile("b");
        b.CloneRangeFrom(a, 0, 0, a.Length);
        using var owner = new PinOwner(v, 1 << 20);
        Assert.Equal(PinnedDmaError.InvalidArgument,
            Assert.Throws<PinnedDmaException>(() => owner.Map(a, 0, 4 * 4096, MapFlags.Shared | MapFlags.Direct)).Error);
        using (owner.Map(a, 0, 4 * 4096, MapFlags.Shared | MapFlags.Populate))
        {
            var ext = a.GetExtents(0, 4 * 4096);
            Assert.Equal(4 * 4096, ext.Sum(e => e.Length));
            Assert.DoesNotContain(ext, e => e.Flags.HasFlag(FileExtentFlags.Shared));
        }
        a.PunchHole(0, 4096); // Populate leaves no seal behind
        a.Write(0, new byte[4096]);
        using var direct = owner.Map(a, 0, 4 * 4096, MapFlags.Shared | MapFlags.Direct);
        long total = 0;
        for (int i = 0; i < direct.ExtentCount; i++)
        {
            var span = direct.GetExtentSpan(i);
            span.Fill((byte)(i + 1));
            total += span.Length;
        }
        Assert.Equal(4 * 4096, total);
        var one = new byte[1];
        a.Read(3 * 4096, one);
        Assert.NotEqual(0, one[0]);
        foreach (var policy in new[] { ConflictPolicy.Deny, ConflictPolicy.Defer, ConflictPolicy.Break(TimeSpan.Zero), ConflictPolicy.Wait(TimeSpan.FromMilliseconds(5)) })
        {
            Assert.Equal(PinnedDmaError.Busy, Assert.Throws<PinnedDmaException>(() => a.Truncate(0, policy)).Error);
            Assert.Equal(PinnedDmaError.Busy, Assert.Throws<PinnedDmaException>(() => a.CollapseRange(0, 4096, policy)).Error);
        }
        Assert.True(v.Fsck().IsClean);
    }

    [Fact]
    public async Task LeakedPinHandleIsReleasedByItsFinalizer()
    {
        using var v = Volume.CreateInMemory(new VolumeOptions { BlockCount = 256 });
        var f = v.CreateFile("f");
        f.Write(0, new byte[4 * 4096]);
        var owner = new PinOwner(v, 1 << 20);
        var ended = PinAndDrop(owner, f);
        Assert.Equal(4096, owner.LockedBytes);
        Assert.Equal(PinnedDmaError.Busy, Assert.Throws<PinnedDmaException>(() => f.PunchHole(0, 4096)).Error);
        for (int i = 0; i < 50 && !ended.IsCompleted; i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            await Task.WhenAny(ended, Task.Delay(100));
        }
        Assert.True(ended.IsCompleted, "the finalizer did not release the leaked pin");
        Assert.Equal(0, owner.LockedBytes);
        f.PunchHole(0, 4096);
        Assert.True(v.Fsck().IsClean);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static Task PinAndDrop(PinOwner owner, VolumeFile f) => owner.Pin(f, 0, 4096, PinAccess.Write).Ended;
}
