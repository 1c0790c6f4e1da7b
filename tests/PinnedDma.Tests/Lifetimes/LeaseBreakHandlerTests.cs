using PinnedDma.Storage;
using Xunit;

namespace PinnedDma.Tests.Lifetimes;

/// <summary>
/// What a LeaseBreaking handler may do without breaking the breaker: break the same range again (re-entrancy) or never
/// return at all. Either way the operation finishes within its timeout plus a small bound and the pin is revoked.
/// </summary>
public sealed class LeaseBreakHandlerTests
{
    private const int Bs = 4096;

    // A generous bound on "timeout plus a little": about hanging, not speed.
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);

    private static VolumeFile NewFile(Volume v, string name, int blocks)
    {
        var f = v.CreateFile(name);
        f.Write(0, new byte[blocks * Bs]);
        return f;
    }

    [Fact]
    public async Task HandlerThatBreaksTheSameRangeAgainIsNotReentered()
    {
        using var v = Volume.CreateInMemory(new VolumeOptions { BlockCount = 512 });
        var f = NewFile(v, "f", 8);
        using var owner = new PinOwner(v, 1 << 20);
        var pin = owner.Pin(f, 0, 4 * Bs, PinAccess.Write);
        int calls = 0;
        var outermostDone = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        pin.LeaseBreaking += (_, _) =>
        {
            // Bounded here so that old code (which recursed until the stack overflowed) fails instead of crashing.
            if (Interlocked.Increment(ref calls) > 3) return;
            try
            {
                f.PunchHole(0, Bs, ConflictPolicy.Break(TimeSpan.FromMilliseconds(100)));
            }
            catch (PinnedDmaException)
            {
                // The nested break may find the range already punched by the outer one: either order is fine.
            }
            finally
            {
                outermostDone.TrySetResult();
            }
        };
        var op = Task.Run(() => f.PunchHole(0, Bs, ConflictPolicy.Break(TimeSpan.FromMilliseconds(100))));
        await op.WaitAsync(Bound);
        await pin.Ended.WaitAsync(Bound);
        await outermostDone.Task.WaitAsync(Bound);
        Assert.Equal(1, Volatile.Read(ref calls));
        Assert.Equal(PinStatus.Revoked, pin.Status);
        Assert.False(pin.TryWrite(0, new byte[1]));
        Assert.Empty(v.CheckSealInvariants());
    }

    [Fact]
    public async Task HandlerThatNeverReturnsCannotHoldTheOperationOrThePin()
    {
        using var v = Volume.CreateInMemory(new VolumeOptions { BlockCount = 512 });
        var f = NewFile(v, "f", 8);
        using var owner = new PinOwner(v, 1 << 20);
        var pin = owner.Pin(f, 0, 4 * Bs, PinAccess.Write);
        using var release = new ManualResetEventSlim();
        using var entered = new ManualResetEventSlim();
        pin.LeaseBreaking += (_, _) =>
        {
            entered.Set();
            release.Wait(TimeSpan.FromSeconds(60)); // "never" returns (bounded so a failing run ends)
        };
        try
        {
            var op = Task.Run(() => f.Truncate(0, ConflictPolicy.Break(TimeSpan.FromMilliseconds(100))));
            var done = await Task.WhenAny(op, Task.Delay(Bound));
            Assert.True(done == op, "the Break(100 ms) truncate did not finish while the handler was still running");
            await op;
            Assert.Equal(PinStatus.Revoked, pin.Status);
            Assert.False(pin.TryWrite(0, new byte[1]));
            Assert.Equal(0, f.Length);
        }
        finally
        {
            release.Set();
        }
    }

    [Fact]
    public async Task HandlerThatThrowsDoesNotStopTheBreak()
    {
        using var v = Volume.CreateInMemory(new VolumeOptions { BlockCount = 512 });
        var f = NewFile(v, "f", 8);
        using var owner = new PinOwner(v, 1 << 20);
        var pin = owner.Pin(f, 0, 4 * Bs, PinAccess.Write);
        pin.LeaseBreaking += (_, _) => throw new InvalidOperationException("holder bug");
        await Task.Run(() => f.Truncate(0, ConflictPolicy.Break(TimeSpan.FromMilliseconds(50)))).WaitAsync(Bound);
        Assert.Equal(PinStatus.Revoked, pin.Status);
    }
}
