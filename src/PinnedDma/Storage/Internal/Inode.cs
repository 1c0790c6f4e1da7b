namespace PinnedDma.Storage.Internal;

/// <summary>A file: name, size, extent map, and the seals (pins, Direct mappings) that freeze parts of its map.</summary>
internal sealed class Inode
{
    public Inode(long id, string name)
    {
        Id = id;
        Name = name;
    }

    public long Id { get; }
    public string Name { get; set; }
    public long Size { get; set; }
    public ExtentMap Map { get; } = new();

    /// <summary>Deleted from the namespace; the inode lives on only while seals still hold its blocks.</summary>
    public bool Deleted { get; set; }

    /// <summary>Attached seals (their translation must stay frozen). Guarded by the volume lock.</summary>
    public HashSet<Seal> Seals { get; } = new();

    /// <summary>Per-file conflict policy override; null means the volume's default.</summary>
    public ConflictPolicy? Policy { get; set; }

    /// <summary>True when a seal covers file block <paramref name="block"/>.</summary>
    public bool IsSealed(long block)
    {
        foreach (var s in Seals)
            if (block >= s.FirstBlock && block < s.EndBlock) return true;
        return false;
    }

    /// <summary>True when a seal covers part of [first, end).</summary>
    public bool IsSealed(long first, long end)
    {
        foreach (var s in Seals)
            if (s.FirstBlock < end && s.EndBlock > first) return true;
        return false;
    }

    /// <summary>True when a write-access seal covers file block <paramref name="block"/>.</summary>
    public bool IsWriteSealed(long block)
    {
        foreach (var s in Seals)
            if (s.WriteAccess && block >= s.FirstBlock && block < s.EndBlock) return true;
        return false;
    }
}
