using PinnedDma.Transports.Loopback;
using PinnedDma.Verbs;
using Xunit;

namespace PinnedDma.Tests.Lifetimes;

/// <summary>
/// The queue pair's active gate, which every access the QP makes or serves passes (a work request on the engine, an
/// incoming Write, Read or Send, a Read Response): open in Rtr, Rts and Sqd only; a move to Error or Reset, or
/// Dispose, closes it and returns only after the accesses inside have left; none starts afterwards.
/// </summary>
public sealed class ActiveGateTests : IDisposable
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);
    private readonly RdmaDevice _device = new("gate");
    private readonly QueuePair _a, _b;

    public ActiveGateTests()
    {
        var pd = _device.AllocatePd();
        var cq = _device.CreateCompletionQueue(64);
        _a = pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = cq });
        _b = pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = cq });
    }

    public void Dispose() => _device.Dispose();

    private bool EnterAndLeave()
    {
        if (!_a.TryEnterActive()) return false;
        _a.ExitActive();
        return true;
    }

    [Fact]
    public void The_gate_is_open_exactly_in_rtr_rts_and_sqd()
    {
        Assert.False(EnterAndLeave()); // Reset
        _a.Modify(new QpAttributes { State = QpState.Init, AccessFlags = AccessFlags.RemoteWrite });
        Assert.False(EnterAndLeave());
        _a.Modify(new QpAttributes { State = QpState.Rtr, DestQpNumber = _b.QpNumber });
        Assert.True(EnterAndLeave());
        _a.Modify(new QpAttributes { State = QpState.Rts });
        Assert.True(EnterAndLeave());
        _a.Modify(new QpAttributes { State = QpState.Sqd });
        Assert.True(EnterAndLeave());
        _a.Modify(new QpAttributes { State = QpState.Error });
        Assert.False(EnterAndLeave());
        _a.Modify(new QpAttributes { State = QpState.Reset });
        Assert.False(EnterAndLeave());
        _a.Modify(new QpAttributes { State = QpState.Init, AccessFlags = AccessFlags.RemoteWrite });
        _a.Modify(new QpAttributes { State = QpState.Rtr, DestQpNumber = _b.QpNumber });
        Assert.True(EnterAndLeave()); // reopened
        _a.Dispose();
        Assert.False(EnterAndLeave());
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Closing_waits_for_the_access_inside_and_admits_none_after(bool dispose)
    {
        LoopbackFabric.Connect(_a, _b);
        Assert.True(_a.TryEnterActive()); // an access in progress on this thread
        var closer = new Thread(() =>
        {
            if (dispose) _a.Dispose();
            else _a.Modify(new QpAttributes { State = QpState.Error });
        });
        closer.Start();
        // The state moves at once; the close itself must wait for the access to leave.
        long deadline = Environment.TickCount64 + (long)Bound.TotalMilliseconds;
        while (!_a.IsDisposed && _a.State != QpState.Error && Environment.TickCount64 < deadline) Thread.Sleep(1);
        Assert.False(EnterAndLeaveOnAnotherThread(), "an access entered after the gate closed");
        Assert.True(closer.IsAlive, "the close returned while an access was still inside");
        _a.ExitActive();
        Assert.True(closer.Join(Bound), "the close did not return after the access left");
    }

    private bool EnterAndLeaveOnAnotherThread()
    {
        bool entered = false;
        var t = new Thread(() => entered = EnterAndLeave());
        t.Start();
        t.Join();
        return entered;
    }

    /// <summary>Threads race in and out of the gate while another closes it: once the close returns nobody is inside, and nobody gets in.</summary>
    [Fact]
    public void Racing_accesses_never_outlive_the_close()
    {
        LoopbackFabric.Connect(_a, _b);
        int inside = 0, lateEntries = 0, entries = 0;
        bool closed = false;
        using var stop = new CancellationTokenSource(Bound);
        var racers = Enumerable.Range(0, 4).Select(_ => new Thread(() =>
        {
            for (int i = 0; i < 5_000_000 && !stop.IsCancellationRequested; i++)
            {
                if (!_a.TryEnterActive())
                {
                    if (Volatile.Read(ref closed)) return;
                    continue;
                }
                Interlocked.Increment(ref entries);
                Interlocked.Increment(ref inside);
                if (Volatile.Read(ref closed)) Interlocked.Increment(ref lateEntries);
                Thread.SpinWait(20);
                Interlocked.Decrement(ref inside);
                _a.ExitActive();
            }
        })).ToArray();
        foreach (var r in racers) r.Start();
        while (Volatile.Read(ref entries) < 10_000 && !stop.IsCancellationRequested) Thread.Yield();
        _a.Modify(new QpAttributes { State = QpState.Error });
        int stillInside = Volatile.Read(ref inside);
        Volatile.Write(ref closed, true);
        Assert.True(racers.All(r => r.Join(Bound)), "racers did not stop");
        Assert.Equal(0, stillInside);
        Assert.Equal(0, lateEntries);
        Assert.True(entries >= 10_000, $"only {entries} entries before the close");
    }
}
