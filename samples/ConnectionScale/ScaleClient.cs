using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using PinnedDma.Transports.Iwarp;
using PinnedDma.Verbs;

namespace PinnedDma.Samples.ConnectionScale;

/// <summary>The client side of one transport: connect N, run the load, close.</summary>
internal abstract class ScaleClient : IDisposable
{
    protected ScaleClient(ScaleOptions options)
    {
        Options = options;
        int n = options.Connections * options.Ops;
        WriteTicks = new long[n];
        ReadTicks = new long[n];
        Slots = new int[options.Connections];
    }

    protected ScaleOptions Options { get; }

    /// <summary>Latency of every write, in Stopwatch ticks; connection c's op k at c * Ops + k.</summary>
    public long[] WriteTicks { get; }

    /// <summary>Latency of every read, as <see cref="WriteTicks"/>.</summary>
    public long[] ReadTicks { get; }

    /// <summary>The server slot each connection was given.</summary>
    protected int[] Slots { get; }

    public int Connected { get; protected set; }

    public int Completed { get; protected set; }

    public int Errors { get; protected set; }

    /// <summary>Opens every connection, at most <see cref="ScaleOptions.ConnectWindow"/> at a time.</summary>
    public async Task ConnectAsync(int port, CancellationToken ct)
    {
        var endpoint = new IPEndPoint(IPAddress.Loopback, port);
        using var window = new SemaphoreSlim(Options.ConnectWindow);
        var tasks = new Task[Options.Connections];
        for (int c = 0; c < Options.Connections; c++)
        {
            await window.WaitAsync(ct).ConfigureAwait(false);
            int conn = c;
            tasks[c] = Task.Run(async () =>
            {
                try
                {
                    await ConnectOneAsync(conn, endpoint, ct).ConfigureAwait(false);
                }
                finally
                {
                    window.Release();
                }
            }, ct);
        }
        await Task.WhenAll(tasks).ConfigureAwait(false);
        Connected = Options.Connections;
    }

    /// <summary>Opens connection <paramref name="conn"/> and learns its server slot (into <see cref="Slots"/>).</summary>
    protected abstract Task ConnectOneAsync(int conn, IPEndPoint endpoint, CancellationToken ct);

    public abstract void RunLoad(CancellationToken ct);

    public abstract void Dispose();

    public static ScaleClient Create(ScaleOptions options) => options.Transport switch
    {
        "iwarp" => new IwarpScaleClient(options),
        "socket" => new SocketScaleClient(options),
        _ => throw new ArgumentException($"unknown transport '{options.Transport}' (iwarp or socket)", nameof(options)),
    };
}

/// <summary>N queue pairs on one device sharing one CQ; one thread posts and polls for all of them, one operation outstanding per connection.</summary>
internal sealed class IwarpScaleClient : ScaleClient
{
    private readonly RdmaDevice _device = new("scale-client");
    private readonly ProtectionDomain _pd;
    private readonly CompletionQueue _cq;
    private readonly MemoryRegion _local;
    private readonly QueuePair?[] _qps;
    private readonly uint[] _rkeys;
    private readonly ulong[] _remote;
    private bool _disposed;

    public IwarpScaleClient(ScaleOptions options) : base(options)
    {
        _pd = _device.AllocatePd();
        _cq = _device.CreateCompletionQueue(2 * options.Connections + 16);
        // Per connection: the write source, then the read sink.
        _local = _pd.RegisterBuffer(options.Connections * 2 * Pattern.Size, AccessFlags.LocalWrite);
        _qps = new QueuePair?[options.Connections];
        _rkeys = new uint[options.Connections];
        _remote = new ulong[options.Connections];
    }

    protected override async Task ConnectOneAsync(int conn, IPEndPoint endpoint, CancellationToken ct)
    {
        var qp = _pd.CreateQueuePair(new QueuePairOptions { SendCq = _cq, RecvCq = _cq, MaxSendWr = 2, MaxRecvWr = 1 });
        _qps[conn] = qp;
        var reply = await IwarpConnector.ConnectAsync(qp, endpoint, default, ScaleOptions.IwarpOptions, ct).ConfigureAwait(false);
        if (reply.Length != IwarpScaleServer.PrivateDataLength) throw new InvalidDataException($"accept reply of {reply.Length} bytes");
        var span = reply.Span;
        Slots[conn] = BinaryPrimitives.ReadInt32LittleEndian(span);
        _rkeys[conn] = BinaryPrimitives.ReadUInt32LittleEndian(span[4..]);
        _remote[conn] = BinaryPrimitives.ReadUInt64LittleEndian(span[8..]);
    }

    private Span<byte> Source(int conn) => _local.GetBufferSpan().Slice(conn * 2 * Pattern.Size, Pattern.Size);

    private Span<byte> Sink(int conn) => _local.GetBufferSpan().Slice((conn * 2 + 1) * Pattern.Size, Pattern.Size);

    private void Post(int conn, bool read)
    {
        ulong local = _local.Address + (ulong)((conn * 2 + (read ? 1 : 0)) * Pattern.Size);
        _qps[conn]!.PostSend(new SendWorkRequest
        {
            WrId = ((ulong)conn << 1) | (read ? 1UL : 0UL),
            Opcode = read ? WrOpcode.RdmaRead : WrOpcode.RdmaWrite,
            Flags = SendFlags.Signaled,
            Local = new ScatterGatherElement(local, Pattern.Size, _local.LKey),
            RemoteAddress = _remote[conn],
            RKey = _rkeys[conn],
        });
    }

    public override void RunLoad(CancellationToken ct)
    {
        int n = Options.Connections, ops = Options.Ops;
        var op = new int[n];
        var postedAt = new long[n];
        var finished = new bool[n];
        int done = 0;
        for (int c = 0; c < n; c++)
        {
            Pattern.Fill(Source(c), Slots[c], 0);
            postedAt[c] = Stopwatch.GetTimestamp();
            Post(c, read: false);
        }
        var wcs = new WorkCompletion[256];
        while (done < n && !ct.IsCancellationRequested)
        {
            int got = _cq.Poll(wcs, TimeSpan.FromMilliseconds(100));
            long now = Stopwatch.GetTimestamp();
            for (int i = 0; i < got; i++)
            {
                int c = (int)(wcs[i].WrId >> 1);
                bool read = (wcs[i].WrId & 1) != 0;
                if (finished[c]) continue;
                if (wcs[i].Status != WcStatus.Success)
                {
                    Console.Error.WriteLine($"connection {c}: {wcs[i]}");
                    Errors++;
                    finished[c] = true;
                    done++;
                    continue;
                }
                long latency = now - postedAt[c];
                if (!read)
                {
                    WriteTicks[c * ops + op[c]] = latency;
                    Sink(c).Clear();
                    postedAt[c] = Stopwatch.GetTimestamp();
                    Post(c, read: true);
                    continue;
                }
                ReadTicks[c * ops + op[c]] = latency;
                if (!Pattern.Check(Sink(c), Slots[c], op[c]))
                {
                    Errors++;
                    finished[c] = true;
                    done++;
                    continue;
                }
                if (++op[c] == ops)
                {
                    finished[c] = true;
                    Completed++;
                    done++;
                    continue;
                }
                Pattern.Fill(Source(c), Slots[c], op[c]);
                postedAt[c] = Stopwatch.GetTimestamp();
                Post(c, read: false);
            }
        }
    }

    public override void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (var qp in _qps) qp?.Dispose();
        _local.Dispose();
        _cq.Dispose();
        _pd.Dispose();
        _device.Dispose();
    }
}

/// <summary>
/// N TCP connections, each an async loop of <c>'W'</c> + 4 KiB (answered by one byte) then <c>'R'</c> (answered by
/// 4 KiB): the runtime's epoll-driven async sockets on the client too.
/// </summary>
internal sealed class SocketScaleClient : ScaleClient
{
    private readonly Socket?[] _sockets;
    private readonly byte[] _buffers;
    private bool _disposed;

    public SocketScaleClient(ScaleOptions options) : base(options)
    {
        _sockets = new Socket?[options.Connections];
        // Per connection: 'W' + source (4097 bytes), then the sink (4 KiB), rounded to 12 KiB.
        _buffers = GC.AllocateUninitializedArray<byte>(options.Connections * 3 * Pattern.Size, pinned: true);
    }

    protected override async Task ConnectOneAsync(int conn, IPEndPoint endpoint, CancellationToken ct)
    {
        var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        _sockets[conn] = s;
        await s.ConnectAsync(endpoint, ct).ConfigureAwait(false);
        var slot = new byte[4];
        if (!await SocketScaleServer.ReceiveAll(s, slot).ConfigureAwait(false)) throw new IOException("the server closed before giving a slot");
        Slots[conn] = BinaryPrimitives.ReadInt32LittleEndian(slot);
    }

    public override void RunLoad(CancellationToken ct)
    {
        var tasks = new Task<bool>[Options.Connections];
        for (int c = 0; c < Options.Connections; c++) tasks[c] = RunConnection(c, ct);
        try
        {
            Task.WaitAll(tasks, ct);
        }
        catch (OperationCanceledException)
        {
        }
        foreach (var t in tasks)
        {
            if (t.IsCompletedSuccessfully && t.Result) Completed++;
            else Errors++;
        }
    }

    private async Task<bool> RunConnection(int c, CancellationToken ct)
    {
        await Task.Yield();
        var s = _sockets[c]!;
        var request = _buffers.AsMemory(c * 3 * Pattern.Size, Pattern.Size + 1);
        var sink = _buffers.AsMemory((c * 3 + 2) * Pattern.Size, Pattern.Size);
        var ack = new byte[1];
        var readRequest = "R"u8.ToArray();
        int ops = Options.Ops;
        try
        {
            for (int k = 0; k < ops; k++)
            {
                request.Span[0] = (byte)'W';
                Pattern.Fill(request.Span[1..], Slots[c], k);
                long t0 = Stopwatch.GetTimestamp();
                await SocketScaleServer.SendAll(s, request).ConfigureAwait(false);
                if (!await SocketScaleServer.ReceiveAll(s, ack).ConfigureAwait(false) || ack[0] != (byte)'A') return false;
                long t1 = Stopwatch.GetTimestamp();
                WriteTicks[c * ops + k] = t1 - t0;
                sink.Span.Clear();
                await SocketScaleServer.SendAll(s, readRequest).ConfigureAwait(false);
                if (!await SocketScaleServer.ReceiveAll(s, sink).ConfigureAwait(false)) return false;
                ReadTicks[c * ops + k] = Stopwatch.GetTimestamp() - t1;
                if (!Pattern.Check(sink.Span, Slots[c], k)) return false;
                if (ct.IsCancellationRequested) return false;
            }
            return true;
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            Console.Error.WriteLine($"connection {c}: {e.Message}");
            return false;
        }
    }

    public override void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (var s in _sockets)
        {
            if (s is null) continue;
            try
            {
                s.Shutdown(SocketShutdown.Both);
            }
            catch (SocketException)
            {
            }
            s.Dispose();
        }
    }
}
