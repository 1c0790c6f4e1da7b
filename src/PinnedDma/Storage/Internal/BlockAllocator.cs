using PinnedDma.Internal;

namespace PinnedDma.Storage.Internal;

/// <summary>A run of device blocks.</summary>
internal readonly record struct BlockRun(long Start, long Count)
{
    public long End => Start + Count;
}

/// <summary>
/// Device-block allocator with reference counts (a shared block has one reference per file extent that maps it,
/// plus one per Defer-detached pin that owns it) and an allocation generation per block.
/// A block whose last reference goes is <em>busy</em>, not free, until the journal commit that frees it is
/// durable (XFS's busy extents): otherwise a crash could leave an old file pointing at a block a new file
/// already overwrote.
/// </summary>
internal sealed class BlockAllocator
{
    private readonly long _dataStart;
    private readonly long _blockCount;
    private readonly int[] _refs;
    private readonly ulong[] _gen;
    private readonly ulong[] _used; // bit set: referenced or busy
    private readonly List<BlockRun> _busy = new();
    private long _cursor;
    private long _free;

    public BlockAllocator(long dataStart, long blockCount)
    {
        _dataStart = dataStart;
        _blockCount = blockCount;
        _refs = new int[blockCount];
        _gen = new ulong[blockCount];
        _used = new ulong[(blockCount + 63) / 64];
        for (long b = 0; b < dataStart; b++) SetUsed(b, true); // metadata area: never handed out
        _cursor = dataStart;
        _free = blockCount - dataStart;
    }

    public long DataStart => _dataStart;
    public long BlockCount => _blockCount;
    public long FreeBlocks => _free;
    public long BusyBlocks { get; private set; }

    /// <summary>Blocks with more than one reference; zero lets the write and pin paths skip per-block checks.</summary>
    public long SharedBlocks { get; private set; }

    /// <summary>
    /// Blocks whose sharing ended in an operation not yet committed (a sharer was deleted, punched or COWed away).
    /// They stay "shared" for the write path until the commit: after a crash the old sharer comes back, and an
    /// in-place write would have changed its bytes.
    /// </summary>
    private readonly HashSet<long> _recentlyUnshared = new();

    /// <summary>True when there is any block a write must not change in place for sharing reasons.</summary>
    public bool AnyShared => SharedBlocks > 0 || _recentlyUnshared.Count > 0;

    /// <summary>True when sharing of <paramref name="block"/> ended in an operation not yet committed.</summary>
    public bool IsRecentlyUnshared(long block) => _recentlyUnshared.Count > 0 && _refs[block] == 1 && _recentlyUnshared.Contains(block);

    /// <summary>Shared now, or shared in the last durable state.</summary>
    public bool IsShared(long block) => _refs[block] > 1 || (_recentlyUnshared.Count > 0 && _recentlyUnshared.Contains(block));
    public ulong NextGeneration { get; set; } = 1;

    public int RefCount(long block) => _refs[block];
    public ulong Generation(long block) => _gen[block];
    public bool IsUsed(long block) => (_used[block >> 6] & (1UL << (int)(block & 63))) != 0;

    private void SetUsed(long block, bool used)
    {
        if (used) _used[block >> 6] |= 1UL << (int)(block & 63);
        else _used[block >> 6] &= ~(1UL << (int)(block & 63));
    }

    /// <summary>Allocates <paramref name="count"/> blocks as few runs as next-fit finds; all get one new generation.</summary>
    public ulong Allocate(long count, List<BlockRun> runs)
    {
        if (count > _free)
            ThrowHelper.Throw(PinnedDmaError.NoSpace, $"Volume full: {count} blocks wanted, {_free} free ({BusyBlocks} busy until the next commit).");
        ulong gen = NextGeneration++;
        long need = count;
        long scanned = 0, span = _blockCount - _dataStart;
        long b = _cursor;
        while (need > 0)
        {
            if (scanned > 2 * span) throw new InvalidOperationException("allocator free count is wrong");
            if (b >= _blockCount) b = _dataStart;
            // Skip whole used words.
            if ((b & 63) == 0 && b + 64 <= _blockCount && _used[b >> 6] == ulong.MaxValue) { b += 64; scanned += 64; continue; }
            if (IsUsed(b)) { b++; scanned++; continue; }
            long start = b;
            while (b < _blockCount && need > 0 && !IsUsed(b))
            {
                SetUsed(b, true);
                _refs[b] = 1;
                _gen[b] = gen;
                b++;
                need--;
            }
            runs.Add(new BlockRun(start, b - start));
            scanned += b - start;
        }
        _cursor = b;
        _free -= count;
        return gen;
    }

    /// <summary>Allocates one contiguous run of <paramref name="count"/> blocks that ends at or before <paramref name="limit"/>, first fit.</summary>
    public bool TryAllocateBelow(long count, long limit, out BlockRun run, out ulong gen)
    {
        long runStart = -1, runLen = 0;
        for (long b = _dataStart; b < limit; b++)
        {
            if ((b & 63) == 0 && b + 64 <= limit && _used[b >> 6] == ulong.MaxValue) { b += 63; runLen = 0; continue; }
            if (IsUsed(b)) { runLen = 0; continue; }
            if (runLen == 0) runStart = b;
            if (++runLen == count)
            {
                gen = NextGeneration++;
                for (long k = runStart; k < runStart + count; k++) { SetUsed(k, true); _refs[k] = 1; _gen[k] = gen; }
                _free -= count;
                run = new BlockRun(runStart, count);
                return true;
            }
        }
        run = default;
        gen = 0;
        return false;
    }

    public void AddRef(long start, long count)
    {
        for (long b = start; b < start + count; b++)
        {
            if (_refs[b] <= 0) throw new InvalidOperationException($"reference to free block {b}");
            if (++_refs[b] == 2) SharedBlocks++;
        }
    }

    /// <summary>Drops one reference; a block that reaches zero becomes busy until <see cref="ReleaseBusy"/>.</summary>
    public void Release(long start, long count)
    {
        long runStart = -1;
        for (long b = start; b < start + count; b++)
        {
            if (_refs[b] <= 0) throw new InvalidOperationException($"release of free block {b}");
            if (_refs[b] == 2)
            {
                SharedBlocks--;
                _recentlyUnshared.Add(b);
            }
            if (--_refs[b] == 0)
            {
                if (runStart < 0) runStart = b;
                continue;
            }
            if (runStart >= 0) { AddBusy(runStart, b - runStart); runStart = -1; }
        }
        if (runStart >= 0) AddBusy(runStart, start + count - runStart);
    }

    private void AddBusy(long start, long count)
    {
        _busy.Add(new BlockRun(start, count));
        BusyBlocks += count;
    }

    /// <summary>After a durable commit: busy blocks become free.</summary>
    public void ReleaseBusy()
    {
        _recentlyUnshared.Clear();
        foreach (var r in _busy)
            for (long b = r.Start; b < r.End; b++)
                if (_refs[b] == 0) { SetUsed(b, false); _free++; }
        _busy.Clear();
        BusyBlocks = 0;
    }

    /// <summary>Rebuilds from recovered extent maps: refs from scratch, everything else free.</summary>
    public void Reset()
    {
        Array.Clear(_refs);
        Array.Clear(_gen);
        Array.Clear(_used);
        _busy.Clear();
        _recentlyUnshared.Clear();
        BusyBlocks = 0;
        SharedBlocks = 0;
        for (long b = 0; b < _dataStart; b++) SetUsed(b, true);
        _free = _blockCount - _dataStart;
        _cursor = _dataStart;
    }

    /// <summary>Adds a reference during recovery, claiming the block with the recorded generation.</summary>
    public void Claim(long start, long count, ulong gen)
    {
        if (start < _dataStart || start + count > _blockCount)
            ThrowHelper.Throw(PinnedDmaError.Corrupt, $"Extent at device blocks [{start}, +{count}) lies outside the data area.");
        for (long b = start; b < start + count; b++)
        {
            if (_refs[b] == 1) SharedBlocks++;
            if (_refs[b]++ == 0)
            {
                SetUsed(b, true);
                _gen[b] = gen;
                _free--;
            }
            else if (_gen[b] != gen)
            {
                ThrowHelper.Throw(PinnedDmaError.Corrupt, $"Device block {b} is claimed with generations {_gen[b]} and {gen}.");
            }
        }
        if (gen >= NextGeneration) NextGeneration = gen + 1;
    }

    public IReadOnlyList<BlockRun> Busy => _busy;
}
