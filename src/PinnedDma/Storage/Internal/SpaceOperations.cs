using PinnedDma.Internal;
using PinnedDma.Layout;

namespace PinnedDma.Storage.Internal;

/// <summary>
/// The bodies of truncate, punch hole, zero range, allocate, collapse range and insert range: each validates, finds
/// its conflicts and asks the lease check before it changes anything (see the mutate loop in Volume.Conflicts.cs).
/// </summary>
internal sealed class SpaceOperations(VolumeState s) : VolumePart(s)
{
    public VolumeOp<int> TruncateOp(Inode inode, long length, ConflictPolicy? policy)
    {
        CheckFileRange(length, 0, nameof(length));
        return new(new RemapContext("truncate", policy), ctx =>
        {
            Live(inode);
            if (length >= inode.Size)
            {
                Journal.SetSize(inode, length);
                return 0;
            }
            int shift = BlockShift;
            long keepBlocks = (length + BlockSize - 1) >> shift;
            long unmapEnd = Math.Max(inode.Map.EndBlock, keepBlocks);
            var conflicts = Seals.Of(inode).Where(s => s.EndBlock << shift > length).ToList();
            if (Writer.StopsOnDeferrable(ctx, conflicts, out var verdict, out long need)) return 0;
            long tail = length & (BlockSize - 1);
            var tailConflicts = new List<Seal>();
            if (tail != 0) need += Writer.PlanWrite(inode, length >> shift, keepBlocks, WriteMode.Zeros, tailConflicts);
            if (Check(ctx, tailConflicts, deferrable: false).Halts()) return 0;
            EnsureSpace(need);
            if (verdict == ConflictResolution.Detach) foreach (var s in conflicts) Writer.DetachSeal(s);
            Journal.Unmap(inode, keepBlocks, unmapEnd - keepBlocks);
            // The bytes past the new EOF in its last block must read as zeros if the file grows again. A private
            // block is zeroed in place, which destroys bytes that the durable (old, longer) size still covers: so
            // the size change is committed first, and only then are they zeroed (a crash in between leaves them to
            // recovery, which zeroes past the recovered EOF). A shared block gets a zeroed private copy instead.
            bool zeroInPlace = tail != 0 && inode.Map.TryLookup(length >> shift, out var last) &&
                               !Alloc.IsShared(last.DeviceBlock + (length >> shift) - last.FileBlock);
            if (tail != 0 && !zeroInPlace) Writer.ExecWrite(inode, length, BlockSize - tail, default, WriteMode.Zeros);
            Journal.SetSize(inode, length);
            if (zeroInPlace)
            {
                Journal.EndOp();
                Journal.Commit();
                Writer.ExecWrite(inode, length, BlockSize - tail, default, WriteMode.Zeros);
            }
            return 0;
        });
    }

    /// <summary>
    /// Punch hole and zero range: whole blocks are deallocated and partial edge blocks zeroed. A zero range over a
    /// sealed block writes zeros in place instead, so it never conflicts with the file's own pins.
    /// </summary>
    public VolumeOp<int> Deallocate(Inode inode, long offset, long length, ConflictPolicy? policy, bool zeroRange, bool keepSize)
    {
        CheckFileRange(offset, length);
        if (length == 0) ThrowHelper.Throw(PinnedDmaError.InvalidArgument, "fallocate needs a non-zero length (EINVAL).");
        return new(new RemapContext(zeroRange ? "zero range" : "punch hole", policy), ctx =>
        {
            Live(inode);
            int shift = BlockShift;
            long end = offset + length;
            long fullFirst = (offset + BlockSize - 1) >> shift, fullEnd = end >> shift;
            var edges = new List<(long, long)>();
            if (fullFirst > fullEnd) edges.Add((offset, end));
            else
            {
                if (offset < fullFirst << shift) edges.Add((offset, fullFirst << shift));
                if (end > fullEnd << shift) edges.Add((fullEnd << shift, end));
            }
            // Whole blocks: punched, except that zero range writes zeros into sealed ones.
            var dealloc = new List<(long, long)>();
            var inPlace = new List<(long, long)>();
            if (fullFirst < fullEnd)
            {
                if (zeroRange)
                {
                    long next = fullFirst;
                    foreach (var s in Seals.Of(inode).OrderBy(s => s.FirstBlock))
                    {
                        long a = Math.Max(s.FirstBlock, next), b = Math.Min(s.EndBlock, fullEnd);
                        if (a >= b) continue;
                        if (a > next) dealloc.Add((next, a));
                        inPlace.Add((a, b));
                        next = b;
                    }
                    if (next < fullEnd) dealloc.Add((next, fullEnd));
                }
                else
                {
                    dealloc.Add((fullFirst, fullEnd));
                }
            }
            var conflicts = new List<Seal>();
            foreach (var (a, b) in dealloc) conflicts.AddRange(SealsOverlapping(inode, a, b));
            conflicts = conflicts.Distinct().ToList();
            if (Writer.StopsOnDeferrable(ctx, conflicts, out var verdict, out long need)) return 0;
            var writeConflicts = new List<Seal>();
            foreach (var (a, b) in edges) need += Writer.PlanWrite(inode, a >> shift, ((b - 1) >> shift) + 1, WriteMode.Zeros, writeConflicts);
            foreach (var (a, b) in inPlace) need += Writer.PlanWrite(inode, a, b, WriteMode.Zeros, writeConflicts);
            if (Check(ctx, writeConflicts, deferrable: false).Halts()) return 0;
            EnsureSpace(need);
            CheckMetadataRoom(4);
            if (verdict == ConflictResolution.Detach) foreach (var s in conflicts) Writer.DetachSeal(s);
            foreach (var (a, b) in dealloc) Journal.Unmap(inode, a, b - a);
            foreach (var (a, b) in inPlace) Writer.ExecWrite(inode, a << shift, (b - a) << shift, default, WriteMode.Zeros);
            foreach (var (a, b) in edges) Writer.ExecWrite(inode, a, b - a, default, WriteMode.Zeros);
            if (!keepSize && end > inode.Size) Journal.SetSize(inode, end);
            return 0;
        });
    }

    /// <summary>
    /// Collapse range (remove a block-aligned range, shift the rest down) or insert range (shift up, leaving a hole).
    /// Every pin at or after the offset would move, so any such pin conflicts, and Defer cannot help.
    /// </summary>
    public VolumeOp<int> ShiftRange(Inode inode, long offset, long length, ConflictPolicy? policy, bool collapse)
    {
        string name = collapse ? "collapse range" : "insert range";
        CheckFileRange(offset, length);
        CheckAligned(offset, "offset");
        CheckAligned(length, "length");
        if (length == 0) ThrowHelper.Throw(PinnedDmaError.InvalidArgument, $"The {name} length must not be zero.");
        return new(new RemapContext(name, policy), ctx =>
        {
            Live(inode);
            if (collapse && offset + length >= inode.Size)
                ThrowHelper.Throw(PinnedDmaError.InvalidArgument, $"Collapse range [{offset}, +{length}) must end before EOF ({inode.Size}).");
            if (!collapse && offset >= inode.Size)
                ThrowHelper.Throw(PinnedDmaError.InvalidArgument, $"Insert offset {offset} must be before EOF ({inode.Size}).");
            if (!collapse && (inode.Size + length > MaxFileSize || inode.Map.EndBlock + (length >> BlockShift) > MaxFileBlocks))
                ThrowHelper.Throw(PinnedDmaError.InvalidArgument, "Insert would grow the file past the largest file size (EFBIG).");
            long first = offset >> BlockShift, count = length >> BlockShift;
            if (Check(ctx, Seals.Of(inode).Where(s => s.EndBlock > first).ToList(), deferrable: false).Halts()) return 0;
            CheckMetadataRoom(2);
            if (collapse)
            {
                Journal.Unmap(inode, first, count);
                Journal.Shift(inode, first + count, -count);
            }
            else
            {
                Journal.Shift(inode, first, count);
            }
            Journal.SetSize(inode, collapse ? inode.Size - length : inode.Size + length);
            // Shifting moves device blocks to other file offsets without copying them, and later writes go into
            // those blocks in place. Were the shift not durable, a crash would put such writes back at the blocks'
            // old offsets, a state that never existed; so a collapse or insert commits before it returns.
            Journal.EndOp();
            Journal.Commit();
            return 0;
        });
    }

    public VolumeOp<int> AllocateOp(Inode inode, long offset, long length, bool keepSize)
    {
        CheckFileRange(offset, length);
        if (length == 0) ThrowHelper.Throw(PinnedDmaError.InvalidArgument, "fallocate needs a non-zero length (EINVAL).");
        return new(new RemapContext("allocate", null), ctx =>
        {
            Live(inode);
            var (first, end) = BlockSpan(offset, length);
            long need = end - first - Writer.MappedBlocks(inode, first, end);
            EnsureSpace(need);
            CheckMetadataRoom(2 + need);
            Writer.FillHoles(inode, first, end, 0, 0);
            if (!keepSize && offset + length > inode.Size) Journal.SetSize(inode, offset + length);
            return 0;
        });
    }
}
