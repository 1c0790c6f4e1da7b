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
        return Mutate(new RemapContext("pin", policy), ctx =>
        {
            Live(inode);
            // Within EOF, as mmap past EOF is SIGBUS: DMA can then never leave bytes past EOF that a later extension
            // would expose.
            if (offset + length > inode.Size)
                ThrowHelper.Throw(PinnedDmaError.InvalidArgument, $"Range [{offset}, +{length}) goes past EOF ({inode.Size}) of '{inode.Name}'.");
            var (first, end) = BlockSpan(offset, length);
            // A block whose sharing ended in an uncommitted operation would be copied (a crash could bring the old
            // sharer back); committing first makes it private for good, so the pin keeps the block the user sees.
            if (RecentlyUnshared(inode, first, end)) _journal.Commit();
            if (requirePrivate)
            {
                if (!inode.Map.IsFullyMapped(first, end - first))
                    ThrowHelper.Throw(PinnedDmaError.InvalidArgument, "A Direct mapping without Populate needs a fully allocated range.");
                if (SharedRuns(inode, first, end).Count > 0)
                    ThrowHelper.Throw(PinnedDmaError.InvalidArgument, "A Direct mapping without Populate needs an unshared range.");
            }
            if (readPin && DisableReadPinCowBreakForMutationTest)
            {
                long holes = end - first - MappedBlocks(inode, first, end);
                EnsureSpace(holes);
                CheckMetadataRoom(2 + holes);
                FillHoles(inode, first, end, 0, 0);
            }
            else
            {
                var conflicts = new List<Seal>();
                long need = PlanWrite(inode, first, end, WriteMode.Touch, conflicts);
                if (Check(ctx, conflicts, deferrable: false).Halts()) return null!;
                EnsureSpace(need);
                CheckMetadataRoom(2 + need);
                ExecWrite(inode, first << BlockShift, (end - first) << BlockShift, default, WriteMode.Touch);
            }
            var frozen = inode.Map.GetRange(first, end - first).ToArray();
            var seal = createSeal(inode, first, end - first, frozen);
            inode.Seals.Add(seal);
            return seal;
        });
    }

    private bool RecentlyUnshared(Inode inode, long first, long end)
    {
        if (!_alloc.AnyShared) return false;
        foreach (var e in inode.Map.GetRange(first, end - first))
            for (long b = e.DeviceBlock; b < e.DeviceEnd; b++)
                if (_alloc.IsRecentlyUnshared(b)) return true;
        return false;
    }

    /// <summary>
    /// Upgrading a pin to WRITE: other files sharing its blocks (clones made after the pin) get copies, and
    /// <paramref name="grantWrite"/> switches the seal to write access under the same lock hold, so that no clone can
    /// come between the COW break and the switch and share a block DMA is about to write. False when the seal has
    /// already gone (nothing granted).
    /// </summary>
    internal bool ResealForWrite(Seal seal, ConflictPolicy? policy, Action grantWrite)
    {
        return Mutate(new RemapContext("pin upgrade", policy), ctx =>
        {
            if (seal.Gone.IsCompleted) return false;
            if (seal.Detached)
            {
                // Its blocks are its own alone (a detach copies them for every other mapping).
                grantWrite();
                return true;
            }
            if (!seal.Inode.Seals.Contains(seal)) return false;
            var conflicts = new List<Seal>();
            long need = PlanWrite(seal.Inode, seal.FirstBlock, seal.EndBlock, WriteMode.Touch, conflicts);
            conflicts.Remove(seal);
            if (Check(ctx, conflicts, deferrable: false).Halts()) return false;
            EnsureSpace(need);
            ExecWrite(seal.Inode, seal.FirstBlock << BlockShift, seal.BlockCount << BlockShift, default, WriteMode.Touch);
            grantWrite();
            return true;
        });
    }

    /// <summary>
    /// The pin invariants of docs/design.md ("Invariants", 1 and 2): an attached seal's current translation equals its
    /// frozen one, block by block, by number and allocation generation; a detached seal's blocks are allocated, carry
    /// their generation and are mapped by no file; no sealed block is free.
    /// </summary>
    internal List<string> CheckSealInvariants()
    {
        lock (Gate)
        {
            var problems = new List<string>();
            foreach (var inode in _files.ById.Values)
                foreach (var s in inode.Seals)
                {
                    var now = inode.Map.GetRange(s.FirstBlock, s.BlockCount);
                    if (!SameTranslation(now, s.Frozen))
                        problems.Add($"'{inode.Name}': pinned blocks [{s.FirstBlock}, {s.EndBlock}) were remapped");
                    CheckAllocated(s, problems);
                }
            foreach (var s in _detached)
            {
                CheckAllocated(s, problems);
                foreach (var e in s.Frozen)
                    if (FindMappings(e.DeviceBlock, e.Count).Count > 0)
                        problems.Add($"a detached pin's device blocks [{e.DeviceBlock}, {e.DeviceEnd}) are mapped by a file");
            }
            return problems;
        }
    }

    private void CheckAllocated(Seal s, List<string> problems)
    {
        foreach (var e in s.Frozen)
            for (long b = e.DeviceBlock; b < e.DeviceEnd; b++)
                if (_alloc.RefCount(b) <= 0 || _alloc.Generation(b) != e.Generation)
                    problems.Add($"pinned device block {b} of '{s.Inode.Name}' is free or was reallocated (generation {_alloc.Generation(b)}, pinned {e.Generation})");
    }

    private static bool SameTranslation(List<Extent> a, Extent[] b)
    {
        // Compare block by block: the extent boundaries may differ, the translation may not.
        int i = 0, j = 0;
        long ia = 0, jb = 0;
        while (i < a.Count && j < b.Length)
        {
            var x = a[i];
            var y = b[j];
            if (x.FileBlock + ia != y.FileBlock + jb || x.DeviceBlock + ia != y.DeviceBlock + jb || x.Generation != y.Generation) return false;
            long n = Math.Min(x.Count - ia, y.Count - jb);
            ia += n;
            jb += n;
            if (ia == x.Count) { i++; ia = 0; }
            if (jb == y.Count) { j++; jb = 0; }
        }
        return i == a.Count && j == b.Length;
    }
}
