using BenchmarkDotNet.Attributes;
using PinnedDma.Storage;
using PinnedDma.Storage.Internal;

namespace Benchmarks.Storage;

/// <summary>
/// Translating a file block to its extent as the extent map grows: the internal <c>ExtentMap.TryLookup</c> and the
/// public FIEMAP-like <see cref="VolumeFile.GetExtents"/> on a one-block range. Baseline: a binary search over a
/// plain sorted array of the same extent starts. Each invocation looks up 1024 random allocated blocks.
/// </summary>
[Config(typeof(QuickConfig))]
public class ExtentLookupBenchmarks
{
    private const int Lookups = 1024;
    private Volume _volume = null!;
    private VolumeFile _file = null!;
    private ExtentMap _map = null!;
    private long[] _starts = null!;
    private long[] _targets = null!;

    [Params(1, 100, 10_000)]
    public int Extents { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _volume = Fixtures.InMemory(Math.Max(16_384, 4L * Extents + 8_192));
        _file = _volume.CreateFile("fragmented");
        Fixtures.Fragment(_file, Extents);
        _map = _file.Inode.Map;
        _starts = _map.Extents.Select(e => e.FileBlock).ToArray();
        var rng = new Random(42);
        _targets = Enumerable.Range(0, Lookups).Select(_ => 2L * rng.Next(Extents)).ToArray();
    }

    [GlobalCleanup]
    public void Cleanup() => _volume.Dispose();

    [Benchmark(Baseline = true, OperationsPerInvoke = Lookups)]
    public long SortedArrayBinarySearch()
    {
        long sum = 0;
        foreach (long t in _targets)
        {
            int i = Array.BinarySearch(_starts, t);
            sum += i >= 0 ? i : ~i - 1;
        }
        return sum;
    }

    [Benchmark(OperationsPerInvoke = Lookups)]
    public long ExtentMapTryLookup()
    {
        long sum = 0;
        foreach (long t in _targets)
            if (_map.TryLookup(t, out var e)) sum += e.DeviceBlock;
        return sum;
    }

    [Benchmark(OperationsPerInvoke = Lookups)]
    public long GetExtentsOneBlock()
    {
        long sum = 0;
        foreach (long t in _targets) sum += _file.GetExtents(t * Fixtures.BlockSize, Fixtures.BlockSize)[0].DeviceOffset;
        return sum;
    }
}
