using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using PinnedDma;
using PinnedDma.Storage;

namespace Benchmarks.Pins;

/// <summary>
/// mpin + release of a range of a single-extent, allocated 1 GiB file, by range length (the goal: about 1 us and
/// independent of the length). Baseline: what any pin registry pays at least, an uncontended lock around a HashSet
/// insert and another around the remove. For scale: pinning a managed buffer with a GCHandle.
/// </summary>
[Config(typeof(QuickConfig))]
public class PinUnpinBenchmarks
{
    private const long FileSize = 1L << 30;
    private readonly object _lock = new();
    private readonly HashSet<object> _registry = new();
    private readonly object _item = new();
    private readonly byte[] _buffer = new byte[4096];
    private Volume _volume = null!;
    private VolumeFile _file = null!;
    private PinOwner _owner = null!;

    [Params(4096L, 1L << 20, 64L << 20, 1L << 30)]
    public long Length { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _volume = Fixtures.InMemory(300_000);
        _file = _volume.CreateFile("big");
        _file.Allocate(0, FileSize);
        Fixtures.ExpectExtents(_file, 1);
        _owner = new PinOwner(_volume, long.MaxValue);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _owner.Dispose();
        _volume.Dispose();
    }

    [Benchmark(Baseline = true)]
    public void LockedSetAddRemove()
    {
        lock (_lock) _registry.Add(_item);
        lock (_lock) _registry.Remove(_item);
    }

    [Benchmark]
    public void GCHandlePinFree() => GCHandle.Alloc(_buffer, GCHandleType.Pinned).Free();

    [Benchmark]
    public void PinUnpin() => _owner.Pin(_file, 0, Length, PinAccess.Write).Dispose();
}
