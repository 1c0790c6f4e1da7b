namespace PinnedDma.Storage.Internal;

/// <summary>
/// A file's page table: sorted, non-overlapping extents from file blocks to device blocks; gaps are holes.
/// Adjacent extents are merged only when both the device blocks and the allocation generation continue, so a
/// merged extent never hides a reallocation.
/// </summary>
internal sealed class ExtentMap
{
    private readonly List<Extent> _extents = new();

    public int Count => _extents.Count;
    public Extent this[int index] => _extents[index];
    public IReadOnlyList<Extent> Extents => _extents;

    /// <summary>One past the last mapped file block, or 0.</summary>
    public long EndBlock => _extents.Count == 0 ? 0 : _extents[^1].FileEnd;

    /// <summary>Index of the first extent whose end is after <paramref name="fileBlock"/>.</summary>
    public int FirstEndingAfter(long fileBlock)
    {
        int lo = 0, hi = _extents.Count;
        while (lo < hi)
        {
            int mid = (lo + hi) >>> 1;
            if (_extents[mid].FileEnd <= fileBlock) lo = mid + 1; else hi = mid;
        }
        return lo;
    }

    /// <summary>The extent covering <paramref name="fileBlock"/>, if any.</summary>
    public bool TryLookup(long fileBlock, out Extent extent)
    {
        int i = FirstEndingAfter(fileBlock);
        if (i < _extents.Count && _extents[i].FileBlock <= fileBlock)
        {
            extent = _extents[i];
            return true;
        }
        extent = default;
        return false;
    }

    /// <summary>Appends to <paramref name="into"/> the mapped pieces of file blocks [first, first+count), clipped.</summary>
    public void GetRange(long first, long count, List<Extent> into)
    {
        long end = first + count;
        for (int i = FirstEndingAfter(first); i < _extents.Count && _extents[i].FileBlock < end; i++)
            into.Add(_extents[i].Clip(first, end));
    }

    public List<Extent> GetRange(long first, long count)
    {
        var l = new List<Extent>();
        GetRange(first, count, l);
        return l;
    }

    /// <summary>True when every block of [first, first+count) is mapped.</summary>
    public bool IsFullyMapped(long first, long count)
    {
        long next = first, end = first + count;
        for (int i = FirstEndingAfter(first); i < _extents.Count && next < end; i++)
        {
            if (_extents[i].FileBlock > next) return false;
            next = _extents[i].FileEnd;
        }
        return next >= end;
    }

    /// <summary>Removes the mapping of [first, first+count), splitting extents at the edges; returns what was removed.</summary>
    public void Remove(long first, long count, List<Extent> removed)
    {
        long end = first + count;
        int i = FirstEndingAfter(first);
        var keep = new List<Extent>(2);
        int start = i;
        while (i < _extents.Count && _extents[i].FileBlock < end)
        {
            var e = _extents[i];
            removed.Add(e.Clip(first, end));
            if (e.FileBlock < first) keep.Add(e.Clip(e.FileBlock, first));
            if (e.FileEnd > end) keep.Add(e.Clip(end, e.FileEnd));
            i++;
        }
        if (i == start) return;
        _extents.RemoveRange(start, i - start);
        _extents.InsertRange(start, keep);
    }

    /// <summary>Maps a hole. Throws if any block of the range is already mapped (a bug, not an input error).</summary>
    public void Insert(Extent e)
    {
        if (e.Count <= 0) throw new InvalidOperationException("empty extent");
        int i = FirstEndingAfter(e.FileBlock);
        if (i < _extents.Count && _extents[i].FileBlock < e.FileEnd)
            throw new InvalidOperationException($"mapping over a mapped block at file block {e.FileBlock}");
        // Merge with neighbours when device blocks and generation continue.
        if (i > 0)
        {
            var p = _extents[i - 1];
            if (p.FileEnd == e.FileBlock && p.DeviceEnd == e.DeviceBlock && p.Generation == e.Generation)
            {
                e = new Extent(p.FileBlock, p.DeviceBlock, p.Count + e.Count, p.Generation);
                _extents.RemoveAt(--i);
            }
        }
        if (i < _extents.Count)
        {
            var n = _extents[i];
            if (e.FileEnd == n.FileBlock && e.DeviceEnd == n.DeviceBlock && e.Generation == n.Generation)
            {
                e = new Extent(e.FileBlock, e.DeviceBlock, e.Count + n.Count, e.Generation);
                _extents.RemoveAt(i);
            }
        }
        _extents.Insert(i, e);
    }

    /// <summary>True when no block of [first, first+count) is mapped.</summary>
    public bool IsHole(long first, long count)
    {
        int i = FirstEndingAfter(first);
        return i >= _extents.Count || _extents[i].FileBlock >= first + count;
    }

    /// <summary>True when a shift of the extents from <paramref name="fromBlock"/> by <paramref name="delta"/> overlaps nothing.</summary>
    public bool CanShift(long fromBlock, long delta)
    {
        if (delta >= 0) return true;
        return IsHole(fromBlock + delta, -delta);
    }

    /// <summary>Moves every extent at or after <paramref name="fromBlock"/> by <paramref name="delta"/> blocks.</summary>
    public void Shift(long fromBlock, long delta)
    {
        SplitAt(fromBlock);
        int i = FirstEndingAfter(fromBlock);
        if (delta < 0 && i > 0 && _extents[i - 1].FileEnd > fromBlock + delta)
            throw new InvalidOperationException("shift would overlap");
        for (int k = i; k < _extents.Count; k++)
        {
            var e = _extents[k];
            _extents[k] = e with { FileBlock = e.FileBlock + delta };
        }
        // A shift down can bring two runs together again.
        if (i > 0 && i < _extents.Count)
        {
            var p = _extents[i - 1];
            var n = _extents[i];
            if (p.FileEnd == n.FileBlock && p.DeviceEnd == n.DeviceBlock && p.Generation == n.Generation)
            {
                _extents[i - 1] = p with { Count = p.Count + n.Count };
                _extents.RemoveAt(i);
            }
        }
    }

    /// <summary>Splits the extent covering <paramref name="fileBlock"/> so that an extent starts there.</summary>
    public void SplitAt(long fileBlock)
    {
        int i = FirstEndingAfter(fileBlock);
        if (i < _extents.Count && _extents[i].FileBlock < fileBlock)
        {
            var e = _extents[i];
            _extents[i] = e.Clip(e.FileBlock, fileBlock);
            _extents.Insert(i + 1, e.Clip(fileBlock, e.FileEnd));
        }
    }

    public void Clear(List<Extent> removed)
    {
        removed.AddRange(_extents);
        _extents.Clear();
    }
}
