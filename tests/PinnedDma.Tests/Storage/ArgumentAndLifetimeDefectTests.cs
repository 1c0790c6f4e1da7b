using PinnedDma.Storage;
using PinnedDma.Verbs;
using Xunit;

namespace PinnedDma.Tests.Storage;

/// <summary>
/// Small defects, each pinned by a test that failed before its fix: a disposed file device's fsync, negative offsets
/// that must be <see cref="ArgumentOutOfRangeException"/> (the library's convention) rather than a range error, the
/// parameter names errors report, a drain left unbalanced by a stray Exit, and an ODP registration of a file on
/// another volume.
/// </summary>
public sealed class ArgumentAndLifetimeDefectTests : IDisposable
{
    private const int Bs = 4096;
    private readonly string _dir = Directory.CreateTempSubdirectory("pdma-defects-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void SyncFileOnADisposedDeviceThrowsObjectDisposed()
    {
        var device = FileBlockDevice.Open(Path.Combine(_dir, "dev"), Bs, 16, create: true);
        device.SyncFile();
        device.Dispose();
        Assert.Throws<ObjectDisposedException>(device.SyncFile);
    }

    [Fact]
    public void NegativeOffsetsOnABlockDeviceAreArgumentOutOfRange()
    {
        using var device = new MemoryBlockDevice(Bs, 16);
        Assert.Equal("offset", Assert.Throws<ArgumentOutOfRangeException>(() => device.GetSpan(-1, 1)).ParamName);
        Assert.Equal("length", Assert.Throws<ArgumentOutOfRangeException>(() => device.GetSpan(0, -1)).ParamName);
        Assert.Throws<ArgumentOutOfRangeException>(() => device.Read(-Bs, new byte[1]));
        Assert.Throws<ArgumentOutOfRangeException>(() => device.Write(-1, new byte[1]));
        Assert.Throws<ArgumentOutOfRangeException>(() => device.Flush(-1, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => device.Flush(0, -1));
        // Past the end is still the range error it always was.
        Assert.Equal(PinnedDmaError.InvalidArgument, Assert.Throws<PinnedDmaException>(() => device.GetSpan(16 * Bs, 1)).Error);
    }

    [Fact]
    public void NegativeOffsetsOnAPinAreArgumentOutOfRange()
    {
        using var v = Volume.CreateInMemory(new VolumeOptions { BlockCount = 256 });
        var f = v.CreateFile("f");
        f.Write(0, new byte[2 * Bs]);
        using var owner = new PinOwner(v, 1 << 20);
        using var pin = owner.Pin(f, 0, 2 * Bs, PinAccess.Write);
        Assert.Equal("offset", Assert.Throws<ArgumentOutOfRangeException>(() => pin.Read(-1, new byte[1])).ParamName);
        Assert.Throws<ArgumentOutOfRangeException>(() => pin.Write(-1, new byte[1]));
        Assert.Throws<ArgumentOutOfRangeException>(() => pin.TryRead(-1, new byte[1]));
        Assert.Throws<ArgumentOutOfRangeException>(() => pin.TryWrite(long.MinValue, new byte[1]));
        Assert.Throws<ArgumentOutOfRangeException>(() => pin.Translate(-1));
        Assert.Equal(PinnedDmaError.AccessDenied, Assert.Throws<PinnedDmaException>(() => pin.Read(2 * Bs, new byte[1])).Error);
    }

    [Fact]
    public void ErrorsNameTheParameterTheCallerPassed()
    {
        using var v = Volume.CreateInMemory(new VolumeOptions { BlockCount = 256 });
        using var other = Volume.CreateInMemory(new VolumeOptions { BlockCount = 256 });
        var f = v.CreateFile("f");
        var g = other.CreateFile("g");
        Assert.Equal("length", Assert.Throws<ArgumentOutOfRangeException>(() => f.Truncate(-1)).ParamName);
        Assert.Equal("length", Assert.Throws<ArgumentOutOfRangeException>(() => { _ = f.TruncateAsync(-1); }).ParamName);
        Assert.Equal("source", Assert.Throws<ArgumentException>(() => f.CloneRangeFrom(g, 0, 0, 0)).ParamName);
        Assert.Equal("source", Assert.Throws<ArgumentException>(() => f.DedupeRangeFrom(g, 0, 0, 0)).ParamName);
        Assert.Equal("sourceOffset", Assert.Throws<ArgumentOutOfRangeException>(() => f.CloneRangeFrom(f, -Bs, 0, Bs)).ParamName);
        Assert.Equal("timeout", Assert.Throws<ArgumentOutOfRangeException>(() => ConflictPolicy.Wait(TimeSpan.FromSeconds(-1))).ParamName);
        Assert.Equal("timeout", Assert.Throws<ArgumentOutOfRangeException>(() => ConflictPolicy.Break(TimeSpan.FromSeconds(-1))).ParamName);
    }

    [Fact]
    public void AStrayExitLeavesTheDrainAsItWas()
    {
        var drain = new DmaDrain();
        Assert.Throws<InvalidOperationException>(drain.Exit);
        Assert.False(drain.IsClosed);
        Assert.Equal(0, drain.InFlight);
        Assert.True(drain.TryEnter());
        drain.Exit();
        Assert.Throws<InvalidOperationException>(drain.Exit);
        Assert.True(drain.TryEnter());
        Assert.Equal(1, drain.InFlight);
        drain.Exit();
        drain.Close();
        Assert.Throws<InvalidOperationException>(drain.Exit);
        Assert.True(drain.IsClosed);
        Assert.False(drain.TryEnter());
        Assert.Equal(0, drain.InFlight);
        Assert.True(drain.CloseAsync().IsCompletedSuccessfully);
    }

    [Fact]
    public void AnOnDemandRegionOfAFileOnAnotherVolumeIsRefused()
    {
        using var v = Volume.CreateInMemory(new VolumeOptions { BlockCount = 256 });
        using var other = Volume.CreateInMemory(new VolumeOptions { BlockCount = 256 });
        var g = other.CreateFile("g");
        g.Write(0, new byte[Bs]);
        using var owner = new PinOwner(v, 1 << 20);
        using var nic = new RdmaDevice();
        var pd = nic.AllocatePd();
        var e = Assert.Throws<ArgumentException>(() => pd.RegisterFile(owner, g, 0, Bs, AccessFlags.LocalWrite | AccessFlags.OnDemand));
        Assert.Equal("file", e.ParamName);
        // The same as a pinned region.
        Assert.Equal("file", Assert.Throws<ArgumentException>(() => pd.RegisterFile(owner, g, 0, Bs, AccessFlags.LocalWrite)).ParamName);
    }
}
