using PinnedDma.Storage;
using Xunit;

namespace PinnedDma.Tests.Storage;

public sealed class VolumeBasicsTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("pdma-basic-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void WriteReadCloneAndReopen()
    {
        string path = Path.Combine(_dir, "v.img");
        var data = new byte[10000];
        new Random(1).NextBytes(data);
        using (var v = Volume.Create(path, new VolumeOptions { BlockCount = 2048 }))
        {
            var a = v.CreateFile("a");
            a.Write(100, data);
            var b = v.CreateFile("b");
            b.CloneRangeFrom(a, 0, 0, a.Length);
            Assert.All(b.GetExtents(), e => Assert.True(e.Flags.HasFlag(FileExtentFlags.Shared)));
            b.Write(0, new byte[] { 1, 2, 3 });
            Assert.Contains(a.GetExtents(), e => !e.Flags.HasFlag(FileExtentFlags.Shared));
            a.PunchHole(4096, 4096);
            v.Commit();
            Assert.True(v.Fsck().IsClean, v.Fsck().ToString());
        }
        using (var v = Volume.Open(path))
        {
            var a = v.OpenFile("a");
            var buf = new byte[a.Length];
            Assert.Equal(buf.Length, a.Read(0, buf));
            var expect = new byte[10100];
            data.CopyTo(expect, 100);
            Array.Clear(expect, 4096, 4096);
            Assert.Equal(expect, buf);
            var b = v.OpenFile("b");
            var bb = new byte[b.Length];
            b.Read(0, bb);
            Assert.Equal(new byte[] { 1, 2, 3 }, bb[..3]);
            Assert.Equal(expect.AsSpan(3, 4093).ToArray(), bb.AsSpan(3, 4093).ToArray());
            Assert.Equal(data.AsSpan(4096 - 100 + 4096).ToArray(), bb.AsSpan(8192).ToArray());
            Assert.True(v.Fsck().IsClean, v.Fsck().ToString());
        }
    }
}
