using System.Buffers.Binary;
using System.Collections.Concurrent;
using PinnedDma.Storage;
using PinnedDma.Tests.Verbs;
using PinnedDma.Transports.Loopback;
using PinnedDma.Verbs;
using Xunit;

namespace PinnedDma.Tests.Lifetimes;

/// <summary>
/// The "nothing lands after it ends" stress test. Real threads keep RDMA-writing sentinels into file regions over the
/// loopback fabric and DMA-writing sentinels through pins, while another thread disposes, at random, memory regions,
/// queue pairs, protection domains, whole devices, pins and pin owners (rebuilding what it tore down), and at the end
/// the volume itself. Every sentinel names the region or pin it went through and the queue pair that carried it. As soon
/// as an object's Dispose returns, the test wipes that object's sentinels from the whole device; a sentinel of an ended
/// object found on the device later was written after its end. Bounded in time and count.
/// </summary>
public sealed class DisposeStressTests
{
    private const int Bs = 4096;
    private const int FileBlocks = 64;
    private const int Chunk = 64;
    private const uint Magic = 0xE17D_5A1E;

    private static uint Check(uint id, uint qp) => Magic ^ id * 2654435761u ^ qp * 40503u ^ 0x9E3779B9u;

    private static void Sentinel(Span<byte> s, uint id, uint qp)
    {
        for (int i = 0; i + 16 <= s.Length; i += 16)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(s[i..], Magic);
            BinaryPrimitives.WriteUInt32LittleEndian(s[(i + 4)..], id);
            BinaryPrimitives.WriteUInt32LittleEndian(s[(i + 8)..], qp);
            BinaryPrimitives.WriteUInt32LittleEndian(s[(i + 12)..], Check(id, qp));
        }
    }

    private sealed class World
    {
        public required RdmaDevice Device;
        public required ProtectionDomain Pd;
        public required CompletionQueue Cq;
        public required QueuePair A;
        public required QueuePair B;
        public required MemoryRegion Source;
        public required PinOwner Owner;
        public readonly ConcurrentDictionary<uint, MemoryRegion> Regions = new(); // id -> region
    }

    private readonly object _wipeGate = new();
    private readonly HashSet<uint> _endedIds = new();
    private readonly HashSet<uint> _endedQps = new();
    private uint _nextId = 1;

    /// <summary>Marks ids and queue pairs as ended and wipes their sentinels from the device (whole device scan).</summary>
    private void Ended(BlockDevice device, IEnumerable<uint> ids, IEnumerable<uint> qps)
    {
        lock (_wipeGate)
        {
            _endedIds.UnionWith(ids);
            _endedQps.UnionWith(qps);
            var magic = new byte[4];
            BinaryPrimitives.WriteUInt32LittleEndian(magic, Magic);
            var all = device.GetSpan(0, (int)device.Length);
            int at = 0;
            while (true)
            {
                int i = all[at..].IndexOf(magic);
                if (i < 0) break;
                at += i;
                if (at + 16 > all.Length) break;
                uint id = BinaryPrimitives.ReadUInt32LittleEndian(all[(at + 4)..]);
                uint qp = BinaryPrimitives.ReadUInt32LittleEndian(all[(at + 8)..]);
                if (BinaryPrimitives.ReadUInt32LittleEndian(all[(at + 12)..]) == Check(id, qp) && (_endedIds.Contains(id) || _endedQps.Contains(qp)))
                    all.Slice(at, 16).Clear();
                at++;
            }
        }
    }

    /// <summary>Every intact sentinel of an ended object on the device.</summary>
    private List<string> LateSentinels(BlockDevice device)
    {
        var late = new List<string>();
        var magic = new byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(magic, Magic);
        var all = device.GetSpan(0, (int)device.Length);
        int at = 0;
        lock (_wipeGate)
            while (true)
            {
                int i = all[at..].IndexOf(magic);
                if (i < 0) break;
                at += i;
                if (at + 16 > all.Length) break;
                uint id = BinaryPrimitives.ReadUInt32LittleEndian(all[(at + 4)..]);
                uint qp = BinaryPrimitives.ReadUInt32LittleEndian(all[(at + 8)..]);
                if (BinaryPrimitives.ReadUInt32LittleEndian(all[(at + 12)..]) == Check(id, qp) && (_endedIds.Contains(id) || _endedQps.Contains(qp)))
                    late.Add($"device byte {at}: region/pin {id} via qp 0x{qp:x}");
                at++;
            }
        return late;
    }

    private World Build(Volume v, VolumeFile f, int generation)
    {
        var dev = new RdmaDevice($"stress{generation}");
        var pd = dev.AllocatePd();
        var cq = dev.CreateCompletionQueue(1 << 14);
        var a = pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = cq, MaxSendWr = 256 });
        var b = pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = cq, MaxSendWr = 256 });
        LoopbackFabric.Connect(a, b);
        var w = new World
        {
            Device = dev,
            Pd = pd,
            Cq = cq,
            A = a,
            B = b,
            Source = pd.RegisterBuffer(Chunk * 64, AccessFlags.LocalWrite),
            Owner = new PinOwner(v, 1L << 30, $"owner{generation}"),
        };
        for (int i = 0; i < 4; i++) AddRegion(w, f);
        return w;
    }

    private void AddRegion(World w, VolumeFile f)
    {
        uint id = Interlocked.Increment(ref _nextId);
        var mr = w.Pd.RegisterFile(w.Owner, f, 0, FileBlocks * Bs, VerbsRig.All);
        w.Regions[id] = mr;
    }

    [Fact]
    public void DisposeOfEveryObjectTypeRacingTrafficAndPinsLeavesNoByteWrittenAfterAnEnd()
    {
        using var device = new MemoryBlockDevice(Bs, 2048);
        var v = Volume.Format(device, new VolumeOptions { BlockSize = Bs, BlockCount = 2048 }, ownsDevice: false);
        var f = v.CreateFile("target");
        f.Write(0, new byte[FileBlocks * Bs]);
        int generation = 0;
        World world = Build(v, f, generation);
        var stop = new CancellationTokenSource();
        var errors = new ConcurrentQueue<string>();
        long posted = 0, pinWrites = 0;

        var traffic = new Thread(() =>
        {
            var rng = new Random(1);
            var wcs = new WorkCompletion[64];
            while (!stop.IsCancellationRequested)
            {
                var w = Volatile.Read(ref world);
                try
                {
                    var ids = w.Regions.Keys.ToArray();
                    if (ids.Length == 0) { Thread.Yield(); continue; }
                    uint id = ids[rng.Next(ids.Length)];
                    if (!w.Regions.TryGetValue(id, out var mr)) continue;
                    int slot = rng.Next(64);
                    Sentinel(w.Source.GetBufferSpan().Slice(slot * Chunk, Chunk), id, w.A.QpNumber);
                    long off = (long)rng.Next(FileBlocks * Bs / Chunk) * Chunk;
                    w.A.PostSend(VerbsRig.Write((ulong)id, w.Source, slot * Chunk, Chunk, mr, off, signaled: rng.Next(4) == 0));
                    Interlocked.Increment(ref posted);
                    w.Cq.Poll(wcs);
                }
                catch (ObjectDisposedException)
                {
                }
                catch (PinnedDmaException e) when (e.Error is PinnedDmaError.InvalidArgument or PinnedDmaError.NoSpace)
                {
                    // Not in RTS any more, or the send queue is full: the disposer is at work.
                    Thread.Yield();
                }
                catch (Exception e)
                {
                    errors.Enqueue($"traffic: {e}");
                    return;
                }
            }
        })
        { Name = "stress traffic" };

        var pinner = new Thread(() =>
        {
            var rng = new Random(2);
            var buf = new byte[Chunk];
            while (!stop.IsCancellationRequested)
            {
                var w = Volatile.Read(ref world);
                uint id = Interlocked.Increment(ref _nextId);
                PinHandle h;
                try
                {
                    h = w.Owner.Pin(f, (long)rng.Next(FileBlocks) * Bs, Bs, PinAccess.Write);
                }
                catch (ObjectDisposedException)
                {
                    Thread.Yield();
                    continue;
                }
                catch (Exception e)
                {
                    errors.Enqueue($"pin: {e}");
                    return;
                }
                Sentinel(buf, id, 0);
                for (int i = 0; i < 8; i++)
                    if (h.TryWrite(rng.Next(Bs / Chunk) * Chunk, buf)) Interlocked.Increment(ref pinWrites);
                if (rng.Next(2) == 0)
                {
                    h.Dispose();
                    Ended(device, new[] { id }, Array.Empty<uint>());
                }
                else
                {
                    // Left to the owner's (or the volume's) dispose; ended when that returns.
                    lock (_leftToOwner) _leftToOwner.Add((w.Owner, id));
                }
            }
        })
        { Name = "stress pinner" };

        traffic.Start();
        pinner.Start();
        var rng = new Random(3);
        var kinds = new Dictionary<string, int>();
        var timing = new List<string>();
        long deadline = Environment.TickCount64 + 4000;
        for (int round = 0; round < 60 && Environment.TickCount64 < deadline && errors.IsEmpty; round++)
        {
            Thread.Sleep(rng.Next(5, 30));
            var w = world;
            string kind = (rng.Next(6)) switch { 0 => "mr", 1 => "qp", 2 => "pd", 3 => "device", 4 => "owner", _ => "mr" };
            kinds[kind] = kinds.GetValueOrDefault(kind) + 1;
            var sw = System.Diagnostics.Stopwatch.StartNew();
            try
            {
                switch (kind)
                {
                    case "mr":
                        {
                            var id = w.Regions.Keys.FirstOrDefault();
                            if (id != 0 && w.Regions.TryRemove(id, out var mr))
                            {
                                mr.Dispose();
                                Ended(device, new[] { id }, Array.Empty<uint>());
                            }
                            try { AddRegion(w, f); } catch (ObjectDisposedException) { }
                            break;
                        }
                    case "qp":
                        {
                            uint qpn = w.A.QpNumber;
                            w.A.Dispose();
                            Ended(device, Array.Empty<uint>(), new[] { qpn });
                            Rebuild(ref world, v, f, ref generation, device, w);
                            break;
                        }
                    case "pd":
                        {
                            w.Pd.Dispose();
                            Ended(device, w.Regions.Keys, new[] { w.A.QpNumber });
                            Rebuild(ref world, v, f, ref generation, device, w);
                            break;
                        }
                    case "device":
                        {
                            w.Device.Dispose();
                            Ended(device, w.Regions.Keys, new[] { w.A.QpNumber });
                            Rebuild(ref world, v, f, ref generation, device, w);
                            break;
                        }
                    case "owner":
                        {
                            // The owner's pins and the regions pinned through it end with it.
                            w.Owner.Dispose();
                            List<uint> left;
                            lock (_leftToOwner) left = _leftToOwner.Where(p => p.Owner == w.Owner).Select(p => p.Id).ToList();
                            Ended(device, w.Regions.Keys.Concat(left), Array.Empty<uint>());
                            Rebuild(ref world, v, f, ref generation, device, w);
                            break;
                        }
                }
            }
            finally
            {
                timing.Add($"{kind}:{sw.ElapsedMilliseconds}ms"); // for the failure message only
            }
        }
        // Last, the volume itself, with the traffic and the pinner still running.
        v.Dispose();
        List<uint> everything;
        lock (_leftToOwner) everything = _leftToOwner.Select(p => p.Id).ToList();
        Ended(device, world.Regions.Keys.Concat(everything), Array.Empty<uint>());
        Thread.Sleep(100); // traffic and pins keep trying; the assertion does not depend on the time
        stop.Cancel();
        Assert.True(traffic.Join(TimeSpan.FromSeconds(30)), "traffic thread did not stop");
        Assert.True(pinner.Join(TimeSpan.FromSeconds(30)), "pinner thread did not stop");
        world.Device.Dispose();

        Assert.Empty(errors);
        Assert.Empty(LateSentinels(device));
        Assert.True(Interlocked.Read(ref posted) > 0 && Interlocked.Read(ref pinWrites) > 0, $"no traffic ({posted} posts, {pinWrites} pin writes)");
        Assert.True(kinds.Count >= 3, $"too few kinds of dispose ran: {string.Join(", ", kinds)} {string.Join(" ", timing)}");
    }

    private readonly List<(PinOwner Owner, uint Id)> _leftToOwner = new();

    /// <summary>Tears down what is left of <paramref name="old"/> (ending its regions) and publishes a fresh world.</summary>
    private void Rebuild(ref World world, Volume v, VolumeFile f, ref int generation, BlockDevice device, World old)
    {
        old.Device.Dispose();
        Ended(device, old.Regions.Keys, new[] { old.A.QpNumber, old.B.QpNumber });
        var next = Build(v, f, ++generation);
        Volatile.Write(ref world, next);
    }
}
