using PinnedDma.Internal;
using PinnedDma.Layout;

namespace PinnedDma.Storage.Internal;

/// <summary>Compaction: moves file data toward the start of the data area, skipping sealed and detached blocks.</summary>
internal sealed class Compactor(VolumeState s) : VolumePart(s)
{
    /// <summary>After compaction remapped every reference to a new run: set its counts from the maps that now use it.</summary>
    public void FixRunReferences(BlockRun target, long count)
    {
        var users = Writer.FindMappings(target.Start, count);
        var counts = new int[count];
        foreach (var (_, p) in users)
            for (long k = 0; k < p.Count; k++) counts[p.DeviceBlock - target.Start + k]++;
        for (long k = 0; k < count; k++)
        {
            // Allocation gave one reference; add the rest.
            for (int extra = 1; extra < counts[k]; extra++) Alloc.AddRef(target.Start + k, 1);
            if (counts[k] == 0) throw new InvalidOperationException("compaction target block without a user");
        }
    }

    /// <summary>The body of Volume.Compact: moves runs of at most <paramref name="maxRunBlocks"/> blocks down; returns the blocks moved.</summary>
    public VolumeOp<long> CompactOp(int maxRunBlocks)
    {
        return new(new RemapContext("compact", null), _ =>
        {
            var sealedRuns = new List<BlockRun>();
            foreach (var s in Seals.Attached().Concat(Seals.Detached()))
                foreach (var e in s.Frozen) sealedRuns.Add(new BlockRun(e.DeviceBlock, e.Count));
            // Every file-referenced device run, highest first.
            var refs = new SortedSet<long>();
            foreach (var inode in Files.ById.Values)
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
                if (Alloc.FreeBlocks < count) continue;
                if (!Alloc.TryAllocateBelow(count, lo, out var target, out var gen)) continue;
                Device.CopyBlocks(lo, target.Start, count);
                foreach (var (inode, piece) in Writer.FindMappings(lo, count))
                {
                    Journal.Unmap(inode, piece.FileBlock, piece.Count);
                    if (piece.Count > 0)
                    {
                        if (piece.DeviceBlock - lo + piece.Count > count) throw new InvalidOperationException("compaction piece outside run");
                        // The new run has one reference from the allocation; sharers add theirs.
                        Journal.Map(inode, new Extent(piece.FileBlock, target.Start + (piece.DeviceBlock - lo), piece.Count, gen));
                    }
                }
                FixRunReferences(target, count);
                moved += count;
                Journal.EndOp();
            }
            return moved;
        });
    }
}
