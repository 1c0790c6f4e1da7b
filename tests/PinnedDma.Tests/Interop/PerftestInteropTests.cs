using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;
using Xunit;
using Xunit.Abstractions;

namespace PinnedDma.Tests.Interop;

/// <summary>
/// samples/PerfTest's perftest peer against rdma-core's perftest (ib_write_bw / ib_read_bw -R, perftest 6.06) on the
/// kernel's siw, both directions. Proof of a run is on both sides: perftest's result row for the size and iteration
/// count asked for (printed by perftest's client from its own run, by its server from the report our client sent
/// over the control channel), and our side's matching row or the report it received.
/// </summary>
[Collection(GuestCollection.Name)]
[Trait("Category", "Guest")]
public sealed class PerftestInteropTests
{
    private const int Iters = 200;
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(180);
    private readonly GuestFixture _guest;
    private readonly ITestOutputHelper _log;

    public PerftestInteropTests(GuestFixture guest, ITestOutputHelper log)
    {
        _guest = guest;
        _log = log;
    }

    private static string Clip(string s) => s.Length <= 6000 ? s : s[..6000] + "...";

    /// <summary>perftest's result row: " size  iters  peak  average  msgrate".</summary>
    private static bool HasRow(string output, int size, int iters) =>
        Regex.IsMatch(output, $@"(?m)^ {size}\s+{iters}\s+\d+\.\d+\s+\d+\.\d+\s+\d+\.\d+\s*$");

    [Theory]
    [InlineData("write_bw", 64)]
    [InlineData("write_bw", 65536)]
    [InlineData("read_bw", 64)]
    [InlineData("read_bw", 65536)]
    public void Kernel_perftest_client_runs_against_our_peer(string test, int size)
    {
        var sw = Stopwatch.StartNew();
        var vm = _guest.Vm;
        vm.ConfigureSiw();
        int port = vm.FreeHostPort();
        using var ours = SampleProcess.Start(_guest.Root, "PerfTest", "peer", test, "--server", "--bind", "127.0.0.1",
            "--port", port.ToString(CultureInfo.InvariantCulture), "--size", size.ToString(CultureInfo.InvariantCulture), "--iters", Iters.ToString(CultureInfo.InvariantCulture));
        ours.WaitListening(Bound);
        var theirs = vm.Run($"ib_{test} -R -F -s {size} -n {Iters} -p {port} {GuestVm.HostAddress}", Bound);
        var (code, output) = ours.Wait(Bound);
        _log.WriteLine($"guest ib_{test} (exit {theirs.ExitCode}):\n{Clip(theirs.Output)}\nours:\n{Clip(output)}\ncase time {sw.Elapsed.TotalSeconds:F1} s");
        Assert.True(theirs.ExitCode == 0, $"guest ib_{test} exit {theirs.ExitCode}:\n{Clip(theirs.Output)}\nours:\n{Clip(output)}");
        Assert.True(HasRow(theirs.Output, size, Iters), $"no result row for {size} B x {Iters} from ib_{test}:\n{Clip(theirs.Output)}");
        Assert.True(code == 0, $"our peer failed ({code}):\n{Clip(output)}");
        Assert.Contains($"remote report: size {size} iters {Iters} ", output, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("write_bw", 64)]
    [InlineData("write_bw", 65536)]
    [InlineData("read_bw", 64)]
    [InlineData("read_bw", 65536)]
    public void Our_peer_runs_against_the_kernel_perftest_server(string test, int size)
    {
        var sw = Stopwatch.StartNew();
        var vm = _guest.Vm;
        vm.ConfigureSiw();
        using var server = vm.Start($"ib_{test} -R -F -s {size} -n {Iters}", Bound, awaitPort: 18515);
        using var ours = SampleProcess.Start(_guest.Root, "PerfTest", "peer", test, "--connect", "127.0.0.1",
            "--port", vm.HostPort(18515).ToString(CultureInfo.InvariantCulture), "--size", size.ToString(CultureInfo.InvariantCulture), "--iters", Iters.ToString(CultureInfo.InvariantCulture));
        var (code, output) = ours.Wait(Bound);
        var theirs = server.Wait();
        _log.WriteLine($"ours:\n{Clip(output)}\nguest ib_{test} server (exit {theirs.ExitCode}):\n{Clip(theirs.Output)}\ncase time {sw.Elapsed.TotalSeconds:F1} s");
        Assert.True(code == 0, $"our peer failed ({code}):\n{Clip(output)}\nguest:\n{Clip(theirs.Output)}");
        Assert.True(HasRow(output, size, Iters), $"no result row from our peer:\n{Clip(output)}");
        Assert.True(theirs.ExitCode == 0, $"guest ib_{test} server exit {theirs.ExitCode}:\n{Clip(theirs.Output)}");
        Assert.True(HasRow(theirs.Output, size, Iters), $"the guest's server did not print our report for {size} B x {Iters}:\n{Clip(theirs.Output)}");
    }
}
