using PinnedDma.Internal;
using PinnedDma.Layout;

namespace PinnedDma.Storage.Internal;

/// <summary>The bodies of clone range, dedupe range and unshare range: sharing blocks between files, and ending it.</summary>
internal sealed class BlockSharing(VolumeState s) : VolumePart(s)
{
    /// <summary>Validates a remap (clone/dedupe) request the way the kernel's generic_remap_checks does.</summary>
    public long RemapBlocks(Inode src, long srcOffset, Inode dst, long dstOffset, long length, bool dedupe)
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

    public VolumeOp<int> CloneRangeOp(Inode src, long srcOffset, Inode dst, long dstOffset, long length, ConflictPolicy? policy)
    {
        CheckFileRange(srcOffset, length, "sourceOffset");
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
            if (dstOffset + length > dst.Size) Journal.SetSize(dst, dstOffset + length);
            return 0;
        });
    }

    public VolumeOp<long> DedupeRangeOp(Inode src, long srcOffset, Inode dst, long dstOffset, long length, ConflictPolicy? policy)
    {
        CheckFileRange(srcOffset, length, "sourceOffset");
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

    public bool RangesEqual(Inode a, long aFirst, Inode b, long bFirst, long blocks)
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

    public void ReadBlock(Inode inode, long fileBlock, Span<byte> into)
    {
        if (inode.Map.TryLookup(fileBlock, out var e))
            Device.GetSpan((e.DeviceBlock + fileBlock - e.FileBlock) << BlockShift, BlockSize).CopyTo(into);
        else
            into.Clear();
    }

    /// <summary>
    /// Replaces dst blocks [dFirst, +blocks) by src's. Blocks that a write pin holds in src are copied, not shared:
    /// DMA can change them at any moment, and a clone is a snapshot. False when a lease conflict stopped it before it
    /// changed anything.
    /// </summary>
    public bool ShareBlocks(RemapContext ctx, Inode src, long sFirst, Inode dst, long dFirst, long blocks)
    {
        var conflicts = SealsOverlapping(dst, dFirst, dFirst + blocks);
        if (Writer.StopsOnDeferrable(ctx, conflicts, out var verdict, out long need)) return false;
        var pieces = SourcePieces(src, sFirst, blocks, ref need);
        EnsureSpace(need);
        CheckMetadataRoom(pieces.Count + 2);
        if (verdict == ConflictResolution.Detach)
        {
            foreach (var s in conflicts) Writer.DetachSeal(s);
            // Detaching gave every other mapping of the pins' blocks a private copy, the source's included (the
            // source may be the pinned file itself, or a clone of it): share the source's blocks as they are now,
            // never the blocks the detached pins own. Fewer blocks are write-sealed now, so the space planned holds.
            long ignored = 0;
            pieces = SourcePieces(src, sFirst, blocks, ref ignored);
        }
        Journal.Unmap(dst, dFirst, blocks);
        foreach (var (p, copy) in pieces)
        {
            long fb = p.FileBlock - sFirst + dFirst;
            if (!copy)
            {
                Alloc.AddRef(p.DeviceBlock, p.Count);
                Journal.Map(dst, p with { FileBlock = fb });
                continue;
            }
            var runs = new List<BlockRun>();
            ulong gen = Alloc.Allocate(p.Count, runs);
            long done = 0;
            foreach (var r in runs)
            {
                Device.CopyBlocks(p.DeviceBlock + done, r.Start, r.Count);
                Journal.Map(dst, new Extent(fb + done, r.Start, r.Count, gen));
                done += r.Count;
            }
        }
        return true;
    }

    /// <summary>The source runs of a clone, each marked copy (a write pin holds it) or share; adds the copies to <paramref name="need"/>.</summary>
    public List<(Extent Piece, bool Copy)> SourcePieces(Inode src, long sFirst, long blocks, ref long need)
    {
        var pieces = new List<(Extent Piece, bool Copy)>();
        var seals = Seals.Of(src);
        foreach (var e in src.Map.GetRange(sFirst, blocks))
        {
            long k = 0;
            while (k < e.Count)
            {
                bool copy = SealTable.Covers(seals, e.FileBlock + k, writeOnly: true);
                long n = 1;
                while (k + n < e.Count && SealTable.Covers(seals, e.FileBlock + k + n, writeOnly: true) == copy) n++;
                pieces.Add((new Extent(e.FileBlock + k, e.DeviceBlock + k, n, e.Generation), copy));
                if (copy) need += n;
                k += n;
            }
        }
        return pieces;
    }

    public VolumeOp<int> UnshareRangeOp(Inode inode, long offset, long length, bool keepSize, ConflictPolicy? policy)
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
                if (grow) Journal.SetSize(inode, offset + length);
                return 0;
            }
            var (first, stop) = BlockSpan(offset, end - offset);
            var conflicts = new List<Seal>();
            long need = 0;
            foreach (var (a, b, sealedByWriter) in Writer.SharedRuns(inode, first, stop))
            {
                need += sealedByWriter ? Writer.PlanMoveOtherSharers(inode, a, b, conflicts) : b - a;
            }
            if (Check(ctx, conflicts, deferrable: false).Halts()) return 0;
            EnsureSpace(need);
            CheckMetadataRoom(2 + need);
            foreach (var (a, b, sealedByWriter) in Writer.SharedRuns(inode, first, stop))
            {
                if (sealedByWriter) Writer.MoveOtherSharers(inode, a, b);
                else Writer.RelocateRange(inode, a, b - a);
            }
            if (grow) Journal.SetSize(inode, offset + length);
            return 0;
        });
    }
}
