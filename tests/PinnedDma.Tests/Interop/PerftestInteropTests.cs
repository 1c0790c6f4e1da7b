using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;
using PinnedDma.Tests.Iwarp;
using Xunit;
using Xunit.Abstractions;

namespace PinnedDma.Tests.Interop;

/// <summary>
/// samples/PerfTest's perftest peer against rdma-core's perftest (ib_write_bw / ib_read_bw / ib_send_bw -R, perftest 6.06) on the
/// kernel's siw, both directions. Proof of a run is on both sides: perftest's result row for the size and iteration
/// count asked for (printed by perftest's client from its own run, by its server from the report our client sent
/// over the control channel), and our side's matching row or the report it received.
/// </summary>
[Collection(GuestCollection.Name)]
[Trait("Category", "Guest")]
public sealed class PerftestInteropTests
{
    /// <summary>
    /// Iterations per case: 200, except send_bw, which runs past perftest's receive depth (512 receives at most, cut to
    /// the iteration count) so that the sender really waits for the receiver's credits: 2,000 x 64 B, and 600 x 64 KiB.
    /// </summary>
    private static int ItersFor(string test, int size) => test != "send_bw" ? 200 : size <= 4096 ? 2000 : 600;

    /// <summary>
    /// How often a case that moves large data from our side to siw may meet one of siw's receive defects (see
    /// <see cref="SiwReceiveDefects"/>) before it fails anyway. A retry needs proof that the failure was such a defect
    /// and nothing of ours; at about one defect per 10,000 FPDUs, four attempts of the largest case all fail about once
    /// in a thousand runs.
    /// </summary>
    private const int SiwDefectAttempts = 4;
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(180);
    private readonly GuestFixture _guest;
    private readonly ITestOutputHelper _log;

    public PerftestInteropTests(GuestFixture guest, ITestOutputHelper log)
    {
        _guest = guest;
        _log = log;
    }

    private static string Clip(string s) => s.Length <= 6000 ? s : s[..6000] + "...";

    private static string[] PeerArgs(string test, int size, int mpaRevision, bool crc, params string[] side)
    {
        var a = new List<string> { "peer", test, "--size", size.ToString(CultureInfo.InvariantCulture), "--iters", ItersFor(test, size).ToString(CultureInfo.InvariantCulture),
            "--mpa-rev", mpaRevision.ToString(CultureInfo.InvariantCulture) };
        if (!crc) a.Add("--no-crc");
        a.AddRange(side);
        return a.ToArray();
    }

    /// <summary>perftest's result row: " size  iters  peak  average  msgrate".</summary>
    private static bool HasRow(string output, int size, int iters) =>
        Regex.IsMatch(output, $@"(?m)^ {size}\s+{iters}\s+\d+\.\d+\s+\d+\.\d+\s+\d+\.\d+\s*$");

    /// <summary>perftest's client on siw (MPA rev 2 or, by siw's knob, rev 1) against our peer (CRC on or off).</summary>
    [Theory]
    [InlineData("write_bw", 64, 2, true)]
    [InlineData("write_bw", 65536, 2, true)]
    [InlineData("read_bw", 64, 2, true)]
    [InlineData("read_bw", 65536, 2, true)]
    [InlineData("write_bw", 65536, 1, true)]
    [InlineData("read_bw", 65536, 1, false)]
    [InlineData("write_bw", 65536, 2, false)]
    [InlineData("send_bw", 64, 2, true)]
    [InlineData("send_bw", 65536, 2, true)]
    [InlineData("send_bw", 65536, 2, false)]
    public async Task Kernel_perftest_client_runs_against_our_peer(string test, int size, int kernelMpaRevision, bool crc)
    {
        int iters = ItersFor(test, size);
        // Our peer sends siw large data only as RDMA Read responses here.
        bool exposed = size > 4096 && test == "read_bw";
        await WithSiwDefectRetriesAsync(exposed, vm => vm.FreeHostPort(), port => $"tcp.srcport=={port}", (vm, port) =>
        {
            var sw = Stopwatch.StartNew();
            vm.ConfigureSiw(mpaVersion: kernelMpaRevision);
            using var ours = SampleProcess.Start(_guest.Root, "PerfTest", PeerArgs(test, size, 2, crc, "--server", "--bind", "127.0.0.1", "--port", port.ToString(CultureInfo.InvariantCulture)));
            ours.WaitListening(Bound);
            var theirs = vm.Run($"ib_{test} -R -F -s {size} -n {iters} -p {port} {GuestVm.HostAddress}", Bound);
            var (code, output) = ours.Wait(Bound);
            _log.WriteLine($"guest ib_{test} (exit {theirs.ExitCode}):\n{Clip(theirs.Output)}\nours:\n{Clip(output)}\ncase time {sw.Elapsed.TotalSeconds:F1} s");
            _guest.AssertKernelClean(vm);
            if (theirs.ExitCode != 0) return $"guest ib_{test} exit {theirs.ExitCode}:\n{Clip(theirs.Output)}\nours:\n{Clip(output)}";
            if (!HasRow(theirs.Output, size, iters)) return $"no result row for {size} B x {iters} from ib_{test}:\n{Clip(theirs.Output)}";
            if (code != 0) return $"our peer failed ({code}):\n{Clip(output)}";
            // write/read: the client's report came over the control channel; send_bw has no report exchange, each side
            // prints the row of its own run.
            if (test == "send_bw" && !HasRow(output, size, iters)) return $"no result row from our peer:\n{Clip(output)}";
            if (test != "send_bw" && !output.Contains($"remote report: size {size} iters {iters} ", StringComparison.Ordinal))
                return $"our peer did not receive the client's report for {size} B x {iters}:\n{Clip(output)}";
            return null;
        });
    }

    /// <summary>
    /// Our peer as perftest's client against its server on siw: MPA rev 2, and rev 1 where the test needs no RDMA Read
    /// depth (a rev-1 initiator leaves siw with IRD/ORD 0); CRC on and off.
    /// </summary>
    [Theory]
    [InlineData("write_bw", 64, 2, true)]
    [InlineData("write_bw", 65536, 2, true)]
    [InlineData("read_bw", 64, 2, true)]
    [InlineData("read_bw", 65536, 2, true)]
    [InlineData("write_bw", 65536, 1, true)]
    [InlineData("write_bw", 65536, 1, false)]
    [InlineData("read_bw", 65536, 2, false)]
    [InlineData("send_bw", 64, 2, true)]
    [InlineData("send_bw", 65536, 2, true)]
    [InlineData("send_bw", 65536, 1, false)]
    public async Task Our_peer_runs_against_the_kernel_perftest_server(string test, int size, int mpaRevision, bool crc)
    {
        int iters = ItersFor(test, size);
        // Our peer sends siw large data as Sends and RDMA Writes here (read_bw moves data the other way).
        bool exposed = size > 4096 && test != "read_bw";
        await WithSiwDefectRetriesAsync(exposed, vm => vm.HostPort(18515), port => $"tcp.dstport=={port}", (vm, port) =>
        {
            var sw = Stopwatch.StartNew();
            vm.ConfigureSiw();
            using var server = vm.Start($"ib_{test} -R -F -s {size} -n {iters}", Bound, awaitPort: 18515);
            using var ours = SampleProcess.Start(_guest.Root, "PerfTest", PeerArgs(test, size, mpaRevision, crc, "--connect", "127.0.0.1", "--port", port.ToString(CultureInfo.InvariantCulture)));
            var (code, output) = ours.Wait(Bound);
            var theirs = server.Wait();
            _log.WriteLine($"ours:\n{Clip(output)}\nguest ib_{test} server (exit {theirs.ExitCode}):\n{Clip(theirs.Output)}\ncase time {sw.Elapsed.TotalSeconds:F1} s");
            _guest.AssertKernelClean(vm);
            if (code != 0) return $"our peer failed ({code}):\n{Clip(output)}\nguest:\n{Clip(theirs.Output)}";
            if (!HasRow(output, size, iters)) return $"no result row from our peer:\n{Clip(output)}";
            if (theirs.ExitCode != 0) return $"guest ib_{test} server exit {theirs.ExitCode}:\n{Clip(theirs.Output)}";
            if (!HasRow(theirs.Output, size, iters)) return $"the guest's server did not print our report for {size} B x {iters}:\n{Clip(theirs.Output)}";
            return null;
        });
    }

    /// <summary>
    /// Runs one attempt of a case (<paramref name="attempt"/> returns null on success, else why it failed). When the case
    /// is <paramref name="exposed"/> to siw's receive defects (our peer sends it large data), the TCP port our peer's
    /// wire runs through is captured, and a failed attempt is tried again only if <see cref="SiwReceiveDefects.Explains"/>
    /// proves from that capture and the guest's log that the failure was such a defect on good FPDUs of ours; any other
    /// failure fails the case.
    /// </summary>
    private async Task WithSiwDefectRetriesAsync(bool exposed, Func<GuestVm, int> portFor, Func<int, string> ourDirection, Func<GuestVm, int, string?> attempt)
    {
        for (int n = 1; ; n++)
        {
            var vm = _guest.Healthy();
            var before = exposed ? SiwReceiveDefects.Count(vm.Run("dmesg", Bound).Output) : default;
            int port = portFor(vm);
            using var capture = exposed ? await TsharkCapture.StartAsync(port) : null;
            string? failure = attempt(vm, port);
            if (failure is null) return;
            if (capture is null) Assert.Fail(failure);
            await capture.StopAsync();
            bool known = SiwReceiveDefects.Explains(vm.Run("dmesg", Bound).Output, before, capture, ourDirection(port), out string why);
            if (!known || n == SiwDefectAttempts)
                Assert.Fail($"{failure}\n(attempt {n} of {SiwDefectAttempts}; a known siw receive defect: {(known ? "yes" : "no")}: {why})");
            _log.WriteLine($"attempt {n} failed on a known siw receive defect ({why}); trying again");
        }
    }
}
