using PinnedDma.Internal;
using PinnedDma.Storage.Internal;

namespace PinnedDma.Storage;

public sealed partial class Volume
{
    internal IReadOnlyList<FileExtent> GetExtents(Inode inode, long offset, long length)
    {
        ThrowHelper.CheckRange(offset, Math.Min(length, long.MaxValue - offset));
        lock (Gate)
        {
            Live(inode);
            return _s.Checker.GetExtents(inode, offset, length);
        }
    }

    /// <summary>
    /// Checks the metadata: reference counts recomputed from every extent map (and every Defer-owned pin) equal the
    /// allocator's; no block is both free and referenced, none is leaked; every extent lies in the data area and
    /// carries its blocks' allocation generation; extent maps are sorted and disjoint; names are unique.
    /// </summary>
    /// <returns>What the check found; <see cref="FsckReport.IsClean"/> when nothing.</returns>
    /// <exception cref="ObjectDisposedException">The volume is disposed.</exception>
    public FsckReport Fsck()
    {
        lock (Gate)
        {
            ThrowIfDisposed();
            return _s.Checker.Fsck();
        }
    }

    /// <summary>
    /// The pin invariants of docs/design.md ("Invariants", 1 and 2): an attached seal's current translation equals its
    /// frozen one, block by block, by number and allocation generation; a detached seal's blocks are allocated, carry
    /// their generation and are mapped by no file; no sealed block is free.
    /// </summary>
    internal List<string> CheckSealInvariants()
    {
        lock (Gate) return _s.Checker.CheckSealInvariants();
    }
}
