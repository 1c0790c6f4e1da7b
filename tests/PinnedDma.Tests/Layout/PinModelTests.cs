using FsCheck;
using FsCheck.Fluent;
using Xunit;

namespace PinnedDma.Tests.Layout;

/// <summary>
/// Model-based properties over pins, mappings and every volume operation under every conflict policy: after each
/// step the seal invariants hold, fsck is clean, memlock accounts add up, file contents equal a byte-array model and
/// every pin's scatter-gather list equals the one recorded when it was pinned (see <see cref="PinModel"/>).
/// </summary>
public sealed class PinModelTests
{
    /// <summary>Relative weights of the operations in generated sequences.</summary>
    internal static readonly (PinOpKind Kind, int Weight)[] AllOps =
    {
        (PinOpKind.CreateFile, 6), (PinOpKind.Write, 10), (PinOpKind.Truncate, 6), (PinOpKind.Punch, 6),
        (PinOpKind.ZeroRange, 3), (PinOpKind.Allocate, 2), (PinOpKind.Collapse, 3), (PinOpKind.Insert, 3),
        (PinOpKind.Clone, 8), (PinOpKind.Dedupe, 3), (PinOpKind.Unshare, 3), (PinOpKind.Compact, 2),
        (PinOpKind.Delete, 2), (PinOpKind.Pin, 12), (PinOpKind.Unpin, 3), (PinOpKind.DmaWrite, 10),
        (PinOpKind.Upgrade, 3), (PinOpKind.Map, 4), (PinOpKind.MapWrite, 4), (PinOpKind.Unmap, 2),
        (PinOpKind.OwnerDispose, 1), (PinOpKind.SetPolicy, 3), (PinOpKind.Commit, 1),
    };

    internal static Arbitrary<PinOp[]> Sequences((PinOpKind Kind, int Weight)[] weights, int maxLength)
    {
        var field = Gen.Choose(0, 1 << 20);
        var op = Gen.Frequency(weights.Select(w => (w.Weight, Gen.Constant(w.Kind))))
            .SelectMany(k => Gen.ArrayOf(field, 5).Select(f => new PinOp(k, f[0], f[1], f[2], f[3], f[4])));
        var seq = Gen.Choose(1, maxLength).SelectMany(n => Gen.ArrayOf(op, n));
        return Arb.From(seq, Shrink);
    }

    /// <summary>Shrinks by dropping halves, then single steps: every subsequence is still a valid run.</summary>
    private static IEnumerable<PinOp[]> Shrink(PinOp[] ops)
    {
        if (ops.Length > 1)
        {
            yield return ops[..(ops.Length / 2)];
            yield return ops[(ops.Length / 2)..];
        }
        for (int i = 0; i < ops.Length; i++)
            yield return ops.Where((_, j) => j != i).ToArray();
    }

    internal static void Check(Arbitrary<PinOp[]> arb, int tests, Action<PinOp[]> run) =>
        FsCheck.Check.One(Config.QuickThrowOnFailure.WithMaxTest(tests).WithQuietOnSuccess(true), Prop.ForAll(arb, run));

    [Fact]
    public void EveryOperationUnderEveryPolicyKeepsTheInvariants() =>
        Check(Sequences(AllOps, 60), 100, ops => PinModel.RunSequence(ops));

    [Fact]
    public void CoarseCowGranuleNeverMovesAPinnedBlock() =>
        Check(Sequences(AllOps, 40), 25, ops => PinModel.RunSequence(ops, granule: 4));

    [Fact]
    public void FileBackedVolume() =>
        Check(Sequences(AllOps, 40), 15, ops => PinModel.RunSequence(ops, granule: 2, fileBacked: true));

    [Fact]
    public void KnownSequences()
    {
        // Defer on punch proceeds and detaches the pin; DMA through it no longer changes the file.
        PinModel.RunSequence(new[]
        {
            new PinOp(PinOpKind.CreateFile, 4 * 512, 1, 1, 0, 0),
            new PinOp(PinOpKind.Pin, 0, 512, 511, 2, 0),          // f0[512,+512) WRITE owner0, unbreakable, releases
            new PinOp(PinOpKind.Punch, 0, 0, 4 * 512 - 1, 0, 4),   // Defer
            new PinOp(PinOpKind.DmaWrite, 0, 0, 100, 7, 0),
            new PinOp(PinOpKind.Punch, 0, 0, 4 * 512 - 1, 0, 1),   // Deny: the pin is detached, nothing conflicts
            new PinOp(PinOpKind.Unpin, 0, 0, 0, 0, 0),
        });
        // Break: one holder releases in the callback, a second pin ignores the break and is revoked.
        PinModel.RunSequence(new[]
        {
            new PinOp(PinOpKind.CreateFile, 8 * 512, 1, 1, 0, 0),
            new PinOp(PinOpKind.Pin, 0, 0, 511, 6, 0),            // WRITE owner0 breakable, releases
            new PinOp(PinOpKind.Pin, 0, 1024, 511, 22, 0),        // WRITE owner0 breakable, ignores
            new PinOp(PinOpKind.Truncate, 0, 1, 0, 0, 3),          // Break
            new PinOp(PinOpKind.DmaWrite, 1, 0, 10, 3, 0),
        });
    }
}
