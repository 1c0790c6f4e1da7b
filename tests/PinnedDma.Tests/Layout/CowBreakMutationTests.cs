using Xunit;

namespace PinnedDma.Tests.Layout;

/// <summary>
/// Mutation checks: with COW-break-on-register switched off for READ pins (a per-volume test switch, so parallel
/// tests are unaffected), the pin model must fail. A property that still passed would have no teeth.
/// </summary>
public sealed class CowBreakMutationTests
{
    /// <summary>f0 has 4 blocks of data; f1 reflinks f0's blocks 1..3 at offset 0, so f0[512] and f1[0] share a block.</summary>
    private static readonly PinOp[] SharedPrefix =
    {
        new(PinOpKind.CreateFile, 4 * 512, 1, 1, 0, 0),
        new(PinOpKind.CreateFile, 0, 2, 1, 0, 0),
        new(PinOpKind.Clone, 0, 1, 0, 0, 1),
    };

    /// <summary>A READ pin on each sharer, then a write by one of them (policy Deny).</summary>
    private static readonly PinOp[] TwoReadPinsThenWrite = SharedPrefix.Concat(new PinOp[]
    {
        new(PinOpKind.Pin, 0, 512, 511, 0, 0),   // READ f0[512,+512), owner0
        new(PinOpKind.Pin, 1, 0, 511, 1, 0),     // READ f1[0,+512), owner1
        new(PinOpKind.Write, 0, 512, 0, 9, 1),   // f0[512,+1), Deny
    }).ToArray();

    /// <summary>Focus on what the mutation breaks: clones, READ and WRITE pins, writes.</summary>
    private static readonly (PinOpKind, int)[] ReadPinOps =
    {
        (PinOpKind.CreateFile, 6), (PinOpKind.Write, 10), (PinOpKind.Clone, 15), (PinOpKind.Pin, 15),
        (PinOpKind.DmaWrite, 3), (PinOpKind.Truncate, 3), (PinOpKind.Punch, 3), (PinOpKind.Unpin, 2),
        (PinOpKind.Delete, 1), (PinOpKind.Upgrade, 2),
    };

    [Fact]
    public void TheSequencesPassWithoutTheMutation()
    {
        PinModel.RunSequence(TwoReadPinsThenWrite);
        PinModel.RunSequence(TwoReadPinsThenWrite, checkCowBrokenAtPin: false);
    }

    [Fact]
    public void ReadPinOnASharedBlockIsCaughtAtPinTime()
    {
        var e = Assert.ThrowsAny<Exception>(() => PinModel.RunSequence(TwoReadPinsThenWrite, mutate: true));
        Assert.Contains("still shared after pinning", e.Message);
    }

    [Fact]
    public void SecondPinnedSharerIsCaughtByTheConflictTable()
    {
        // Without the direct check after pinning, the write must still fail the model: both READ pins froze the same
        // block, so the write finds a second pinned sharer that has to move and fails busy where the table says
        // "no conflict" (a pinned block is never shared with another pinned range).
        var e = Assert.ThrowsAny<Exception>(() => PinModel.RunSequence(TwoReadPinsThenWrite, mutate: true, checkCowBrokenAtPin: false));
        Assert.Contains("expected success, got Busy", e.Message);
    }

    [Fact]
    public void TheReadPinPropertyFailsUnderTheMutation()
    {
        var arb = PinModelTests.Sequences(ReadPinOps, 30);
        PinModelTests.Check(arb, 30, ops => PinModel.RunSequence(ops));
        var e = Assert.ThrowsAny<Exception>(() => PinModelTests.Check(arb, 300, ops => PinModel.RunSequence(ops, mutate: true)));
        Assert.Contains("Falsifiable", e.Message);
        Assert.Contains("still shared after pinning", e.Message);
    }
}
