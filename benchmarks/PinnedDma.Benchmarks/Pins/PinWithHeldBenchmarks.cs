using BenchmarkDotNet.Attributes;
using PinnedDma;
using PinnedDma.Storage;

namespace Benchmarks.Pins;

/// <summary>
/// mpin + release of one more 4 KiB range of a 64 MiB file while <see cref="Held"/> other 4 KiB pins on the same
/// file are held. Baseline: an uncontended lock around a HashSet insert and remove with <see cref="Held"/> entries.
/// </summary>
[Config(typeof(QuickConfig))]
public class PinWithHeldBenchmarks
{
    private const long FileSize = 64L << 20;
    private readonly object _lock = new();
    private readonly HashSet<object> _registry = new();
    private readonly object _item = new();
    private readonly List<PinHandle> _held = new();
    private Volume _volume = null!;
    private VolumeFile _file = null!;
    private PinOwner _owner = null!;

    [Params(1, 100, 10_000)]
    public int Held { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _volume = Fixtures.InMemory(32_768);
        _file = _volume.CreateFile("file");
        _file.Allocate(0, FileSize);
        _owner = new PinOwner(_volume, long.MaxValue);
        for (int i = 0; i < Held; i++)
        {
            _held.Add(_owner.Pin(_file, (long)i * Fixtures.BlockSize, Fixtures.BlockSize, PinAccess.Read));
            _registry.Add(new object());
        }
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (var h in _held) h.Dispose();
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
    public void PinUnpinOneMore() => _owner.Pin(_file, FileSize - Fixtures.BlockSize, Fixtures.BlockSize, PinAccess.Write).Dispose();
}
