using PinnedDma.Internal;
using PinnedDma.Layout;

namespace PinnedDma.Storage.Internal;

/// <summary>The checks: fsck (reference counts, generations, extents, names), FIEMAP flags, and the seal invariants.</summary>
internal sealed class VolumeChecker(VolumeState s) : VolumePart(s)
{
    /// <summary>
    /// The pin invariants of docs/design.md ("Invariants", 1 and 2): an attached seal's current translation equals its
    /// frozen one, block by block, by number and allocation generation; a detached seal's blocks are allocated, carry
    /// their generation and are mapped by no file; no sealed block is free.
    /// </summary>
    public List<string> CheckSealInvariants()
    {
        var problems = new List<string>();
        foreach (var s in Seals.Attached())
        {
            var now = s.Inode.Map.GetRange(s.FirstBlock, s.BlockCount);
            if (!SameTranslation(now, s.Frozen))
                problems.Add($"'{s.Inode.Name}': pinned blocks [{s.FirstBlock}, {s.EndBlock}) were remapped");
            CheckAllocated(s, problems);
        }
        foreach (var s in Seals.Detached())
        {
            CheckAllocated(s, problems);
            foreach (var e in s.Frozen)
                if (Writer.FindMappings(e.DeviceBlock, e.Count).Count > 0)
                    problems.Add($"a detached pin's device blocks [{e.DeviceBlock}, {e.DeviceEnd}) are mapped by a file");
        }
        return problems;
    }

    public void CheckAllocated(Seal s, List<string> problems)
    {
        foreach (var e in s.Frozen)
            for (long b = e.DeviceBlock; b < e.DeviceEnd; b++)
                if (Alloc.RefCount(b) <= 0 || Alloc.Generation(b) != e.Generation)
                    problems.Add($"pinned device block {b} of '{s.Inode.Name}' is free or was reallocated (generation {Alloc.Generation(b)}, pinned {e.Generation})");
    }

    public static bool SameTranslation(List<Extent> a, Extent[] b)
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

    public FileExtentFlags Flags(List<Seal> seals, Extent e, long k) =>
        (Alloc.RefCount(e.DeviceBlock + k) > 1 ? FileExtentFlags.Shared : 0) |
        (SealTable.Covers(seals, e.FileBlock + k) ? FileExtentFlags.Sealed : 0);

    /// <summary>FIEMAP over [offset, offset+length) of a live file, split where sharing or sealing changes.</summary>
    public List<FileExtent> GetExtents(Inode inode, long offset, long length)
    {
        int shift = BlockShift;
        long first = offset >> shift;
        long end = length >= MaxFileSize ? long.MaxValue : ((offset + length - 1) >> shift) + 1;
        var list = new List<FileExtent>();
        var seals = Seals.Of(inode);
        int lastIndex = inode.Map.Count - 1;
        for (int i = inode.Map.FirstEndingAfter(first); i < inode.Map.Count && inode.Map[i].FileBlock < end; i++)
        {
            var e = inode.Map[i];
            // Split each extent where sharing or sealing changes, as FIEMAP reports per-extent flags.
            long k = 0;
            while (k < e.Count)
            {
                var flags = Flags(seals, e, k);
                long n = 1;
                while (k + n < e.Count && Flags(seals, e, k + n) == flags) n++;
                if (i == lastIndex && k + n == e.Count) flags |= FileExtentFlags.Last;
                list.Add(new FileExtent((e.FileBlock + k) << shift, (e.DeviceBlock + k) << shift, n << shift, e.Generation, flags));
                k += n;
            }
        }
        return list;
    }

    /// <summary>The body of Volume.Fsck.</summary>
    public FsckReport Fsck()
    {
        var problems = new List<string>();
        var refs = new int[Sb.BlockCount];
        long extents = 0;
        foreach (var inode in Files.ById.Values)
        {
            if (!Files.ByName.TryGetValue(inode.Name, out var named) || named != inode)
                problems.Add($"inode {inode.Id} '{inode.Name}' is not reachable by name");
            if (inode.Size < 0) problems.Add($"'{inode.Name}' has negative size");
            long prevEnd = -1;
            foreach (var e in inode.Map.Extents)
            {
                extents++;
                if (e.Count <= 0) { problems.Add($"'{inode.Name}': empty extent at {e.FileBlock}"); continue; }
                if (e.FileBlock < prevEnd) problems.Add($"'{inode.Name}': extents overlap or are unsorted at file block {e.FileBlock}");
                prevEnd = e.FileEnd;
                if (e.DeviceBlock < Sb.DataStart || e.DeviceEnd > Sb.BlockCount)
                {
                    problems.Add($"'{inode.Name}': extent at file block {e.FileBlock} maps device blocks [{e.DeviceBlock}, {e.DeviceEnd}) outside the data area");
                    continue;
                }
                for (long b = e.DeviceBlock; b < e.DeviceEnd; b++)
                {
                    refs[b]++;
                    if (Alloc.Generation(b) != e.Generation)
                        problems.Add($"'{inode.Name}': block {b} has generation {Alloc.Generation(b)}, its extent says {e.Generation}");
                }
            }
        }
        foreach (var s in Seals.Detached())
            foreach (var e in s.Frozen)
                for (long b = e.DeviceBlock; b < e.DeviceEnd; b++) refs[b]++;
        long used = 0, free = 0, shared = 0, busyFree = 0;
        var busy = new HashSet<long>();
        foreach (var r in Alloc.Busy)
            for (long b = r.Start; b < r.End; b++) busy.Add(b);
        for (long b = Sb.DataStart; b < Sb.BlockCount; b++)
        {
            int have = Alloc.RefCount(b);
            if (have != refs[b]) problems.Add($"block {b}: reference count {have}, but {refs[b]} references exist" + (refs[b] > have ? " (doubly owned)" : " (leaked)"));
            bool isUsed = Alloc.IsUsed(b);
            if (refs[b] > 0 && !isUsed) problems.Add($"block {b} is referenced but marked free");
            if (refs[b] == 0 && isUsed && !busy.Contains(b)) problems.Add($"block {b} is marked used but nothing references it (leaked)");
            if (refs[b] > 0) used++;
            else if (busy.Contains(b)) busyFree++;
            else free++;
            if (refs[b] > 1) shared++;
        }
        if (free != Alloc.FreeBlocks) problems.Add($"free count {Alloc.FreeBlocks}, but {free} blocks are free");
        if (Files.ByName.Count > Sb.MaxFiles) problems.Add($"{Files.ByName.Count} files exceed the limit {Sb.MaxFiles}");
        return new FsckReport(problems, Files.ByName.Count, extents, used, free, shared);
    }
}
