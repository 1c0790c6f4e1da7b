using FsCheck;
using FsCheck.Fluent;
using PinnedDma.Storage;
using Xunit;

namespace PinnedDma.Tests.Storage;

/// <summary>
/// The async forms of the volume operations. Under Wait and Break they return a task that is not completed while a
/// holder keeps its pin (they did not block the caller), complete once the holder releases, with the same result,
/// contents and extents as the sync form; cancellation mid-wait leaves the file unchanged and fsck clean; the policy
/// timeout still applies. Under Deny, Defer or without a conflict they complete synchronously; an FsCheck property
/// runs random sequences through both forms on twin volumes and compares them step by step.
/// </summary>
public sealed class AsyncOperationTests
{
    private const int B = 4096;
    private static readonly TimeSpan Long = TimeSpan.FromSeconds(30);

    /// <summary>A conflicting operation in its two forms, over file f (8 blocks, pinned at blocks [2, 4)) and g (f's twin).</summary>
    public sealed record Case(string Name, Func<VolumeFile, VolumeFile, ConflictPolicy, long> Sync,
        Func<VolumeFile, VolumeFile, ConflictPolicy, CancellationToken, ValueTask<long>> Async)
    {
        public override string ToString() => Name;
    }

    private static async ValueTask<long> Zero(ValueTask t)
    {
        await t;
        return 0;
    }

    private static readonly Case[] Cases =
    {
        new("truncate", (f, g, p) => { f.Truncate(B + 100, p); return 0; },
            (f, g, p, ct) => Zero(f.TruncateAsync(B + 100, p, ct))),
        new("punch hole", (f, g, p) => { f.PunchHole(2 * B, 2 * B, p); return 0; },
            (f, g, p, ct) => Zero(f.PunchHoleAsync(2 * B, 2 * B, p, ct))),
        new("collapse range", (f, g, p) => { f.CollapseRange(0, B, p); return 0; },
            (f, g, p, ct) => Zero(f.CollapseRangeAsync(0, B, p, ct))),
        new("insert range", (f, g, p) => { f.InsertRange(B, B, p); return 0; },
            (f, g, p, ct) => Zero(f.InsertRangeAsync(B, B, p, ct))),
        new("clone range", (f, g, p) => { f.CloneRangeFrom(g, 0, 0, 8 * B, p); return 0; },
            (f, g, p, ct) => Zero(f.CloneRangeFromAsync(g, 0, 0, 8 * B, p, ct))),
        new("dedupe range", (f, g, p) => f.DedupeRangeFrom(g, 0, 0, 8 * B, p),
            (f, g, p, ct) => f.DedupeRangeFromAsync(g, 0, 0, 8 * B, p, ct)),
    };

    public static TheoryData<string> CaseNames()
    {
        var d = new TheoryData<string>();
        foreach (var c in Cases) d.Add(c.Name);
        return d;
    }

    private static Case Find(string name) => Cases.Single(c => c.Name == name);

    private sealed class Rig : IDisposable
    {
        public readonly Volume V = Volume.CreateInMemory(new VolumeOptions { BlockCount = 512 });
        public readonly PinOwner Owner;
        public readonly VolumeFile F, G;

        public Rig()
        {
            Owner = new PinOwner(V, 1 << 20);
            var data = VolumeTestData.Bytes(7, 8 * B);
            F = V.CreateFile("f");
            F.Write(0, data);
            G = V.CreateFile("g");
            G.Write(0, data);
        }

        public PinHandle PinF() => Owner.Pin(F, 2 * B, 2 * B, PinAccess.Read);

        public (byte[] F, byte[] G, IReadOnlyList<FileExtent> FExt, IReadOnlyList<FileExtent> GExt) State() =>
            (VolumeTestData.ReadAll(F), VolumeTestData.ReadAll(G), F.GetExtents(), G.GetExtents());

        public void Dispose()
        {
            Owner.Dispose();
            V.Dispose();
        }
    }

    /// <summary>The sync form on a twin rig, after the same pin was taken and released: what the async form must give.</summary>
    private static (long Result, (byte[], byte[], IReadOnlyList<FileExtent>, IReadOnlyList<FileExtent>) State) Expected(Case c, ConflictPolicy policy)
    {
        using var twin = new Rig();
        twin.PinF().Dispose();
        long r = c.Sync(twin.F, twin.G, policy);
        Assert.True(twin.V.Fsck().IsClean);
        return (r, twin.State());
    }

    private static void AssertSameState((byte[] F, byte[] G, IReadOnlyList<FileExtent> FExt, IReadOnlyList<FileExtent> GExt) expected,
        (byte[] F, byte[] G, IReadOnlyList<FileExtent> FExt, IReadOnlyList<FileExtent> GExt) actual)
    {
        Assert.Equal(expected.F, actual.F);
        Assert.Equal(expected.G, actual.G);
        Assert.Equal(expected.FExt, actual.FExt);
        Assert.Equal(expected.GExt, actual.GExt);
    }

    [Theory]
    [MemberData(nameof(CaseNames))]
    public async Task WaitAwaitsTheHolderWithoutBlockingThenMatchesTheSyncForm(string name)
    {
        var c = Find(name);
        var expected = Expected(c, ConflictPolicy.Wait(Long));
        using var rig = new Rig();
        var pin = rig.PinF();
        var before = rig.State();
        var task = c.Async(rig.F, rig.G, ConflictPolicy.Wait(Long), CancellationToken.None).AsTask();
        // The call returned while the pin is still held: it did not block the caller, and it changed nothing yet.
        Assert.False(task.IsCompleted);
        AssertSameState(before, rig.State());
        await pin.DisposeAsync();
        long result = await task;
        Assert.Equal(expected.Result, result);
        AssertSameState(expected.State, rig.State());
        Assert.True(rig.V.Fsck().IsClean);
    }

    [Theory]
    [MemberData(nameof(CaseNames))]
    public async Task BreakAsksTheHolderWhoReleasesThenTheOperationCompletes(string name)
    {
        var c = Find(name);
        var expected = Expected(c, ConflictPolicy.Break(Long));
        using var rig = new Rig();
        var pin = rig.PinF();
        var task = c.Async(rig.F, rig.G, ConflictPolicy.Break(Long), CancellationToken.None).AsTask();
        var args = await pin.BreakRequested.WaitAsync(Long);
        Assert.Equal(name, args.Operation);
        Assert.False(task.IsCompleted);
        Assert.Equal(PinStatus.Breaking, pin.Status);
        await pin.DisposeAsync();
        Assert.Equal(expected.Result, await task);
        Assert.Equal(PinStatus.Released, pin.Status);
        AssertSameState(expected.State, rig.State());
        Assert.True(rig.V.Fsck().IsClean);
    }

    [Theory]
    [MemberData(nameof(CaseNames))]
    public async Task BreakRevokesAtTheTimeoutWithoutBlocking(string name)
    {
        var c = Find(name);
        var expected = Expected(c, ConflictPolicy.Break(TimeSpan.Zero));
        using var rig = new Rig();
        var pin = rig.PinF();
        long result = await c.Async(rig.F, rig.G, ConflictPolicy.Break(TimeSpan.FromMilliseconds(50)), CancellationToken.None);
        Assert.Equal(PinStatus.Revoked, pin.Status);
        Assert.False(pin.TryRead(0, new byte[1]));
        Assert.Equal(expected.Result, result);
        AssertSameState(expected.State, rig.State());
        Assert.True(rig.V.Fsck().IsClean);
    }

    [Theory]
    [MemberData(nameof(CaseNames))]
    public async Task CancellationMidWaitLeavesTheFileUnchanged(string name)
    {
        var c = Find(name);
        using var rig = new Rig();
        using var pin = rig.PinF();
        var before = rig.State();
        using var cts = new CancellationTokenSource();
        var task = c.Async(rig.F, rig.G, ConflictPolicy.Wait(Long), cts.Token).AsTask();
        Assert.False(task.IsCompleted);
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => task);
        AssertSameState(before, rig.State());
        Assert.Equal(PinStatus.Active, pin.Status);
        Assert.True(rig.V.Fsck().IsClean);
        // The pin is still honoured: the same operation under Deny is refused.
        Assert.Equal(PinnedDmaError.Busy, Assert.Throws<PinnedDmaException>(() => c.Sync(rig.F, rig.G, ConflictPolicy.Deny)).Error);
    }

    [Theory]
    [MemberData(nameof(CaseNames))]
    public async Task CancellationMidBreakLeavesTheFileUnchangedAndTheLeaseAsked(string name)
    {
        var c = Find(name);
        using var rig = new Rig();
        var pin = rig.PinF();
        var before = rig.State();
        using var cts = new CancellationTokenSource();
        var task = c.Async(rig.F, rig.G, ConflictPolicy.Break(Long), cts.Token).AsTask();
        await pin.BreakRequested.WaitAsync(Long);
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => task);
        AssertSameState(before, rig.State());
        // Documented: the request cannot be taken back; the pin stays Breaking, it is not revoked, and still honoured.
        Assert.Equal(PinStatus.Breaking, pin.Status);
        Assert.True(pin.TryRead(0, new byte[1]));
        Assert.Equal(PinnedDmaError.Busy, Assert.Throws<PinnedDmaException>(() => c.Sync(rig.F, rig.G, ConflictPolicy.Deny)).Error);
        Assert.True(rig.V.Fsck().IsClean);
        pin.Dispose();
    }

    [Fact]
    public async Task AnAlreadyCanceledTokenChangesNothingEvenWithoutAConflict()
    {
        using var rig = new Rig();
        var before = rig.State();
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        foreach (var c in Cases)
        {
            var t = c.Async(rig.F, rig.G, ConflictPolicy.Deny, cts.Token);
            Assert.True(t.IsCompleted);
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => t.AsTask());
        }
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => rig.F.WriteAsync(0, new byte[10], null, cts.Token).AsTask());
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => rig.F.ZeroRangeAsync(0, B, false, null, cts.Token).AsTask());
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => rig.F.UnshareRangeAsync(0, B, null, false, cts.Token).AsTask());
        AssertSameState(before, rig.State());
    }

    [Theory]
    [MemberData(nameof(CaseNames))]
    public async Task WaitTimesOutBusyAndChangesNothing(string name)
    {
        var c = Find(name);
        using var rig = new Rig();
        using var pin = rig.PinF();
        var before = rig.State();
        var ex = await Assert.ThrowsAsync<PinnedDmaException>(() => c.Async(rig.F, rig.G, ConflictPolicy.Wait(TimeSpan.FromMilliseconds(30)), default).AsTask());
        Assert.Equal(PinnedDmaError.Busy, ex.Error);
        AssertSameState(before, rig.State());
        Assert.Equal(PinStatus.Active, pin.Status);
        Assert.True(rig.V.Fsck().IsClean);
    }

    [Theory]
    [MemberData(nameof(CaseNames))]
    public void DenyAndDeferCompleteSynchronously(string name)
    {
        var c = Find(name);
        using (var rig = new Rig())
        using (rig.PinF())
        {
            var t = c.Async(rig.F, rig.G, ConflictPolicy.Deny, default);
            Assert.True(t.IsCompleted);
            Assert.Equal(PinnedDmaError.Busy, Assert.Throws<PinnedDmaException>(() => t.AsTask().GetAwaiter().GetResult()).Error);
        }
        using (var rig = new Rig())
        using (var pin = rig.PinF())
        {
            var t = c.Async(rig.F, rig.G, ConflictPolicy.Defer, default);
            Assert.True(t.IsCompleted);
            bool deferrable = name is "truncate" or "punch hole" or "clone range" or "dedupe range";
            if (deferrable)
            {
                Assert.True(t.IsCompletedSuccessfully);
                Assert.Equal(PinStatus.Detached, pin.Status);
            }
            else
            {
                Assert.Equal(PinnedDmaError.Busy, Assert.Throws<PinnedDmaException>(() => t.AsTask().GetAwaiter().GetResult()).Error);
            }
        }
    }

    [Fact]
    public void ArgumentErrorsAreThrownBeforeATaskIsReturned()
    {
        using var rig = new Rig();
        Assert.Throws<ArgumentOutOfRangeException>(() => { _ = rig.F.TruncateAsync(-1); });
        Assert.Throws<ArgumentOutOfRangeException>(() => { _ = rig.F.WriteAsync(-1, new byte[1]); });
        Assert.Throws<ArgumentNullException>(() => { _ = rig.F.CloneRangeFromAsync(null!, 0, 0, B); });
        Assert.Throws<ArgumentNullException>(() => { _ = rig.F.DedupeRangeFromAsync(null!, 0, 0, B); });
    }

    [Fact]
    public async Task PinDisposeAsyncWaitsForInFlightDmaWithoutBlocking()
    {
        using var rig = new Rig();
        var pin = rig.PinF();
        Assert.True(pin.Drain.TryEnter());
        var disposing = pin.DisposeAsync().AsTask();
        // Returned while an access is inside: closed to new DMA, not yet released.
        Assert.False(disposing.IsCompleted);
        Assert.True(pin.Drain.IsClosed);
        Assert.False(pin.TryRead(0, new byte[1]));
        Assert.Equal(PinnedDmaError.Busy, Assert.Throws<PinnedDmaException>(() => rig.F.PunchHole(2 * B, B, ConflictPolicy.Deny)).Error);
        pin.Drain.Exit();
        await disposing.WaitAsync(Long);
        Assert.Equal(PinStatus.Released, pin.Status);
        rig.F.PunchHole(2 * B, B, ConflictPolicy.Deny);
        Assert.Equal(0, rig.Owner.LockedBytes);
        await pin.DisposeAsync(); // idempotent
    }

    [Fact]
    public async Task DrainCloseAsyncCompletesWhenTheLastAccessLeaves()
    {
        var drain = new DmaDrain();
        Assert.True(drain.CloseAsync().IsCompletedSuccessfully);
        drain = new DmaDrain();
        Assert.True(drain.TryEnter());
        Assert.True(drain.TryEnter());
        var closing = drain.CloseAsync().AsTask();
        Assert.False(drain.TryEnter());
        drain.Exit();
        Assert.False(closing.IsCompleted);
        drain.Exit();
        await closing.WaitAsync(Long);
        Assert.Equal(0, drain.InFlight);
        await drain.CloseAsync();
    }

    [Fact]
    public async Task DrainCloseAsyncCancellationEndsTheWaitNotTheClose()
    {
        var drain = new DmaDrain();
        Assert.True(drain.TryEnter());
        using var cts = new CancellationTokenSource();
        var closing = drain.CloseAsync(cts.Token).AsTask();
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => closing);
        Assert.True(drain.IsClosed);
        Assert.False(drain.TryEnter());
        drain.Exit();
        await drain.CloseAsync().AsTask().WaitAsync(Long);
    }

    [Fact]
    public async Task DrainCloseAsyncRunsTheStallHandlersAfterTheGrace()
    {
        var drain = new DmaDrain();
        Assert.True(drain.TryEnter());
        int cut = 0;
        Action handler = () =>
        {
            Interlocked.Increment(ref cut);
            drain.Exit();
        };
        drain.AddStallHandler(handler);
        await drain.CloseAsync().AsTask().WaitAsync(Long);
        Assert.Equal(1, cut);
    }

    // ---------------------------------------------------------------- sync and async forms agree

    public enum OpKind { Write, Truncate, Punch, Zero, Collapse, Insert, Clone, Dedupe, Unshare, Pin, Unpin }

    public sealed record Op(OpKind Kind, int File, int A, int Bv, int C, int Policy)
    {
        public override string ToString() => $"{Kind}(file={File}, a={A}, b={Bv}, c={C}, policy={Policy})";
    }

    private static readonly Gen<Op> OpGen =
        from kind in Gen.Elements(Enum.GetValues<OpKind>())
        from file in Gen.Choose(0, 1)
        from a in Gen.Choose(0, 12 * B)
        from b in Gen.Choose(0, 6 * B)
        from c in Gen.Choose(0, 1000)
        from p in Gen.Choose(0, 2)
        select new Op(kind, file, a, b, c, p);

    private sealed class Side : IDisposable
    {
        public readonly Volume V = Volume.CreateInMemory(new VolumeOptions { BlockCount = 1024 });
        public readonly PinOwner Owner;
        public readonly VolumeFile[] Files;
        public readonly List<PinHandle> Pins = new();

        public Side()
        {
            Owner = new PinOwner(V, 1 << 24);
            Files = new[] { V.CreateFile("a"), V.CreateFile("b") };
        }

        public void Dispose()
        {
            Owner.Dispose();
            V.Dispose();
        }
    }

    /// <summary>Runs one step; the outcome is "ok" plus a result, or the error it threw.</summary>
    private static string Step(Side s, Op op, bool async)
    {
        var f = s.Files[op.File];
        var other = s.Files[1 - op.File];
        ConflictPolicy? policy = op.Policy switch { 0 => null, 1 => ConflictPolicy.Deny, _ => ConflictPolicy.Defer };
        long aligned = op.A / B * B, alignedLen = op.Bv / B * B;
        Func<long> sync;
        Func<ValueTask<long>> asyncForm;
        switch (op.Kind)
        {
            case OpKind.Write:
                var data = VolumeTestData.Bytes(op.C, op.Bv);
                sync = () => { f.Write(op.A, data, policy); return 0; };
                asyncForm = () => Zero(f.WriteAsync(op.A, data, policy));
                break;
            case OpKind.Truncate:
                sync = () => { f.Truncate(op.A, policy); return 0; };
                asyncForm = () => Zero(f.TruncateAsync(op.A, policy));
                break;
            case OpKind.Punch:
                sync = () => { f.PunchHole(op.A, op.Bv, policy); return 0; };
                asyncForm = () => Zero(f.PunchHoleAsync(op.A, op.Bv, policy));
                break;
            case OpKind.Zero:
                sync = () => { f.ZeroRange(op.A, op.Bv, op.C % 2 == 0, policy); return 0; };
                asyncForm = () => Zero(f.ZeroRangeAsync(op.A, op.Bv, op.C % 2 == 0, policy));
                break;
            case OpKind.Collapse:
                sync = () => { f.CollapseRange(aligned, alignedLen, policy); return 0; };
                asyncForm = () => Zero(f.CollapseRangeAsync(aligned, alignedLen, policy));
                break;
            case OpKind.Insert:
                sync = () => { f.InsertRange(aligned, alignedLen, policy); return 0; };
                asyncForm = () => Zero(f.InsertRangeAsync(aligned, alignedLen, policy));
                break;
            case OpKind.Clone:
                long srcOff = op.C * 7L % 12 * B;
                sync = () => { f.CloneRangeFrom(other, srcOff, aligned, alignedLen, policy); return 0; };
                asyncForm = () => Zero(f.CloneRangeFromAsync(other, srcOff, aligned, alignedLen, policy));
                break;
            case OpKind.Dedupe:
                sync = () => f.DedupeRangeFrom(other, aligned, aligned, alignedLen, policy);
                asyncForm = () => f.DedupeRangeFromAsync(other, aligned, aligned, alignedLen, policy);
                break;
            case OpKind.Unshare:
                sync = () => { f.UnshareRange(op.A, op.Bv, policy, op.C % 2 == 0); return 0; };
                asyncForm = () => Zero(f.UnshareRangeAsync(op.A, op.Bv, policy, op.C % 2 == 0));
                break;
            case OpKind.Pin:
                sync = null!;
                asyncForm = null!;
                try
                {
                    s.Pins.Add(s.Owner.Pin(f, op.A, op.Bv, op.C % 2 == 0 ? PinAccess.Read : PinAccess.Write));
                    return "pinned";
                }
                catch (Exception e)
                {
                    return Describe(e);
                }
            default:
                if (s.Pins.Count == 0) return "no pin";
                var pin = s.Pins[op.C % s.Pins.Count];
                s.Pins.Remove(pin);
                if (async)
                {
                    var t = pin.DisposeAsync();
                    Assert.True(t.IsCompleted);
                }
                else
                {
                    pin.Dispose();
                }
                return "unpinned";
        }
        try
        {
            if (!async) return "ok " + sync();
            var task = asyncForm();
            // Deny, Defer and the volume's Deny default never wait: the async form completes synchronously.
            Assert.True(task.IsCompleted, "an async form under Deny or Defer did not complete synchronously");
            return "ok " + task.AsTask().GetAwaiter().GetResult();
        }
        catch (Exception e) when (e is not Xunit.Sdk.XunitException)
        {
            return Describe(e);
        }
    }

    private static string Describe(Exception e) => e is PinnedDmaException p ? $"{p.Error}" : e.GetType().Name;

    private static void RunBoth(Op[] ops)
    {
        using var syncSide = new Side();
        using var asyncSide = new Side();
        for (int i = 0; i < ops.Length; i++)
        {
            string a = Step(syncSide, ops[i], async: false);
            string b = Step(asyncSide, ops[i], async: true);
            Assert.True(a == b, $"step {i} {ops[i]}: sync {a}, async {b}");
            for (int k = 0; k < 2; k++)
            {
                Assert.Equal(VolumeTestData.ReadAll(syncSide.Files[k]), VolumeTestData.ReadAll(asyncSide.Files[k]));
                Assert.Equal(syncSide.Files[k].GetExtents(), asyncSide.Files[k].GetExtents());
            }
        }
        Assert.True(syncSide.V.Fsck().IsClean);
        Assert.True(asyncSide.V.Fsck().IsClean);
    }

    [Fact]
    public void SyncAndAsyncFormsGiveTheSameFilesForRandomSequences()
    {
        var arb = Arb.From(Gen.Choose(1, 30).SelectMany(n => Gen.ArrayOf(OpGen, n)));
        FsCheck.Check.One(Config.QuickThrowOnFailure.WithMaxTest(100).WithQuietOnSuccess(true), Prop.ForAll(arb, RunBoth));
    }
}
