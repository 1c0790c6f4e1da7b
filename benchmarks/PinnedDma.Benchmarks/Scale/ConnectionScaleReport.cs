using System.Globalization;
using PinnedDma.Samples.ConnectionScale;

namespace PinnedDma.Benchmarks.Scale;

/// <summary>
/// Connection scale: 1, 64 and 1,000 connections, iWARP (4 KiB RDMA WRITE, then a 4 KiB RDMA READ back, one operation
/// outstanding per connection) against the raw-socket server of the same shape (same connections, same 4 KiB
/// request/response exchanges over TCP on 127.0.0.1; by default the raw epoll server, a few I/O threads each with its
/// own epoll instance, <c>--servers epoll,async</c> adds the runtime's async-Socket server), from the same run.
/// <para>
/// This is the driver's own report, not a BenchmarkDotNet class: one measurement here is a whole experiment (a server
/// child process, N connections set up, a load phase, a close), its figures are percentiles over every operation and
/// thread and resident-set counts of two processes, and setting up 1,000 connections per BenchmarkDotNet iteration (or
/// sharing them across iterations in a global setup) would measure either the handshakes or a warm state that the
/// thread and memory figures cannot be attributed to. The table still carries the baseline from the same run as a ratio.
/// </para>
/// <code>dotnet run -c Release --project benchmarks/PinnedDma.Benchmarks -- scale [--counts 1,64,1000] [--ops K] [--servers epoll,async] [--io-threads T]</code>
/// </summary>
public static class ConnectionScaleReport
{
    /// <summary>Runs the report; exit code 0 when every connection of every run completed with correct data.</summary>
    public static int Run(string[] args)
    {
        string Option(string name, string fallback)
        {
            int i = Array.IndexOf(args, name);
            return i >= 0 && i + 1 < args.Length ? args[i + 1] : fallback;
        }
        var counts = Option("--counts", "1,64,1000").Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToArray();
        int ops = int.Parse(Option("--ops", "0"), CultureInfo.InvariantCulture);
        Console.WriteLine($"# connection scale, {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC");
        // About 64 MiB each way per run (at least 16 operations per connection): a full run stays within a few minutes
        // on two cores, most of it the 1,000-connection iWARP setup.
        var servers = Option("--servers", ScaleOptions.EpollServer).Split(',');
        int ioThreads = int.Parse(Option("--io-threads", "0"), CultureInfo.InvariantCulture);
        var results = ScaleDriver.RunTable(counts, n => ops > 0 ? ops : Math.Max(16, 16384 / n), Console.Out, servers, ioThreads);
        return results.All(r => r.Completed == r.Options.Connections && r.ServerVerified == r.Options.Connections) ? 0 : 1;
    }
}
