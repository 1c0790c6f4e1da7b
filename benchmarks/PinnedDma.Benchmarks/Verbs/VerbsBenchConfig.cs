using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Diagnosers;
using BenchmarkDotNet.Exporters.Csv;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Reports;
using Perfolizer.Horology;
using Perfolizer.Metrology;

namespace PinnedDma.Benchmarks.Verbs;

/// <summary>
/// Short job for the verbs and iWARP benchmarks: one launch, 2 warm-up and 5 measured iterations of about 150 ms,
/// allocations measured (all threads), a CSV report with plain numbers (ns, bytes) for <c>benchmarks/plot.py</c>.
/// </summary>
public sealed class VerbsBenchConfig : ManualConfig
{
    /// <summary>Creates the config.</summary>
    public VerbsBenchConfig()
    {
        AddJob(Job.Default
            .WithLaunchCount(1)
            .WithWarmupCount(2)
            .WithIterationCount(5)
            .WithIterationTime(TimeInterval.FromMilliseconds(150))
            .WithId("VerbsShort"));
        AddDiagnoser(MemoryDiagnoser.Default);
        AddColumn(StatisticColumn.Min, StatisticColumn.Max);
        var csvStyle = SummaryStyle.Default
            .WithTimeUnit(TimeUnit.Nanosecond)
            .WithSizeUnit(SizeUnit.B)
            .WithCultureInfo(System.Globalization.CultureInfo.InvariantCulture);
        AddExporter(new CsvExporter(CsvSeparator.Comma, csvStyle));
        WithOption(ConfigOptions.JoinSummary, false);
    }
}
