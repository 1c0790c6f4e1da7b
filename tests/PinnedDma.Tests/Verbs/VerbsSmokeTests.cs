using PinnedDma.Storage;
using PinnedDma.Transports.Loopback;
using PinnedDma.Verbs;
using Xunit;

namespace PinnedDma.Tests.Verbs;

public sealed class VerbsSmokeTests : IDisposable
{
    private readonly Volume _vol = Volume.CreateInMemory(new VolumeOptions { BlockCount = 2048 });
    private readonly RdmaDevice _dev = new("test0");
    private readonly PinOwner _owner;
    private readonly ProtectionDomain _pd;
    private readonly CompletionQueue _cq;
    private readonly QueuePair _a, _b;

    public VerbsSmokeTests()
    {
        _owner = new PinOwner(_vol, 64 << 20);
        _pd = _dev.AllocatePd();
        _cq = _dev.CreateCompletionQueue(256);
        _a = _pd.CreateQueuePair(new QueuePairOptions { SendCq = _cq, RecvCq = _cq });
        _b = _pd.CreateQueuePair(new QueuePairOptions { SendCq = _cq, RecvCq = _cq });
        LoopbackFabric.Connect(_a, _b);
    }

    public void Dispose()
    {
        _a.Dispose();
        _b.Dispose();
        _owner.Dispose();
        _dev.Dispose();
        _vol.Dispose();
    }

    private WorkCompletion WaitOne()
    {
        Span<WorkCompletion> wc = stackalloc WorkCompletion[1];
        Assert.Equal(1, _cq.Poll(wc, TimeSpan.FromSeconds(10)));
        return wc[0];
    }

    [Fact]
    public void RdmaWriteIntoFileRegionThenRevokeGivesRemoteAccessError()
    {
        var f = _vol.CreateFile("f");
        f.Write(0, new byte[16 * 4096]);
        var target = _pd.RegisterFile(_owner, f, 0, 16 * 4096, AccessFlags.LocalWrite | AccessFlags.RemoteWrite);
        var src = _pd.RegisterBuffer(4096, AccessFlags.LocalWrite);
        src.GetBufferSpan().Fill(0xAB);
        _a.PostSend(new SendWorkRequest { WrId = 1, Opcode = WrOpcode.RdmaWrite, Flags = SendFlags.Signaled, Local = new(src.Address, 4096, src.LKey), RemoteAddress = target.Address + 4096, RKey = target.RKey });
        var wc = WaitOne();
        Assert.Equal(WcStatus.Success, wc.Status);
        var back = new byte[4096];
        f.Read(4096, back);
        Assert.All(back, b => Assert.Equal(0xAB, b));

        bool told = false;
        target.LeaseBreaking += (_, _) => Volatile.Write(ref told, true);
        f.Truncate(0, ConflictPolicy.Break(TimeSpan.FromMilliseconds(20)));
        // The handler runs on the thread pool (the breaker does not wait for it), so it may finish after the truncate.
        Assert.True(SpinWait.SpinUntil(() => Volatile.Read(ref told), TimeSpan.FromSeconds(30)));
        Assert.False(target.IsValid);
        _a.PostSend(new SendWorkRequest { WrId = 2, Opcode = WrOpcode.RdmaWrite, Flags = SendFlags.Signaled, Local = new(src.Address, 4096, src.LKey), RemoteAddress = target.Address, RKey = target.RKey });
        wc = WaitOne();
        Assert.Equal(WcStatus.RemAccessErr, wc.Status);
        Assert.Equal(QpState.Error, _a.State);
        Assert.True(_vol.Fsck().IsClean);
    }

    [Fact]
    public void SendReceiveAndAtomics()
    {
        var rbuf = _pd.RegisterBuffer(64, AccessFlags.LocalWrite | AccessFlags.RemoteAtomic | AccessFlags.RemoteRead);
        var sbuf = _pd.RegisterBuffer(64, AccessFlags.LocalWrite);
        sbuf.GetBufferSpan()[..5].Fill(7);
        _b.PostRecv(new RecvWorkRequest(10, new(rbuf.Address + 8, 32, rbuf.LKey)));
        _a.PostSend(new SendWorkRequest { WrId = 11, Opcode = WrOpcode.SendWithImm, Flags = SendFlags.Signaled, Local = new(sbuf.Address, 5, sbuf.LKey), ImmData = 99 });
        var w1 = WaitOne();
        var w2 = WaitOne();
        var recv = w1.Opcode == WcOpcode.Recv ? w1 : w2;
        Assert.Equal(WcStatus.Success, recv.Status);
        Assert.Equal(99u, recv.ImmData);
        Assert.Equal(5u, recv.ByteLength);
        Assert.Equal(new byte[] { 7, 7, 7, 7, 7 }, rbuf.GetBufferSpan().Slice(8, 5).ToArray());

        _a.PostSend(new SendWorkRequest { WrId = 12, Opcode = WrOpcode.AtomicFetchAdd, Flags = SendFlags.Signaled, Local = new(sbuf.Address + 8, 8, sbuf.LKey), RemoteAddress = rbuf.Address + 32, RKey = rbuf.RKey, CompareAdd = 5 });
        Assert.Equal(WcStatus.Success, WaitOne().Status);
        _a.PostSend(new SendWorkRequest { WrId = 13, Opcode = WrOpcode.AtomicCompareSwap, Flags = SendFlags.Signaled, Local = new(sbuf.Address + 16, 8, sbuf.LKey), RemoteAddress = rbuf.Address + 32, RKey = rbuf.RKey, CompareAdd = 5, Swap = 42 });
        Assert.Equal(WcStatus.Success, WaitOne().Status);
        Assert.Equal(42UL, BitConverter.ToUInt64(rbuf.GetBufferSpan().Slice(32, 8)));
        Assert.Equal(5UL, BitConverter.ToUInt64(sbuf.GetBufferSpan().Slice(16, 8)));
    }
}
