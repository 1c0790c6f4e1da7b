using PinnedDma.Internal;
using PinnedDma.Layout;
using PinnedDma.Storage.Internal;

namespace PinnedDma.Storage;

// File operations. Each validates its arguments and finds its conflicts before it changes anything, so a thrown
// error leaves the volume as it was.
public sealed partial class Volume
{
    private enum WriteMode { Data, Zeros, Touch }

    // ---------------------------------------------------------------- write planning

    /// <summary>
    /// What making file blocks [first, end) private (and, unless zeroing, allocated) takes: the blocks to allocate
    /// and the seals of other files that would have to move. The writer keeps a shared block that it has sealed
    /// (the pinned side keeps its block; the other sharers get the copy); an unsealed writer copies the whole COW
    /// granule around a shared block, skipping sealed blocks, so that no COW moves a pinned block as a side effect.
    /// </summary>
    private long PlanWrite(Inode inode, long first, long end, WriteMode mode, List<Seal> conflicts)
    {
        long need = 0;
        if (mode != WriteMode.Zeros && !inode.Map.IsFullyMapped(first, end - first))
            need += end - first - MappedBlocks(inode, first, end);
        if (!_alloc.AnyShared) return need;
        foreach (var (runFirst, runEnd, sealedByWriter) in SharedRuns(inode, first, end))
        {
            if (sealedByWriter)
            {
                need += PlanMoveOtherSharers(inode, runFirst, runEnd, conflicts);
            }
            else
            {
                foreach (var (s, t) in CowWindow(inode, runFirst, runEnd)) need += MappedBlocks(inode, s, t);
            }
        }
        return need;
    }

    /// <summary>Every other mapping of the device blocks behind file blocks [first, end) of <paramref name="inode"/>.</summary>
    private List<(Inode Inode, Extent Piece)> OtherSharers(Inode inode, long first, long end)
    {
        var others = new List<(Inode, Extent)>();
        foreach (var e in inode.Map.GetRange(first, end - first))
            foreach (var (other, piece) in FindMappings(e.DeviceBlock, e.Count))
                if (!(other == inode && piece.FileBlock >= first && piece.FileEnd <= end)) others.Add((other, piece));
        return others;
    }

    /// <summary>The pinned side keeps its blocks: what moving the other sharers costs, and whose seals it violates.</summary>
    private long PlanMoveOtherSharers(Inode inode, long first, long end, List<Seal> conflicts)
    {
        long need = 0;
        foreach (var (other, piece) in OtherSharers(inode, first, end))
        {
            need += piece.Count;
            conflicts.AddRange(SealsOverlapping(other, piece.FileBlock, piece.FileEnd));
        }
        return need;
    }

    /// <summary>Gives every other sharer of file blocks [first, end) a private copy (planned and checked before).</summary>
    private void MoveOtherSharers(Inode inode, long first, long end)
    {
        foreach (var (other, piece) in OtherSharers(inode, first, end))
        {
            if (other.IsSealed(piece.FileBlock, piece.FileEnd)) throw new InvalidOperationException("unchecked conflict");
            RelocateRange(other, piece.FileBlock, piece.Count);
        }
    }

    private long MappedBlocks(Inode inode, long first, long end)
    {
        long n = 0;
        foreach (var e in inode.Map.GetRange(first, end - first)) n += e.Count;
        return n;
    }

    /// <summary>Maximal runs of shared mapped blocks in [first, end), split where the writer's seals begin or end.</summary>
    private List<(long First, long End, bool SealedByWriter)> SharedRuns(Inode inode, long first, long end)
    {
        var runs = new List<(long, long, bool)>();
        long runStart = -1, runEnd = -1;
        bool runSealed = false;
        foreach (var e in inode.Map.GetRange(first, end - first))
        {
            for (long k = 0; k < e.Count; k++)
            {
                long fb = e.FileBlock + k;
                bool shared = _alloc.IsShared(e.DeviceBlock + k);
                bool sealedHere = shared && inode.IsSealed(fb);
                if (runStart >= 0 && (!shared || sealedHere != runSealed || fb != runEnd))
                {
                    runs.Add((runStart, runEnd, runSealed));
                    runStart = -1;
                }
                if (!shared) continue;
                if (runStart < 0) { runStart = fb; runSealed = sealedHere; }
                runEnd = fb + 1;
            }
        }
        if (runStart >= 0) runs.Add((runStart, runEnd, runSealed));
        return runs;
    }

    /// <summary>The unsealed parts of the COW granule window(s) around file blocks [first, end).</summary>
    private List<(long, long)> CowWindow(Inode inode, long first, long end)
    {
        long g = _sb.CowGranuleBlocks;
        long s = first / g * g, t = Math.Min((end + g - 1) / g * g, Math.Max(end, inode.Map.EndBlock));
        var parts = new List<(long, long)> { (s, t) };
        foreach (var seal in inode.Seals)
        {
            var next = new List<(long, long)>();
            foreach (var (a, b) in parts)
            {
                if (seal.EndBlock <= a || seal.FirstBlock >= b) { next.Add((a, b)); continue; }
                if (seal.FirstBlock > a) next.Add((a, seal.FirstBlock));
                if (seal.EndBlock < b) next.Add((seal.EndBlock, b));
            }
            parts = next;
        }
        return parts;
    }

    /// <summary>Gives file blocks [first, first+count) of <paramref name="inode"/> fresh private copies of their data.</summary>
    private void RelocateRange(Inode inode, long first, long count)
    {
        var pieces = inode.Map.GetRange(first, count);
        if (pieces.Count == 0) return;
        long total = 0;
        foreach (var p in pieces) total += p.Count;
        var runs = new List<BlockRun>();
        ulong gen = _alloc.Allocate(total, runs);
        int ri = 0;
        long rOff = 0;
        foreach (var p in pieces)
        {
            long done = 0;
            while (done < p.Count)
            {
                var r = runs[ri];
                long n = Math.Min(p.Count - done, r.Count - rOff);
                _device.CopyBlocks(p.DeviceBlock + done, r.Start + rOff, n);
                _journal.Unmap(inode, p.FileBlock + done, n);
                _journal.Map(inode, new Extent(p.FileBlock + done, r.Start + rOff, n, gen));
                done += n;
                rOff += n;
                if (rOff == r.Count) { ri++; rOff = 0; }
            }
        }
    }

    /// <summary>
    /// Executes a planned write: moves other sharers off blocks the writer has sealed, copies COW windows, fills
    /// holes (except for zeros), then copies the bytes. The plan was checked; nothing here can conflict.
    /// </summary>
    private void ExecWrite(Inode inode, long offset, long length, ReadOnlySpan<byte> data, WriteMode mode)
    {
        if (length == 0) return;
        int shift = BlockShift;
        long first = offset >> shift, end = ((offset + length - 1) >> shift) + 1;
        if (_alloc.AnyShared)
        {
            foreach (var (runFirst, runEnd, sealedByWriter) in SharedRuns(inode, first, end))
            {
                if (sealedByWriter)
                {
                    MoveOtherSharers(inode, runFirst, runEnd);
                }
                else
                {
                    foreach (var (s, t) in CowWindow(inode, runFirst, runEnd)) RelocateRange(inode, s, t - s);
                }
            }
        }
        if (mode != WriteMode.Zeros && !inode.Map.IsFullyMapped(first, end - first)) FillHoles(inode, first, end, offset, offset + length);
        if (mode == WriteMode.Touch) return;
        // Copy through the (now private) translation.
        long pos = offset, stop = offset + length;
        foreach (var e in inode.Map.GetRange(first, end - first))
        {
            long eStart = Math.Max(pos, e.FileBlock << shift), eEnd = Math.Min(stop, e.FileEnd << shift);
            if (eStart >= eEnd) continue;
            long dev = (e.DeviceBlock << shift) + (eStart - (e.FileBlock << shift));
            var dst = _device.GetSpan(dev, checked((int)(eEnd - eStart)));
            if (mode == WriteMode.Zeros) dst.Clear();
            else data.Slice((int)(eStart - offset), dst.Length).CopyTo(dst);
        }
    }

    /// <summary>Allocates the holes of [first, end); zeroes the parts of new blocks the bytes [from, to) will not cover.</summary>
    private void FillHoles(Inode inode, long first, long end, long from, long to)
    {
        long next = first;
        var holes = new List<(long, long)>();
        foreach (var e in inode.Map.GetRange(first, end - first))
        {
            if (e.FileBlock > next) holes.Add((next, e.FileBlock));
            next = e.FileEnd;
        }
        if (next < end) holes.Add((next, end));
        if (holes.Count == 0) return;
        long total = 0;
        foreach (var (a, b) in holes) total += b - a;
        var runs = new List<BlockRun>();
        ulong gen = _alloc.Allocate(total, runs);
        int ri = 0;
        long rOff = 0;
        int shift = BlockShift;
        foreach (var (a, b) in holes)
        {
            long fb = a;
            while (fb < b)
            {
                var r = runs[ri];
                long n = Math.Min(b - fb, r.Count - rOff);
                long db = r.Start + rOff;
                // Zero what the data will not overwrite: whole blocks outside [from, to), and the partial edges.
                for (long k = 0; k < n; k++)
                {
                    long blockStart = (fb + k) << shift, blockEnd = blockStart + BlockSize;
                    if (from <= blockStart && to >= blockEnd) continue;
                    _device.ZeroBlocks(db + k, 1);
                }
                _journal.Map(inode, new Extent(fb, db, n, gen));
                fb += n;
                rOff += n;
                if (rOff == r.Count) { ri++; rOff = 0; }
            }
        }
    }

    private (long First, long End) BlockSpan(long offset, long length) =>
        length == 0 ? (offset >> BlockShift, offset >> BlockShift) : (offset >> BlockShift, ((offset + length - 1) >> BlockShift) + 1);

    private void CheckFileRange(long offset, long length)
    {
        ThrowHelper.CheckRange(offset, length);
        if (offset + length > MaxFileSize)
            ThrowHelper.Throw(PinnedDmaError.InvalidArgument, $"Range ends past the largest file size ({MaxFileSize} bytes) (EFBIG).");
    }

    private void CheckAligned(long value, string name)
    {
        if ((value & (BlockSize - 1)) != 0)
            ThrowHelper.Throw(PinnedDmaError.InvalidArgument, $"{name} ({value}) must be a multiple of the block size ({BlockSize}).");
    }

    // ---------------------------------------------------------------- read and write

    internal int Read(Inode inode, long offset, Span<byte> destination)
    {
        ThrowHelper.CheckRange(offset, destination.Length);
        lock (Gate)
        {
            Live(inode);
            if (offset >= inode.Size) return 0;
            int n = (int)Math.Min(destination.Length, inode.Size - offset);
            var dst = destination[..n];
            dst.Clear();
            int shift = BlockShift;
            var (first, end) = BlockSpan(offset, n);
            foreach (var e in inode.Map.GetRange(first, end - first))
            {
                long s = Math.Max(offset, e.FileBlock << shift), t = Math.Min(offset + n, e.FileEnd << shift);
                if (s >= t) continue;
                _device.GetSpan((e.DeviceBlock << shift) + (s - (e.FileBlock << shift)), (int)(t - s)).CopyTo(dst[(int)(s - offset)..]);
            }
            return n;
        }
    }

    internal void Write(Inode inode, long offset, ReadOnlySpan<byte> data, ConflictPolicy? policy, bool sync)
    {
        CheckFileRange(offset, data.Length);
        if (data.IsEmpty) return;
        Mutate(new RemapContext("write", policy), data, (ctx, data) => WriteBody(ctx, inode, offset, data, sync));
    }

    internal ValueTask WriteAsync(Inode inode, long offset, ReadOnlyMemory<byte> data, ConflictPolicy? policy, CancellationToken cancellationToken)
    {
        CheckFileRange(offset, data.Length);
        if (data.IsEmpty) return default;
        return Discard(MutateAsync(new RemapContext("write", policy), data,
            (ctx, data) => WriteBody(ctx, inode, offset, data.Span, sync: false), cancellationToken));
    }

    private int WriteBody(RemapContext ctx, Inode inode, long offset, ReadOnlySpan<byte> data, bool sync)
    {
        var (first, end) = BlockSpan(offset, data.Length);
        Live(inode);
        var conflicts = new List<Seal>();
        long need = PlanWrite(inode, first, end, WriteMode.Data, conflicts);
        if (Check(ctx, conflicts, deferrable: false).Halts()) return 0;
        EnsureSpace(need);
        CheckMetadataRoom(need > 0 ? 2 + need : 0);
        ulong before = _alloc.NextGeneration;
        ExecWrite(inode, offset, data.Length, data, WriteMode.Data);
        if (offset + data.Length > inode.Size) _journal.SetSize(inode, offset + data.Length);
        if (sync && _alloc.NextGeneration != before)
        {
            // The write allocated (MAP_SYNC): its metadata is durable before it returns.
            _journal.EndOp();
            _journal.Commit();
        }
        return 0;
    }

    // ---------------------------------------------------------------- space operations

    internal void Truncate(Inode inode, long length, ConflictPolicy? policy) => Run(TruncateOp(inode, length, policy));

    internal ValueTask TruncateAsync(Inode inode, long length, ConflictPolicy? policy, CancellationToken cancellationToken) =>
        Discard(RunAsync(TruncateOp(inode, length, policy), cancellationToken));

    private Op<int> TruncateOp(Inode inode, long length, ConflictPolicy? policy)
    {
        CheckFileRange(length, 0);
        return new(new RemapContext("truncate", policy), ctx =>
        {
            Live(inode);
            if (length >= inode.Size)
            {
                _journal.SetSize(inode, length);
                return 0;
            }
            int shift = BlockShift;
            long keepBlocks = (length + BlockSize - 1) >> shift;
            long unmapEnd = Math.Max(inode.Map.EndBlock, keepBlocks);
            var conflicts = inode.Seals.Where(s => s.EndBlock << shift > length).ToList();
            var verdict = Check(ctx, conflicts, deferrable: true);
            if (verdict.Halts()) return 0;
            long need = 0;
            if (verdict == ConflictResolution.Detach)
            {
                if (CheckDetachable(ctx, conflicts).Halts()) return 0;
                need += DetachCost(conflicts);
            }
            long tail = length & (BlockSize - 1);
            var tailConflicts = new List<Seal>();
            if (tail != 0) need += PlanWrite(inode, length >> shift, keepBlocks, WriteMode.Zeros, tailConflicts);
            if (Check(ctx, tailConflicts, deferrable: false).Halts()) return 0;
            EnsureSpace(need);
            if (verdict == ConflictResolution.Detach) foreach (var s in conflicts) DetachSeal(s);
            _journal.Unmap(inode, keepBlocks, unmapEnd - keepBlocks);
            // The bytes past the new EOF in its last block must read as zeros if the file grows again. A private
            // block is zeroed in place, which destroys bytes that the durable (old, longer) size still covers: so
            // the size change is committed first, and only then are they zeroed (a crash in between leaves them to
            // recovery, which zeroes past the recovered EOF). A shared block gets a zeroed private copy instead.
            bool zeroInPlace = tail != 0 && inode.Map.TryLookup(length >> shift, out var last) &&
                               !_alloc.IsShared(last.DeviceBlock + (length >> shift) - last.FileBlock);
            if (tail != 0 && !zeroInPlace) ExecWrite(inode, length, BlockSize - tail, default, WriteMode.Zeros);
            _journal.SetSize(inode, length);
            if (zeroInPlace)
            {
                _journal.EndOp();
                _journal.Commit();
                ExecWrite(inode, length, BlockSize - tail, default, WriteMode.Zeros);
            }
            return 0;
        });
    }

    internal void PunchHole(Inode inode, long offset, long length, ConflictPolicy? policy) =>
        Run(Deallocate(inode, offset, length, policy, zeroRange: false, keepSize: true));

    internal ValueTask PunchHoleAsync(Inode inode, long offset, long length, ConflictPolicy? policy, CancellationToken cancellationToken) =>
        Discard(RunAsync(Deallocate(inode, offset, length, policy, zeroRange: false, keepSize: true), cancellationToken));

    internal void ZeroRange(Inode inode, long offset, long length, bool keepSize, ConflictPolicy? policy) =>
        Run(Deallocate(inode, offset, length, policy, zeroRange: true, keepSize));

    internal ValueTask ZeroRangeAsync(Inode inode, long offset, long length, bool keepSize, ConflictPolicy? policy, CancellationToken cancellationToken) =>
        Discard(RunAsync(Deallocate(inode, offset, length, policy, zeroRange: true, keepSize), cancellationToken));

    /// <summary>
    /// Punch hole and zero range: whole blocks are deallocated and partial edge blocks zeroed. A zero range over a
    /// sealed block writes zeros in place instead, so it never conflicts with the file's own pins.
    /// </summary>
    private Op<int> Deallocate(Inode inode, long offset, long length, ConflictPolicy? policy, bool zeroRange, bool keepSize)
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
                    foreach (var s in inode.Seals.OrderBy(s => s.FirstBlock))
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
            var verdict = Check(ctx, conflicts, deferrable: true);
            if (verdict.Halts()) return 0;
            long need = 0;
            if (verdict == ConflictResolution.Detach)
            {
                if (CheckDetachable(ctx, conflicts).Halts()) return 0;
                need += DetachCost(conflicts);
            }
            var writeConflicts = new List<Seal>();
            foreach (var (a, b) in edges) need += PlanWrite(inode, a >> shift, ((b - 1) >> shift) + 1, WriteMode.Zeros, writeConflicts);
            foreach (var (a, b) in inPlace) need += PlanWrite(inode, a, b, WriteMode.Zeros, writeConflicts);
            if (Check(ctx, writeConflicts, deferrable: false).Halts()) return 0;
            EnsureSpace(need);
            CheckMetadataRoom(4);
            if (verdict == ConflictResolution.Detach) foreach (var s in conflicts) DetachSeal(s);
            foreach (var (a, b) in dealloc) _journal.Unmap(inode, a, b - a);
            foreach (var (a, b) in inPlace) ExecWrite(inode, a << shift, (b - a) << shift, default, WriteMode.Zeros);
            foreach (var (a, b) in edges) ExecWrite(inode, a, b - a, default, WriteMode.Zeros);
            if (!keepSize && end > inode.Size) _journal.SetSize(inode, end);
            return 0;
        });
    }

    internal void Allocate(Inode inode, long offset, long length, bool keepSize)
    {
        CheckFileRange(offset, length);
        if (length == 0) ThrowHelper.Throw(PinnedDmaError.InvalidArgument, "fallocate needs a non-zero length (EINVAL).");
        Mutate(new RemapContext("allocate", null), ctx =>
        {
            Live(inode);
            var (first, end) = BlockSpan(offset, length);
            long need = end - first - MappedBlocks(inode, first, end);
            EnsureSpace(need);
            CheckMetadataRoom(2 + need);
            FillHoles(inode, first, end, 0, 0);
            if (!keepSize && offset + length > inode.Size) _journal.SetSize(inode, offset + length);
            return 0;
        });
    }

    internal void CollapseRange(Inode inode, long offset, long length, ConflictPolicy? policy) =>
        Run(ShiftRange(inode, offset, length, policy, collapse: true));

    internal ValueTask CollapseRangeAsync(Inode inode, long offset, long length, ConflictPolicy? policy, CancellationToken cancellationToken) =>
        Discard(RunAsync(ShiftRange(inode, offset, length, policy, collapse: true), cancellationToken));

    internal void InsertRange(Inode inode, long offset, long length, ConflictPolicy? policy) =>
        Run(ShiftRange(inode, offset, length, policy, collapse: false));

    internal ValueTask InsertRangeAsync(Inode inode, long offset, long length, ConflictPolicy? policy, CancellationToken cancellationToken) =>
        Discard(RunAsync(ShiftRange(inode, offset, length, policy, collapse: false), cancellationToken));

    /// <summary>
    /// Collapse range (remove a block-aligned range, shift the rest down) or insert range (shift up, leaving a hole).
    /// Every pin at or after the offset would move, so any such pin conflicts, and Defer cannot help.
    /// </summary>
    private Op<int> ShiftRange(Inode inode, long offset, long length, ConflictPolicy? policy, bool collapse)
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
            if (Check(ctx, inode.Seals.Where(s => s.EndBlock > first).ToList(), deferrable: false).Halts()) return 0;
            CheckMetadataRoom(2);
            if (collapse)
            {
                _journal.Unmap(inode, first, count);
                _journal.Shift(inode, first + count, -count);
            }
            else
            {
                _journal.Shift(inode, first, count);
            }
            _journal.SetSize(inode, collapse ? inode.Size - length : inode.Size + length);
            // Shifting moves device blocks to other file offsets without copying them, and later writes go into
            // those blocks in place. Were the shift not durable, a crash would put such writes back at the blocks'
            // old offsets, a state that never existed; so a collapse or insert commits before it returns.
            _journal.EndOp();
            _journal.Commit();
            return 0;
        });
    }

    // ---------------------------------------------------------------- sharing

    /// <summary>Validates a remap (clone/dedupe) request the way the kernel's generic_remap_checks does.</summary>
    private long RemapBlocks(Inode src, long srcOffset, Inode dst, long dstOffset, long length, bool dedupe)
    {
        CheckAligned(srcOffset, "source offset");
        CheckAligned(dstOffset, "destination offset");
        if (srcOffset + length > src.Size)
            ThrowHelper.Throw(PinnedDmaError.InvalidArgument, $"Source range [{srcOffset}, +{length}) goes past the source's EOF ({src.Size}).");
        if (dedupe && dstOffset + length > dst.Size)
            ThrowHelper.Throw(PinnedDmaError.InvalidArgument, $"Destination range [{dstOffset}, +{length}) goes past the destination's EOF ({dst.Size}).");
        long blocks = length >> BlockShift;
        if ((length & (BlockSize - 1)) != 0)
        {
            // A partial last block can be shared only where it is the last block of the source, and where it
            // does not land in the middle of the destination.
            bool srcEof = srcOffset + length == src.Size;
            bool dstEof = dstOffset + length >= dst.Size;
            if (dedupe)
            {
                // Dedupe rounds down, unless both ranges end at their files' EOF. The same-file overlap check
                // below applies to the rounded range too.
                if (srcEof && dstOffset + length == dst.Size) blocks++;
            }
            else
            {
                if (!srcEof || !dstEof)
                    ThrowHelper.Throw(PinnedDmaError.InvalidArgument, "A clone length that is not a block multiple must end at the source's EOF and at or past the destination's.");
                blocks++;
            }
        }
        if (src == dst)
        {
            long s = srcOffset >> BlockShift, d = dstOffset >> BlockShift;
            if (s < d + blocks && d < s + blocks)
                ThrowHelper.Throw(PinnedDmaError.InvalidArgument, "Source and destination ranges of the same file overlap.");
        }
        return blocks;
    }

    internal void CloneRange(Inode src, long srcOffset, Inode dst, long dstOffset, long length, ConflictPolicy? policy) =>
        Run(CloneRangeOp(src, srcOffset, dst, dstOffset, length, policy));

    internal ValueTask CloneRangeAsync(Inode src, long srcOffset, Inode dst, long dstOffset, long length, ConflictPolicy? policy, CancellationToken cancellationToken) =>
        Discard(RunAsync(CloneRangeOp(src, srcOffset, dst, dstOffset, length, policy), cancellationToken));

    private Op<int> CloneRangeOp(Inode src, long srcOffset, Inode dst, long dstOffset, long length, ConflictPolicy? policy)
    {
        CheckFileRange(srcOffset, length);
        CheckFileRange(dstOffset, length);
        return new(new RemapContext("clone range", policy), ctx =>
        {
            Live(src);
            Live(dst);
            if (length == 0)
            {
                // FICLONERANGE: length 0 means "to the source's EOF"; an offset past that EOF is EINVAL, as in Linux.
                if (srcOffset > src.Size)
                    ThrowHelper.Throw(PinnedDmaError.InvalidArgument, $"Source offset {srcOffset} is past the source's EOF ({src.Size}).");
                if (srcOffset == src.Size) return 0;
                length = src.Size - srcOffset;
                CheckFileRange(dstOffset, length);
            }
            long blocks = RemapBlocks(src, srcOffset, dst, dstOffset, length, dedupe: false);
            if (!ShareBlocks(ctx, src, srcOffset >> BlockShift, dst, dstOffset >> BlockShift, blocks)) return 0;
            if (dstOffset + length > dst.Size) _journal.SetSize(dst, dstOffset + length);
            return 0;
        });
    }

    internal long DedupeRange(Inode src, long srcOffset, Inode dst, long dstOffset, long length, ConflictPolicy? policy) =>
        Run(DedupeRangeOp(src, srcOffset, dst, dstOffset, length, policy));

    internal ValueTask<long> DedupeRangeAsync(Inode src, long srcOffset, Inode dst, long dstOffset, long length, ConflictPolicy? policy, CancellationToken cancellationToken) =>
        RunAsync(DedupeRangeOp(src, srcOffset, dst, dstOffset, length, policy), cancellationToken);

    private Op<long> DedupeRangeOp(Inode src, long srcOffset, Inode dst, long dstOffset, long length, ConflictPolicy? policy)
    {
        CheckFileRange(srcOffset, length);
        CheckFileRange(dstOffset, length);
        return new(new RemapContext("dedupe range", policy), ctx =>
        {
            Live(src);
            Live(dst);
            if (length == 0)
            {
                // FIDEDUPERANGE checks the source range against its EOF before anything else (EINVAL), then a zero
                // length dedupes nothing.
                if (srcOffset > src.Size)
                    ThrowHelper.Throw(PinnedDmaError.InvalidArgument, $"Source offset {srcOffset} is past the source's EOF ({src.Size}).");
                return 0L;
            }
            long blocks = RemapBlocks(src, srcOffset, dst, dstOffset, length, dedupe: true);
            if (blocks == 0) return length;
            if (!RangesEqual(src, srcOffset >> BlockShift, dst, dstOffset >> BlockShift, blocks))
                ThrowHelper.Throw(PinnedDmaError.RangesDiffer, "Dedupe: the ranges' contents differ; nothing was shared.");
            if (!ShareBlocks(ctx, src, srcOffset >> BlockShift, dst, dstOffset >> BlockShift, blocks)) return 0L;
            // Linux reports the length asked for, though it shares only whole blocks (a partial last block is
            // shared only where both ranges end at their files' EOF).
            return length;
        });
    }

    private bool RangesEqual(Inode a, long aFirst, Inode b, long bFirst, long blocks)
    {
        var x = new byte[BlockSize];
        var y = new byte[BlockSize];
        for (long k = 0; k < blocks; k++)
        {
            ReadBlock(a, aFirst + k, x);
            ReadBlock(b, bFirst + k, y);
            if (!x.AsSpan().SequenceEqual(y)) return false;
        }
        return true;
    }

    private void ReadBlock(Inode inode, long fileBlock, Span<byte> into)
    {
        if (inode.Map.TryLookup(fileBlock, out var e))
            _device.GetSpan((e.DeviceBlock + fileBlock - e.FileBlock) << BlockShift, BlockSize).CopyTo(into);
        else
            into.Clear();
    }

    /// <summary>
    /// Replaces dst blocks [dFirst, +blocks) by src's. Blocks that a write pin holds in src are copied, not shared:
    /// DMA can change them at any moment, and a clone is a snapshot. False when a lease conflict stopped it before it
    /// changed anything.
    /// </summary>
    private bool ShareBlocks(RemapContext ctx, Inode src, long sFirst, Inode dst, long dFirst, long blocks)
    {
        var conflicts = SealsOverlapping(dst, dFirst, dFirst + blocks);
        var verdict = Check(ctx, conflicts, deferrable: true);
        if (verdict.Halts()) return false;
        long need = 0;
        if (verdict == ConflictResolution.Detach)
        {
            if (CheckDetachable(ctx, conflicts).Halts()) return false;
            need += DetachCost(conflicts);
        }
        var pieces = SourcePieces(src, sFirst, blocks, ref need);
        EnsureSpace(need);
        CheckMetadataRoom(pieces.Count + 2);
        if (verdict == ConflictResolution.Detach)
        {
            foreach (var s in conflicts) DetachSeal(s);
            // Detaching gave every other mapping of the pins' blocks a private copy, the source's included (the
            // source may be the pinned file itself, or a clone of it): share the source's blocks as they are now,
            // never the blocks the detached pins own. Fewer blocks are write-sealed now, so the space planned holds.
            long ignored = 0;
            pieces = SourcePieces(src, sFirst, blocks, ref ignored);
        }
        _journal.Unmap(dst, dFirst, blocks);
        foreach (var (p, copy) in pieces)
        {
            long fb = p.FileBlock - sFirst + dFirst;
            if (!copy)
            {
                _alloc.AddRef(p.DeviceBlock, p.Count);
                _journal.Map(dst, p with { FileBlock = fb });
                continue;
            }
            var runs = new List<BlockRun>();
            ulong gen = _alloc.Allocate(p.Count, runs);
            long done = 0;
            foreach (var r in runs)
            {
                _device.CopyBlocks(p.DeviceBlock + done, r.Start, r.Count);
                _journal.Map(dst, new Extent(fb + done, r.Start, r.Count, gen));
                done += r.Count;
            }
        }
        return true;
    }

    /// <summary>The source runs of a clone, each marked copy (a write pin holds it) or share; adds the copies to <paramref name="need"/>.</summary>
    private static List<(Extent Piece, bool Copy)> SourcePieces(Inode src, long sFirst, long blocks, ref long need)
    {
        var pieces = new List<(Extent Piece, bool Copy)>();
        foreach (var e in src.Map.GetRange(sFirst, blocks))
        {
            long k = 0;
            while (k < e.Count)
            {
                bool copy = src.IsWriteSealed(e.FileBlock + k);
                long n = 1;
                while (k + n < e.Count && src.IsWriteSealed(e.FileBlock + k + n) == copy) n++;
                pieces.Add((new Extent(e.FileBlock + k, e.DeviceBlock + k, n, e.Generation), copy));
                if (copy) need += n;
                k += n;
            }
        }
        return pieces;
    }

    internal void UnshareRange(Inode inode, long offset, long length, bool keepSize, ConflictPolicy? policy) =>
        Run(UnshareRangeOp(inode, offset, length, keepSize, policy));

    internal ValueTask UnshareRangeAsync(Inode inode, long offset, long length, bool keepSize, ConflictPolicy? policy, CancellationToken cancellationToken) =>
        Discard(RunAsync(UnshareRangeOp(inode, offset, length, keepSize, policy), cancellationToken));

    private Op<int> UnshareRangeOp(Inode inode, long offset, long length, bool keepSize, ConflictPolicy? policy)
    {
        CheckFileRange(offset, length);
        if (length == 0) ThrowHelper.Throw(PinnedDmaError.InvalidArgument, "fallocate needs a non-zero length (EINVAL).");
        return new(new RemapContext("unshare range", policy), ctx =>
        {
            Live(inode);
            long end = Math.Min(offset + length, inode.Size);
            // Without KEEP_SIZE, Linux grows the file to the end of the range (fallocate mode semantics).
            bool grow = !keepSize && offset + length > inode.Size;
            if (end <= offset)
            {
                if (grow) _journal.SetSize(inode, offset + length);
                return 0;
            }
            var (first, stop) = BlockSpan(offset, end - offset);
            var conflicts = new List<Seal>();
            long need = 0;
            foreach (var (a, b, sealedByWriter) in SharedRuns(inode, first, stop))
            {
                need += sealedByWriter ? PlanMoveOtherSharers(inode, a, b, conflicts) : b - a;
            }
            if (Check(ctx, conflicts, deferrable: false).Halts()) return 0;
            EnsureSpace(need);
            CheckMetadataRoom(2 + need);
            foreach (var (a, b, sealedByWriter) in SharedRuns(inode, first, stop))
            {
                if (sealedByWriter) MoveOtherSharers(inode, a, b);
                else RelocateRange(inode, a, b - a);
            }
            if (grow) _journal.SetSize(inode, offset + length);
            return 0;
        });
    }

    // ---------------------------------------------------------------- compaction

    /// <summary>
    /// Moves file data toward the start of the data area so that free space coalesces, in runs of at most
    /// <paramref name="maxRunBlocks"/>. Blocks a pin or Direct mapping holds are skipped (like the kernel, which
    /// migrates before a long-term pin, never after). Returns the number of blocks moved.
    /// </summary>
    /// <param name="maxRunBlocks">Most blocks moved as one run (at least 1).</param>
    /// <returns>The number of blocks moved.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="maxRunBlocks"/> is less than 1.</exception>
    /// <exception cref="ObjectDisposedException">The volume is disposed.</exception>
    public long Compact(int maxRunBlocks = 256)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxRunBlocks, 1);
        return Mutate(new RemapContext("compact", null), _ =>
        {
            var sealedRuns = new List<BlockRun>();
            foreach (var inode in _files.ById.Values)
                foreach (var s in inode.Seals)
                    foreach (var e in s.Frozen) sealedRuns.Add(new BlockRun(e.DeviceBlock, e.Count));
            foreach (var s in _detached)
                foreach (var e in s.Frozen) sealedRuns.Add(new BlockRun(e.DeviceBlock, e.Count));
            // Every file-referenced device run, highest first.
            var refs = new SortedSet<long>();
            foreach (var inode in _files.ById.Values)
                foreach (var e in inode.Map.Extents)
                    for (long b = e.DeviceBlock; b < e.DeviceEnd; b++) refs.Add(b);
            long moved = 0;
            var blocks = refs.Reverse().ToList();
            int i = 0;
            while (i < blocks.Count)
            {
                // A run of consecutive device blocks, walking down.
                long hi = blocks[i], lo = hi;
                int j = i + 1;
                while (j < blocks.Count && blocks[j] == lo - 1 && hi - lo + 1 < maxRunBlocks) { lo--; j++; }
                i = j;
                long count = hi - lo + 1;
                if (sealedRuns.Any(r => r.Start <= hi && r.End > lo)) continue;
                if (_alloc.FreeBlocks < count) continue;
                if (!_alloc.TryAllocateBelow(count, lo, out var target, out var gen)) continue;
                _device.CopyBlocks(lo, target.Start, count);
                foreach (var (inode, piece) in FindMappings(lo, count))
                {
                    _journal.Unmap(inode, piece.FileBlock, piece.Count);
                    if (piece.Count > 0)
                    {
                        if (piece.DeviceBlock - lo + piece.Count > count) throw new InvalidOperationException("compaction piece outside run");
                        // The new run has one reference from the allocation; sharers add theirs.
                        _journal.Map(inode, new Extent(piece.FileBlock, target.Start + (piece.DeviceBlock - lo), piece.Count, gen));
                    }
                }
                FixRunReferences(target, count);
                moved += count;
                _journal.EndOp();
            }
            return moved;
        });
    }

    /// <summary>After compaction remapped every reference to a new run: set its counts from the maps that now use it.</summary>
    private void FixRunReferences(BlockRun target, long count)
    {
        var users = FindMappings(target.Start, count);
        var counts = new int[count];
        foreach (var (_, p) in users)
            for (long k = 0; k < p.Count; k++) counts[p.DeviceBlock - target.Start + k]++;
        for (long k = 0; k < count; k++)
        {
            // Allocation gave one reference; add the rest.
            for (int extra = 1; extra < counts[k]; extra++) _alloc.AddRef(target.Start + k, 1);
            if (counts[k] == 0) throw new InvalidOperationException("compaction target block without a user");
        }
    }
}
