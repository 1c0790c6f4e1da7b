using System.Diagnostics;
using System.Globalization;
using Xunit;
using Xunit.Abstractions;

namespace PinnedDma.Tests.Samples;

/// <summary>
/// The connection-scale driver (samples/ConnectionScale) in its CI-sized form: 1,000 connections open at once, a few
/// 4 KiB writes and reads back on each, run as a real child process (which starts the server as its own child), so
/// each side's thread count is its own and not the test host's. Correctness only: every connection completes every
/// operation with the data it wrote, the server's memory holds each connection's last write, threads stay within a
/// bound while the connections are open and return to where they started once they are closed.
/// </summary>
[Trait("Category", "Slow")]
public sealed class ConnectionScaleTests
{
    private const int Connections = 1000;
    private const int Ops = 3;

    /// <summary>
    /// The acceptance check of the I/O-loop design: with 1,000 connections open, the threads each process holds outside
    /// the runtime's thread pool (I/O loops, the device's engine, the listener's handshake thread) grew by at most
    /// 2 x cores + 2 over its start. The pool's workers run the driver's own async code (its connect window, its
    /// awaits) and grow and retire on the runtime's timetable for either transport: they are reported, not bounded.
    /// Before the I/O loops, each connection held two threads (a receive thread and a send engine) on each side.
    /// </summary>
    private static int RedesignBound => 2 * Environment.ProcessorCount + 2;

    /// <summary>Threads outside the runtime's pool a process may hold above its starting count once every connection is closed (the driver's own margin).</summary>
    private const int LeakMargin = 32;

    private static readonly TimeSpan Bound = TimeSpan.FromMinutes(5);

    private readonly ITestOutputHelper _output;

    public ConnectionScaleTests(ITestOutputHelper output) => _output = output;

    /// <summary>
    /// <paramref name="server"/> picks the raw-socket baseline's server: the raw epoll server (the default, a few I/O
    /// threads each with its own epoll instance) or the runtime's async sockets; empty for iWARP.
    /// </summary>
    [Theory]
    [InlineData("iwarp", "")]
    [InlineData("socket", "epoll")]
    [InlineData("socket", "async")]
    public void Thousand_connections_complete_their_transfers_with_bounded_threads_that_exit_on_close(string transport, string server)
    {
        var r = Run(transport, server);
        int Int(string key) => int.Parse(r[key], CultureInfo.InvariantCulture);
        Assert.Equal(server.Length > 0 ? server : "iwarp", r["server"]);

        // Every connection set up, every operation completed with its own data, the server holds each last write.
        Assert.Equal(Connections, Int("connected"));
        Assert.Equal(0, Int("errors"));
        Assert.Equal(Connections, Int("completed"));
        Assert.Equal(Connections, Int("server_verified"));
        Assert.Equal(2L * Connections * Ops * 4096, long.Parse(r["bytes"], CultureInfo.InvariantCulture));

        foreach (var side in new[] { "server", "client" })
        {
            int start = Int($"{side}_threads_start");
            int open = Math.Max(Int($"{side}_threads_idle"), Int($"{side}_threads_load"));
            int after = Int($"{side}_threads_after");
            long rssStart = Int($"{side}_rss_kb_start"), rssLoad = Int($"{side}_rss_kb_load");
            _output.WriteLine($"{transport} {side}: threads {start} at start, {open} with {Connections} connections open, {after} after close; " +
                $"RSS {rssStart} KiB at start, {rssLoad} KiB under load ({(rssLoad - rssStart) / (double)Connections:F1} KiB per connection)");

            int dedicatedStart = start - Int($"{side}_pool_threads_start");
            int dedicatedOpen = Int($"{side}_threads_idle") - Int($"{side}_pool_threads_idle");
            _output.WriteLine($"{side}: threads added {open - start} in all, {dedicatedOpen - dedicatedStart} outside the thread pool; the bound is {RedesignBound}");
            Assert.True(dedicatedOpen - dedicatedStart <= RedesignBound,
                $"{side}: {dedicatedOpen - dedicatedStart} threads outside the pool added for {Connections} connections; the design allows {RedesignBound}");

            // Closed connections leave no threads behind (the driver waits, bounded, for them to exit). The runtime's
            // thread pool grows under load and retires idle workers on its own timetable: its workers are not counted.
            int dedicatedAfter = after - Int($"{side}_pool_threads_after");
            Assert.True(dedicatedAfter <= dedicatedStart + LeakMargin,
                $"{side}: {dedicatedAfter} threads outside the thread pool after every connection closed, {dedicatedStart} at start");
        }
    }

    private Dictionary<string, string> Run(string transport, string server)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(SamplesSmokeTests.SampleDll("ConnectionScale"));
        foreach (var a in new[] { "run", "--transport", transport, "--connections", Connections.ToString(CultureInfo.InvariantCulture),
            "--ops", Ops.ToString(CultureInfo.InvariantCulture), "--timeout", "240" })
            psi.ArgumentList.Add(a);
        if (server.Length > 0)
        {
            psi.ArgumentList.Add("--server");
            psi.ArgumentList.Add(server);
        }
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(Bound))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail($"ConnectionScale {transport} did not finish within {Bound}");
        }
        p.WaitForExit();
        string output = stdout.GetAwaiter().GetResult() + stderr.GetAwaiter().GetResult();
        _output.WriteLine(output);
        var line = output.Split('\n').FirstOrDefault(l => l.StartsWith("scale ", StringComparison.Ordinal));
        Assert.True(line is not null, $"no result line (exit code {p.ExitCode}):\n{output}");
        return line!.Split(' ', StringSplitOptions.RemoveEmptyEntries).Where(kv => kv.Contains('=', StringComparison.Ordinal))
            .Select(kv => kv.Split('=', 2)).ToDictionary(kv => kv[0], kv => kv[1]);
    }
}
