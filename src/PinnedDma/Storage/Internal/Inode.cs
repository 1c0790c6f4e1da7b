namespace PinnedDma.Storage.Internal;

/// <summary>A file: name, size, extent map, policy. Its seals (pins, Direct mappings) are in the volume's <see cref="SealTable"/>.</summary>
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

    /// <summary>Per-file conflict policy override; null means the volume's default.</summary>
    public ConflictPolicy? Policy { get; set; }
}
