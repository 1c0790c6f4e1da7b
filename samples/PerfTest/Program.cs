using System.Diagnostics;
using System.Net;
using PinnedDma;
using PinnedDma.Storage;
using PinnedDma.Transports.Iwarp;
using PinnedDma.Transports.Loopback;
using PinnedDma.Verbs;

// A perftest-shaped tool: write_bw, read_bw, send_lat, write_lat over the in-process loopback fabric or iWARP/TCP
// on 127.0.0.1. The responder's memory is a pinned range of a file on a volume in a local file.
//   dotnet run -c Release --project samples/PerfTest -- write_bw --transport iwarp --size 65536 --iters 5000
//   dotnet run -c Release --project samples/PerfTest -- all
// After each test, the same sizes and iteration counts over a raw TCP socket pair on 127.0.0.1 in the same run (the
// baseline; --no-baseline skips it): for the latency tests a blocking ping-pong (TCP_NODELAY), half the round trip,
// same columns; for the bandwidth tests a one-way stream of the same messages into a receiver that puts each in its
// own slot of a region the size of the RDMA target. A latency row whose 1 us histogram has two peaks is followed by
// a "modes" line with both.
if (args.Length > 0 && args[0] == "peer")
{
    var peerOptions = PeerOptions.Parse(args);
    if (peerOptions is null)
    {
        Console.Error.WriteLine("usage: PerfTest peer write_bw|read_bw|send_bw (--server [--bind addr] | --connect addr) [--port N] [--size N] [--iters N] [--no-crc] [--mpa-rev 1|2] [--max-fpdu N]");
        return 2;
    }
    using var peer = new PerftestPeer(peerOptions);
    return await peer.RunAsync();
}
var opts = Options.Parse(args);
if (opts is null)
{
    Console.Error.WriteLine("usage: PerfTest (write_bw|read_bw|send_lat|write_lat|all) [--transport loopback|iwarp] [--size N|--all-sizes] [--iters N] [--tx-depth N] [--events] [--no-crc] [--no-baseline]");
    return 2;
}
string[] tests = opts.Test == "all" ? new[] { "write_bw", "read_bw", "send_lat", "write_lat" } : new[] { opts.Test };
foreach (var t in tests)
{
    bool lat = t.EndsWith("_lat", StringComparison.Ordinal);
    using (var bench = await Bench.CreateAsync(opts))
    {
        Console.WriteLine($"# {t} over {opts.Transport}{(opts.Transport == "iwarp" ? $" (MPA rev 1, {(opts.Crc ? "CRC32c" : "no CRC")}, 127.0.0.1)" : "")}{(opts.Events ? ", sleeping on CQ events" : ", polling")}");
        Report.Header(lat);
        foreach (int size in opts.Sizes(lat))
        {
            int iters = opts.IterationsFor(size, lat);
            if (lat)
            {
                Report.Latency(size, iters, t == "send_lat" ? bench.SendLatency(size, iters) : bench.WriteLatency(size, iters));
            }
            else
            {
                var (peak, avg) = bench.Bandwidth(t == "write_bw" ? WrOpcode.RdmaWrite : WrOpcode.RdmaRead, size, iters);
                Report.Bandwidth(size, iters, peak, avg);
            }
        }
        Report.Footer();
    }
    if (!opts.Baseline) continue;
    Console.WriteLine(lat
        ? $"# {t} baseline: raw TCP socket ping-pong (blocking send/recv, TCP_NODELAY, 127.0.0.1), half the round trip, same run"
        : $"# {t} baseline: raw TCP socket stream (blocking send, receiver thread into per-message slots, TCP_NODELAY, 127.0.0.1), same run");
    Report.Header(lat);
    foreach (int size in opts.Sizes(lat))
    {
        int iters = opts.IterationsFor(size, lat);
        if (lat)
        {
            Report.Latency(size, iters, SocketBaseline.PingPong(size, iters));
        }
        else
        {
            var (peak, avg) = SocketBaseline.Stream(size, iters);
            Report.Bandwidth(size, iters, peak, avg);
        }
    }
    Report.Footer();
}
return 0;

sealed record Options(string Test, string Transport, int Size, bool AllSizes, int Iters, int TxDepth, bool Events = false, bool Crc = true, bool Baseline = true)
{
    public static Options? Parse(string[] a)
    {
        if (a.Length == 0) return new Options("all", "iwarp", 65536, true, 0, 128);
        var o = new Options(a[0], "iwarp", 65536, false, 0, 128);
        if (o.Test is not ("write_bw" or "read_bw" or "send_lat" or "write_lat" or "all")) return null;
        if (o.Test == "all") o = o with { AllSizes = true };
        for (int i = 1; i < a.Length; i++)
        {
            string Next() => i + 1 < a.Length ? a[++i] : throw new ArgumentException($"{a[i]} needs a value");
            switch (a[i])
            {
                case "--transport": o = o with { Transport = Next() }; break;
                case "--size": o = o with { Size = int.Parse(Next()), AllSizes = false }; break;
                case "--all-sizes": o = o with { AllSizes = true }; break;
                case "--iters": o = o with { Iters = int.Parse(Next()) }; break;
                case "--tx-depth": o = o with { TxDepth = int.Parse(Next()) }; break;
                // perftest's -e: sleep on the completion queue instead of spinning (on few cores the spinning
                // poller takes a core from the soft DMA engine and the receive threads).
                case "--events": o = o with { Events = true }; break;
                case "--no-crc": o = o with { Crc = false }; break;
                // The raw-socket rows after each test (on by default).
                case "--no-baseline": o = o with { Baseline = false }; break;
                default: return null;
            }
        }
        return o.Transport is "loopback" or "iwarp" ? o : null;
    }

    public IEnumerable<int> Sizes(bool lat) => !AllSizes ? new[] { Size }
        : lat ? new[] { 8, 64, 4096 } : new[] { 64, 4096, 65536, 1 << 20, 4 << 20 };

    public int IterationsFor(int size, bool lat) => Iters > 0 ? Iters : lat ? 2000 : (int)Math.Clamp((256L << 20) / size, 200, 20000);
}

sealed class Bench : IDisposable
{
    private const int Region = 8 << 20;
    private readonly string _dir = Directory.CreateTempSubdirectory("perftest-").FullName;
    private Volume _vol = null!;
    private PinOwner _owner = null!;
    private RdmaDevice _dev = null!, _dev2 = null!;
    private CompletionQueue _ccq = null!, _scq = null!;
    private QueuePair _client = null!, _server = null!;
    private MemoryRegion _local = null!, _remote = null!, _serverLocal = null!;
    private IwarpListener? _listener;
    private int _txDepth;
    private bool _events;

    public static async Task<Bench> CreateAsync(Options o)
    {
        var b = new Bench { _txDepth = o.TxDepth, _events = o.Events };
        b._vol = Volume.Create(Path.Combine(b._dir, "volume.img"), new VolumeOptions { BlockCount = (Region / 4096) + 4096 });
        var file = b._vol.CreateFile("target");
        file.Allocate(0, Region);
        b._owner = new PinOwner(b._vol, 1L << 30);
        b._dev = new RdmaDevice("perf-server");
        b._dev2 = o.Transport == "iwarp" ? new RdmaDevice("perf-client") : b._dev;
        var spd = b._dev.AllocatePd();
        var cpd = o.Transport == "iwarp" ? b._dev2.AllocatePd() : spd;
        b._scq = b._dev.CreateCompletionQueue(4096);
        b._ccq = b._dev2.CreateCompletionQueue(4096);
        b._server = spd.CreateQueuePair(new QueuePairOptions { SendCq = b._scq, RecvCq = b._scq, MaxSendWr = 1024, MaxRecvWr = 1024 });
        b._client = cpd.CreateQueuePair(new QueuePairOptions { SendCq = b._ccq, RecvCq = b._ccq, MaxSendWr = 1024, MaxRecvWr = 1024 });
        b._remote = spd.RegisterFile(b._owner, file, 0, Region, AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteRead);
        b._serverLocal = spd.RegisterBuffer(Region, AccessFlags.LocalWrite | AccessFlags.RemoteWrite);
        b._local = cpd.RegisterBuffer(Region, AccessFlags.LocalWrite | AccessFlags.RemoteWrite);
        if (o.Transport == "loopback")
        {
            LoopbackFabric.Connect(b._client, b._server);
        }
        else
        {
            var io = new IwarpOptions { MaxFpduSize = 65536, Crc = o.Crc };
            b._listener = new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0), io);
            var accept = Task.Run(async () =>
            {
                var req = await b._listener.AcceptAsync();
                b._server.Modify(new QpAttributes { State = QpState.Init, AccessFlags = AccessFlags.RemoteRead | AccessFlags.RemoteWrite });
                req.Accept(b._server);
            });
            var connect = IwarpConnector.ConnectAsync(b._client, b._listener.LocalEndPoint, default, io);
            await accept;
            await connect;
        }
        return b;
    }

    public (double PeakMBs, double AvgMBs) Bandwidth(WrOpcode op, int size, int iters)
    {
        var wcs = new WorkCompletion[64];
        int posted = 0, completed = 0, outstanding = 0;
        const int signalEvery = 16;
        long slots = Region / size;
        var sw = Stopwatch.StartNew();
        double peak = 0;
        long windowStart = 0, windowDone = 0;
        var idleSpin = new SpinWait();
        while (completed < iters)
        {
            while (posted < iters && outstanding < _txDepth)
            {
                long off = (posted % slots) * size;
                bool signaled = (posted + 1) % signalEvery == 0 || posted + 1 == iters;
                _client.PostSend(new SendWorkRequest
                {
                    WrId = (ulong)posted, Opcode = op, Flags = signaled ? SendFlags.Signaled : SendFlags.None,
                    Local = new ScatterGatherElement(_local.Address + (ulong)off, (uint)size, _local.LKey),
                    RemoteAddress = _remote.Address + (ulong)off, RKey = _remote.RKey,
                });
                posted++;
                outstanding++;
            }
            bool idle = outstanding >= _txDepth || posted == iters;
            int n = _events && idle ? _ccq.Poll(wcs, TimeSpan.FromMilliseconds(100)) : _ccq.Poll(wcs);
            for (int i = 0; i < n; i++)
            {
                if (wcs[i].Status != WcStatus.Success) throw new InvalidOperationException($"completion failed: {wcs[i]}");
                int done = (int)wcs[i].WrId + 1;
                outstanding -= done - completed;
                completed = done;
            }
            if (n == 0) idleSpin.SpinOnce(sleep1Threshold: -1);
            else idleSpin.Reset();
            long now = sw.ElapsedTicks;
            if (now - windowStart > Stopwatch.Frequency / 50 && completed > windowDone)
            {
                peak = Math.Max(peak, (completed - windowDone) * (double)size / ((now - windowStart) / (double)Stopwatch.Frequency) / 1e6);
                windowStart = now;
                windowDone = completed;
            }
        }
        double avg = (double)iters * size / sw.Elapsed.TotalSeconds / 1e6;
        return (Math.Max(peak, avg), avg);
    }

    // Receives hold the largest message size: the one left posted after a size's last round then fits the next size.
    private const uint RecvLength = 65536;

    /// <summary>ib_send_lat: ping-pong of sends; half the round trip.</summary>
    public double[] SendLatency(int size, int iters)
    {
        var result = new double[iters];
        var wc = new WorkCompletion[4];
        var serverThread = new Thread(() =>
        {
            var swc = new WorkCompletion[4];
            for (int i = 0; i < iters; i++)
            {
                WaitFor(_scq, swc, WcOpcode.Recv);
                _server.PostRecv(new RecvWorkRequest(1, new ScatterGatherElement(_serverLocal.Address, RecvLength, _serverLocal.LKey)));
                _server.PostSend(new SendWorkRequest { WrId = 2, Opcode = WrOpcode.Send, Flags = SendFlags.Signaled, Local = new ScatterGatherElement(_serverLocal.Address + 65536, (uint)size, _serverLocal.LKey) });
                WaitFor(_scq, swc, WcOpcode.Send);
            }
        }) { IsBackground = true };
        _server.PostRecv(new RecvWorkRequest(1, new ScatterGatherElement(_serverLocal.Address, RecvLength, _serverLocal.LKey)));
        _client.PostRecv(new RecvWorkRequest(3, new ScatterGatherElement(_local.Address + 65536, RecvLength, _local.LKey)));
        serverThread.Start();
        for (int i = 0; i < iters; i++)
        {
            long t0 = Stopwatch.GetTimestamp();
            _client.PostSend(new SendWorkRequest { WrId = 4, Opcode = WrOpcode.Send, Flags = SendFlags.Signaled, Local = new ScatterGatherElement(_local.Address, (uint)size, _local.LKey) });
            WaitFor(_ccq, wc, WcOpcode.Recv, alsoDrain: WcOpcode.Send);
            result[i] = Stopwatch.GetElapsedTime(t0).TotalMicroseconds / 2;
            _client.PostRecv(new RecvWorkRequest(3, new ScatterGatherElement(_local.Address + 65536, RecvLength, _local.LKey)));
        }
        serverThread.Join();
        return result;
    }

    /// <summary>ib_write_lat: ping-pong of RDMA writes, each side polling its memory for the peer's write; half the round trip.</summary>
    public unsafe double[] WriteLatency(int size, int iters)
    {
        var result = new double[iters];
        var remoteFile = _remote.Pin!;
        byte* serverMem;
        // Device memory is native (mmap), so the address stays valid outside the fixed block.
        fixed (byte* p = _vol.Device.GetSpan(remoteFile.Translate(0).DeviceOffset, size)) serverMem = p;
        byte* clientMem = (byte*)(_local.Address + 65536);
        var client = _client;
        var server = _server;
        var serverThread = new Thread(() =>
        {
            var swc = new WorkCompletion[8];
            for (int i = 1; i <= iters; i++)
            {
                byte tag = (byte)i;
                var spin = new SpinWait();
                while (Volatile.Read(ref serverMem[size - 1]) != tag) spin.SpinOnce(sleep1Threshold: -1);
                // The reply carries the same tag; the source buffer then belongs to the device until the completion.
                ((Span<byte>)new Span<byte>((void*)_serverLocal.Address, size))[size - 1] = tag;
                server.PostSend(new SendWorkRequest { WrId = 5, Opcode = WrOpcode.RdmaWrite, Flags = SendFlags.Signaled, Local = new ScatterGatherElement(_serverLocal.Address, (uint)size, _serverLocal.LKey), RemoteAddress = _local.Address + 65536, RKey = _local.RKey });
                WaitFor(_scq, swc, WcOpcode.RdmaWrite);
            }
        }) { IsBackground = true };
        serverThread.Start();
        var wc = new WorkCompletion[8];
        var src = new Span<byte>((void*)_local.Address, size);
        for (int i = 1; i <= iters; i++)
        {
            src[size - 1] = (byte)i;
            long t0 = Stopwatch.GetTimestamp();
            client.PostSend(new SendWorkRequest { WrId = 6, Opcode = WrOpcode.RdmaWrite, Flags = SendFlags.Signaled, Local = new ScatterGatherElement(_local.Address, (uint)size, _local.LKey), RemoteAddress = _remote.Address, RKey = _remote.RKey });
            byte want = (byte)i;
            var spin = new SpinWait();
            while (Volatile.Read(ref clientMem[size - 1]) != want) spin.SpinOnce(sleep1Threshold: -1);
            result[i - 1] = Stopwatch.GetElapsedTime(t0).TotalMicroseconds / 2;
            WaitFor(_ccq, wc, WcOpcode.RdmaWrite);
        }
        serverThread.Join();
        return result;
    }

    private static void WaitFor(CompletionQueue cq, WorkCompletion[] wc, WcOpcode op, WcOpcode? alsoDrain = null)
    {
        bool seen = false, drained = alsoDrain is null;
        long deadline = Environment.TickCount64 + 10_000;
        // Spin, then yield: on a machine with few cores a poller that never yields starves the DMA engine and the
        // receive threads until the scheduler preempts it (milliseconds).
        var spin = new SpinWait();
        while (!seen || !drained)
        {
            int n = cq.Poll(wc.AsSpan(0, 1));
            if (n == 0)
            {
                if (Environment.TickCount64 > deadline) throw new TimeoutException($"no {op} completion in 10 s");
                spin.SpinOnce(sleep1Threshold: -1);
                continue;
            }
            if (wc[0].Status != WcStatus.Success) throw new InvalidOperationException($"completion failed: {wc[0]}");
            if (wc[0].Opcode == op && !seen) seen = true;
            else if (wc[0].Opcode == alsoDrain) drained = true;
        }
    }

    public void Dispose()
    {
        _listener?.Dispose();
        _client.Dispose();
        _server.Dispose();
        _owner.Dispose();
        if (_dev2 != _dev) _dev2.Dispose();
        _dev.Dispose();
        _vol.Dispose();
        Directory.Delete(_dir, true);
    }
}
