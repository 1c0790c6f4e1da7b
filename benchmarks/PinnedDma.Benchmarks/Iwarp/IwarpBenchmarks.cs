using System.Net.Sockets;
using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using PinnedDma.Benchmarks.Verbs;
using PinnedDma.Verbs;

namespace PinnedDma.Benchmarks.Iwarp;

/// <summary>
/// RDMA WRITE and RDMA READ bandwidth over iWARP/TCP on 127.0.0.1 (MPA revision 1, 64 KiB FPDUs, CRC32c on and off)
/// from a native buffer region to a pinned file region, against raw .NET <see cref="System.Net.Sockets.Socket"/>
/// streams of the same messages. Each invocation moves <see cref="Batch"/> messages (figures are per message) with
/// <see cref="Depth"/> work requests outstanding. A write batch ends with a signaled 8-byte RDMA READ: its response
/// arrives after every earlier write was placed, so the time covers delivery, as the socket baselines' does.
/// The requester waits for completions the blocking way (<see cref="CompletionQueue.Poll(Span{WorkCompletion}, TimeSpan)"/>,
/// like perftest's <c>--event</c>): on two cores a spinning poller would take a core from the engine and the receiver.
/// <para>Baselines: <see cref="Socket"/> sends each message with one blocking Send and a receiver thread receives it
/// into its own slot of a buffer as large as the target region (the work an RDMA WRITE does: bytes end up at their
/// destination); <see cref="SocketDiscard"/> receives everything into one reused 1 MiB buffer that stays in cache,
/// a cheaper receiver than any real destination (shown for reference).</para>
/// </summary>
[Config(typeof(VerbsBenchConfig))]
public unsafe class IwarpBandwidthBenchmarks
{
    public const int Batch = 128;
    public const int Depth = 64;
    public const int SignalEvery = 16;

    private IwarpPair? _pair;
    private LoopbackSocketPair? _sockets;
    private Thread? _receiver;
    private long _received, _expected;
    private byte* _src, _dst;
    private readonly WorkCompletion[] _wcs = new WorkCompletion[64];
    private ulong _wrId;

    [Params(64, 4096, 65536, 1 << 20, 4 << 20)]
    public int Size { get; set; }

    [GlobalSetup(Target = nameof(Socket))]
    public void SetupSocket() => StartSocket(intoSlots: true);

    [GlobalSetup(Target = nameof(SocketDiscard))]
    public void SetupSocketDiscard() => StartSocket(intoSlots: false);

    private void StartSocket(bool intoSlots)
    {
        _src = VerbsBench.AllocNative(VerbsBench.Region);
        _dst = VerbsBench.AllocNative(VerbsBench.Region);
        _sockets = new LoopbackSocketPair();
        var server = _sockets.Server;
        int size = Size;
        byte* dst = _dst;
        _receiver = new Thread(() =>
        {
            var buffer = GC.AllocateUninitializedArray<byte>(1 << 20, pinned: true);
            try
            {
                for (long i = 0; ; i++)
                {
                    if (intoSlots)
                    {
                        if (!LoopbackSocketPair.ReceiveAll(server, new Span<byte>(dst + VerbsBench.SlotOffset(i, size), size))) return;
                        Volatile.Write(ref _received, _received + size);
                    }
                    else
                    {
                        int n = server.Receive(buffer, SocketFlags.None);
                        if (n == 0) return;
                        Volatile.Write(ref _received, _received + n);
                    }
                }
            }
            catch (SocketException)
            {
            }
            catch (ObjectDisposedException)
            {
            }
        }) { IsBackground = true, Name = "socket-receiver" };
        _receiver.Start();
    }

    [GlobalCleanup(Targets = [nameof(Socket), nameof(SocketDiscard)])]
    public void CleanupSocket()
    {
        _sockets!.Dispose();
        _receiver!.Join(TimeSpan.FromSeconds(5));
        NativeMemory.AlignedFree(_src);
        NativeMemory.AlignedFree(_dst);
    }

    [GlobalSetup(Targets = [nameof(WriteCrc), nameof(ReadCrc)])]
    public void SetupCrc() => _pair = IwarpPair.Create(crc: true, Depth);

    [GlobalSetup(Targets = [nameof(WriteNoCrc), nameof(ReadNoCrc)])]
    public void SetupNoCrc() => _pair = IwarpPair.Create(crc: false, Depth);

    [GlobalCleanup(Targets = [nameof(WriteCrc), nameof(ReadCrc), nameof(WriteNoCrc), nameof(ReadNoCrc)])]
    public void CleanupPair() => _pair!.Dispose();

    /// <summary>Raw TCP: one Send per message; returns when the receiver has put every byte in its slot.</summary>
    [Benchmark(Baseline = true, OperationsPerInvoke = Batch)]
    public void Socket() => SendBatchAndWait();

    /// <summary>Raw TCP into a reused cache-resident buffer (reference only).</summary>
    [Benchmark(OperationsPerInvoke = Batch)]
    public void SocketDiscard() => SendBatchAndWait();

    private void SendBatchAndWait()
    {
        int size = Size;
        var client = _sockets!.Client;
        for (int i = 0; i < Batch; i++)
            LoopbackSocketPair.SendAll(client, new ReadOnlySpan<byte>(_src + VerbsBench.SlotOffset(i, size), size));
        _expected += (long)Batch * size;
        long deadline = Environment.TickCount64 + 60_000;
        var spin = new SpinWait();
        while (Volatile.Read(ref _received) < _expected)
        {
            if (Environment.TickCount64 > deadline) throw new TimeoutException("socket receiver stalled for 60 s");
            spin.SpinOnce(sleep1Threshold: -1);
        }
    }

    [Benchmark(OperationsPerInvoke = Batch)]
    public void WriteCrc() => Write();

    [Benchmark(OperationsPerInvoke = Batch)]
    public void WriteNoCrc() => Write();

    [Benchmark(OperationsPerInvoke = Batch)]
    public void ReadCrc() => Read();

    [Benchmark(OperationsPerInvoke = Batch)]
    public void ReadNoCrc() => Read();

    private void Write()
    {
        var p = _pair!;
        VerbsBench.RunBatch(p.Client, p.ClientCq, _wcs, WrOpcode.RdmaWrite, p.ClientMr, p.ServerMr, Size, Batch, Depth, SignalEvery, ref _wrId, blockWhenIdle: true);
        // Fence: the read response follows every write on the stream, so it arrives once all of them were placed.
        p.Client.PostSend(new SendWorkRequest
        {
            WrId = _wrId++,
            Opcode = WrOpcode.RdmaRead,
            Flags = SendFlags.Signaled,
            Local = new ScatterGatherElement(p.ClientMr.Address, 8, p.ClientMr.LKey),
            RemoteAddress = p.ServerMr.Address,
            RKey = p.ServerMr.RKey,
        });
        VerbsBench.WaitOne(p.ClientCq, _wcs, blockWhenIdle: true);
    }

    private void Read()
    {
        var p = _pair!;
        VerbsBench.RunBatch(p.Client, p.ClientCq, _wcs, WrOpcode.RdmaRead, p.ClientMr, p.ServerMr, Size, Batch, Depth, SignalEvery, ref _wrId, blockWhenIdle: true);
    }
}

/// <summary>
/// 8-byte half round trip over 127.0.0.1, as ib_write_lat measures it: the client RDMA-WRITEs a sequence number
/// into the server's pinned file region; a server thread polls that memory, then RDMA-WRITEs the number back into
/// the client's buffer, which the client polls. Baseline: an 8-byte ping-pong over a raw TCP socket pair (blocking
/// send/receive, Nagle off). Both report half the round trip (OperationsPerInvoke = 2).
/// </summary>
[Config(typeof(VerbsBenchConfig))]
public unsafe class IwarpLatencyBenchmarks
{
    private const int ReplyOffset = 4096;
    private LoopbackSocketPair? _sockets;
    private IwarpPair? _pair;
    private Thread? _peer;
    private volatile bool _stop;
    private readonly byte[] _ping = new byte[8], _pong = new byte[8];
    private readonly WorkCompletion[] _wcs = new WorkCompletion[16];
    private ulong _seq;

    [Params(true, false)]
    public bool Crc { get; set; }

    [GlobalSetup(Target = nameof(SocketPingPong8))]
    public void SetupSocket()
    {
        _sockets = new LoopbackSocketPair();
        var server = _sockets.Server;
        _peer = new Thread(() =>
        {
            var b = new byte[8];
            try
            {
                while (LoopbackSocketPair.ReceiveAll(server, b)) LoopbackSocketPair.SendAll(server, b);
            }
            catch (SocketException)
            {
            }
            catch (ObjectDisposedException)
            {
            }
        }) { IsBackground = true, Name = "socket-echo" };
        _peer.Start();
    }

    [GlobalCleanup(Target = nameof(SocketPingPong8))]
    public void CleanupSocket()
    {
        _sockets!.Dispose();
        _peer!.Join(TimeSpan.FromSeconds(5));
    }

    [GlobalSetup(Target = nameof(RdmaWritePingPong8))]
    public void SetupIwarp()
    {
        var p = _pair = IwarpPair.Create(Crc, depth: 16);
        byte* serverMem = p.Target.DeviceAddress(p.ServerMr, 8);
        var serverSrc = (byte*)p.ServerBuffer.Address;
        _peer = new Thread(() =>
        {
            var wcs = new WorkCompletion[16];
            ulong expect = 1;
            var spin = new SpinWait();
            while (!_stop)
            {
                if (Volatile.Read(ref *(ulong*)serverMem) != expect)
                {
                    spin.SpinOnce(sleep1Threshold: -1);
                    continue;
                }
                spin.Reset();
                *(ulong*)serverSrc = expect;
                p.Server.PostSend(new SendWorkRequest
                {
                    WrId = expect,
                    Opcode = WrOpcode.RdmaWrite,
                    Flags = expect % 8 == 0 ? SendFlags.Signaled : SendFlags.None,
                    Local = new ScatterGatherElement(p.ServerBuffer.Address, 8, p.ServerBuffer.LKey),
                    RemoteAddress = p.ClientMr.Address + ReplyOffset,
                    RKey = p.ClientMr.RKey,
                });
                int n = p.ServerCq.Poll(wcs);
                for (int i = 0; i < n; i++)
                    if (wcs[i].Status != WcStatus.Success) throw new InvalidOperationException($"server completion failed: {wcs[i]}");
                expect++;
            }
        }) { IsBackground = true, Name = "write-lat-server" };
        _peer.Start();
    }

    [GlobalCleanup(Target = nameof(RdmaWritePingPong8))]
    public void CleanupIwarp()
    {
        _stop = true;
        _peer!.Join(TimeSpan.FromSeconds(5));
        _pair!.Dispose();
    }

    /// <summary>8 bytes there and back over a raw TCP socket pair.</summary>
    [Benchmark(Baseline = true, OperationsPerInvoke = 2)]
    public void SocketPingPong8()
    {
        LoopbackSocketPair.SendAll(_sockets!.Client, _ping);
        if (!LoopbackSocketPair.ReceiveAll(_sockets.Client, _pong)) throw new InvalidOperationException("echo peer closed");
    }

    /// <summary>8-byte RDMA WRITE there, 8-byte RDMA WRITE back, each side polling its memory.</summary>
    [Benchmark(OperationsPerInvoke = 2)]
    public void RdmaWritePingPong8()
    {
        var p = _pair!;
        ulong v = ++_seq;
        *(ulong*)p.ClientMr.Address = v;
        p.Client.PostSend(new SendWorkRequest
        {
            WrId = v,
            Opcode = WrOpcode.RdmaWrite,
            Flags = v % 8 == 0 ? SendFlags.Signaled : SendFlags.None,
            Local = new ScatterGatherElement(p.ClientMr.Address, 8, p.ClientMr.LKey),
            RemoteAddress = p.ServerMr.Address,
            RKey = p.ServerMr.RKey,
        });
        VerbsBench.SpinUntil((byte*)(p.ClientMr.Address + ReplyOffset), v);
        int n = p.ClientCq.Poll(_wcs);
        for (int i = 0; i < n; i++)
            if (_wcs[i].Status != WcStatus.Success) throw new InvalidOperationException($"completion failed: {_wcs[i]}");
    }
}
