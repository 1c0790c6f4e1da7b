using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using PinnedDma;
using PinnedDma.Storage;

namespace Benchmarks.Pins;

/// <summary>
/// Lease breaks. Every benchmark pins the first 64 KiB of a 1 MiB file (populating what the previous punch freed)
/// and punches it with the Break policy.
/// <list type="bullet">
/// <item>Cooperative: the holder releases in its LeaseBreaking callback (on the breaking thread), or from a
/// thread-pool continuation of BreakRequested. Baseline: the same pin, released before an unconflicted punch, so the
/// difference is the break latency.</item>
/// <item>Revoke: the holder ignores the break; Break(10 ms) must revoke after about 10 ms. Baseline: the same pin,
/// release and punch followed by a 10 ms sleep, so a ratio near 1 means the revocation is on time.</item>
/// </list>
/// </summary>
[Config(typeof(QuickConfig))]
[GroupBenchmarksBy(BenchmarkLogicalGroupRule.ByCategory)]
[CategoriesColumn]
public class LeaseBreakBenchmarks
{
    private const long Range = 64 * 1024;
    private static readonly ConflictPolicy Patient = ConflictPolicy.Break(TimeSpan.FromSeconds(5));
    private static readonly TimeSpan RevokeTimeout = TimeSpan.FromMilliseconds(10);
    private static readonly ConflictPolicy Impatient = ConflictPolicy.Break(RevokeTimeout);
    private Volume _volume = null!;
    private VolumeFile _file = null!;
    private PinOwner _owner = null!;

    [GlobalSetup]
    public void Setup()
    {
        _volume = Fixtures.InMemory(16_384);
        _file = _volume.CreateFile("file");
        _file.Allocate(0, 1 << 20);
        _owner = new PinOwner(_volume, long.MaxValue);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _owner.Dispose();
        _volume.Dispose();
    }

    private PinHandle PinRange() => _owner.Pin(_file, 0, Range, PinAccess.Write);

    [Benchmark(Baseline = true), BenchmarkCategory("Cooperative")]
    public void ReleaseThenPunch()
    {
        PinRange().Dispose();
        _file.PunchHole(0, Range, Patient);
    }

    [Benchmark, BenchmarkCategory("Cooperative")]
    public void BreakReleasedInCallback()
    {
        var pin = PinRange();
        pin.LeaseBreaking += (_, _) => pin.Dispose();
        _file.PunchHole(0, Range, Patient);
        Expect(pin, PinStatus.Released);
    }

    [Benchmark, BenchmarkCategory("Cooperative")]
    public void BreakReleasedByAsyncHolder()
    {
        var pin = PinRange();
        _ = pin.BreakRequested.ContinueWith(_ => pin.Dispose(), CancellationToken.None,
            TaskContinuationOptions.OnlyOnRanToCompletion, TaskScheduler.Default);
        _file.PunchHole(0, Range, Patient);
        Expect(pin, PinStatus.Released);
    }

    [Benchmark(Baseline = true), BenchmarkCategory("Revoke")]
    public void ReleaseThenPunchThenSleep()
    {
        PinRange().Dispose();
        _file.PunchHole(0, Range, Impatient);
        Thread.Sleep(RevokeTimeout);
    }

    [Benchmark, BenchmarkCategory("Revoke")]
    public void ForcedRevokeAfterTimeout()
    {
        var pin = PinRange();
        _file.PunchHole(0, Range, Impatient);
        Expect(pin, PinStatus.Revoked);
        pin.Dispose();
    }

    private static void Expect(PinHandle pin, PinStatus status)
    {
        if (pin.Status != status) throw new InvalidOperationException($"Pin is {pin.Status}, expected {status}.");
    }
}
