using System.Diagnostics;
using System.Globalization;

namespace PinnedDma.Samples.ConnectionScale;

/// <summary>
/// Runs one connection-scale measurement: the server in a child process, the clients in this one, so each side's
/// threads and resident set are its own.
/// </summary>
public static class ScaleDriver
{
    /// <summary>Runs <paramref name="options"/>; bounded by <see cref="ScaleOptions.Timeout"/> for the load and a bound per step.</summary>
    public static ScaleResult Run(ScaleOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.Connections < 1 || options.Ops < 1) throw new ArgumentOutOfRangeException(nameof(options), "connections and ops must be positive");
        if (options.Transport is not ("iwarp" or "socket")) throw new ArgumentException($"unknown transport '{options.Transport}' (iwarp or socket)", nameof(options));
        if (options.SocketServer is not (ScaleOptions.EpollServer or ScaleOptions.AsyncServer))
            throw new ArgumentException($"unknown socket server '{options.SocketServer}' (epoll or async)", nameof(options));
        if (options.IoThreads < 0) throw new ArgumentOutOfRangeException(nameof(options), "I/O threads must be zero (one per processor) or positive");
        ProcessStats.RaiseFileLimit();
        using var deadline = new CancellationTokenSource(options.Timeout);
        using var server = new ServerProcess(options);
        using var sampler = new PeakSampler();
        var clientStart = ProcessStats.Read();
        var client = ScaleClient.Create(options);
        ScaleResult result;
        try
        {
            client.ConnectAsync(server.Port, deadline.Token).Wait(deadline.Token);
            // Every connection open and idle: let setup threads (handshakes) finish, bounded.
            var serverIdle = Settle(() => server.Stats().Now);
            var clientIdle = Settle(ProcessStats.Read);
            sampler.Reset();
            server.ResetPeak();
            var clock = Stopwatch.StartNew();
            client.RunLoad(deadline.Token);
            clock.Stop();
            var clientLoad = sampler.Peak;
            var serverLoad = server.Stats().Peak;
            int verified = server.Verify(options.Ops);
            client.Dispose();
            var clientAfter = WaitForThreads(ProcessStats.Read, clientStart);
            int closedByPeer = server.Drop();
            var serverAfter = WaitForThreads(() => server.Stats().Now, server.Start);
            result = new ScaleResult
            {
                Options = options,
                Connected = client.Connected,
                Completed = client.Completed,
                Errors = client.Errors,
                ServerVerified = verified,
                Bytes = 2L * Pattern.Size * Count(client.WriteTicks, client.ReadTicks),
                Elapsed = clock.Elapsed,
                WriteUs = Percentiles(client.WriteTicks),
                ReadUs = Percentiles(client.ReadTicks),
                AllUs = Percentiles([.. client.WriteTicks, .. client.ReadTicks]),
                Server = new ProcessFigures(server.Start, serverIdle, serverLoad, serverAfter),
                Client = new ProcessFigures(clientStart, clientIdle, clientLoad, clientAfter),
                ServerClosedByPeer = closedByPeer,
            };
        }
        finally
        {
            client.Dispose();
        }
        return result;
    }

    private static long Count(long[] writes, long[] reads)
    {
        long n = 0;
        for (int i = 0; i < writes.Length; i++) if (writes[i] != 0 && reads[i] != 0) n++;
        return n;
    }

    /// <summary>Waits (at most 2 s) for the thread count to stop changing; returns the last figures.</summary>
    private static ProcessStats Settle(Func<ProcessStats> read)
    {
        var last = read();
        for (int i = 0; i < 20; i++)
        {
            Thread.Sleep(100);
            var now = read();
            if (now.Threads == last.Threads && i >= 2) return now;
            last = now;
        }
        return last;
    }

    /// <summary>
    /// Waits (at most 15 s) for the threads outside the runtime's pool to come back within
    /// <see cref="ScaleOptions.LeakMargin"/> of <paramref name="start"/>'s.
    /// </summary>
    private static ProcessStats WaitForThreads(Func<ProcessStats> read, ProcessStats start)
    {
        var clock = Stopwatch.StartNew();
        var now = read();
        while (now.DedicatedThreads > start.DedicatedThreads + ScaleOptions.LeakMargin && clock.Elapsed < TimeSpan.FromSeconds(15))
        {
            Thread.Sleep(100);
            now = read();
        }
        return now;
    }

    /// <summary>p50 and p99 in microseconds of the recorded (non-zero) tick counts.</summary>
    public static (double P50, double P99) Percentiles(long[] ticks)
    {
        ArgumentNullException.ThrowIfNull(ticks);
        var recorded = ticks.Where(t => t > 0).ToArray();
        if (recorded.Length == 0) return (0, 0);
        Array.Sort(recorded);
        double Us(double q) => recorded[Math.Min(recorded.Length - 1, (int)Math.Ceiling(q * recorded.Length) - 1)] * 1e6 / Stopwatch.Frequency;
        return (Us(0.50), Us(0.99));
    }

    /// <summary>
    /// Runs the raw-socket baseline (one row per server of <paramref name="socketServers"/>, default the epoll server
    /// with <paramref name="ioThreads"/> I/O threads) and iWARP at each connection count, printing each result line as
    /// it comes and then the table (bandwidth ratio = this row / the first socket server's row at the same count, same run).
    /// </summary>
    public static IReadOnlyList<ScaleResult> RunTable(IEnumerable<int> connectionCounts, Func<int, int> opsFor, TextWriter output,
        IReadOnlyList<string>? socketServers = null, int ioThreads = 0)
    {
        ArgumentNullException.ThrowIfNull(connectionCounts);
        ArgumentNullException.ThrowIfNull(opsFor);
        ArgumentNullException.ThrowIfNull(output);
        var results = new List<ScaleResult>();
        foreach (int n in connectionCounts)
        {
            var runs = (socketServers ?? [ScaleOptions.EpollServer])
                .Select(server => new ScaleOptions { Transport = "socket", SocketServer = server, IoThreads = ioThreads, Connections = n, Ops = opsFor(n) })
                .Append(new ScaleOptions { Transport = "iwarp", Connections = n, Ops = opsFor(n) });
            foreach (var options in runs)
            {
                var r = Run(options);
                output.WriteLine(r.ToLine());
                output.Flush();
                results.Add(r);
            }
        }
        PrintTable(results, output);
        return results;
    }

    /// <summary>Prints <paramref name="results"/> as a Markdown table, each row with its bandwidth ratio to the first socket row of the same count.</summary>
    public static void PrintTable(IReadOnlyList<ScaleResult> results, TextWriter output)
    {
        ArgumentNullException.ThrowIfNull(results);
        ArgumentNullException.ThrowIfNull(output);
        var ci = CultureInfo.InvariantCulture;
        output.WriteLine($"host: {Environment.ProcessorCount} cores, {Environment.OSVersion}, .NET {Environment.Version}");
        output.WriteLine("| connections | transport | ops/conn | ok | MB/s | ratio | p50 us | p99 us | server threads idle / load (per conn) | server RSS KiB/conn | client threads idle (per conn) | threads after close (server / client) |");
        output.WriteLine("|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---|---|");
        foreach (var r in results)
        {
            int n = r.Options.Connections;
            var baseline = results.FirstOrDefault(b => b.Options.Transport == "socket" && b.Options.Connections == n);
            string ratio = baseline is not null && baseline.MBps > 0 ? (r.MBps / baseline.MBps).ToString("F2", ci) + "x" : "-";
            output.WriteLine(string.Create(ci,
                $"| {n:N0} | {r.Options.ServerLabel} | {r.Options.Ops} | {r.Completed}/{n} | {r.MBps:F1} | {ratio} | {r.AllUs.P50:F1} | {r.AllUs.P99:F1} | {r.Server.Idle.Threads} / {r.Server.Load.Threads} ({r.Server.ThreadsPerConnection(n):F2}) | {r.Server.RssKiBPerConnection(n):F1} | {r.Client.Idle.Threads} ({r.Client.ThreadsPerConnection(n):F2}) | {r.Server.After.Threads} / {r.Client.After.Threads} |"));
        }
    }
}
