// A short program against the PinnedDma package: a volume in a file, a pin, an RDMA WRITE over the loopback fabric
// and over iWARP on 127.0.0.1, and a lease break. Every step checks its result; the exit code says whether all did.
using System.Net;
using System.Reflection;
using System.Runtime.Versioning;
using System.Text;
using PinnedDma.Transports.Iwarp;
using PinnedDma.Transports.Loopback;
using PinnedDma;
using PinnedDma.Storage;
using PinnedDma.Verbs;

// PinnedDma is Linux-only, and so is this program (without this, analyzer CA1416 flags every call).
[assembly: SupportedOSPlatform("linux")]

var version = typeof(Volume).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion;
Console.WriteLine($"package PinnedDma {version}");

string dir = Directory.CreateTempSubdirectory("pinneddma-consumer-").FullName;
try
{
    using var volume = Volume.Create(Path.Combine(dir, "volume.img"), new VolumeOptions { BlockCount = 1024 });
    var file = volume.CreateFile("data");
    file.Write(0, new byte[64 * 1024]);
    Console.WriteLine($"volume  {volume.DataBlocks} data blocks of {volume.BlockSize} B");

    using var owner = new PinOwner(volume, memlockLimit: 1 << 20, name: "consumer");
    using var server = new RdmaDevice("consumer-server");
    using var clientNic = new RdmaDevice("consumer-client");
    var spd = server.AllocatePd();
    var cpd = clientNic.AllocatePd();
    var mr = spd.RegisterFile(owner, file, 0, 64 * 1024, AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteRead);
    Console.WriteLine($"pin     {mr.Pin!.ScatterGatherList.Count} SG entries, memlock {owner.LockedBytes} B");
    Check(owner.LockedBytes == 64 * 1024, "the pin charges 64 KiB of memlock");

    // RDMA WRITE over the loopback fabric (both queue pairs on one device).
    var scq = server.CreateCompletionQueue(16);
    var lbClient = spd.CreateQueuePair(new QueuePairOptions { SendCq = scq, RecvCq = scq });
    var lbServer = spd.CreateQueuePair(new QueuePairOptions { SendCq = scq, RecvCq = scq });
    LoopbackFabric.Connect(lbClient, lbServer);
    var lbSource = spd.RegisterBuffer(4096, AccessFlags.LocalWrite);
    Write(lbClient, scq, lbSource, "written over loopback", mr, 0, file, "loopback");

    // RDMA WRITE over iWARP (MPA/DDP/RDMAP on a real TCP connection to 127.0.0.1).
    var ccq = clientNic.CreateCompletionQueue(16);
    var iwClient = cpd.CreateQueuePair(new QueuePairOptions { SendCq = ccq, RecvCq = ccq });
    var iwServer = spd.CreateQueuePair(new QueuePairOptions { SendCq = scq, RecvCq = scq });
    using (var listener = new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0)))
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        var accept = Task.Run(async () =>
        {
            var request = await listener.AcceptAsync(cts.Token);
            iwServer.Modify(new QpAttributes { State = QpState.Init, AccessFlags = AccessFlags.RemoteRead | AccessFlags.RemoteWrite });
            request.Accept(iwServer);
        });
        await IwarpConnector.ConnectAsync(iwClient, listener.LocalEndPoint, cancellationToken: cts.Token);
        await accept;
    }
    var iwSource = cpd.RegisterBuffer(4096, AccessFlags.LocalWrite);
    Write(iwClient, ccq, iwSource, "written over iWARP", mr, 8192, file, "iwarp");

    // A truncate under the pin breaks the lease; the handler deregisters, the truncate goes on.
    string? breaker = null;
    mr.LeaseBreaking += (_, e) =>
    {
        breaker = e.Operation;
        mr.Dispose();
    };
    file.Truncate(4096, ConflictPolicy.Break(TimeSpan.FromSeconds(5)));
    Console.WriteLine($"lease   broken by {breaker}; region valid {mr.IsValid}; file {file.Length} B; memlock {owner.LockedBytes} B");
    Check(breaker is not null && !mr.IsValid && file.Length == 4096 && owner.LockedBytes == 0, "the lease break released the pin");

    volume.Commit();
    var fsck = volume.Fsck();
    Console.WriteLine($"fsck    {fsck}");
    Console.WriteLine("consumer ok");
    return 0;
}
finally
{
    Directory.Delete(dir, recursive: true);
}

static void Write(QueuePair qp, CompletionQueue cq, MemoryRegion source, string text, MemoryRegion target, ulong offset, VolumeFile file, string transport)
{
    int length = Encoding.ASCII.GetBytes(text, source.GetBufferSpan());
    qp.PostSend(new SendWorkRequest
    {
        WrId = 1, Opcode = WrOpcode.RdmaWrite, Flags = SendFlags.Signaled,
        Local = new ScatterGatherElement(source.Address, (uint)length, source.LKey),
        RemoteAddress = target.Address + offset, RKey = target.RKey,
    });
    var wc = new WorkCompletion[1];
    int polled = 0;
    for (int i = 0; i < 100 && polled == 0; i++) polled = cq.Poll(wc, TimeSpan.FromMilliseconds(100));
    Check(polled == 1 && wc[0].Status == WcStatus.Success, $"{transport} RDMA WRITE completes ({(polled == 1 ? wc[0].ToString() : "no completion")})");
    // The target is a registered file range: wait (bounded) for the bytes to land, then read them through the file.
    var landed = new byte[length];
    for (int i = 0; i < 100; i++)
    {
        file.Read((long)offset, landed);
        if (Encoding.ASCII.GetString(landed) == text) break;
        Thread.Sleep(10);
    }
    Console.WriteLine($"{transport} RDMA WRITE {wc[0].Status}: file[{offset}..] = \"{Encoding.ASCII.GetString(landed)}\"");
    Check(Encoding.ASCII.GetString(landed) == text, $"{transport} RDMA WRITE lands in the file");
}

static void Check(bool ok, string what)
{
    if (!ok) throw new InvalidOperationException("check failed: " + what);
}
