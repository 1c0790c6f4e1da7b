using PinnedDma;
using PinnedDma.Storage;
using PinnedDma.Transports.Loopback;
using PinnedDma.Verbs;

// 1. A volume in a local file: no setup, no privileges.
string path = args.Length > 0 ? args[0] : Path.Combine(Path.GetTempPath(), "pinneddma-quickstart.img");
using var volume = Volume.Create(path, new VolumeOptions { BlockCount = 4096 }, overwrite: true);
Console.WriteLine($"volume  {path}: {volume.DataBlocks} data blocks of {volume.BlockSize} B, device mapped {volume.Device.MappingMode}");

var file = volume.CreateFile("data");
file.Write(0, new byte[256 * 1024]);
var snapshot = volume.CreateFile("snapshot");
snapshot.CloneRangeFrom(file, 0, 0, file.Length);            // reflink: every block shared
Console.WriteLine($"clone   'snapshot' shares {file.GetExtents().Count(e => e.Flags.HasFlag(FileExtentFlags.Shared))} extent(s) with 'data'");

// 2. Register the file range for RDMA: the region's pin breaks COW (READ and WRITE alike) and freezes the translation.
using var owner = new PinOwner(volume, memlockLimit: 1 << 20, name: "quickstart");
using var nic = new RdmaDevice("soft0");
var pd = nic.AllocatePd();
var cq = nic.CreateCompletionQueue(64);
var mr = pd.RegisterFile(owner, file, 0, 64 * 1024, AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteRead);
Console.WriteLine($"pin     {mr.Pin}: {mr.Pin!.ScatterGatherList.Count} SG entr(y/ies), rkey 0x{mr.RKey:x8}, memlock {owner.LockedBytes} B");
Console.WriteLine($"        pinned blocks are private now: shared={file.GetExtents(0, 64 * 1024).Any(e => e.Flags.HasFlag(FileExtentFlags.Shared))}");

// 3. An RDMA WRITE over the loopback fabric lands in the file's blocks.
var client = pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = cq });
var server = pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = cq });
LoopbackFabric.Connect(client, server);
var source = pd.RegisterBuffer(4096, AccessFlags.LocalWrite);
"hello, pinned world"u8.CopyTo(source.GetBufferSpan());
client.PostSend(new SendWorkRequest
{
    WrId = 1, Opcode = WrOpcode.RdmaWrite, Flags = SendFlags.Signaled,
    Local = new ScatterGatherElement(source.Address, 19, source.LKey),
    RemoteAddress = mr.Address + 8192, RKey = mr.RKey,
});
var wc = new WorkCompletion[1];
cq.Poll(wc, TimeSpan.FromSeconds(5));
var text = new byte[19];
file.Read(8192, text);
Console.WriteLine($"rdma    {wc[0]} -> file[8192..] = \"{System.Text.Encoding.ASCII.GetString(text)}\"");

// 4. A truncate under the pin breaks the lease: the application is told and deregisters in time.
mr.LeaseBreaking += (_, e) =>
{
    Console.WriteLine($"lease   break requested by '{e.Operation}' (timeout {e.Timeout.TotalMilliseconds} ms): deregistering");
    mr.Dispose();
};
file.Truncate(16 * 1024, ConflictPolicy.Break(TimeSpan.FromSeconds(2)));
Console.WriteLine($"trunc   'data' is now {file.Length} B; region valid: {mr.IsValid}; memlock {owner.LockedBytes} B");

// 5. Stale keys fail like on real hardware.
client.PostSend(new SendWorkRequest
{
    WrId = 2, Opcode = WrOpcode.RdmaWrite, Flags = SendFlags.Signaled,
    Local = new ScatterGatherElement(source.Address, 19, source.LKey),
    RemoteAddress = mr.Address, RKey = mr.RKey,
});
cq.Poll(wc, TimeSpan.FromSeconds(5));
Console.WriteLine($"stale   {wc[0]}; client QP is {client.State}");

volume.Commit();
Console.WriteLine($"fsck    {volume.Fsck()}");
