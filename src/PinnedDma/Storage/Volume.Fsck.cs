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
            int shift = BlockShift;
            long first = offset >> shift;
            long end = length >= MaxFileSize ? long.MaxValue : ((offset + length - 1) >> shift) + 1;
            var list = new List<FileExtent>();
            int lastIndex = inode.Map.Count - 1;
            for (int i = inode.Map.FirstEndingAfter(first); i < inode.Map.Count && inode.Map[i].FileBlock < end; i++)
            {
                var e = inode.Map[i];
                // Split each extent where sharing or sealing changes, as FIEMAP reports per-extent flags.
                long k = 0;
                while (k < e.Count)
                {
                    var flags = Flags(inode, e, k);
                    long n = 1;
                    while (k + n < e.Count && Flags(inode, e, k + n) == flags) n++;
                    if (i == lastIndex && k + n == e.Count) flags |= FileExtentFlags.Last;
                    list.Add(new FileExtent((e.FileBlock + k) << shift, (e.DeviceBlock + k) << shift, n << shift, e.Generation, flags));
                    k += n;
                }
            }
            return list;
        }
    }

    private FileExtentFlags Flags(Inode inode, Extent e, long k) =>
        (_alloc.RefCount(e.DeviceBlock + k) > 1 ? FileExtentFlags.Shared : 0) |
        (inode.IsSealed(e.FileBlock + k) ? FileExtentFlags.Sealed : 0);

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
            var problems = new List<string>();
            var refs = new int[_sb.BlockCount];
            long extents = 0;
            foreach (var inode in _files.ById.Values)
            {
                if (!_files.ByName.TryGetValue(inode.Name, out var named) || named != inode)
                    problems.Add($"inode {inode.Id} '{inode.Name}' is not reachable by name");
                if (inode.Size < 0) problems.Add($"'{inode.Name}' has negative size");
                long prevEnd = -1;
                foreach (var e in inode.Map.Extents)
                {
                    extents++;
                    if (e.Count <= 0) { problems.Add($"'{inode.Name}': empty extent at {e.FileBlock}"); continue; }
                    if (e.FileBlock < prevEnd) problems.Add($"'{inode.Name}': extents overlap or are unsorted at file block {e.FileBlock}");
                    prevEnd = e.FileEnd;
                    if (e.DeviceBlock < _sb.DataStart || e.DeviceEnd > _sb.BlockCount)
                    {
                        problems.Add($"'{inode.Name}': extent at file block {e.FileBlock} maps device blocks [{e.DeviceBlock}, {e.DeviceEnd}) outside the data area");
                        continue;
                    }
                    for (long b = e.DeviceBlock; b < e.DeviceEnd; b++)
                    {
                        refs[b]++;
                        if (_alloc.Generation(b) != e.Generation)
                            problems.Add($"'{inode.Name}': block {b} has generation {_alloc.Generation(b)}, its extent says {e.Generation}");
                    }
                }
            }
            foreach (var s in _detached)
                foreach (var e in s.Frozen)
                    for (long b = e.DeviceBlock; b < e.DeviceEnd; b++) refs[b]++;
            long used = 0, free = 0, shared = 0, busyFree = 0;
            var busy = new HashSet<long>();
            foreach (var r in _alloc.Busy)
                for (long b = r.Start; b < r.End; b++) busy.Add(b);
            for (long b = _sb.DataStart; b < _sb.BlockCount; b++)
            {
                int have = _alloc.RefCount(b);
                if (have != refs[b]) problems.Add($"block {b}: reference count {have}, but {refs[b]} references exist" + (refs[b] > have ? " (doubly owned)" : " (leaked)"));
                bool isUsed = _alloc.IsUsed(b);
                if (refs[b] > 0 && !isUsed) problems.Add($"block {b} is referenced but marked free");
                if (refs[b] == 0 && isUsed && !busy.Contains(b)) problems.Add($"block {b} is marked used but nothing references it (leaked)");
                if (refs[b] > 0) used++;
                else if (busy.Contains(b)) busyFree++;
                else free++;
                if (refs[b] > 1) shared++;
            }
            if (free != _alloc.FreeBlocks) problems.Add($"free count {_alloc.FreeBlocks}, but {free} blocks are free");
            if (_files.ByName.Count > _sb.MaxFiles) problems.Add($"{_files.ByName.Count} files exceed the limit {_sb.MaxFiles}");
            return new FsckReport(problems, _files.ByName.Count, extents, used, free, shared);
        }
    }
}
