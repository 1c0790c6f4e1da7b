using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using PinnedDma.Storage;

namespace Benchmarks.Storage;

/// <summary>
/// Reflink clone of a file range onto the same range of another file (the previous clone there is replaced), by
/// size and source layout (one extent, or every other block punched: one extent per allocated block). Baseline:
/// copying the same number of bytes with <c>Buffer.MemoryCopy</c>, which is what a clone saves.
/// </summary>
[Config(typeof(QuickConfig))]
public unsafe class CloneBenchmarks
{
    private Volume _volume = null!;
    private VolumeFile _source = null!;
    private VolumeFile _target = null!;
    private byte* _from;
    private byte* _to;

    [Params(1L << 20, 64L << 20)]
    public long Size { get; set; }

    [Params(Layout.Contiguous, Layout.Fragmented)]
    public Layout Layout { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        long blocks = Size / Fixtures.BlockSize;
        _volume = Fixtures.InMemory(3 * blocks + 16_384);
        _source = _volume.CreateFile("source");
        if (Layout == Layout.Contiguous)
        {
            _source.Allocate(0, Size);
            Fixtures.ExpectExtents(_source, 1);
        }
        else
        {
            Fixtures.Fragment(_source, blocks / 2);
        }
        _target = _volume.CreateFile("target");
        _from = (byte*)NativeMemory.AlignedAlloc((nuint)Size, 4096);
        _to = (byte*)NativeMemory.AlignedAlloc((nuint)Size, 4096);
        NativeMemory.Fill(_from, (nuint)Size, 0x5a);
        NativeMemory.Clear(_to, (nuint)Size);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _volume.Dispose();
        NativeMemory.AlignedFree(_from);
        NativeMemory.AlignedFree(_to);
    }

    [Benchmark(Baseline = true)]
    public void CopyBytes() => Buffer.MemoryCopy(_from, _to, Size, Size);

    [Benchmark]
    public void CloneRange() => _target.CloneRangeFrom(_source, 0, 0, Size);
}
