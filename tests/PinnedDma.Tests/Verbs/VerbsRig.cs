using PinnedDma.Storage;
using PinnedDma.Transports.Loopback;
using PinnedDma.Verbs;
using Xunit;

namespace PinnedDma.Tests.Verbs;

/// <summary>
/// One in-memory volume, one soft device, one PD and a connected loopback pair: <see cref="A"/> (requester, its
/// completions on <see cref="CqA"/>) and <see cref="B"/> (responder, completions on <see cref="CqB"/>).
/// </summary>
internal sealed class VerbsRig : IDisposable
{
    public static readonly TimeSpan PollTimeout = TimeSpan.FromSeconds(10);

    public VerbsRig(long blockCount = 2048, int maxSendWr = 128, int cqCapacity = 1024, string name = "rig")
    {
        Volume = Volume.CreateInMemory(new VolumeOptions { BlockCount = blockCount });
        Device = new RdmaDevice(name);
        Owner = new PinOwner(Volume, 1L << 30);
        Pd = Device.AllocatePd();
        CqA = Device.CreateCompletionQueue(cqCapacity);
        CqB = Device.CreateCompletionQueue(cqCapacity);
        A = Pd.CreateQueuePair(new QueuePairOptions { SendCq = CqA, RecvCq = CqA, MaxSendWr = maxSendWr });
        B = Pd.CreateQueuePair(new QueuePairOptions { SendCq = CqB, RecvCq = CqB, MaxSendWr = maxSendWr });
        LoopbackFabric.Connect(A, B);
    }

    public Volume Volume { get; }
    public RdmaDevice Device { get; }
    public PinOwner Owner { get; }
    public ProtectionDomain Pd { get; }
    public CompletionQueue CqA { get; }
    public CompletionQueue CqB { get; }
    public QueuePair A { get; }
    public QueuePair B { get; }

    public const AccessFlags All = AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteRead | AccessFlags.RemoteAtomic;

    /// <summary>A file of <paramref name="length"/> bytes filled with <paramref name="fill"/>.</summary>
    public VolumeFile NewFile(string name, int length, byte fill = 0)
    {
        var f = Volume.CreateFile(name);
        var data = new byte[length];
        Array.Fill(data, fill);
        f.Write(0, data);
        return f;
    }

    public static WorkCompletion WaitOne(CompletionQueue cq)
    {
        Span<WorkCompletion> wc = stackalloc WorkCompletion[1];
        int n = cq.Poll(wc, PollTimeout);
        Assert.True(n == 1, $"no completion within {PollTimeout}");
        return wc[0];
    }

    /// <summary>Polls exactly <paramref name="count"/> completions (bounded by <see cref="PollTimeout"/> each).</summary>
    public static List<WorkCompletion> WaitMany(CompletionQueue cq, int count)
    {
        var l = new List<WorkCompletion>(count);
        for (int i = 0; i < count; i++) l.Add(WaitOne(cq));
        return l;
    }

    /// <summary>Asserts nothing more arrives on <paramref name="cq"/> once the engine has gone idle.</summary>
    public static void AssertNoMore(CompletionQueue cq, QueuePair qp)
    {
        long deadline = Environment.TickCount64 + 10_000;
        while (qp.SendQueueDepth > 0 && Environment.TickCount64 < deadline) Thread.Sleep(1);
        Assert.Equal(0, qp.SendQueueDepth);
        Span<WorkCompletion> wc = stackalloc WorkCompletion[4];
        int n = cq.Poll(wc);
        Assert.True(n == 0, n == 0 ? "" : $"unexpected completion {wc[0]}");
    }

    public static SendWorkRequest Write(ulong id, MemoryRegion local, long localOff, uint len, MemoryRegion remote, long remoteOff, bool signaled = true) =>
        Rdma(WrOpcode.RdmaWrite, id, local, localOff, len, remote, remoteOff, signaled);

    public static SendWorkRequest Read(ulong id, MemoryRegion local, long localOff, uint len, MemoryRegion remote, long remoteOff, bool signaled = true) =>
        Rdma(WrOpcode.RdmaRead, id, local, localOff, len, remote, remoteOff, signaled);

    private static SendWorkRequest Rdma(WrOpcode op, ulong id, MemoryRegion local, long localOff, uint len, MemoryRegion remote, long remoteOff, bool signaled) => new()
    {
        WrId = id,
        Opcode = op,
        Flags = signaled ? SendFlags.Signaled : SendFlags.None,
        Local = new(local.Address + (ulong)localOff, len, local.LKey),
        RemoteAddress = remote.Address + (ulong)remoteOff,
        RKey = remote.RKey,
    };

    public static SendWorkRequest Send(ulong id, MemoryRegion local, long localOff, uint len, bool signaled = true) => new()
    {
        WrId = id,
        Opcode = WrOpcode.Send,
        Flags = signaled ? SendFlags.Signaled : SendFlags.None,
        Local = new(local.Address + (ulong)localOff, len, local.LKey),
    };

    public static RecvWorkRequest Recv(ulong id, MemoryRegion local, long localOff, uint len) =>
        new(id, new(local.Address + (ulong)localOff, len, local.LKey));

    public static byte[] ReadFile(VolumeFile f, long offset, int length)
    {
        var b = new byte[length];
        f.Read(offset, b);
        return b;
    }

    /// <summary>Moves both queue pairs back to Reset and reconnects them (after an error test).</summary>
    public void Reconnect()
    {
        A.Modify(new QpAttributes { State = QpState.Reset });
        B.Modify(new QpAttributes { State = QpState.Reset });
        LoopbackFabric.Connect(A, B);
    }

    public void Dispose()
    {
        A.Dispose();
        B.Dispose();
        Owner.Dispose();
        Device.Dispose();
        Volume.Dispose();
    }
}
