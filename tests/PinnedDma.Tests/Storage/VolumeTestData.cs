using PinnedDma.Storage;
using Xunit;

namespace PinnedDma.Tests.Storage;

/// <summary>Seeded file contents and whole-file reads shared by the volume tests.</summary>
internal static class VolumeTestData
{
    public static byte[] Bytes(int seed, int length)
    {
        var b = new byte[length];
        new Random(seed).NextBytes(b);
        return b;
    }

    public static byte[] ReadAll(VolumeFile f)
    {
        var b = new byte[f.Length];
        Assert.Equal(b.Length, f.Read(0, b));
        return b;
    }
}
