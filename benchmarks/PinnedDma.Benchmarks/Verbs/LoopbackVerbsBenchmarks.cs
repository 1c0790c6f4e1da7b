using BenchmarkDotNet.Attributes;
using PinnedDma.Verbs;

namespace PinnedDma.Benchmarks.Verbs;

/// <summary>
/// RDMA WRITE and RDMA READ bandwidth over the in-process loopback fabric between a native buffer region and a pinned
/// file region, against <c>Buffer.MemoryCopy</c> of the same messages between two native buffers. Each
/// invocation moves <see cref="Batch"/> messages (the figures are per message), keeping <see cref="Depth"/> work
/// requests outstanding and signaling every <see cref="SignalEvery"/>-th.
/// </summary>
[Config(typeof(VerbsBenchConfig))]
public unsafe class LoopbackVerbsBandwidthBenchmarks
{
    public const int Batch = 256;
    public const int Depth = 128;
    public const int SignalEvery = 16;

    private VerbsBench.LoopbackPair _p = null!;
    private readonly WorkCompletion[] _wcs = new WorkCompletion[64];
    private ulong _wrId;
    private byte* _src, _dst;

    [Params(64, 4096, 65536, 1 << 20, 4 << 20)]
    public int Size { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _src = VerbsBench.AllocNative(VerbsBench.Region);
        _dst = VerbsBench.AllocNative(VerbsBench.Region);
        _p = VerbsBench.LoopbackPair.Create("bench-loopback", cqCapacity: 1024, maxSendWr: Depth, localLength: VerbsBench.Region);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _p.Dispose();
        System.Runtime.InteropServices.NativeMemory.AlignedFree(_src);
        System.Runtime.InteropServices.NativeMemory.AlignedFree(_dst);
    }

    /// <summary>The copy a DMA engine does, with nothing around it.</summary>
    [Benchmark(Baseline = true, OperationsPerInvoke = Batch)]
    public void Memcpy()
    {
        int size = Size;
        for (int i = 0; i < Batch; i++)
        {
            long off = VerbsBench.SlotOffset(i, size);
            Buffer.MemoryCopy(_src + off, _dst + off, size, size);
        }
    }

    /// <summary>Buffer region to pinned file region.</summary>
    [Benchmark(OperationsPerInvoke = Batch)]
    public void RdmaWrite() =>
        VerbsBench.RunBatch(_p.Qp, _p.Cq, _wcs, WrOpcode.RdmaWrite, _p.Local, _p.Remote, Size, Batch, Depth, SignalEvery, ref _wrId);

    /// <summary>Pinned file region into the buffer region.</summary>
    [Benchmark(OperationsPerInvoke = Batch)]
    public void RdmaRead() =>
        VerbsBench.RunBatch(_p.Qp, _p.Cq, _wcs, WrOpcode.RdmaRead, _p.Local, _p.Remote, Size, Batch, Depth, SignalEvery, ref _wrId);
}

/// <summary>
/// 8-byte latency over the loopback fabric: one signaled RDMA WRITE into the pinned file region and a poll until its
/// completion (a round trip to the DMA engine thread), against an 8-byte <c>Buffer.MemoryCopy</c> and a
/// round trip to another spinning thread through two volatile flags (the floor for any cross-thread hand-off).
/// </summary>
[Config(typeof(VerbsBenchConfig))]
public unsafe class LoopbackVerbsLatencyBenchmarks
{
    private VerbsBench.LoopbackPair _p = null!;
    private readonly WorkCompletion[] _wcs = new WorkCompletion[4];
    private ulong _wrId;
    private byte* _src, _dst;
    // Ping at [0], pong at [16]: 128 bytes apart, never on one cache line.
    private readonly long[] _flags = GC.AllocateArray<long>(32, pinned: true);
    private Thread? _responder;
    private volatile bool _stop;

    [GlobalSetup(Targets = [nameof(Memcpy8), nameof(RdmaWrite8)])]
    public void Setup()
    {
        _src = VerbsBench.AllocNative(4096);
        _dst = VerbsBench.AllocNative(4096);
        _p = VerbsBench.LoopbackPair.Create("bench-loopback-lat", cqCapacity: 64, maxSendWr: 16, localLength: 4096);
    }

    [GlobalCleanup(Targets = [nameof(Memcpy8), nameof(RdmaWrite8)])]
    public void Cleanup()
    {
        _p.Dispose();
        System.Runtime.InteropServices.NativeMemory.AlignedFree(_src);
        System.Runtime.InteropServices.NativeMemory.AlignedFree(_dst);
    }

    [GlobalSetup(Target = nameof(CrossThreadPing))]
    public void SetupPing()
    {
        _responder = new Thread(() =>
        {
            long seen = 0;
            var spin = new SpinWait();
            while (!_stop)
            {
                long v = Volatile.Read(ref _flags[0]);
                if (v != seen)
                {
                    seen = v;
                    Volatile.Write(ref _flags[16], v);
                    spin.Reset();
                }
                else
                {
                    spin.SpinOnce(sleep1Threshold: -1);
                }
            }
        }) { IsBackground = true, Name = "ping-responder" };
        _responder.Start();
    }

    [GlobalCleanup(Target = nameof(CrossThreadPing))]
    public void CleanupPing()
    {
        _stop = true;
        _responder!.Join(TimeSpan.FromSeconds(5));
    }

    [Benchmark(Baseline = true)]
    public void Memcpy8() => Buffer.MemoryCopy(_src, _dst, 8, 8);

    /// <summary>Round trip through another thread that spins on a volatile flag (what a post plus a completion needs at least).</summary>
    [Benchmark]
    public void CrossThreadPing()
    {
        long v = _flags[0] + 1;
        Volatile.Write(ref _flags[0], v);
        fixed (long* pong = &_flags[16]) VerbsBench.SpinUntil((byte*)pong, (ulong)v);
    }

    /// <summary>One signaled 8-byte RDMA WRITE and a poll until it completes.</summary>
    [Benchmark]
    public void RdmaWrite8()
    {
        _p.Qp.PostSend(new SendWorkRequest
        {
            WrId = _wrId++,
            Opcode = WrOpcode.RdmaWrite,
            Flags = SendFlags.Signaled,
            Local = new ScatterGatherElement(_p.Local.Address, 8, _p.Local.LKey),
            RemoteAddress = _p.Remote.Address,
            RKey = _p.Remote.RKey,
        });
        VerbsBench.WaitOne(_p.Cq, _wcs);
    }
}
