using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using PinnedDma;
using PinnedDma.Storage;
using PinnedDma.Transports.Iwarp;
using PinnedDma.Verbs;

// A storage server that lets clients RDMA-read and -write their file directly while it keeps cloning, truncating
// and compacting underneath. Leases break; the server deregisters in time, re-registers after the operation and sends
// the client its new key; a client whose key went stale sees RemAccessErr and reconnects for a fresh one.
//   dotnet run --project samples/StorageServer                     (server + 2 clients in one process, 5 s)
//   dotnet run --project samples/StorageServer -- server 7471     (server only)
//   dotnet run --project samples/StorageServer -- client 127.0.0.1:7471 5 [id]   (id: the client's file, default 1)
string mode = args.Length > 0 ? args[0] : "demo";
var seconds = TimeSpan.FromSeconds(args.Length > 2 ? double.Parse(args[2]) : 5);
switch (mode)
{
    case "server":
        {
            using var server = new StorageServer(new IPEndPoint(IPAddress.Loopback, args.Length > 1 ? int.Parse(args[1]) : 7471));
            Console.WriteLine($"serving on {server.EndPoint}; Ctrl+C stops");
            // The library's meter is named PinnedDma; any .NET metrics tool can read it from this process.
            Console.WriteLine($"metrics: dotnet-counters monitor -p {Environment.ProcessId} --counters PinnedDma");
            var stop = new CancellationTokenSource();
            Console.CancelKeyPress += (_, e) => { e.Cancel = true; stop.Cancel(); };
            await server.RunAsync(stop.Token);
            return 0;
        }
    case "client":
        {
            var ep = IPEndPoint.Parse(args[1]);
            // Each client id is its own tenant (file and registration); two clients with one id take turns at it.
            var stats = await Client.RunAsync(ep, args.Length > 3 ? int.Parse(args[3]) : 1, seconds);
            Console.WriteLine(stats);
            return stats.Corrupt == 0 ? 0 : 1;
        }
    default:
        {
            using var server = new StorageServer(new IPEndPoint(IPAddress.Loopback, 0));
            Console.WriteLine($"server  {server.EndPoint}, volume {server.VolumePath}");
            using var stop = new CancellationTokenSource();
            var serverTask = server.RunAsync(stop.Token);
            var clients = Enumerable.Range(1, 2).Select(i => Client.RunAsync(server.EndPoint, i, seconds)).ToArray();
            var results = await Task.WhenAll(clients);
            stop.Cancel();
            await serverTask;
            foreach (var r in results) Console.WriteLine(r);
            Console.WriteLine(server.Report());
            return results.All(r => r.Corrupt == 0) && server.FsckClean ? 0 : 1;
        }
}

/// <summary>Per-client file and its current registration.</summary>
sealed class Tenant
{
    public required VolumeFile File;
    // Each client gets its own protection domain: a key guessed or stolen by another client names nothing in that
    // client's PD, so it fails however many keys are tried (the 8-bit key byte alone is not a defence).
    public required ProtectionDomain Pd;
    public required MemoryRegion Ctl;
    public required QueuePair Qp;
    public MemoryRegion? Mr;
    public uint Epoch;
}

sealed class StorageServer : IDisposable
{
    public const long RegionBytes = 1 << 20;
    private readonly string _dir = Directory.CreateTempSubdirectory("storage-server-").FullName;
    private readonly Volume _volume;
    private readonly PinOwner _owner;
    private readonly RdmaDevice _nic = new("server0");
    private readonly CompletionQueue _cq;
    private readonly IwarpListener _listener;
    private readonly ConcurrentDictionary<int, Tenant> _tenants = new();
    private long _clones, _truncates, _compactions, _breaks, _rekeys, _moved;

    public StorageServer(IPEndPoint endpoint)
    {
        VolumePath = Path.Combine(_dir, "volume.img");
        _volume = Volume.Create(VolumePath, new VolumeOptions { BlockCount = 8192, DefaultConflictPolicy = ConflictPolicy.Break(TimeSpan.FromMilliseconds(200)) });
        _owner = new PinOwner(_volume, 256 << 20, "storage-server");
        _cq = _nic.CreateCompletionQueue(4096);
        _listener = new IwarpListener(endpoint);
    }

    public string VolumePath { get; }
    public IPEndPoint EndPoint => _listener.LocalEndPoint;
    public bool FsckClean { get; private set; } = true;

    public async Task RunAsync(CancellationToken stop)
    {
        var maintenance = Task.Run(() => Maintain(stop));
        try
        {
            while (!stop.IsCancellationRequested)
            {
                var request = await _listener.AcceptAsync(stop);
                int id = BinaryPrimitives.ReadInt32LittleEndian(request.PrivateData.Span);
                var tenant = _tenants.AddOrUpdate(id, _ => NewTenant(id), (_, old) => Reconnect(old));
                lock (tenant)
                {
                    tenant.Qp.Modify(new QpAttributes { State = QpState.Init, AccessFlags = AccessFlags.RemoteRead | AccessFlags.RemoteWrite });
                    request.Accept(tenant.Qp, KeyMessage(tenant));
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
        await maintenance;
    }

    private Tenant NewTenant(int id)
    {
        var file = _volume.OpenOrCreateFile($"client-{id}");
        file.Allocate(0, RegionBytes);
        var pd = _nic.AllocatePd();
        var t = new Tenant { File = file, Pd = pd, Ctl = pd.RegisterBuffer(4096, AccessFlags.LocalWrite), Qp = NewQp(pd) };
        Register(t);
        return t;
    }

    private Tenant Reconnect(Tenant old)
    {
        lock (old)
        {
            old.Qp.Dispose();
            old.Qp = NewQp(old.Pd);
            return old;
        }
    }

    private QueuePair NewQp(ProtectionDomain pd) => pd.CreateQueuePair(new QueuePairOptions { SendCq = _cq, RecvCq = _cq });

    /// <summary>Registers the tenant's file; on a lease break, deregisters at once so the operation can go on.</summary>
    private void Register(Tenant t)
    {
        var mr = t.Pd.RegisterFile(_owner, t.File, 0, RegionBytes, AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteRead);
        mr.LeaseBreaking += (_, _) =>
        {
            Interlocked.Increment(ref _breaks);
            mr.Dispose();
        };
        t.Mr = mr;
        t.Epoch++;
    }

    private static byte[] KeyMessage(Tenant t)
    {
        var m = new byte[16];
        BinaryPrimitives.WriteUInt32LittleEndian(m, t.Mr!.RKey);
        BinaryPrimitives.WriteUInt64LittleEndian(m.AsSpan(4), t.Mr.Address);
        BinaryPrimitives.WriteUInt32LittleEndian(m.AsSpan(12), t.Epoch);
        return m;
    }

    /// <summary>What a storage server does all day: snapshots (clone), trims (truncate and regrow), compaction.</summary>
    private void Maintain(CancellationToken stop)
    {
        var rng = new Random(1);
        var wc = new WorkCompletion[64];
        while (!stop.IsCancellationRequested)
        {
            Thread.Sleep(20);
            _cq.Poll(wc);
            foreach (var (id, t) in _tenants)
            {
                lock (t)
                {
                    switch (rng.Next(4))
                    {
                        case 0: // snapshot: clone from the pinned file, no conflict
                            var snap = _volume.OpenOrCreateFile($"snap-{id}");
                            snap.CloneRangeFrom(t.File, 0, 0, t.File.Length);
                            snap.Truncate(rng.Next(0, (int)RegionBytes));
                            Interlocked.Increment(ref _clones);
                            break;
                        case 1: // trim: the lease breaks, the server deregisters, the range is rebuilt and re-registered
                            t.File.Truncate(RegionBytes / 2);
                            t.File.Allocate(0, RegionBytes);
                            Interlocked.Increment(ref _truncates);
                            Register(t);
                            SendKey(t);
                            Interlocked.Increment(ref _rekeys);
                            break;
                        default: // compaction skips pinned blocks
                            Interlocked.Add(ref _moved, _volume.Compact());
                            Interlocked.Increment(ref _compactions);
                            break;
                    }
                }
            }
            _volume.Commit();
        }
        foreach (var t in _tenants.Values) t.Mr?.Dispose();
        var report = _volume.Fsck();
        FsckClean = report.IsClean;
    }

    private void SendKey(Tenant t)
    {
        if (t.Qp.State != QpState.Rts) return; // the client will reconnect and get the key then
        KeyMessage(t).CopyTo(t.Ctl.GetBufferSpan());
        t.Qp.PostSend(new SendWorkRequest { WrId = 9, Opcode = WrOpcode.Send, Local = new ScatterGatherElement(t.Ctl.Address, 16, t.Ctl.LKey) });
    }

    public string Report() =>
        $"server  clones {_clones}, truncates {_truncates}, compactions {_compactions} ({_moved} blocks moved), lease breaks {_breaks}, re-keys {_rekeys}; fsck {(FsckClean ? "clean" : "NOT CLEAN")}";

    public void Dispose()
    {
        _listener.Dispose();
        foreach (var t in _tenants.Values) t.Qp.Dispose();
        _owner.Dispose();
        _nic.Dispose();
        _volume.Dispose();
        Directory.Delete(_dir, true);
    }
}

readonly record struct ClientStats(int Id, long Writes, long VerifiedReads, long KeyUpdates, long Reconnects, long StaleKeyErrors, long Corrupt)
{
    public override string ToString() =>
        $"client {Id}: {Writes} writes, {VerifiedReads} verified reads, {KeyUpdates} key updates, {Reconnects} reconnects after {StaleKeyErrors} stale-key errors, {Corrupt} corrupt";
}

static class Client
{
    public static async Task<ClientStats> RunAsync(IPEndPoint server, int id, TimeSpan duration)
    {
        using var nic = new RdmaDevice($"client{id}");
        var pd = nic.AllocatePd();
        var cq = nic.CreateCompletionQueue(256);
        var buf = pd.RegisterBuffer(3 * 4096, AccessFlags.LocalWrite);
        var rng = new Random(id);
        long writes = 0, reads = 0, updates = 0, reconnects = 0, stale = 0, corrupt = 0;
        var sw = Stopwatch.StartNew();
        while (sw.Elapsed < duration)
        {
            var qp = pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = cq });
            qp.Modify(new QpAttributes { State = QpState.Init });
            qp.PostRecv(new RecvWorkRequest(100, new ScatterGatherElement(buf.Address + 8192, 16, buf.LKey)));
            var hello = new byte[4];
            BinaryPrimitives.WriteInt32LittleEndian(hello, id);
            var key = await IwarpConnector.ConnectAsync(qp, server, hello);
            uint rkey = BinaryPrimitives.ReadUInt32LittleEndian(key.Span);
            ulong addr = BinaryPrimitives.ReadUInt64LittleEndian(key.Span[4..]);
            var wc = new WorkCompletion[8];
            bool broken = false;
            while (!broken && sw.Elapsed < duration)
            {
                long off = rng.Next(0, (int)(StorageServer.RegionBytes / 4096)) * 4096L;
                var page = buf.GetBufferSpan()[..4096];
                BinaryPrimitives.WriteInt64LittleEndian(page, writes);
                page[8..].Fill((byte)writes);
                qp.PostSend(new SendWorkRequest { WrId = 1, Opcode = WrOpcode.RdmaWrite, Local = new ScatterGatherElement(buf.Address, 4096, buf.LKey), RemoteAddress = addr + (ulong)off, RKey = rkey });
                qp.PostSend(new SendWorkRequest { WrId = 2, Opcode = WrOpcode.RdmaRead, Flags = SendFlags.Signaled, Local = new ScatterGatherElement(buf.Address + 4096, 4096, buf.LKey), RemoteAddress = addr + (ulong)off, RKey = rkey });
                writes++;
                bool done = false;
                long deadline = Environment.TickCount64 + 5000;
                while (!done && Environment.TickCount64 < deadline)
                {
                    int n = cq.Poll(wc);
                    if (n == 0) { await Task.Yield(); continue; }
                    for (int i = 0; i < n; i++)
                    {
                        var c = wc[i];
                        if (c.Opcode == WcOpcode.Recv && c.Status == WcStatus.Success)
                        {
                            var msg = buf.GetBufferSpan().Slice(8192, 16);
                            rkey = BinaryPrimitives.ReadUInt32LittleEndian(msg);
                            addr = BinaryPrimitives.ReadUInt64LittleEndian(msg[4..]);
                            updates++;
                            qp.PostRecv(new RecvWorkRequest(100, new ScatterGatherElement(buf.Address + 8192, 16, buf.LKey)));
                        }
                        else if (c.WrId == 2)
                        {
                            done = true;
                            if (c.Status == WcStatus.Success)
                            {
                                reads++;
                                if (!buf.GetBufferSpan().Slice(4096, 4096).SequenceEqual(buf.GetBufferSpan()[..4096])) corrupt++;
                            }
                            else
                            {
                                if (c.Status is WcStatus.RemAccessErr or WcStatus.WrFlushErr or WcStatus.RetryExcErr) stale++;
                                broken = true;
                            }
                        }
                        else if (c.Status != WcStatus.Success && c.Opcode != WcOpcode.Recv)
                        {
                            done = broken = true;
                            stale++;
                        }
                    }
                }
                if (!done) broken = true;
            }
            qp.Dispose();
            if (broken) reconnects++;
        }
        return new ClientStats(id, writes, reads, updates, reconnects, stale, corrupt);
    }
}
