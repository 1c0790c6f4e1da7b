using PinnedDma.Transports.Loopback;
using PinnedDma.Verbs;
using Xunit;

namespace PinnedDma.Tests.Verbs;

/// <summary><see cref="LoopbackFabric.Connect"/>: all or nothing, and a queue pair connected to itself.</summary>
public sealed class LoopbackFabricTests : IDisposable
{
    private readonly VerbsRig _rig = new(name: "fabric");

    public void Dispose() => _rig.Dispose();

    private QueuePair NewQp() => _rig.Pd.CreateQueuePair(new QueuePairOptions { SendCq = _rig.CqA, RecvCq = _rig.CqA });

    [Fact]
    public void A_refusal_by_the_second_queue_pair_leaves_the_first_untouched()
    {
        var a = NewQp();
        a.Modify(new QpAttributes { State = QpState.Init, AccessFlags = AccessFlags.RemoteRead });
        a.PostRecv(new RecvWorkRequest(7, default));
        // B of the rig is in Rts: it cannot be connected again.
        var e = Assert.Throws<PinnedDmaException>(() => LoopbackFabric.Connect(a, _rig.B));
        Assert.Equal(PinnedDmaError.InvalidArgument, e.Error);
        Assert.Equal(QpState.Init, a.State);
        Assert.Equal(AccessFlags.RemoteRead, a.RemoteAccess);
        Assert.Equal(0u, a.DestQpNumber);
        Assert.Equal(QpState.Rts, _rig.B.State);
        // The receive posted in Init is still there: nothing was flushed.
        Span<WorkCompletion> wc = stackalloc WorkCompletion[1];
        Assert.Equal(0, _rig.CqA.Poll(wc));
        // And the first queue pair can still be connected.
        var c = NewQp();
        LoopbackFabric.Connect(a, c);
        Assert.Equal(QpState.Rts, a.State);
        Assert.Equal(c.QpNumber, a.DestQpNumber);
    }

    [Fact]
    public void A_disposed_second_queue_pair_leaves_the_first_in_reset()
    {
        var a = NewQp();
        var b = NewQp();
        b.Dispose();
        Assert.Throws<ObjectDisposedException>(() => LoopbackFabric.Connect(a, b));
        Assert.Equal(QpState.Reset, a.State);
        Assert.Equal(0u, a.DestQpNumber);
    }

    [Fact]
    public void A_queue_pair_connected_to_itself_writes_into_its_own_region()
    {
        var a = NewQp();
        LoopbackFabric.Connect(a, a);
        Assert.Equal(QpState.Rts, a.State);
        Assert.Equal(a.QpNumber, a.DestQpNumber);
        var source = _rig.Pd.RegisterBuffer(4096, VerbsRig.All);
        var target = _rig.Pd.RegisterBuffer(4096, VerbsRig.All);
        "loop"u8.CopyTo(source.GetBufferSpan());
        a.PostSend(VerbsRig.Write(1, source, 0, 4, target, 0));
        var wc = VerbsRig.WaitOne(_rig.CqA);
        Assert.Equal(WcStatus.Success, wc.Status);
        Assert.Equal("loop"u8.ToArray(), target.GetBufferSpan()[..4].ToArray());
    }

    [Fact]
    public void Null_queue_pairs_are_refused()
    {
        Assert.Throws<ArgumentNullException>(() => LoopbackFabric.Connect(null!, _rig.A));
        Assert.Throws<ArgumentNullException>(() => LoopbackFabric.Connect(_rig.A, null!));
    }
}
