using System.Diagnostics;
using Xunit;

namespace PinnedDma.Tests.Interop;

/// <summary>
/// Builds the guest if its cache is missing or partial (tests/guest/build-guest.sh; PINNEDDMA_GUEST_CACHE overrides the
/// cache directory) and boots it once for every test of the <see cref="GuestCollection"/>. A failure to build or boot
/// throws here, which fails every test of the collection: the interop cases never skip.
/// </summary>
public sealed class GuestFixture : IDisposable
{
    private static readonly TimeSpan BuildBound = TimeSpan.FromMinutes(45);
    private static readonly TimeSpan BootBound = TimeSpan.FromMinutes(4);

    private readonly string _cache;
    private bool _poisoned;

    /// <summary>The running guest (see <see cref="Healthy"/>, which every case starts with).</summary>
    public GuestVm Vm { get; private set; }

    /// <summary>How many times a case found the guest's kernel oopsed and booted a fresh guest.</summary>
    public int Reboots { get; private set; }

    /// <summary>The repository root (holds PinnedDma.sln).</summary>
    public string Root { get; }

    /// <summary>How long the build script took (seconds when the cache was complete).</summary>
    public TimeSpan BuildTime { get; }

    /// <summary>Boots the guest (building it first when needed).</summary>
    public GuestFixture()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "PinnedDma.sln"))) dir = dir.Parent;
        Root = dir?.FullName ?? throw new InvalidOperationException("no PinnedDma.sln above the test assembly");
        string cache = Environment.GetEnvironmentVariable("PINNEDDMA_GUEST_CACHE") is { Length: > 0 } c
            ? c : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "pinneddma-guest");

        var sw = Stopwatch.StartNew();
        var psi = new ProcessStartInfo("bash") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(Path.Combine(Root, "tests", "guest", "build-guest.sh"));
        psi.Environment["PINNEDDMA_GUEST_CACHE"] = cache;
        using (var build = Process.Start(psi)!)
        {
            var output = build.StandardOutput.ReadToEndAsync();
            var errors = build.StandardError.ReadToEndAsync();
            if (!build.WaitForExit(BuildBound))
            {
                build.Kill(entireProcessTree: true);
                build.WaitForExit(10_000);
                throw new TimeoutException($"guest build did not finish within {BuildBound}");
            }
            build.WaitForExit();
            if (build.ExitCode != 0)
                throw new InvalidOperationException($"guest build failed ({build.ExitCode}):\n{Tail(output.Result + errors.Result)}");
        }
        BuildTime = sw.Elapsed;
        _cache = cache;
        Vm = GuestVm.Boot(cache, BootBound);
    }

    /// <summary>
    /// The guest, with a kernel that has not oopsed: a case that left the guest's kernel with an oops (its rdma_cm or
    /// iw_cm work queue dead, so every later connection would hang) costs a fresh boot here, never the next case.
    /// </summary>
    public GuestVm Healthy()
    {
        if (_poisoned || Vm.KernelOops().Length > 0)
        {
            Vm.Dispose();
            Vm = GuestVm.Boot(_cache, BootBound);
            _poisoned = false;
            Reboots++;
        }
        return Vm;
    }

    /// <summary>
    /// Fails the case if the guest's kernel oopsed during it, unless the oops names <paramref name="knownKernelBug"/>
    /// (a kernel defect the case provokes on purpose and documents). Either way an oopsed guest is replaced before the
    /// next case.
    /// </summary>
    public void AssertKernelClean(GuestVm vm, string? knownKernelBug = null)
    {
        string oops = vm.KernelOops();
        if (oops.Length == 0) return;
        _poisoned = true;
        if (knownKernelBug is null || !oops.Contains(knownKernelBug, StringComparison.Ordinal))
            throw new Xunit.Sdk.XunitException($"the guest kernel oopsed during this case:\n{oops}");
    }

    private static string Tail(string s) => s.Length <= 6000 ? s : s[^6000..];

    /// <summary>Kills the guest.</summary>
    public void Dispose() => Vm.Dispose();
}

/// <summary>
/// Every test that needs the guest: one boot for all of them, run one after another, and after the parallel part of the
/// suite (no other collection runs meanwhile): the guest is emulated (TCG), and the kernel's and perftest's own
/// timeouts (MPA setup, rdma_cm) are real time, so a guest starved of CPU by the rest of the suite fails for nothing.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class GuestCollection : ICollectionFixture<GuestFixture>
{
    /// <summary>The collection's name.</summary>
    public const string Name = "Guest";
}
