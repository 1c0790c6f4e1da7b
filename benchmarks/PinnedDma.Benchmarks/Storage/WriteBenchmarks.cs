using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using PinnedDma;
using PinnedDma.Storage;

namespace Benchmarks.Storage;

/// <summary>
/// Write throughput into an allocated (single-extent, unshared) file: <see cref="VolumeFile.Write"/> under the volume
/// lock, and the same bytes written through a WRITE pin's frozen translation (the DMA path). Baseline:
/// <c>Buffer.MemoryCopy</c> of the same size into native memory. Offsets rotate over a 64 MiB region.
/// </summary>
[Config(typeof(QuickConfig))]
public unsafe class WriteBenchmarks
{
    private const long Region = 64L << 20;
    private Volume _volume = null!;
    private VolumeFile _file = null!;
    private PinOwner _owner = null!;
    private PinHandle _pin = null!;
    private byte[] _source = null!;
    private byte* _native;
    private long _next;

    [Params(64 * 1024, 1024 * 1024)]
    public int Size { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _volume = Fixtures.InMemory(2 * (Region / Fixtures.BlockSize) + 8_192);
        _file = _volume.CreateFile("data");
        _file.Allocate(0, Region);
        var dma = _volume.CreateFile("dma");
        dma.Allocate(0, Region);
        Fixtures.ExpectExtents(_file, 1);
        Fixtures.ExpectExtents(dma, 1);
        _owner = new PinOwner(_volume, long.MaxValue);
        _pin = _owner.Pin(dma, 0, Region, PinAccess.Write);
        _source = new byte[Size];
        new Random(1).NextBytes(_source);
        _native = (byte*)NativeMemory.AlignedAlloc((nuint)Region, 4096);
        NativeMemory.Clear(_native, (nuint)Region);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _pin.Dispose();
        _owner.Dispose();
        _volume.Dispose();
        NativeMemory.AlignedFree(_native);
    }

    private long NextOffset()
    {
        long at = _next;
        _next = (_next + Size) % Region;
        return at;
    }

    [Benchmark(Baseline = true)]
    public void MemoryCopy()
    {
        fixed (byte* src = _source) Buffer.MemoryCopy(src, _native + NextOffset(), Size, Size);
    }

    [Benchmark]
    public void VolumeFileWrite() => _file.Write(NextOffset(), _source);

    [Benchmark]
    public void WriteThroughDma() => _pin.Write(NextOffset(), _source);
}
