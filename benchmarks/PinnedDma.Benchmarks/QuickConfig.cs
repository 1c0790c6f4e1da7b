using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Diagnosers;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Reports;
using Perfolizer.Horology;
using PinnedDma.Storage;

namespace Benchmarks;

/// <summary>
/// A short job for every benchmark class: one launch, two warmup and five measured iterations of ~120 ms, with the
/// memory diagnoser. Figures are meant to be read as ratios to the baseline of the same class and run.
/// </summary>
public sealed class QuickConfig : ManualConfig
{
    public QuickConfig()
    {
        AddJob(Job.Default
            .WithLaunchCount(1)
            .WithWarmupCount(2)
            .WithIterationCount(5)
            .WithIterationTime(TimeInterval.FromMilliseconds(120))
            .WithId("Quick"));
        AddDiagnoser(MemoryDiagnoser.Default);
        AddColumn(StatisticColumn.Median);
        SummaryStyle = SummaryStyle.Default.WithRatioStyle(RatioStyle.Value);
    }
}

/// <summary>Volumes and file layouts shared by the benchmarks.</summary>
internal static class Fixtures
{
    public const int BlockSize = 4096;

    /// <summary>An in-memory volume of <paramref name="blocks"/> 4 KiB blocks (commits do not flush).</summary>
    public static Volume InMemory(long blocks) =>
        Volume.CreateInMemory(new VolumeOptions { BlockSize = BlockSize, BlockCount = blocks, DurableCommits = false });

    /// <summary>
    /// Makes <paramref name="file"/> a file of 2 * <paramref name="extents"/> blocks whose even blocks are allocated
    /// and odd blocks are holes: allocate the whole range, then punch every other block. Each allocated block is its
    /// own extent.
    /// </summary>
    public static void Fragment(VolumeFile file, long extents)
    {
        file.Allocate(0, 2 * extents * BlockSize);
        for (long k = 0; k < extents; k++) file.PunchHole((2 * k + 1) * BlockSize, BlockSize);
        ExpectExtents(file, extents);
    }

    /// <summary>Throws unless the file's extent map has exactly <paramref name="extents"/> extents.</summary>
    public static void ExpectExtents(VolumeFile file, long extents)
    {
        int n = file.Inode.Map.Count;
        if (n != extents) throw new InvalidOperationException($"'{file.Name}' has {n} extents, expected {extents}.");
    }
}

/// <summary>How a benchmarked file range is laid out.</summary>
public enum Layout
{
    /// <summary>One extent.</summary>
    Contiguous,
    /// <summary>Every other block punched: one extent per allocated block.</summary>
    Fragmented,
}
