using PinnedDma.Storage;
using Xunit;

namespace PinnedDma.Tests.Storage;

/// <summary>
/// Volume.Create never destroys a file by surprise: an existing file is refused unless the caller asks to overwrite,
/// bad options are refused before the file is touched, and a directory gets its own error.
/// </summary>
public sealed class VolumeCreateTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("pdma-create-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static VolumeOptions Small => new() { BlockCount = 256, TryMapSync = false };

    [Fact]
    public void ExistingVolume_IsRefused_UnlessOverwriteIsAsked()
    {
        string path = Path.Combine(_dir, "v.img");
        using (var v = Volume.Create(path, Small)) v.CreateFile("keep").Write(0, new byte[] { 42 });
        var before = File.ReadAllBytes(path);

        var e = Assert.Throws<PinnedDmaException>(() => Volume.Create(path, Small).Dispose());
        Assert.Equal(PinnedDmaError.AlreadyExists, e.Error);
        e = Assert.Throws<PinnedDmaException>(() => Volume.Create(path, new VolumeOptions { BlockCount = 512, TryMapSync = false }).Dispose());
        Assert.Equal(PinnedDmaError.AlreadyExists, e.Error);
        Assert.Equal(before, File.ReadAllBytes(path));
        using (var v = Volume.Open(path)) Assert.Equal(new[] { "keep" }, v.FileNames);

        using (var v = Volume.Create(path, new VolumeOptions { BlockCount = 512, TryMapSync = false }, overwrite: true))
            Assert.Empty(v.FileNames);
        Assert.Equal(512 * 4096, new FileInfo(path).Length);
        using (var v = Volume.Open(path)) Assert.Empty(v.FileNames);
    }

    [Fact]
    public void AnyExistingFile_IsRefused()
    {
        string path = Path.Combine(_dir, "notes.txt");
        File.WriteAllText(path, "precious");
        var e = Assert.Throws<PinnedDmaException>(() => Volume.Create(path, Small).Dispose());
        Assert.Equal(PinnedDmaError.AlreadyExists, e.Error);
        Assert.Equal("precious", File.ReadAllText(path));
    }

    public static TheoryData<long> BadBlockCounts => new() { -1, -4096, 0, 1, 16, 1L << 31, long.MaxValue, Volume.MaxBlockCount + 1 };

    [Theory]
    [MemberData(nameof(BadBlockCounts))]
    public void BadBlockCount_IsRefusedBeforeTheFileIsTouched(long blockCount)
    {
        var options = new VolumeOptions { BlockCount = blockCount, TryMapSync = false };
        string fresh = Path.Combine(_dir, "fresh.img");
        Assert.Throws<ArgumentOutOfRangeException>(() => Volume.Create(fresh, options).Dispose());
        Assert.False(File.Exists(fresh), "a refused Create left a file behind");

        string existing = Path.Combine(_dir, "existing.img");
        using (var v = Volume.Create(existing, Small)) v.CreateFile("keep");
        var before = File.ReadAllBytes(existing);
        Assert.Throws<ArgumentOutOfRangeException>(() => Volume.Create(existing, options, overwrite: true).Dispose());
        Assert.Equal(before, File.ReadAllBytes(existing));
        Assert.Throws<ArgumentOutOfRangeException>(() => Volume.CreateInMemory(options).Dispose());
    }

    [Theory]
    [InlineData(1000, 0, 1, 0)]
    [InlineData(4096, -1, 1, 0)]
    [InlineData(4096, 0, 0, 0)]
    [InlineData(4096, 0, 1, -1)]
    [InlineData(4096, 0, 1, 1000)]
    public void OtherBadOptions_AreRefusedBeforeTheFileIsTouched(int blockSize, int maxFiles, int granule, long journalBlocks)
    {
        var options = new VolumeOptions { BlockSize = blockSize, BlockCount = 512, MaxFiles = maxFiles, CowGranuleBlocks = granule, JournalBlocks = journalBlocks, TryMapSync = false };
        string fresh = Path.Combine(_dir, "fresh.img");
        Assert.Throws<ArgumentOutOfRangeException>(() => Volume.Create(fresh, options).Dispose());
        Assert.False(File.Exists(fresh));
    }

    [Fact]
    public void DirectoryPath_IsAClearError()
    {
        string dir = Directory.CreateDirectory(Path.Combine(_dir, "sub")).FullName;
        foreach (var act in new Action[]
        {
            () => Volume.Create(dir, Small).Dispose(),
            () => Volume.Create(dir, Small, overwrite: true).Dispose(),
            () => Volume.Open(dir).Dispose(),
            () => Volume.Check(dir),
        })
        {
            var e = Assert.Throws<PinnedDmaException>(act);
            Assert.Equal(PinnedDmaError.InvalidArgument, e.Error);
            Assert.Contains("directory", e.Message, StringComparison.Ordinal);
        }
        Assert.True(Directory.Exists(dir));
    }
}
