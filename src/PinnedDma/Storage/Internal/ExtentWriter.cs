using PinnedDma.Internal;
using PinnedDma.Layout;

namespace PinnedDma.Storage.Internal;

/// <summary>How a planned write fills its range: with data, with zeros (no allocation), or not at all (pinning: private and allocated only).</summary>
internal enum WriteMode { Data, Zeros, Touch }

/// <summary>
/// The extent mechanics every remapping operation shares: planning and carrying out a write over a file range (COW
/// breaks that keep pinned blocks in place, hole filling, relocation of other sharers), and Defer's detaching of
/// seals. Runs under the volume lock, inside an operation's body.
/// </summary>
internal sealed class ExtentWriter(VolumeState s) : VolumePart(s)
{
    /// <summary>
    /// What making file blocks [first, end) private (and, unless zeroing, allocated) takes: the blocks to allocate
    /// and the seals of other files that would have to move. The writer keeps a shared block that it has sealed
    /// (the pinned side keeps its block; the other sharers get the copy); an unsealed writer copies the whole COW
    /// granule around a shared block, skipping sealed blocks, so that no COW moves a pinned block as a side effect.
    /// </summary>
    public long PlanWrite(Inode inode, long first, long end, WriteMode mode, List<Seal> conflicts)
    {
        long need = 0;
        if (mode != WriteMode.Zeros && !inode.Map.IsFullyMapped(first, end - first))
            need += end - first - MappedBlocks(inode, first, end);
        if (!Alloc.AnyShared) return need;
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
    public List<(Inode Inode, Extent Piece)> OtherSharers(Inode inode, long first, long end)
    {
        var others = new List<(Inode, Extent)>();
        foreach (var e in inode.Map.GetRange(first, end - first))
            foreach (var (other, piece) in FindMappings(e.DeviceBlock, e.Count))
                if (!(other == inode && piece.FileBlock >= first && piece.FileEnd <= end)) others.Add((other, piece));
        return others;
    }

    /// <summary>The pinned side keeps its blocks: what moving the other sharers costs, and whose seals it violates.</summary>
    public long PlanMoveOtherSharers(Inode inode, long first, long end, List<Seal> conflicts)
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
    public void MoveOtherSharers(Inode inode, long first, long end)
    {
        foreach (var (other, piece) in OtherSharers(inode, first, end))
        {
            if (Seals.IsSealed(other, piece.FileBlock, piece.FileEnd)) throw new InvalidOperationException("unchecked conflict");
            RelocateRange(other, piece.FileBlock, piece.Count);
        }
    }

    public long MappedBlocks(Inode inode, long first, long end)
    {
        long n = 0;
        foreach (var e in inode.Map.GetRange(first, end - first)) n += e.Count;
        return n;
    }

    /// <summary>Maximal runs of shared mapped blocks in [first, end), split where the writer's seals begin or end.</summary>
    public List<(long First, long End, bool SealedByWriter)> SharedRuns(Inode inode, long first, long end)
    {
        var runs = new List<(long, long, bool)>();
        var seals = Seals.Of(inode);
        long runStart = -1, runEnd = -1;
        bool runSealed = false;
        foreach (var e in inode.Map.GetRange(first, end - first))
        {
            for (long k = 0; k < e.Count; k++)
            {
                long fb = e.FileBlock + k;
                bool shared = Alloc.IsShared(e.DeviceBlock + k);
                bool sealedHere = shared && SealTable.Covers(seals, fb);
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
    public List<(long, long)> CowWindow(Inode inode, long first, long end)
    {
        long g = Sb.CowGranuleBlocks;
        long s = first / g * g, t = Math.Min((end + g - 1) / g * g, Math.Max(end, inode.Map.EndBlock));
        var parts = new List<(long, long)> { (s, t) };
        foreach (var seal in Seals.Of(inode))
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
    public void RelocateRange(Inode inode, long first, long count)
    {
        var pieces = inode.Map.GetRange(first, count);
        if (pieces.Count == 0) return;
        long total = 0;
        foreach (var p in pieces) total += p.Count;
        var runs = new List<BlockRun>();
        ulong gen = Alloc.Allocate(total, runs);
        int ri = 0;
        long rOff = 0;
        foreach (var p in pieces)
        {
            long done = 0;
            while (done < p.Count)
            {
                var r = runs[ri];
                long n = Math.Min(p.Count - done, r.Count - rOff);
                Device.CopyBlocks(p.DeviceBlock + done, r.Start + rOff, n);
                Journal.Unmap(inode, p.FileBlock + done, n);
                Journal.Map(inode, new Extent(p.FileBlock + done, r.Start + rOff, n, gen));
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
    public void ExecWrite(Inode inode, long offset, long length, ReadOnlySpan<byte> data, WriteMode mode)
    {
        if (length == 0) return;
        int shift = BlockShift;
        long first = offset >> shift, end = ((offset + length - 1) >> shift) + 1;
        if (Alloc.AnyShared)
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
            var dst = Device.GetSpan(dev, checked((int)(eEnd - eStart)));
            if (mode == WriteMode.Zeros) dst.Clear();
            else data.Slice((int)(eStart - offset), dst.Length).CopyTo(dst);
        }
    }

    /// <summary>Allocates the holes of [first, end); zeroes the parts of new blocks the bytes [from, to) will not cover.</summary>
    public void FillHoles(Inode inode, long first, long end, long from, long to)
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
        ulong gen = Alloc.Allocate(total, runs);
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
                    Device.ZeroBlocks(db + k, 1);
                }
                Journal.Map(inode, new Extent(fb, db, n, gen));
                fb += n;
                rOff += n;
                if (rOff == r.Count) { ri++; rOff = 0; }
            }
        }
    }

    public int WriteBody(RemapContext ctx, Inode inode, long offset, ReadOnlySpan<byte> data, bool sync)
    {
        var (first, end) = BlockSpan(offset, data.Length);
        Live(inode);
        var conflicts = new List<Seal>();
        long need = PlanWrite(inode, first, end, WriteMode.Data, conflicts);
        if (Check(ctx, conflicts, deferrable: false).Halts()) return 0;
        EnsureSpace(need);
        CheckMetadataRoom(need > 0 ? 2 + need : 0);
        ulong before = Alloc.NextGeneration;
        ExecWrite(inode, offset, data.Length, data, WriteMode.Data);
        if (offset + data.Length > inode.Size) Journal.SetSize(inode, offset + data.Length);
        if (sync && Alloc.NextGeneration != before)
        {
            // The write allocated (MAP_SYNC): its metadata is durable before it returns.
            Journal.EndOp();
            Journal.Commit();
        }
        return 0;
    }

    /// <summary>Every (file, file block range) that maps some of device blocks [start, start+count).</summary>
    public List<(Inode Inode, Extent Piece)> FindMappings(long start, long count)
    {
        var found = new List<(Inode, Extent)>();
        long end = start + count;
        foreach (var inode in Files.ById.Values)
            foreach (var e in inode.Map.Extents)
                if (e.DeviceBlock < end && e.DeviceEnd > start)
                {
                    long s = Math.Max(start, e.DeviceBlock), t = Math.Min(end, e.DeviceEnd);
                    found.Add((inode, new Extent(e.FileBlock + (s - e.DeviceBlock), s, t - s, e.Generation)));
                }
        return found;
    }

    /// <summary>Attached seals, other than <paramref name="except"/>, whose frozen blocks intersect device blocks [start, start+count).</summary>
    public List<Seal> SealsOnDeviceBlocks(long start, long count, ICollection<Seal>? except = null)
    {
        var l = new List<Seal>();
        long end = start + count;
        foreach (var s in Seals.Attached())
        {
            if (except is not null && except.Contains(s)) continue;
            foreach (var e in s.Frozen)
                if (e.DeviceBlock < end && e.DeviceEnd > start) { l.Add(s); break; }
        }
        return l;
    }

    /// <summary>
    /// The conflict step of an operation that may Defer: resolves <paramref name="conflicts"/> (Defer allowed) and, when
    /// the answer is Detach, checks that the seals can be detached and counts the blocks detaching them will copy
    /// (<paramref name="detachCost"/>, 0 otherwise). True when the operation stops here (pending or refused).
    /// </summary>
    public bool StopsOnDeferrable(RemapContext ctx, List<Seal> conflicts, out ConflictResolution verdict, out long detachCost)
    {
        detachCost = 0;
        verdict = Check(ctx, conflicts, deferrable: true);
        if (verdict.Halts()) return true;
        if (verdict != ConflictResolution.Detach) return false;
        if (CheckDetachable(ctx, conflicts).Halts()) return true;
        detachCost = DetachCost(conflicts);
        return false;
    }

    /// <summary>Before Defer detaches <paramref name="seals"/>: other pins on sharers of their blocks block the detach.</summary>
    public ConflictResolution CheckDetachable(RemapContext ctx, List<Seal> seals)
    {
        var others = new List<Seal>();
        foreach (var s in seals)
            foreach (var e in s.Frozen)
                others.AddRange(SealsOnDeviceBlocks(e.DeviceBlock, e.Count, seals));
        return Check(ctx, others, deferrable: false);
    }

    /// <summary>Blocks that detaching <paramref name="seals"/> will copy for the other mappings of their blocks.</summary>
    public long DetachCost(List<Seal> seals)
    {
        long n = 0;
        foreach (var s in seals)
            foreach (var e in s.Frozen)
                foreach (var m in FindMappings(e.DeviceBlock, e.Count)) n += m.Piece.Count;
        return n;
    }

    /// <summary>
    /// Defer: the seal's blocks leave the file and become the pin's alone. The pin takes a reference; every file
    /// range still mapping those blocks (the pinned file outside the operation's range, clones) gets a private copy,
    /// so that no one else ever sees DMA into them.
    /// </summary>
    public void DetachSeal(Seal seal)
    {
        // A seal released since the operation looked has nothing left to detach (and its blocks are the file's).
        if (!Seals.TryDetach(seal)) return;
        foreach (var e in seal.Frozen)
        {
            Alloc.AddRef(e.DeviceBlock, e.Count);
            foreach (var (inode, piece) in FindMappings(e.DeviceBlock, e.Count))
                RelocateRange(inode, piece.FileBlock, piece.Count);
        }
    }

    public bool RecentlyUnshared(Inode inode, long first, long end)
    {
        if (!Alloc.AnyShared) return false;
        foreach (var e in inode.Map.GetRange(first, end - first))
            for (long b = e.DeviceBlock; b < e.DeviceEnd; b++)
                if (Alloc.IsRecentlyUnshared(b)) return true;
        return false;
    }

    /// <summary>The body of Volume.CreateSeal: COW broken and holes filled over the range, then the seal built and attached.</summary>
    public VolumeOp<Seal> PinOp(Inode inode, long offset, long length, ConflictPolicy? policy, bool requirePrivate,
        Func<Inode, long, long, Extent[], Seal> createSeal, bool skipCowBreak)
    {
        return new(new RemapContext("pin", policy), ctx =>
        {
            Live(inode);
            // Within EOF, as mmap past EOF is SIGBUS: DMA can then never leave bytes past EOF that a later extension
            // would expose.
            if (offset + length > inode.Size)
                ThrowHelper.Throw(PinnedDmaError.InvalidArgument, $"Range [{offset}, +{length}) goes past EOF ({inode.Size}) of '{inode.Name}'.");
            var (first, end) = BlockSpan(offset, length);
            // A block whose sharing ended in an uncommitted operation would be copied (a crash could bring the old
            // sharer back); committing first makes it private for good, so the pin keeps the block the user sees.
            if (RecentlyUnshared(inode, first, end)) Journal.Commit();
            if (requirePrivate)
            {
                if (!inode.Map.IsFullyMapped(first, end - first))
                    ThrowHelper.Throw(PinnedDmaError.InvalidArgument, "A Direct mapping without Populate needs a fully allocated range.");
                if (SharedRuns(inode, first, end).Count > 0)
                    ThrowHelper.Throw(PinnedDmaError.InvalidArgument, "A Direct mapping without Populate needs an unshared range.");
            }
            if (skipCowBreak)
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
            Seals.Add(seal);
            return seal;
        });
    }

    /// <summary>The body of Volume.ResealForWrite: other sharers of the seal's blocks moved off, then write granted in the same hold.</summary>
    public VolumeOp<bool> ResealOp(Seal seal, ConflictPolicy? policy, Action grantWrite)
    {
        return new(new RemapContext("pin upgrade", policy), ctx =>
        {
            if (seal.Gone.IsCompleted) return false;
            if (seal.Detached)
            {
                // Its blocks are its own alone (a detach copies them for every other mapping).
                grantWrite();
                return true;
            }
            if (!Seals.IsAttached(seal)) return false;
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
}
