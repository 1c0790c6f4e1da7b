using System.Runtime.InteropServices;
using PinnedDma.Storage;
using PinnedDma.Transports.Loopback;
using PinnedDma.Verbs;

namespace PinnedDma.Benchmarks.Verbs;

/// <summary>Sizes, batch shapes and the loops the verbs benchmarks share.</summary>
public static class VerbsBench
{
    /// <summary>Bytes of every source and target region (file range, buffers).</summary>
    public const int Region = 16 << 20;

    /// <summary>Most distinct message slots a batch cycles through (64 B: 4 KiB of memory; 4 MiB: the whole region).</summary>
    public const int MaxSlots = 64;

    /// <summary>Byte offset of message <paramref name="i"/> of <paramref name="size"/> bytes.</summary>
    public static long SlotOffset(long i, int size) => i % Math.Min(MaxSlots, Region / size) * size;

    /// <summary>Page-aligned zeroed native memory (freed with <see cref="NativeMemory.AlignedFree"/>).</summary>
    public static unsafe byte* AllocNative(int length)
    {
        var p = (byte*)NativeMemory.AlignedAlloc((nuint)length, 4096);
        NativeMemory.Fill(p, (nuint)length, 0x5A);
        return p;
    }

    /// <summary>
    /// Two queue pairs of one device connected over the loopback fabric: the poster's buffer region and a pinned file
    /// region (the RDMA target) on the other side.
    /// </summary>
    public sealed class LoopbackPair : IDisposable
    {
        public required FileTarget Target { get; init; }
        public required RdmaDevice Device { get; init; }
        public required CompletionQueue Cq { get; init; }
        public required CompletionQueue PeerCq { get; init; }
        public required QueuePair Qp { get; init; }
        public required QueuePair Peer { get; init; }
        public required MemoryRegion Local { get; init; }
        public required MemoryRegion Remote { get; init; }

        public static LoopbackPair Create(string name, int cqCapacity, int maxSendWr, int localLength)
        {
            var target = new FileTarget();
            var dev = new RdmaDevice(name);
            var pd = dev.AllocatePd();
            var cq = dev.CreateCompletionQueue(cqCapacity);
            var peerCq = dev.CreateCompletionQueue(64);
            var qp = pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = cq, MaxSendWr = maxSendWr, MaxRecvWr = 16 });
            var peer = pd.CreateQueuePair(new QueuePairOptions { SendCq = peerCq, RecvCq = peerCq, MaxSendWr = 16, MaxRecvWr = 16 });
            var local = pd.RegisterBuffer(localLength, AccessFlags.LocalWrite);
            var remote = target.Register(pd);
            LoopbackFabric.Connect(qp, peer);
            return new LoopbackPair { Target = target, Device = dev, Cq = cq, PeerCq = peerCq, Qp = qp, Peer = peer, Local = local, Remote = remote };
        }

        public void Dispose()
        {
            Qp.Dispose();
            Peer.Dispose();
            Local.Dispose();
            Remote.Dispose();
            Device.Dispose();
            Target.Dispose();
        }
    }

    /// <summary>A volume in a fresh temp directory with one file whose first <see cref="Region"/> bytes are allocated.</summary>
    public sealed class FileTarget : IDisposable
    {
        private readonly string _dir = Directory.CreateTempSubdirectory("pinneddma-vbench-").FullName;

        public FileTarget()
        {
            Volume = Volume.Create(Path.Combine(_dir, "volume.img"), new VolumeOptions { BlockCount = (Region / 4096) + 4096 });
            File = Volume.CreateFile("target");
            File.Allocate(0, Region);
            Owner = new PinOwner(Volume, 1L << 30);
        }

        public Volume Volume { get; }

        public VolumeFile File { get; }

        public PinOwner Owner { get; }

        /// <summary>Registers the file range as a pinned (not on-demand) region readable and writable by peers.</summary>
        public MemoryRegion Register(ProtectionDomain pd) =>
            pd.RegisterFile(Owner, File, 0, Region, AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteRead);

        /// <summary>The device memory behind file offset 0 of a pinned region (stays mapped while the volume is open).</summary>
        public unsafe byte* DeviceAddress(MemoryRegion mr, int length)
        {
            fixed (byte* p = Volume.Device.GetSpan(mr.Pin!.Translate(0).DeviceOffset, length)) return p;
        }

        public void Dispose()
        {
            Owner.Dispose();
            Volume.Dispose();
            Directory.Delete(_dir, recursive: true);
        }
    }

    /// <summary>
    /// Posts <paramref name="count"/> work requests of <paramref name="size"/> bytes, keeping up to
    /// <paramref name="depth"/> outstanding and signaling every <paramref name="signalEvery"/>-th and the last, and
    /// returns once the last one completed. <paramref name="nextWrId"/> carries the work request ids across calls.
    /// With <paramref name="blockWhenIdle"/> the poster sleeps in the CQ while it cannot post more instead of spinning.
    /// </summary>
    public static void RunBatch(QueuePair qp, CompletionQueue cq, WorkCompletion[] wcs, WrOpcode op, MemoryRegion local, MemoryRegion remote,
        int size, int count, int depth, int signalEvery, ref ulong nextWrId, bool blockWhenIdle = false)
    {
        ulong first = nextWrId;
        long posted = 0, done = 0;
        long deadline = Environment.TickCount64 + 60_000;
        var spin = new SpinWait();
        while (done < count)
        {
            while (posted < count && posted - done < depth)
            {
                long off = SlotOffset(posted, size);
                bool signaled = (posted + 1) % signalEvery == 0 || posted + 1 == count;
                qp.PostSend(new SendWorkRequest
                {
                    WrId = first + (ulong)posted,
                    Opcode = op,
                    Flags = signaled ? SendFlags.Signaled : SendFlags.None,
                    Local = new ScatterGatherElement(local.Address + (ulong)off, (uint)size, local.LKey),
                    RemoteAddress = remote.Address + (ulong)off,
                    RKey = remote.RKey,
                });
                posted++;
            }
            int n = blockWhenIdle && (posted - done >= depth || posted == count) ? cq.Poll(wcs, TimeSpan.FromMilliseconds(100)) : cq.Poll(wcs);
            for (int i = 0; i < n; i++)
            {
                if (wcs[i].Status != WcStatus.Success) throw new InvalidOperationException($"completion failed: {wcs[i]}");
                done = (long)(wcs[i].WrId - first) + 1;
            }
            if (n == 0)
            {
                if (Environment.TickCount64 > deadline) throw new TimeoutException($"{op} batch: {done}/{count} completed after 60 s");
                spin.SpinOnce(sleep1Threshold: -1);
            }
            else
            {
                spin.Reset();
            }
        }
        nextWrId = first + (ulong)count;
    }

    /// <summary>Waits for one completion (any opcode) and checks it; bounded by 30 s.</summary>
    public static WorkCompletion WaitOne(CompletionQueue cq, WorkCompletion[] wcs, bool blockWhenIdle = false)
    {
        long deadline = Environment.TickCount64 + 30_000;
        var spin = new SpinWait();
        while (true)
        {
            if ((blockWhenIdle ? cq.Poll(wcs.AsSpan(0, 1), TimeSpan.FromMilliseconds(100)) : cq.Poll(wcs.AsSpan(0, 1))) == 1)
            {
                if (wcs[0].Status != WcStatus.Success) throw new InvalidOperationException($"completion failed: {wcs[0]}");
                return wcs[0];
            }
            if (Environment.TickCount64 > deadline) throw new TimeoutException("no completion in 30 s");
            spin.SpinOnce(sleep1Threshold: -1);
        }
    }

    /// <summary>Spins until the 8 bytes at <paramref name="p"/> equal <paramref name="value"/>; bounded by 30 s.</summary>
    public static unsafe void SpinUntil(byte* p, ulong value)
    {
        long spins = 0, deadline = 0;
        var spin = new SpinWait();
        while (Volatile.Read(ref *(ulong*)p) != value)
        {
            spin.SpinOnce(sleep1Threshold: -1);
            if ((++spins & 0xFFFF) == 0)
            {
                long now = Environment.TickCount64;
                if (deadline == 0) deadline = now + 30_000;
                else if (now > deadline) throw new TimeoutException($"value {value} did not arrive in 30 s");
            }
        }
    }
}
