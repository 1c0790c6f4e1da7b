using PinnedDma.Internal;
using PinnedDma.Layout;
using PinnedDma.Storage.Internal;

namespace PinnedDma.Storage;

// The volume's side of pins and Direct mappings: make a range pinnable (COW broken, holes populated), freeze its
// translation into a seal, and verify the invariants that seals promise.
public sealed partial class Volume
{
    /// <summary>
    /// Mutation-testing switch, never set by the library: when true, READ pins on this volume skip the COW break at
    /// pin time (holes are still populated). The property tests turn it on to prove that they catch the bug the
    /// seeds describe; it is per volume so that tests running in parallel are not affected.
    /// </summary>
    internal bool DisableReadPinCowBreakForMutationTest;

    /// <summary>
    /// Breaks COW over [offset, offset+length) (for READ and WRITE alike), populates holes, then freezes the
    /// translation and hands it to <paramref name="createSeal"/>, which builds the seal; it is attached before the
    /// lock is released. Conflicts (another pinned sharer that would have to move) follow the policy.
    /// </summary>
    internal Seal CreateSeal(Inode inode, long offset, long length, ConflictPolicy? policy, bool requirePrivate,
        Func<Inode, long, long, Extent[], Seal> createSeal, bool readPin = false)
    {
        ThrowHelper.CheckRange(offset, length);
        if (length == 0) ThrowHelper.Throw(PinnedDmaError.InvalidArgument, "A pin or mapping needs a non-empty range.");
        return Run(_s.Writer.PinOp(inode, offset, length, policy, requirePrivate, createSeal, readPin && DisableReadPinCowBreakForMutationTest));
    }

    /// <summary>
    /// Upgrading a pin to WRITE: other files sharing its blocks (clones made after the pin) get copies, and
    /// <paramref name="grantWrite"/> switches the seal to write access under the same lock hold, so that no clone can
    /// come between the COW break and the switch and share a block DMA is about to write. False when the seal has
    /// already gone (nothing granted).
    /// </summary>
    internal bool ResealForWrite(Seal seal, ConflictPolicy? policy, Action grantWrite)
    {
        return Run(_s.Writer.ResealOp(seal, policy, grantWrite));
    }
}
