using PinnedDma.Verbs;
using Xunit;

namespace PinnedDma.Tests.Verbs;

public sealed class QpStateTests : IDisposable
{
    private readonly VerbsRig _rig = new(name: "qps");

    public void Dispose() => _rig.Dispose();

    private static bool KernelAllows(QpState from, QpState to) => (from, to) switch
    {
        (_, QpState.Reset) or (_, QpState.Error) => true,
        (QpState.Reset, QpState.Init) => true,
        (QpState.Init, QpState.Init) or (QpState.Init, QpState.Rtr) => true,
        (QpState.Rtr, QpState.Rts) => true,
        (QpState.Rts, QpState.Rts) or (QpState.Rts, QpState.Sqd) => true,
        (QpState.Sqd, QpState.Sqd) or (QpState.Sqd, QpState.Rts) => true,
        (QpState.Sqe, QpState.Rts) => true,
        _ => false,
    };

    private QpAttributes To(QpState s, QueuePair peer) => s switch
    {
        QpState.Init => new QpAttributes { State = s, AccessFlags = VerbsRig.All },
        QpState.Rtr => new QpAttributes { State = s, DestQpNumber = peer.QpNumber },
        _ => new QpAttributes { State = s },
    };

    /// <summary>Brings a fresh QP to <paramref name="target"/> by legal moves; null when no legal path exists.</summary>
    private QueuePair? Reach(QpState target, QueuePair peer)
    {
        var path = target switch
        {
            QpState.Reset => [],
            QpState.Init => [QpState.Init],
            QpState.Rtr => [QpState.Init, QpState.Rtr],
            QpState.Rts => [QpState.Init, QpState.Rtr, QpState.Rts],
            QpState.Sqd => [QpState.Init, QpState.Rtr, QpState.Rts, QpState.Sqd],
            QpState.Error => new[] { QpState.Error },
            _ => (QpState[]?)null,
        };
        if (path is null) return null;
        var qp = _rig.Pd.CreateQueuePair(new QueuePairOptions { SendCq = _rig.CqA, RecvCq = _rig.CqA });
        Assert.Equal(QpState.Reset, qp.State);
        foreach (var s in path) qp.Modify(To(s, peer));
        Assert.Equal(target, qp.State);
        return qp;
    }

    [Fact]
    public void EveryTransitionFollowsTheKernelTable()
    {
        int checkedPairs = 0;
        var states = Enum.GetValues<QpState>();
        foreach (var from in states)
            foreach (var to in states)
            {
                using var peer = _rig.Pd.CreateQueuePair(new QueuePairOptions { SendCq = _rig.CqB, RecvCq = _rig.CqB });
                using var qp = Reach(from, peer);
                if (qp is null)
                {
                    // Sqe is entered only by a send error on UD/UC QPs; an RC QP goes to Error instead, and no
                    // ibv_modify_qp reaches it. The table still says what leaves it.
                    Assert.Equal(QpState.Sqe, from);
                    continue;
                }
                bool allowed = KernelAllows(from, to);
                if (allowed)
                {
                    qp.Modify(To(to, peer));
                    Assert.Equal(to, qp.State);
                }
                else
                {
                    var ex = Assert.Throws<PinnedDmaException>(() => qp.Modify(To(to, peer)));
                    Assert.Equal(PinnedDmaError.InvalidArgument, ex.Error);
                    Assert.Equal(from, qp.State);
                }
                checkedPairs++;
            }
        Assert.Equal(6 * 7, checkedPairs);
        Assert.True(QueuePair.IsLegal(QpState.Sqe, QpState.Rts));
        Assert.True(QueuePair.IsLegal(QpState.Sqe, QpState.Reset));
        Assert.True(QueuePair.IsLegal(QpState.Sqe, QpState.Error));
        foreach (var to in new[] { QpState.Init, QpState.Rtr, QpState.Sqd, QpState.Sqe })
            Assert.False(QueuePair.IsLegal(QpState.Sqe, to));
    }

    [Fact]
    public void RtrNeedsAKnownDestination()
    {
        using var qp = _rig.Pd.CreateQueuePair(new QueuePairOptions { SendCq = _rig.CqA, RecvCq = _rig.CqA });
        qp.Modify(new QpAttributes { State = QpState.Init });
        Assert.Equal(PinnedDmaError.InvalidArgument, Assert.Throws<PinnedDmaException>(() => qp.Modify(new QpAttributes { State = QpState.Rtr })).Error);
        Assert.Equal(PinnedDmaError.InvalidArgument, Assert.Throws<PinnedDmaException>(() => qp.Modify(new QpAttributes { State = QpState.Rtr, DestQpNumber = 0xFFFF_FFF0 })).Error);
        Assert.Equal(QpState.Init, qp.State);
    }

    [Fact]
    public void PostSendBeforeRtsAndPostRecvInResetFail()
    {
        var buf = _rig.Pd.RegisterBuffer(64, AccessFlags.LocalWrite);
        using var peer = _rig.Pd.CreateQueuePair(new QueuePairOptions { SendCq = _rig.CqB, RecvCq = _rig.CqB });
        using var qp = _rig.Pd.CreateQueuePair(new QueuePairOptions { SendCq = _rig.CqA, RecvCq = _rig.CqA });
        var send = VerbsRig.Send(1, buf, 0, 8);
        Assert.Equal(PinnedDmaError.InvalidArgument, Assert.Throws<PinnedDmaException>(() => qp.PostSend(send)).Error);
        Assert.Equal(PinnedDmaError.InvalidArgument, Assert.Throws<PinnedDmaException>(() => qp.PostRecv(VerbsRig.Recv(2, buf, 0, 8))).Error);
        qp.Modify(To(QpState.Init, peer));
        Assert.Equal(PinnedDmaError.InvalidArgument, Assert.Throws<PinnedDmaException>(() => qp.PostSend(send)).Error);
        qp.PostRecv(VerbsRig.Recv(3, buf, 0, 8)); // legal from Init on
        qp.Modify(To(QpState.Rtr, peer));
        Assert.Equal(PinnedDmaError.InvalidArgument, Assert.Throws<PinnedDmaException>(() => qp.PostSend(send)).Error);
        Assert.Equal(0, qp.SendQueueDepth);
        Span<WorkCompletion> wc = stackalloc WorkCompletion[4];
        Assert.Equal(0, _rig.CqA.Poll(wc));
    }

    [Fact]
    public void PostingOnAnErrorQpCompletesWithFlush()
    {
        var buf = _rig.Pd.RegisterBuffer(64, AccessFlags.LocalWrite);
        _rig.A.Modify(new QpAttributes { State = QpState.Error });
        _rig.A.PostSend(VerbsRig.Send(10, buf, 0, 8));
        _rig.A.PostSend(VerbsRig.Send(11, buf, 0, 8, signaled: false));
        _rig.A.PostRecv(VerbsRig.Recv(12, buf, 0, 8));
        var wcs = VerbsRig.WaitMany(_rig.CqA, 3);
        Assert.Equal(new ulong[] { 10, 11, 12 }, wcs.Select(w => w.WrId));
        Assert.All(wcs, w => Assert.Equal(WcStatus.WrFlushErr, w.Status));
        Assert.Equal(WcOpcode.Send, wcs[0].Opcode);
        Assert.Equal(WcOpcode.Recv, wcs[2].Opcode);
    }

    [Fact]
    public void MovingToErrorFlushesOutstandingReceivesInOrder()
    {
        var buf = _rig.Pd.RegisterBuffer(64, AccessFlags.LocalWrite);
        for (ulong i = 0; i < 5; i++) _rig.B.PostRecv(VerbsRig.Recv(100 + i, buf, 0, 8));
        _rig.B.Modify(new QpAttributes { State = QpState.Error });
        var wcs = VerbsRig.WaitMany(_rig.CqB, 5);
        Assert.Equal(new ulong[] { 100, 101, 102, 103, 104 }, wcs.Select(w => w.WrId));
        Assert.All(wcs, w => Assert.Equal(WcStatus.WrFlushErr, w.Status));
    }

    [Fact]
    public void FullQueuesRefuseWithNoSpace()
    {
        var buf = _rig.Pd.RegisterBuffer(64, AccessFlags.LocalWrite);
        using var peer = _rig.Pd.CreateQueuePair(new QueuePairOptions { SendCq = _rig.CqB, RecvCq = _rig.CqB, MaxRecvWr = 3 });
        using var qp = _rig.Pd.CreateQueuePair(new QueuePairOptions { SendCq = _rig.CqA, RecvCq = _rig.CqA, MaxSendWr = 4 });
        qp.Modify(To(QpState.Init, peer));
        peer.Modify(To(QpState.Init, qp));
        qp.Modify(To(QpState.Rtr, peer));
        peer.Modify(To(QpState.Rtr, qp));
        // Sqd: the QP accepts posts but the engine does not run them, so the send queue fills deterministically.
        qp.Modify(new QpAttributes { State = QpState.Rts });
        qp.Modify(new QpAttributes { State = QpState.Sqd });
        for (ulong i = 0; i < 4; i++) qp.PostSend(VerbsRig.Write(i, buf, 0, 8, buf, 8));
        Assert.Equal(4, qp.SendQueueDepth);
        Assert.Equal(PinnedDmaError.NoSpace, Assert.Throws<PinnedDmaException>(() => qp.PostSend(VerbsRig.Write(9, buf, 0, 8, buf, 8))).Error);
        for (ulong i = 0; i < 3; i++) peer.PostRecv(VerbsRig.Recv(20 + i, buf, 0, 8));
        Assert.Equal(PinnedDmaError.NoSpace, Assert.Throws<PinnedDmaException>(() => peer.PostRecv(VerbsRig.Recv(29, buf, 0, 8))).Error);
    }
}

public sealed class QpSqdTests : IDisposable
{
    private readonly VerbsRig _rig = new(name: "sqd");

    public void Dispose() => _rig.Dispose();

    [Fact]
    public void SendQueueDrainedHoldsNewWorkUntilRts()
    {
        var src = _rig.Pd.RegisterBuffer(64, AccessFlags.LocalWrite);
        var dst = _rig.Pd.RegisterBuffer(64, VerbsRig.All);
        src.GetBufferSpan().Fill(0x42);
        _rig.A.Modify(new QpAttributes { State = QpState.Sqd });
        _rig.A.PostSend(VerbsRig.Write(1, src, 0, 64, dst, 0));
        // The engine must leave a drained send queue alone; give it ample chance to misbehave.
        long before = _rig.Device.Engine.Executed;
        Thread.Sleep(100);
        Assert.Equal(before, _rig.Device.Engine.Executed);
        Assert.Equal(1, _rig.A.SendQueueDepth);
        Assert.All(dst.GetBufferSpan().ToArray(), b => Assert.Equal(0, b));
        _rig.A.Modify(new QpAttributes { State = QpState.Rts });
        var wc = VerbsRig.WaitOne(_rig.CqA);
        Assert.Equal(WcStatus.Success, wc.Status);
        Assert.All(dst.GetBufferSpan().ToArray(), b => Assert.Equal(0x42, b));
    }
}
