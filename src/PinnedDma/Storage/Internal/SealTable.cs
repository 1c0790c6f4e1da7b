namespace PinnedDma.Storage.Internal;

/// <summary>
/// The seals of one volume: for each file its attached seals (their translation must stay frozen), and the detached
/// seals, whose blocks left their file under Defer or with the file's deletion and now belong to the seal alone.
/// </summary>
/// <remarks>
/// <para>
/// Its own lock guards it, so that a seal can go (a pin released or revoked, a Direct mapping unmapped) without the
/// volume lock: the layout layer never takes <c>Volume.Gate</c>. Every member takes the lock for itself and hands
/// out snapshots; nothing is read outside it.
/// </para>
/// <para>
/// Lock order: <c>Volume.Gate</c> before this table's lock, never the reverse. Nothing done under the table's lock
/// calls out (no allocator, no journal, no seal callback), so it is held only for a list operation and cannot be part
/// of a cycle; the volume takes it inside Gate for every read during an operation.
/// </para>
/// <para>
/// Why "no block moves under a live seal" still holds with the split: seals are added only by the volume, inside an
/// operation, under Gate (<c>Volume.CreateSeal</c>), so an
/// operation that remaps (its whole body runs under Gate) sees every seal that exists when it plans or none that
/// appears before it has finished: a pin racing a truncate either is added first, and the truncate sees it, or
/// waits for Gate and pins the truncated file. Seals leave without Gate; an operation that saw a seal and then
/// finds it gone has only one constraint fewer, and a seal that is removed has already closed its drain (no DMA
/// touches its blocks any more). A seal moves from attached to detached only under Gate (<see cref="TryDetach"/>),
/// and never back, so a removal that finds it detached takes Gate to give its blocks back to the allocator.
/// </para>
/// </remarks>
internal sealed class SealTable
{
    private readonly object _lock = new();
    // Sets, not lists: a pin's release removes its seal in O(1) however many others its file holds (with lists, 10,000
    // held pins made each pin/unpin scan them: 10 us instead of 0.4). A file's set stays while the file lives (no
    // allocation per pin of an unpinned file); Forget drops it when the file is deleted.
    private readonly Dictionary<Inode, HashSet<Seal>> _attached = new();
    private readonly HashSet<Seal> _detached = new();

    /// <summary>Attaches <paramref name="seal"/> to its file. The caller holds Volume.Gate.</summary>
    public void Add(Seal seal)
    {
        lock (_lock)
        {
            if (!_attached.TryGetValue(seal.Inode, out var set)) _attached[seal.Inode] = set = new HashSet<Seal>();
            set.Add(seal);
        }
    }

    /// <summary>
    /// Removes an attached seal; needs no other lock. False when the seal is detached (the caller takes Gate and
    /// calls <see cref="RemoveDetached"/>) or already gone.
    /// </summary>
    public bool TryRemoveAttached(Seal seal, out bool detached)
    {
        lock (_lock)
        {
            detached = seal.Detached;
            if (detached) return false;
            return RemoveAttachedLocked(seal);
        }
    }

    /// <summary>Removes a detached seal; true when it was there (its blocks are then to be released). The caller holds Volume.Gate.</summary>
    public bool RemoveDetached(Seal seal)
    {
        lock (_lock) return _detached.Remove(seal);
    }

    /// <summary>
    /// Moves an attached seal to the detached ones (Defer, or its file is deleted). False when it has gone in the
    /// meantime (released since the operation looked): nothing to detach. The caller holds Volume.Gate.
    /// </summary>
    public bool TryDetach(Seal seal)
    {
        lock (_lock)
        {
            if (!RemoveAttachedLocked(seal)) return false;
            seal.Detached = true;
            _detached.Add(seal);
            return true;
        }
    }

    private bool RemoveAttachedLocked(Seal seal)
    {
        return _attached.TryGetValue(seal.Inode, out var set) && set.Remove(seal);
    }

    /// <summary>Drops the (empty) seal set of a deleted file. The caller holds Volume.Gate and has detached its seals.</summary>
    public void Forget(Inode inode)
    {
        lock (_lock)
            if (_attached.TryGetValue(inode, out var set) && set.Count == 0) _attached.Remove(inode);
    }

    /// <summary>True while <paramref name="seal"/> is attached.</summary>
    public bool IsAttached(Seal seal)
    {
        lock (_lock) return _attached.TryGetValue(seal.Inode, out var list) && list.Contains(seal);
    }

    /// <summary>The attached seals of <paramref name="inode"/> (a snapshot).</summary>
    public List<Seal> Of(Inode inode)
    {
        lock (_lock) return _attached.TryGetValue(inode, out var list) ? new List<Seal>(list) : new List<Seal>();
    }

    /// <summary>Attached seals of <paramref name="inode"/> overlapping file blocks [first, end).</summary>
    public List<Seal> Overlapping(Inode inode, long first, long end)
    {
        var found = new List<Seal>();
        lock (_lock)
        {
            if (_attached.TryGetValue(inode, out var list))
                foreach (var s in list)
                    if (s.FirstBlock < end && s.EndBlock > first) found.Add(s);
        }
        return found;
    }

    /// <summary>True when an attached seal of <paramref name="inode"/> covers part of file blocks [first, end).</summary>
    public bool IsSealed(Inode inode, long first, long end)
    {
        lock (_lock)
        {
            if (_attached.TryGetValue(inode, out var list))
                foreach (var s in list)
                    if (s.FirstBlock < end && s.EndBlock > first) return true;
        }
        return false;
    }

    /// <summary>Every attached seal (a snapshot).</summary>
    public List<Seal> Attached()
    {
        lock (_lock) return _attached.Values.SelectMany(l => l).ToList();
    }

    /// <summary>Every detached seal (a snapshot).</summary>
    public List<Seal> Detached()
    {
        lock (_lock) return new List<Seal>(_detached);
    }

    /// <summary>True when one of <paramref name="seals"/> covers file block <paramref name="block"/> (write seals only with <paramref name="writeOnly"/>).</summary>
    public static bool Covers(List<Seal> seals, long block, bool writeOnly = false)
    {
        foreach (var s in seals)
            if (block >= s.FirstBlock && block < s.EndBlock && (!writeOnly || s.WriteAccess)) return true;
        return false;
    }
}
