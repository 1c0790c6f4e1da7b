using System.Buffers.Binary;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Runtime.InteropServices;
using PinnedDma;
using PinnedDma.Storage;
using PinnedDma.Transports.Iwarp;
using PinnedDma.Verbs;

// A storage server that lets clients RDMA-read and -write their file directly while it keeps cloning, truncating
// and compacting underneath. Leases break; the server deregisters in time, re-registers after the operation and sends
// the client its new key; a client whose key went stale sees RemAccessErr and reconnects for a fresh one.
// Everything waits asynchronously: completions through CompletionQueue.WaitAsync, lease-breaking volume operations
// through their Async forms, each client's maintenance as its own task. Ctrl+C or SIGTERM shuts it down in order:
// stop accepting, let each client's current operation finish, disconnect the clients (their in-flight DMA drains),
// deregister, commit the volume, check it, dispose.
//   dotnet run --project samples/StorageServer                     (server + 2 clients in one process, 5 s)
//   dotnet run --project samples/StorageServer -- server 7471 [volume.img]   (server only; the volume is kept when named)
//   dotnet run --project samples/StorageServer -- client 127.0.0.1:7471 5 [id]   (id: the client's file, default 1)
string mode = args.Length > 0 ? args[0] : "demo";
switch (mode)
{
    case "server":
        {
            int port = args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 7471;
            using var stop = new CancellationTokenSource();
            // Ctrl+C (SIGINT) and SIGTERM (kill, a service manager): no abrupt exit, the server shuts down in order.
            using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, Stop);
            using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, Stop);
            await using var server = new StorageServer(new IPEndPoint(IPAddress.Loopback, port), args.Length > 2 ? args[2] : null);
            Console.WriteLine($"serving on {server.EndPoint}, volume {server.VolumePath}; Ctrl+C or SIGTERM stops");
            // The library's meter is named PinnedDma; any .NET metrics tool can read it from this process.
            Console.WriteLine($"metrics: dotnet-counters monitor -p {Environment.ProcessId} --counters PinnedDma");
            await server.RunAsync(stop.Token);
            Console.WriteLine(server.Report());
            return server.FsckClean ? 0 : 1;

            void Stop(PosixSignalContext context)
            {
                context.Cancel = true;
                stop.Cancel();
            }
        }
    case "client":
        {
            var ep = IPEndPoint.Parse(args[1]);
            var seconds = TimeSpan.FromSeconds(args.Length > 2 ? double.Parse(args[2], CultureInfo.InvariantCulture) : 5);
            // Each client id is its own tenant (file and registration); two clients with one id take turns at it.
            var stats = await Client.RunAsync(ep, args.Length > 3 ? int.Parse(args[3], CultureInfo.InvariantCulture) : 1, seconds);
            Console.WriteLine(stats);
            return stats.Corrupt == 0 ? 0 : 1;
        }
    default:
        {
            var seconds = TimeSpan.FromSeconds(args.Length > 2 ? double.Parse(args[2], CultureInfo.InvariantCulture) : 5);
            await using var server = new StorageServer(new IPEndPoint(IPAddress.Loopback, 0));
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
    public required int Id;
    public required VolumeFile File;
    // Each client gets its own protection domain: a key guessed or stolen by another client names nothing in that
    // client's PD, so it fails however many keys are tried (the 8-bit key byte alone is not a defence).
    public required ProtectionDomain Pd;
    public required MemoryRegion Ctl;
    public required QueuePair Qp;
    public MemoryRegion? Mr;
    public uint Epoch;
    // Held by whoever changes the tenant: the accept loop (a reconnect) or the tenant's maintenance task.
    public readonly SemaphoreSlim Gate = new(1, 1);
    public Task Maintenance = Task.CompletedTask;
}

sealed class StorageServer : IAsyncDisposable
{
    public const long RegionBytes = 1 << 20;
    private static readonly VolumeOptions Options = new() { BlockCount = 8192, DefaultConflictPolicy = ConflictPolicy.Break(TimeSpan.FromMilliseconds(200)) };
    private readonly string? _tempDir;
    private readonly Volume _volume;
    private readonly PinOwner _owner;
    private readonly RdmaDevice _nic = new("server0");
    private readonly CompletionQueue _cq;
    private readonly IwarpListener _listener;
    private readonly Dictionary<int, Tenant> _tenants = new(); // the accept loop's alone until it has ended
    private long _clones, _truncates, _compactions, _breaks, _rekeys, _moved, _errors, _rejected;

    /// <param name="endpoint">Where to listen.</param>
    /// <param name="volumePath">The volume file (opened if it exists, created if not, and kept); null: a temporary one.</param>
    public StorageServer(IPEndPoint endpoint, string? volumePath = null)
    {
        if (volumePath is null)
        {
            _tempDir = Directory.CreateTempSubdirectory("storage-server-").FullName;
            volumePath = Path.Combine(_tempDir, "volume.img");
        }
        VolumePath = Path.GetFullPath(volumePath);
        _volume = File.Exists(VolumePath) ? Volume.Open(VolumePath, Options) : Volume.Create(VolumePath, Options);
        _owner = new PinOwner(_volume, 256 << 20, "storage-server");
        _cq = _nic.CreateCompletionQueue(4096);
        _listener = new IwarpListener(endpoint);
    }

    public string VolumePath { get; }
    public IPEndPoint EndPoint => _listener.LocalEndPoint;
    public bool FsckClean { get; private set; } = true;

    /// <summary>Serves until <paramref name="stop"/> is canceled, then shuts down in order (see the file's header).</summary>
    public async Task RunAsync(CancellationToken stop)
    {
        var completions = DrainCompletionsAsync(stop);
        try
        {
            while (true)
            {
                IwarpConnectionRequest request;
                try
                {
                    request = await _listener.AcceptAsync(stop);
                }
                catch (OperationCanceledException) when (stop.IsCancellationRequested)
                {
                    break;
                }
                await AdmitAsync(request, stop);
            }
        }
        finally
        {
            await ShutdownAsync(completions);
        }
    }

    private async Task AdmitAsync(IwarpConnectionRequest request, CancellationToken stop)
    {
        if (request.PrivateData.Length != 4)
        {
            Interlocked.Increment(ref _rejected);
            request.Reject("expected a 4-byte client id"u8);
            return;
        }
        int id = BinaryPrimitives.ReadInt32LittleEndian(request.PrivateData.Span);
        bool fresh = !_tenants.TryGetValue(id, out var tenant);
        if (tenant is null)
        {
            tenant = NewTenant(id);
            _tenants.Add(id, tenant);
            tenant.Maintenance = MaintainAsync(tenant, stop);
        }
        try
        {
            await tenant.Gate.WaitAsync(stop);
        }
        catch (OperationCanceledException)
        {
            request.Reject("shutting down"u8);
            return;
        }
        try
        {
            if (!fresh)
            {
                tenant.Qp.Dispose();
                tenant.Qp = NewQp(tenant.Pd);
            }
            if (tenant.Mr is not { IsValid: true }) Register(tenant); // a break that came between operations
            tenant.Qp.Modify(new QpAttributes { State = QpState.Init, AccessFlags = AccessFlags.RemoteRead | AccessFlags.RemoteWrite });
            request.Accept(tenant.Qp, KeyMessage(tenant));
        }
        catch (PinnedDmaException e)
        {
            // The client went away during the handshake, or the registration failed: it reconnects for another try.
            Interlocked.Increment(ref _errors);
            Console.Error.WriteLine($"client {id}: not admitted: {e.Message}");
        }
        finally
        {
            tenant.Gate.Release();
        }
    }

    private Tenant NewTenant(int id)
    {
        var file = _volume.OpenOrCreateFile($"client-{id}");
        file.Allocate(0, RegionBytes);
        var pd = _nic.AllocatePd();
        var t = new Tenant { Id = id, File = file, Pd = pd, Ctl = pd.RegisterBuffer(4096, AccessFlags.LocalWrite), Qp = NewQp(pd) };
        Register(t);
        return t;
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

    /// <summary>
    /// The server's completions (the key messages it sends): awaited, never polled in a loop. Only failures complete
    /// (the sends are unsignaled); a flushed send belongs to a client that is reconnecting anyway.
    /// </summary>
    private async Task DrainCompletionsAsync(CancellationToken stop)
    {
        var wc = new WorkCompletion[64];
        try
        {
            while (true)
            {
                await _cq.WaitAsync(stop);
                int n = _cq.Poll(wc);
                for (int i = 0; i < n; i++)
                    if (wc[i].Status is not (WcStatus.Success or WcStatus.WrFlushErr)) Interlocked.Increment(ref _errors);
            }
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
        }
        catch (PinnedDmaException e) when (e.Error == PinnedDmaError.NoSpace)
        {
            // In error for good (see CompletionQueue): the key messages go on; their failures are no longer counted.
            Console.Error.WriteLine($"server completion queue: {e.Message}");
        }
    }

    /// <summary>What a storage server does all day for each client: snapshots (clone), trims (truncate and regrow), compaction.</summary>
    private async Task MaintainAsync(Tenant t, CancellationToken stop)
    {
        await Task.Yield(); // the accept loop goes on at once
        var rng = new Random(t.Id);
        using var timer = new PeriodicTimer(TimeSpan.FromMilliseconds(20));
        try
        {
            while (await timer.WaitForNextTickAsync(stop))
            {
                await t.Gate.WaitAsync(stop);
                try
                {
                    await MaintainOnceAsync(t, rng.Next(4), rng, stop);
                    _volume.Commit();
                }
                catch (PinnedDmaException e)
                {
                    Interlocked.Increment(ref _errors);
                    Console.Error.WriteLine($"client {t.Id}: maintenance: {e.Message}");
                }
                finally
                {
                    t.Gate.Release();
                }
            }
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
            // Canceled between operations, or before a lease-waiting operation was applied (it changed nothing).
        }
    }

    private async Task MaintainOnceAsync(Tenant t, int what, Random rng, CancellationToken stop)
    {
        switch (what)
        {
            case 0: // snapshot: clone from the pinned file, no conflict
                var snap = _volume.OpenOrCreateFile($"snap-{t.Id}");
                await snap.CloneRangeFromAsync(t.File, 0, 0, t.File.Length, cancellationToken: stop);
                await snap.TruncateAsync(rng.Next(0, (int)RegionBytes), cancellationToken: stop);
                Interlocked.Increment(ref _clones);
                break;
            case 1: // trim: the lease breaks, the server deregisters, the range is rebuilt and re-registered
                await t.File.TruncateAsync(RegionBytes / 2, cancellationToken: stop);
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

    private void SendKey(Tenant t)
    {
        if (t.Qp.State != QpState.Rts) return; // the client will reconnect and get the key then
        KeyMessage(t).CopyTo(t.Ctl.GetBufferSpan());
        try
        {
            t.Qp.PostSend(new SendWorkRequest { WrId = 9, Opcode = WrOpcode.Send, Local = new ScatterGatherElement(t.Ctl.Address, 16, t.Ctl.LKey) });
        }
        catch (PinnedDmaException)
        {
            // The connection went to Error meanwhile (or its send queue is full): the client reconnects for the key.
        }
    }

    /// <summary>
    /// Stop accepting; let every client's current operation finish; disconnect the clients (queue-pair dispose waits
    /// for the DMA inside it to leave, so every write a client saw complete is in the file); deregister; commit and
    /// check the volume.
    /// </summary>
    private async Task ShutdownAsync(Task completions)
    {
        _listener.Dispose();
        await Task.WhenAll(_tenants.Values.Select(t => t.Maintenance));
        await completions;
        foreach (var t in _tenants.Values)
        {
            t.Qp.Dispose();
            t.Mr?.Dispose();
            t.Ctl.Dispose();
        }
        _volume.Commit();
        FsckClean = _volume.Fsck().IsClean;
    }

    public string Report() =>
        $"server  clones {_clones}, truncates {_truncates}, compactions {_compactions} ({_moved} blocks moved), lease breaks {_breaks}, re-keys {_rekeys}, errors {_errors}, rejected {_rejected}; fsck {(FsckClean ? "clean" : "NOT CLEAN")}";

    /// <summary>Disposes in order: the listener, the clients' queue pairs, the pin owner, the device, the volume (its final checkpoint).</summary>
    public ValueTask DisposeAsync()
    {
        _listener.Dispose();
        foreach (var t in _tenants.Values) t.Qp.Dispose();
        _owner.Dispose();
        _nic.Dispose();
        _volume.Dispose();
        if (_tempDir is not null) Directory.Delete(_tempDir, true);
        return ValueTask.CompletedTask;
    }
}

readonly record struct ClientStats(int Id, long Writes, long VerifiedReads, long KeyUpdates, long Reconnects, long StaleKeyErrors, long Corrupt)
{
    public override string ToString() =>
        $"client {Id}: {Writes} writes, {VerifiedReads} verified reads, {KeyUpdates} key updates, {Reconnects} reconnects after {StaleKeyErrors} stale-key errors, {Corrupt} corrupt";
}

static class Client
{
    private static readonly TimeSpan OperationTimeout = TimeSpan.FromSeconds(5);

    public static async Task<ClientStats> RunAsync(IPEndPoint server, int id, TimeSpan duration)
    {
        using var nic = new RdmaDevice($"client{id}");
        var pd = nic.AllocatePd();
        var cq = nic.CreateCompletionQueue(256);
        var buf = pd.RegisterBuffer(3 * 4096, AccessFlags.LocalWrite);
        var rng = new Random(id);
        long writes = 0, reads = 0, updates = 0, reconnects = 0, stale = 0, corrupt = 0;
        var timeout = new CancellationTokenSource();
        var wc = new WorkCompletion[8];
        var sw = Stopwatch.StartNew();
        while (sw.Elapsed < duration)
        {
            var qp = pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = cq });
            qp.Modify(new QpAttributes { State = QpState.Init });
            qp.PostRecv(new RecvWorkRequest(100, new ScatterGatherElement(buf.Address + 8192, 16, buf.LKey)));
            var hello = new byte[4];
            BinaryPrimitives.WriteInt32LittleEndian(hello, id);
            ReadOnlyMemory<byte> key;
            try
            {
                key = await IwarpConnector.ConnectAsync(qp, server, hello);
            }
            catch (PinnedDmaException)
            {
                // Refused (the server is shutting down, or a handshake failed): try again while there is time.
                qp.Dispose();
                reconnects++;
                await Task.Delay(50);
                continue;
            }
            uint rkey = BinaryPrimitives.ReadUInt32LittleEndian(key.Span);
            ulong addr = BinaryPrimitives.ReadUInt64LittleEndian(key.Span[4..]);
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
                timeout.CancelAfter(OperationTimeout);
                while (!done)
                {
                    try
                    {
                        await cq.WaitAsync(timeout.Token); // no polling loop: the CQ wakes us
                    }
                    catch (OperationCanceledException)
                    {
                        break; // no completion within the timeout: reconnect
                    }
                    int n = cq.Poll(wc);
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
                if (!timeout.TryReset())
                {
                    timeout.Dispose(); // it fired: a canceled source cannot be reused
                    timeout = new CancellationTokenSource();
                }
            }
            qp.Dispose();
            // Completions the old queue pair left behind (flushed work) belong to no one now.
            while (cq.Poll(wc) > 0)
            {
            }
            if (broken) reconnects++;
        }
        timeout.Dispose();
        return new ClientStats(id, writes, reads, updates, reconnects, stale, corrupt);
    }
}
