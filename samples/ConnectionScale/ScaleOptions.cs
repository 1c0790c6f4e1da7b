using System.Globalization;
using System.Text;
using PinnedDma.Transports.Iwarp;

namespace PinnedDma.Samples.ConnectionScale;

/// <summary>One run's shape.</summary>
public sealed record ScaleOptions
{
    /// <summary>Transport: <c>iwarp</c> (RDMA WRITE + READ of 4 KiB) or <c>socket</c> (the raw-socket baseline).</summary>
    public string Transport { get; init; } = "iwarp";

    /// <summary>The socket transport's server: <see cref="EpollServer"/> (the default baseline) or <see cref="AsyncServer"/>.</summary>
    public string SocketServer { get; init; } = EpollServer;

    /// <summary>I/O threads of the epoll server; 0 for <see cref="Environment.ProcessorCount"/>.</summary>
    public int IoThreads { get; init; }

    /// <summary>The raw epoll server: a few I/O threads, each with its own epoll instance (<see cref="EpollScaleServer"/>).</summary>
    public const string EpollServer = "epoll";

    /// <summary>The runtime's async sockets, one receive loop per connection (<see cref="SocketScaleServer"/>).</summary>
    public const string AsyncServer = "async";

    /// <summary>The I/O threads an epoll server of these options runs.</summary>
    public int EffectiveIoThreads => IoThreads > 0 ? IoThreads : Environment.ProcessorCount;

    /// <summary>What serves the run, for tables: the transport and, for sockets, the server's kind.</summary>
    public string ServerLabel => Transport == "iwarp" ? "iWARP WRITE+READ"
        : SocketServer == EpollServer ? $"raw socket (epoll, {EffectiveIoThreads} I/O threads)" : "raw socket (.NET async)";

    /// <summary>Connections, all open at once.</summary>
    public int Connections { get; init; } = 64;

    /// <summary>Operations per connection; each is one 4 KiB write and one 4 KiB read back.</summary>
    public int Ops { get; init; } = 100;

    /// <summary>Bound on the whole run (connect, load, close).</summary>
    public TimeSpan Timeout { get; init; } = TimeSpan.FromMinutes(3);

    /// <summary>Connections being set up at once by the client (the server admits this many per source).</summary>
    public int ConnectWindow { get; init; } = 32;

    /// <summary>Threads outside the runtime's pool a process may hold above its starting count after every connection closed.</summary>
    public const int LeakMargin = 32;

    /// <summary>Options both iWARP ends use: setup bounded but generous (1,000 handshakes on two cores).</summary>
    internal static IwarpOptions IwarpOptions { get; } = new()
    {
        MaxPendingHandshakesPerSource = 64,
        MaxPendingHandshakes = 1024,
        SetupTimeout = TimeSpan.FromSeconds(30),
    };
}

/// <summary>Thread and resident-set figures of one process through a run.</summary>
/// <param name="Start">Before any connection.</param>
/// <param name="Idle">With every connection open, before the load.</param>
/// <param name="Load">Peaks while the load ran.</param>
/// <param name="After">After every connection closed (after the bounded wait for threads to exit).</param>
public readonly record struct ProcessFigures(ProcessStats Start, ProcessStats Idle, ProcessStats Load, ProcessStats After)
{
    /// <summary>Threads added per open connection (idle minus start, over the connection count).</summary>
    public double ThreadsPerConnection(int connections) => (Idle.Threads - Start.Threads) / (double)connections;

    /// <summary>Resident KiB added per open connection under load.</summary>
    public double RssKiBPerConnection(int connections) => (Load.RssKiB - Start.RssKiB) / (double)connections;
}

/// <summary>The outcome of one run.</summary>
public sealed record ScaleResult
{
    /// <summary>The run's shape.</summary>
    public required ScaleOptions Options { get; init; }

    /// <summary>Connections that were set up.</summary>
    public int Connected { get; init; }

    /// <summary>Connections that completed every operation with correct data.</summary>
    public int Completed { get; init; }

    /// <summary>Reads that returned data other than what was written, plus failed completions.</summary>
    public int Errors { get; init; }

    /// <summary>Server slots that held their connection's last operation's data when the load ended.</summary>
    public int ServerVerified { get; init; }

    /// <summary>Bytes moved (writes and reads).</summary>
    public long Bytes { get; init; }

    /// <summary>Wall time of the load phase.</summary>
    public TimeSpan Elapsed { get; init; }

    /// <summary>Aggregate bandwidth in MB/s (10^6 bytes).</summary>
    public double MBps => Elapsed > TimeSpan.Zero ? Bytes / Elapsed.TotalSeconds / 1e6 : 0;

    /// <summary>Write latency percentiles in microseconds: p50, p99.</summary>
    public (double P50, double P99) WriteUs { get; init; }

    /// <summary>Read latency percentiles in microseconds: p50, p99.</summary>
    public (double P50, double P99) ReadUs { get; init; }

    /// <summary>All operations' latency percentiles in microseconds: p50, p99.</summary>
    public (double P50, double P99) AllUs { get; init; }

    /// <summary>The server process's figures.</summary>
    public ProcessFigures Server { get; init; }

    /// <summary>The client process's figures.</summary>
    public ProcessFigures Client { get; init; }

    /// <summary>Connections the server found already closed by the peer when told to drop the rest.</summary>
    public int ServerClosedByPeer { get; init; }

    /// <summary>One line, <c>key=value</c> pairs, for tools and tests.</summary>
    public string ToLine()
    {
        var sb = new StringBuilder();
        var ci = CultureInfo.InvariantCulture;
        sb.Append(ci, $"scale transport={Options.Transport} server={(Options.Transport == "socket" ? Options.SocketServer : "iwarp")} io_threads={(Options.Transport == "socket" && Options.SocketServer == ScaleOptions.EpollServer ? Options.EffectiveIoThreads : 0)} connections={Options.Connections} ops={Options.Ops} connected={Connected} completed={Completed} errors={Errors} server_verified={ServerVerified}");
        sb.Append(ci, $" bytes={Bytes} seconds={Elapsed.TotalSeconds:F3} mbps={MBps:F1}");
        sb.Append(ci, $" p50_us={AllUs.P50:F1} p99_us={AllUs.P99:F1} write_p50_us={WriteUs.P50:F1} write_p99_us={WriteUs.P99:F1} read_p50_us={ReadUs.P50:F1} read_p99_us={ReadUs.P99:F1}");
        Append(sb, "server", Server);
        Append(sb, "client", Client);
        sb.Append(ci, $" server_closed_by_peer={ServerClosedByPeer}");
        return sb.ToString();
    }

    private static void Append(StringBuilder sb, string who, ProcessFigures f)
    {
        var ci = CultureInfo.InvariantCulture;
        sb.Append(ci, $" {who}_threads_start={f.Start.Threads} {who}_threads_idle={f.Idle.Threads} {who}_threads_load={f.Load.Threads} {who}_threads_after={f.After.Threads}");
        sb.Append(ci, $" {who}_pool_threads_start={f.Start.PoolThreads} {who}_pool_threads_idle={f.Idle.PoolThreads} {who}_pool_threads_after={f.After.PoolThreads}");
        sb.Append(ci, $" {who}_rss_kb_start={f.Start.RssKiB} {who}_rss_kb_idle={f.Idle.RssKiB} {who}_rss_kb_load={f.Load.RssKiB} {who}_rss_kb_after={f.After.RssKiB}");
    }

    /// <summary>Parses the <c>key=value</c> pairs of a <see cref="ToLine"/> line.</summary>
    public static Dictionary<string, string> ParseLine(string line) =>
        line.Split(' ', StringSplitOptions.RemoveEmptyEntries).Where(p => p.Contains('=', StringComparison.Ordinal))
            .Select(p => p.Split('=', 2)).ToDictionary(p => p[0], p => p[1]);
}
