using PinnedDma.Verbs;
using Xunit;

// The waits read synchronously here are completed first (each test checks): reading a completed ValueTask on the
// same thread is what the waiter must support, and what the allocation test measures.
#pragma warning disable xUnit1031

namespace PinnedDma.Tests.Verbs;

/// <summary>
/// <see cref="CompletionQueue.WaitAsync(CancellationToken)"/>'s state machine: one outcome per wait under races, a
/// final state, one waiter at a time, and the overrun and timeout rules of <see cref="CompletionQueue.Poll(Span{WorkCompletion}, TimeSpan)"/>.
/// </summary>
public sealed class CompletionWaiterTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);
    private static readonly WorkCompletion Wc = new(7, WcStatus.Success, WcOpcode.RdmaWrite, 64, 1, WcFlags.None, 0, 0);

    [Fact]
    public async Task APushCompletesThePendingWait()
    {
        using var cq = new CompletionQueue(4);
        var wait = cq.WaitAsync();
        Assert.False(wait.IsCompleted);
        cq.Push(Wc);
        await wait.AsTask().WaitAsync(Bound);
        Assert.Equal(1, cq.Poll(new WorkCompletion[4]));
        // Ready at once while completions wait to be polled.
        cq.Push(Wc);
        Assert.True(cq.WaitAsync().IsCompletedSuccessfully);
    }

    [Fact]
    public void ASecondWaitWhileOneIsPendingThrows()
    {
        using var cq = new CompletionQueue(4);
        var first = cq.WaitAsync();
        Assert.Throws<InvalidOperationException>(() => cq.WaitAsync());
        Assert.Throws<InvalidOperationException>(() => cq.WaitAsync(new CancellationTokenSource().Token));
        cq.Push(Wc);
        first.GetAwaiter().GetResult();
    }

    /// <summary>
    /// A completed wait nobody has awaited yet still owns the awaitable: a second wait must not reset it under the
    /// first awaiter (the old code re-armed, and the first await then failed on a stale token and lost its outcome).
    /// </summary>
    [Fact]
    public void ASecondWaitBeforeTheFirstIsAwaitedThrowsAndTheFirstKeepsItsOutcome()
    {
        using var cq = new CompletionQueue(4);
        var first = cq.WaitAsync();
        cq.Push(Wc);
        Assert.Equal(1, cq.Poll(new WorkCompletion[4])); // nothing ready: a new wait would arm
        Assert.Throws<InvalidOperationException>(() => cq.WaitAsync());
        Assert.True(first.IsCompletedSuccessfully);
        first.GetAwaiter().GetResult();
        var next = cq.WaitAsync(); // consumed: the waiter is free again
        Assert.False(next.IsCompleted);
        cq.Push(Wc);
        next.GetAwaiter().GetResult();
    }

    [Fact]
    public async Task DisposeFaultsThePendingWaitAndEveryLaterOneAtOnce()
    {
        var cq = new CompletionQueue(4);
        var pending = cq.WaitAsync(new CancellationTokenSource().Token);
        cq.Dispose();
        await Assert.ThrowsAsync<ObjectDisposedException>(() => pending.AsTask().WaitAsync(Bound));
        for (int i = 0; i < 3; i++)
        {
            var later = cq.WaitAsync();
            Assert.True(later.IsFaulted);
            await Assert.ThrowsAsync<ObjectDisposedException>(() => later.AsTask());
        }
        cq.Dispose(); // twice is fine
        Assert.Throws<ObjectDisposedException>(() => cq.Poll(new WorkCompletion[1]));
    }

    [Fact]
    public async Task DisposingTheDeviceFaultsAPendingWait()
    {
        var nic = new RdmaDevice("waiter");
        var cq = nic.CreateCompletionQueue(8);
        var pending = cq.WaitAsync();
        nic.Dispose();
        await Assert.ThrowsAsync<ObjectDisposedException>(() => pending.AsTask().WaitAsync(Bound));
        Assert.True(cq.WaitAsync().IsFaulted);
    }

    [Fact]
    public async Task CancellationFaultsTheWaitAndTheNextWaitWorks()
    {
        using var cq = new CompletionQueue(4);
        using var cts = new CancellationTokenSource();
        var wait = cq.WaitAsync(cts.Token);
        cts.Cancel();
        var e = await Assert.ThrowsAnyAsync<OperationCanceledException>(() => wait.AsTask().WaitAsync(Bound));
        Assert.Equal(cts.Token, e.CancellationToken);
        Assert.True(cq.WaitAsync(cts.Token).IsCanceled); // an already-canceled token: canceled at once
        var next = cq.WaitAsync(new CancellationTokenSource().Token);
        cq.Push(Wc);
        await next.AsTask().WaitAsync(Bound);
    }

    /// <summary>
    /// A stale cancellation must not cancel a later wait on another token: the first wait's registration is still
    /// live when a push completes it (Unregister does not wait), so the waiter checks which token it serves.
    /// </summary>
    [Fact]
    public void CancelingAnEarlierWaitsTokenDoesNotCancelALaterWait()
    {
        using var cq = new CompletionQueue(4);
        using var first = new CancellationTokenSource();
        var w1 = cq.WaitAsync(first.Token);
        cq.Push(Wc);
        w1.GetAwaiter().GetResult();
        cq.Poll(new WorkCompletion[4]);
        var w2 = cq.WaitAsync(new CancellationTokenSource().Token);
        first.Cancel();
        Assert.False(w2.IsCompleted);
        cq.Push(Wc);
        w2.GetAwaiter().GetResult();
    }

    /// <summary>
    /// A cancel and a push released together, many times: each wait ends exactly once (succeeded or canceled, never
    /// both, never neither; completing the awaitable twice would throw on one of the two threads), the completion is
    /// never lost, and the waiter is free for the next wait.
    /// </summary>
    [Fact]
    public void CancellationRacingAPushGivesExactlyOneOutcome()
    {
        using var cq = new CompletionQueue(4);
        const int Rounds = 2000;
        var barrier = new Barrier(2);
        var sources = new CancellationTokenSource[Rounds];
        for (int i = 0; i < Rounds; i++) sources[i] = new CancellationTokenSource();
        Exception? cancelError = null;
        var canceler = new Thread(() =>
        {
            try
            {
                for (int i = 0; i < Rounds; i++)
                {
                    if (!barrier.SignalAndWait(Bound)) return;
                    sources[i].Cancel();
                    if (!barrier.SignalAndWait(Bound)) return;
                }
            }
            catch (Exception e)
            {
                cancelError = e;
            }
        }) { IsBackground = true };
        canceler.Start();
        var into = new WorkCompletion[4];
        int succeeded = 0, canceled = 0;
        for (int i = 0; i < Rounds; i++)
        {
            var wait = cq.WaitAsync(sources[i].Token);
            Assert.True(barrier.SignalAndWait(Bound));
            cq.Push(Wc);
            Assert.True(barrier.SignalAndWait(Bound));
            Assert.True(wait.IsCompleted, $"round {i}: the wait has no outcome");
            try
            {
                wait.GetAwaiter().GetResult();
                succeeded++;
            }
            catch (OperationCanceledException)
            {
                canceled++;
            }
            Assert.Equal(1, cq.Poll(into)); // the completion is there either way
        }
        Assert.True(canceler.Join(Bound));
        Assert.Null(cancelError);
        Assert.Equal(Rounds, succeeded + canceled);
        foreach (var s in sources) s.Dispose();
    }

    /// <summary>A push racing a dispose: the wait either succeeds or faults with ObjectDisposedException, once.</summary>
    [Fact]
    public void DisposeRacingAPushGivesExactlyOneOutcome()
    {
        for (int i = 0; i < 500; i++)
        {
            var cq = new CompletionQueue(4);
            var wait = cq.WaitAsync();
            using var go = new Barrier(2);
            var t = new Thread(() =>
            {
                go.SignalAndWait(Bound);
                cq.Dispose();
            });
            t.Start();
            go.SignalAndWait(Bound);
            cq.Push(Wc);
            Assert.True(t.Join(Bound));
            Assert.True(wait.IsCompleted);
            try
            {
                wait.GetAwaiter().GetResult();
            }
            catch (ObjectDisposedException)
            {
            }
        }
    }

    /// <summary>
    /// An overrun puts the CQ in error for good, but the completions that did fit are work that happened: they are
    /// handed out first (the old code threw at once and lost them), then every poll reports the loss.
    /// </summary>
    [Fact]
    public void AnOverrunHandsOutWhatFitThenThrowsNoSpaceForGood()
    {
        using var cq = new CompletionQueue(2);
        for (ulong i = 0; i < 3; i++) cq.Push(Wc with { WrId = i });
        Assert.True(cq.WaitAsync().IsCompletedSuccessfully);
        var into = new WorkCompletion[1];
        Assert.Equal(1, cq.Poll(into));
        Assert.Equal(0ul, into[0].WrId);
        Assert.Equal(1, cq.Poll(into, TimeSpan.FromSeconds(10)));
        Assert.Equal(1ul, into[0].WrId);
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(PinnedDmaError.NoSpace, Assert.Throws<PinnedDmaException>(() => cq.Poll(into)).Error);
            Assert.Equal(PinnedDmaError.NoSpace, Assert.Throws<PinnedDmaException>(() => cq.Poll(into, TimeSpan.FromSeconds(1))).Error);
            Assert.True(cq.WaitAsync().IsCompletedSuccessfully); // a waiter is told at once, and its poll throws
        }
    }

    /// <summary>An overrun while a thread is blocked in a timed poll wakes it, and it gets what fit.</summary>
    [Fact]
    public async Task AnOverrunWakesABlockedPoller()
    {
        using var cq = new CompletionQueue(1);
        var into = new WorkCompletion[4];
        var poller = Task.Run(() => cq.Poll(into, Timeout.InfiniteTimeSpan));
        cq.Push(Wc);
        cq.Push(Wc);
        // The poller wakes with the completion that fit. Whether the second push overran depends on whether the poller
        // took the first completion in between; either way the next poll returns at once, with the state that says so.
        Assert.Equal(1, await poller.WaitAsync(Bound));
        var next = Task.Run(() =>
        {
            try
            {
                return cq.Poll(into, Timeout.InfiniteTimeSpan) == 1 ? "the second completion" : "nothing";
            }
            catch (PinnedDmaException e) when (e.Error == PinnedDmaError.NoSpace)
            {
                return "overrun";
            }
        });
        Assert.Contains(await next.WaitAsync(Bound), new[] { "the second completion", "overrun" });
    }

    /// <summary>
    /// Timeout.InfiniteTimeSpan (-1 ms) waits until a completion comes; the old code computed a deadline in the past
    /// and returned 0 at once.
    /// </summary>
    [Fact]
    public async Task AnInfiniteTimeoutWaitsForTheCompletion()
    {
        using var cq = new CompletionQueue(4);
        var into = new WorkCompletion[4];
        var poller = Task.Run(() => cq.Poll(into, Timeout.InfiniteTimeSpan));
        // Not a timing assertion: however long it takes, a correct poll cannot have returned without a completion.
        Assert.NotSame(poller, await Task.WhenAny(poller, Task.Delay(300)));
        cq.Push(Wc);
        Assert.Equal(1, await poller.WaitAsync(Bound));
    }

    [Fact]
    public async Task AnInfinitePollWakesWithObjectDisposedWhenTheQueueIsDisposed()
    {
        var cq = new CompletionQueue(4);
        var poller = Task.Run(() => cq.Poll(new WorkCompletion[4], Timeout.InfiniteTimeSpan));
        Assert.NotSame(poller, await Task.WhenAny(poller, Task.Delay(200)));
        cq.Dispose();
        await Assert.ThrowsAsync<ObjectDisposedException>(() => poller.WaitAsync(Bound));
    }

    [Fact]
    public void NegativeAndZeroTimeoutsPollOnceAndAnEmptySpanReturnsAtOnce()
    {
        using var cq = new CompletionQueue(4);
        var into = new WorkCompletion[4];
        Assert.Equal(0, cq.Poll(into, TimeSpan.Zero));
        Assert.Equal(0, cq.Poll(into, TimeSpan.FromMilliseconds(-2)));
        Assert.Equal(0, cq.Poll(into, TimeSpan.MinValue));
        Assert.Equal(0, cq.Poll([], Timeout.InfiniteTimeSpan));
        cq.Push(Wc);
        Assert.Equal(0, cq.Poll([], Timeout.InfiniteTimeSpan));
        Assert.Equal(1, cq.Poll(into, TimeSpan.MaxValue));
    }
}

/// <summary>
/// "No allocation per wait": many wait/push/poll cycles on this thread allocate 0 bytes once warm, with a token that
/// cannot be canceled and with one that can (its registration nodes are reused).
/// </summary>
[Collection(nameof(AllocationCollection))]
public sealed class CompletionWaiterAllocationTests
{
    private static readonly WorkCompletion Wc = new(7, WcStatus.Success, WcOpcode.RdmaWrite, 64, 1, WcFlags.None, 0, 0);

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void WaitPushPollCyclesAllocateNothing(bool cancelable)
    {
        using var cq = new CompletionQueue(16);
        using var cts = new CancellationTokenSource();
        var token = cancelable ? cts.Token : CancellationToken.None;
        var into = new WorkCompletion[4];
        Cycles(cq, token, into, 1000); // warm-up: JIT, tiering, the token source's registration table
        var rounds = new List<long>();
        for (int round = 0; round < 3; round++)
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            int failures = Cycles(cq, token, into, 20_000);
            long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            Assert.Equal(0, failures);
            rounds.Add(allocated);
            if (allocated == 0) break;
        }
        Assert.True(rounds[^1] == 0, $"bytes allocated per round of 20000 waits: {string.Join(", ", rounds)}");

        static int Cycles(CompletionQueue cq, CancellationToken token, WorkCompletion[] into, int n)
        {
            int failures = 0;
            for (int i = 0; i < n; i++)
            {
                var wait = cq.WaitAsync(token);
                if (wait.IsCompleted) failures++;
                cq.Push(Wc);
                if (!wait.IsCompletedSuccessfully) failures++;
                wait.GetAwaiter().GetResult();
                if (cq.Poll(into) != 1) failures++;
            }
            return failures;
        }
    }
}
