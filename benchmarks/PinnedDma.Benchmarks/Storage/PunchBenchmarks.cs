using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using PinnedDma.Storage;

namespace Benchmarks.Storage;

/// <summary>
/// Punching a hole over a whole file range by size and layout (one extent, or one extent per allocated block with
/// every other block a hole). Before each punch the range is rebuilt outside the measurement (clone from a template,
/// then unshare, so the punched blocks are private and really freed, with the layout checked). Baseline: zeroing the same number of bytes
/// in memory, the alternative to deallocating. One operation per iteration.
/// </summary>
[Config(typeof(QuickConfig))]
[InvocationCount(1, 1)]
[IterationCount(15)]
public unsafe class PunchBenchmarks
{
    private Volume _volume = null!;
    private VolumeFile _template = null!;
    private VolumeFile _target = null!;
    private byte* _buffer;
    private long _extents;

    [Params(1L << 20, 64L << 20)]
    public long Size { get; set; }

    [Params(Layout.Contiguous, Layout.Fragmented)]
    public Layout Layout { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        long blocks = Size / Fixtures.BlockSize;
        _volume = Fixtures.InMemory(3 * blocks + 16_384);
        _template = _volume.CreateFile("template");
        if (Layout == Layout.Contiguous)
        {
            _template.Allocate(0, Size);
            _extents = 1;
        }
        else
        {
            Fixtures.Fragment(_template, blocks / 2);
            _extents = blocks / 2;
        }
        _target = _volume.CreateFile("target");
        _buffer = (byte*)NativeMemory.AlignedAlloc((nuint)Size, 4096);
        NativeMemory.Clear(_buffer, (nuint)Size);
    }

    [IterationSetup(Target = nameof(PunchHole))]
    public void Rebuild()
    {
        // The allocator is next-fit: a private copy can straddle the point where it wraps and come out in two
        // runs. Then punch it again (unmeasured) and copy once more; the cursor has moved past the wrap.
        for (int attempt = 0; attempt < 4; attempt++)
        {
            _target.CloneRangeFrom(_template, 0, 0, Size);
            _target.UnshareRange(0, Size);
            if (_target.Inode.Map.Count == _extents) return;
            _target.PunchHole(0, Size);
            _volume.Commit();
        }
        Fixtures.ExpectExtents(_target, _extents);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _volume.Dispose();
        NativeMemory.AlignedFree(_buffer);
    }

    [Benchmark(Baseline = true)]
    public void ZeroBytes() => NativeMemory.Clear(_buffer, (nuint)Size);

    [Benchmark]
    public void PunchHole() => _target.PunchHole(0, Size);
}
