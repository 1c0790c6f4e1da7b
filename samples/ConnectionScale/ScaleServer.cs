using System.Buffers.Binary;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using PinnedDma.Transports.Iwarp;
using PinnedDma.Verbs;

namespace PinnedDma.Samples.ConnectionScale;

/// <summary>
/// The server side, run as its own process (<c>ConnectionScale serve iwarp|socket N</c>) so its threads and resident
/// set are its own. It accepts up to N connections, gives the k-th accepted one the k-th 4 KiB slot of one region, and
/// answers commands on standard input, one per line: <c>stats</c>, <c>peak-reset</c>, <c>verify K</c> (how many slots
/// hold their connection's last operation's data), <c>drop</c> (close every connection) and <c>quit</c>. End of input
/// is <c>quit</c>.
/// </summary>
public abstract class ScaleServer : IDisposable
{
    /// <summary>Connections accepted so far (each has the slot of its acceptance order).</summary>
    private int _accepted;

    /// <summary>Connections accepted so far.</summary>
    protected int Accepted => Volatile.Read(ref _accepted);

    /// <summary>Counts one more accepted connection; returns its slot.</summary>
    protected int CountAccepted() => Interlocked.Increment(ref _accepted) - 1;

    /// <summary>Stops the accept loop.</summary>
    protected readonly CancellationTokenSource Stop = new();

    /// <summary>Creates the server for <paramref name="connections"/> connections.</summary>
    protected ScaleServer(int connections) => Connections = connections;

    /// <summary>The number of connections (and slots) the server is sized for.</summary>
    public int Connections { get; }

    /// <summary>The port the server listens on (127.0.0.1).</summary>
    public abstract int Port { get; }

    /// <summary>The slot memory: <see cref="Connections"/> x 4 KiB.</summary>
    protected abstract Span<byte> Slots { get; }

    /// <summary>Starts accepting.</summary>
    public abstract void Start();

    /// <summary>Closes every connection; returns how many had already failed or been closed by their peer.</summary>
    public abstract int Drop();

    /// <summary>Serves commands from <paramref name="input"/>, answering on <paramref name="output"/>, until <c>quit</c> or end of input.</summary>
    public void RunCommands(TextReader input, TextWriter output)
    {
        using var sampler = new PeakSampler();
        var start = ProcessStats.Read();
        output.WriteLine($"listening port={Port} threads={start.Threads} rss_kb={start.RssKiB} pool_threads={start.PoolThreads}");
        output.Flush();
        while (input.ReadLine() is { } line)
        {
            var parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length == 0) continue;
            switch (parts[0])
            {
                case "stats":
                    var now = ProcessStats.Read();
                    var peak = sampler.Peak;
                    output.WriteLine($"stats threads={now.Threads} rss_kb={now.RssKiB} pool_threads={now.PoolThreads} peak_threads={peak.Threads} peak_rss_kb={peak.RssKiB} connections={Accepted}");
                    break;
                case "peak-reset":
                    sampler.Reset();
                    output.WriteLine("ok");
                    break;
                case "verify":
                    int ops = int.Parse(parts[1], CultureInfo.InvariantCulture);
                    int good = 0, n = Accepted;
                    for (int slot = 0; slot < n; slot++)
                        if (Pattern.Check(Slots.Slice(slot * Pattern.Size, Pattern.Size), slot, ops - 1)) good++;
                    output.WriteLine($"verified {good}");
                    break;
                case "drop":
                    int failed = Drop();
                    output.WriteLine($"dropped closed_by_peer={failed}");
                    break;
                case "quit":
                    output.WriteLine("bye");
                    output.Flush();
                    return;
                default:
                    output.WriteLine($"error unknown command {parts[0]}");
                    break;
            }
            output.Flush();
        }
    }

    /// <summary>Stops accepting and closes everything.</summary>
    public virtual void Dispose()
    {
        Stop.Cancel();
        Drop();
        Stop.Dispose();
        GC.SuppressFinalize(this);
    }

    /// <summary>
    /// Creates the server for <paramref name="transport"/> (<c>iwarp</c> or <c>socket</c>); a socket server is
    /// <paramref name="socketServer"/>: <c>epoll</c> (<see cref="EpollScaleServer"/> with <paramref name="ioThreads"/>
    /// I/O threads, 0 for one per processor) or <c>async</c> (<see cref="SocketScaleServer"/>).
    /// </summary>
    public static ScaleServer Create(string transport, int connections, string socketServer = ScaleOptions.EpollServer, int ioThreads = 0) => transport switch
    {
        "iwarp" => new IwarpScaleServer(connections),
        "socket" => socketServer switch
        {
            ScaleOptions.EpollServer => new EpollScaleServer(connections, ioThreads),
            ScaleOptions.AsyncServer => new SocketScaleServer(connections),
            _ => throw new ArgumentException($"unknown socket server '{socketServer}' (epoll or async)", nameof(socketServer)),
        },
        _ => throw new ArgumentException($"unknown transport '{transport}' (iwarp or socket)", nameof(transport)),
    };
}

/// <summary>iWARP: one listener, one queue pair per connection, every slot in one registered region.</summary>
public sealed class IwarpScaleServer : ScaleServer
{
    /// <summary>Private data of the accept reply: slot (4 bytes), RKey (4), region address (8), little-endian.</summary>
    public const int PrivateDataLength = 16;

    private readonly RdmaDevice _device = new("scale-server");
    private readonly CompletionQueue _cq;
    private readonly ProtectionDomain _pd;
    private readonly MemoryRegion _region;
    private readonly IwarpListener _listener;
    private readonly List<QueuePair> _qps = [];
    private Task _acceptLoop = Task.CompletedTask;

    /// <summary>Creates the server; it accepts after <see cref="Start"/>.</summary>
    public IwarpScaleServer(int connections) : base(connections)
    {
        _pd = _device.AllocatePd();
        _cq = _device.CreateCompletionQueue(64);
        _region = _pd.RegisterBuffer(connections * Pattern.Size, AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteRead);
        // Every client comes from 127.0.0.1: the per-source handshake limit must admit the client's connect window.
        _listener = new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0), ScaleOptions.IwarpOptions);
    }

    /// <inheritdoc/>
    public override int Port => _listener.LocalEndPoint.Port;

    /// <inheritdoc/>
    protected override Span<byte> Slots => _region.GetBufferSpan();

    /// <inheritdoc/>
    public override void Start() => _acceptLoop = Task.Run(AcceptLoop);

    private async Task AcceptLoop()
    {
        var reply = new byte[PrivateDataLength];
        while (Accepted < Connections && !Stop.IsCancellationRequested)
        {
            IwarpConnectionRequest request;
            try
            {
                request = await _listener.AcceptAsync(Stop.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException)
            {
                return;
            }
            var qp = _pd.CreateQueuePair(new QueuePairOptions { SendCq = _cq, RecvCq = _cq, MaxSendWr = 4, MaxRecvWr = 1 });
            qp.Modify(new QpAttributes { State = QpState.Init, AccessFlags = AccessFlags.RemoteRead | AccessFlags.RemoteWrite });
            int slot = Accepted;
            BinaryPrimitives.WriteInt32LittleEndian(reply, slot);
            BinaryPrimitives.WriteUInt32LittleEndian(reply.AsSpan(4), _region.RKey);
            BinaryPrimitives.WriteUInt64LittleEndian(reply.AsSpan(8), _region.Address + (ulong)(slot * Pattern.Size));
            try
            {
                request.Accept(qp, reply);
            }
            catch (Exception e) when (e is IOException or SocketException or InvalidOperationException or ObjectDisposedException)
            {
                Console.Error.WriteLine($"accept of slot {slot} failed: {e.Message}");
                qp.Dispose();
                continue;
            }
            lock (_qps) _qps.Add(qp);
            CountAccepted();
        }
    }

    /// <inheritdoc/>
    public override int Drop()
    {
        List<QueuePair> qps;
        lock (_qps)
        {
            qps = [.. _qps];
            _qps.Clear();
        }
        int failed = 0;
        foreach (var qp in qps)
        {
            if (qp.State == QpState.Error) failed++;
            qp.Dispose();
        }
        return failed;
    }

    /// <inheritdoc/>
    public override void Dispose()
    {
        Stop.Cancel();
        _listener.Dispose();
        _acceptLoop.Wait(TimeSpan.FromSeconds(10));
        base.Dispose();
        _region.Dispose();
        _cq.Dispose();
        _pd.Dispose();
        _device.Dispose();
    }
}

/// <summary>
/// The raw-socket server on the runtime's async <see cref="Socket"/> (<c>--server async</c>), which on Linux is driven
/// by epoll (SocketAsyncEngine), one async receive loop per connection; the default baseline is
/// <see cref="EpollScaleServer"/>, same protocol on plain system calls. Request <c>'W'</c> + 4 KiB is stored in the slot and
/// answered with one byte; request <c>'R'</c> is answered with the slot's 4 KiB.
/// </summary>
public sealed class SocketScaleServer : ScaleServer
{
    private readonly Socket _listener = new(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
    private readonly byte[] _slots;
    private readonly List<Socket> _open = [];
    private int _closedByPeer;
    private Task _acceptLoop = Task.CompletedTask;

    /// <summary>Creates the server; it accepts after <see cref="Start"/>.</summary>
    public SocketScaleServer(int connections) : base(connections)
    {
        _slots = GC.AllocateUninitializedArray<byte>(connections * Pattern.Size, pinned: true);
        _listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        _listener.Listen(1024);
    }

    /// <inheritdoc/>
    public override int Port => ((IPEndPoint)_listener.LocalEndPoint!).Port;

    /// <inheritdoc/>
    protected override Span<byte> Slots => _slots;

    /// <inheritdoc/>
    public override void Start() => _acceptLoop = Task.Run(AcceptLoop);

    private async Task AcceptLoop()
    {
        while (Accepted < Connections && !Stop.IsCancellationRequested)
        {
            Socket s;
            try
            {
                s = await _listener.AcceptAsync(Stop.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException)
            {
                return;
            }
            s.NoDelay = true;
            lock (_open) _open.Add(s);
            int slot = CountAccepted();
            _ = Serve(s, slot);
        }
    }

    private async Task Serve(Socket s, int slot)
    {
        var memory = _slots.AsMemory(slot * Pattern.Size, Pattern.Size);
        var small = new byte[4];
        try
        {
            BinaryPrimitives.WriteInt32LittleEndian(small, slot);
            await s.SendAsync(small.AsMemory(0, 4)).ConfigureAwait(false);
            while (true)
            {
                if (!await ReceiveAll(s, small.AsMemory(0, 1)).ConfigureAwait(false)) break;
                if (small[0] == (byte)'W')
                {
                    if (!await ReceiveAll(s, memory).ConfigureAwait(false)) break;
                    small[0] = (byte)'A';
                    await s.SendAsync(small.AsMemory(0, 1)).ConfigureAwait(false);
                }
                else if (small[0] == (byte)'R')
                {
                    await SendAll(s, memory).ConfigureAwait(false);
                }
                else
                {
                    break;
                }
            }
            Interlocked.Increment(ref _closedByPeer);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
        lock (_open) _open.Remove(s);
        s.Dispose();
    }

    internal static async ValueTask<bool> ReceiveAll(Socket s, Memory<byte> into)
    {
        while (!into.IsEmpty)
        {
            int n = await s.ReceiveAsync(into).ConfigureAwait(false);
            if (n == 0) return false;
            into = into[n..];
        }
        return true;
    }

    internal static async ValueTask SendAll(Socket s, ReadOnlyMemory<byte> data)
    {
        while (!data.IsEmpty) data = data[await s.SendAsync(data).ConfigureAwait(false)..];
    }

    /// <inheritdoc/>
    public override int Drop()
    {
        List<Socket> open;
        lock (_open)
        {
            open = [.. _open];
            _open.Clear();
        }
        foreach (var s in open) s.Dispose();
        return Interlocked.Exchange(ref _closedByPeer, 0);
    }

    /// <inheritdoc/>
    public override void Dispose()
    {
        Stop.Cancel();
        _listener.Dispose();
        _acceptLoop.Wait(TimeSpan.FromSeconds(10));
        base.Dispose();
    }
}
