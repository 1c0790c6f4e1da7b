namespace PinnedDma.Storage.Internal;

/// <summary>The live files of a volume, by inode number and by name, and the next inode number to hand out.</summary>
internal sealed class InodeTable
{
    public Dictionary<long, Inode> ById { get; } = new();

    public Dictionary<string, Inode> ByName { get; } = new(StringComparer.Ordinal);

    public long NextId { get; set; } = 1;
}
