using PinnedDma.Layout;
using PinnedDma.Storage;
using PinnedDma.Storage.Internal;
using Xunit;

namespace PinnedDma.Tests.Layout;

/// <summary>
/// The conflict table as <see cref="LayoutLease.Resolve"/> answers it: every policy against breakable, unbreakable
/// and Direct seals, for space-freeing (deferrable) and other operations; what Pending and Busy record; which policy
/// applies; and that a lease tells its holder once.
/// </summary>
public sealed class LayoutLeaseTests : IDisposable
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(5);
    private readonly Volume _v = Volume.CreateInMemory(new VolumeOptions { BlockCount = 1024 });
    private readonly PinOwner _owner;
    private readonly VolumeFile _file;

    public LayoutLeaseTests()
    {
        _owner = new PinOwner(_v, 1 << 20);
        _file = _v.CreateFile("f");
        _file.Write(0, new byte[8 * 4096]);
    }

    public void Dispose()
    {
        _owner.Dispose();
        _v.Dispose();
    }

    public enum SealKind { Breakable, Unbreakable, Direct }

    private (List<Seal> Seals, IDisposable Holder) Conflict(SealKind kind)
    {
        if (kind == SealKind.Direct)
        {
            var map = _owner.Map(_file, 0, 4096, MapFlags.Shared | MapFlags.Direct);
            return (_v.Seals.Of(_file.Inode), map);
        }
        var pin = _owner.Pin(_file, 0, 4096, PinAccess.Write, kind == SealKind.Unbreakable ? PinOptions.Unbreakable : PinOptions.None);
        return (new List<Seal> { pin.Seal }, pin);
    }

    public static TheoryData<ConflictPolicyKind, SealKind, bool, string> Table()
    {
        var d = new TheoryData<ConflictPolicyKind, SealKind, bool, string>();
        foreach (bool deferrable in new[] { true, false })
        {
            d.Add(ConflictPolicyKind.Deny, SealKind.Breakable, deferrable, "Busy");
            d.Add(ConflictPolicyKind.Deny, SealKind.Unbreakable, deferrable, "Busy");
            d.Add(ConflictPolicyKind.Deny, SealKind.Direct, deferrable, "Busy");
            d.Add(ConflictPolicyKind.Wait, SealKind.Breakable, deferrable, "Pending");
            d.Add(ConflictPolicyKind.Wait, SealKind.Unbreakable, deferrable, "Pending");
            d.Add(ConflictPolicyKind.Wait, SealKind.Direct, deferrable, "Pending");
            d.Add(ConflictPolicyKind.Break, SealKind.Breakable, deferrable, "Pending");
            d.Add(ConflictPolicyKind.Break, SealKind.Unbreakable, deferrable, "Busy");
            d.Add(ConflictPolicyKind.Break, SealKind.Direct, deferrable, "Busy");
            d.Add(ConflictPolicyKind.Defer, SealKind.Breakable, deferrable, deferrable ? "Detach" : "Busy");
            d.Add(ConflictPolicyKind.Defer, SealKind.Unbreakable, deferrable, deferrable ? "Detach" : "Busy");
            d.Add(ConflictPolicyKind.Defer, SealKind.Direct, deferrable, "Busy");
        }
        return d;
    }

    private static ConflictPolicy Policy(ConflictPolicyKind kind) => kind switch
    {
        ConflictPolicyKind.Deny => ConflictPolicy.Deny,
        ConflictPolicyKind.Wait => ConflictPolicy.Wait(Timeout),
        ConflictPolicyKind.Break => ConflictPolicy.Break(Timeout),
        _ => ConflictPolicy.Defer,
    };

    [Theory]
    [MemberData(nameof(Table))]
    public void ResolveAnswersTheConflictTable(ConflictPolicyKind kind, SealKind seal, bool deferrable, string expected)
    {
        var (seals, holder) = Conflict(seal);
        using (holder)
        {
            var ctx = new RemapContext("truncate", Policy(kind));
            var got = LayoutLease.Resolve(ctx, seals, deferrable, ConflictPolicy.Deny);
            Assert.Equal(Enum.Parse<ConflictResolution>(expected), got);
            Assert.Equal(got.Halts(), ctx.Halted);
            switch (got)
            {
                case ConflictResolution.Pending:
                    Assert.Equal(seals, ctx.Pending);
                    Assert.Equal(kind, ctx.PendingKind);
                    Assert.Equal(Timeout, ctx.Timeout);
                    Assert.Null(ctx.Refusal);
                    break;
                case ConflictResolution.Busy:
                    Assert.Equal(PinnedDmaError.Busy, ctx.Refusal!.Error);
                    Assert.Contains("truncate on 'f'", ctx.Refusal.Message);
                    Assert.Null(ctx.Pending);
                    break;
                default:
                    Assert.Null(ctx.Pending);
                    Assert.Null(ctx.Refusal);
                    break;
            }
        }
    }

    [Fact]
    public void NoConflictProceedsWhateverThePolicy()
    {
        foreach (var kind in Enum.GetValues<ConflictPolicyKind>())
        {
            var ctx = new RemapContext("write", Policy(kind));
            Assert.Equal(ConflictResolution.Proceed, LayoutLease.Resolve(ctx, new List<Seal>(), deferrable: false, ConflictPolicy.Deny));
            Assert.False(ctx.Halted);
        }
    }

    [Fact]
    public void WaitPastItsDeadlineIsBusyAndBreakPastItsDeadlineStillBreaks()
    {
        var (seals, holder) = Conflict(SealKind.Breakable);
        using (holder)
        {
            var wait = new RemapContext("punch hole", ConflictPolicy.Wait(Timeout)) { Deadline = Environment.TickCount64 - 1 };
            Assert.Equal(ConflictResolution.Busy, LayoutLease.Resolve(wait, seals, deferrable: true, ConflictPolicy.Deny));
            var brk = new RemapContext("punch hole", ConflictPolicy.Break(Timeout)) { Deadline = Environment.TickCount64 - 1 };
            Assert.Equal(ConflictResolution.Pending, LayoutLease.Resolve(brk, seals, deferrable: true, ConflictPolicy.Deny));
        }
    }

    [Fact]
    public void ThePolicyIsTheCallsElseTheFilesElseTheVolumes()
    {
        var (seals, holder) = Conflict(SealKind.Breakable);
        using (holder)
        {
            Assert.Equal(ConflictResolution.Busy, LayoutLease.Resolve(new RemapContext("t", null), seals, true, ConflictPolicy.Deny));
            Assert.Equal(ConflictResolution.Detach, LayoutLease.Resolve(new RemapContext("t", null), seals, true, ConflictPolicy.Defer));
            _file.ConflictPolicy = ConflictPolicy.Break(Timeout);
            Assert.Equal(ConflictResolution.Pending, LayoutLease.Resolve(new RemapContext("t", null), seals, true, ConflictPolicy.Defer));
            Assert.Equal(ConflictResolution.Busy, LayoutLease.Resolve(new RemapContext("t", ConflictPolicy.Deny), seals, true, ConflictPolicy.Defer));
        }
    }

    [Fact]
    public async Task ALeaseTellsItsHolderOnceHoweverOftenItIsAsked()
    {
        var lease = new LayoutLease();
        int calls = 0;
        var called = new TaskCompletionSource<LeaseBreakEventArgs>(TaskCreationOptions.RunContinuationsAsynchronously);
        lease.Breaking += (_, e) =>
        {
            Interlocked.Increment(ref calls);
            called.TrySetResult(e);
        };
        lease.RequestBreak(this, Timeout, "truncate");
        lease.RequestBreak(this, Timeout, "punch hole");
        var args = await called.Task.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal("truncate", args.Operation);
        Assert.Equal(Timeout, args.Timeout);
        Assert.Same(args, await lease.BreakRequested.WaitAsync(TimeSpan.FromSeconds(30)));
        lease.End();
        Assert.Equal(1, Volatile.Read(ref calls));
    }

    [Fact]
    public async Task ALeaseThatEndsUnaskedCancelsItsAwaitable()
    {
        var lease = new LayoutLease();
        lease.End();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => lease.BreakRequested.WaitAsync(TimeSpan.FromSeconds(30)));
    }
}
