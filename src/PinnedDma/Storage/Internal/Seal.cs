namespace PinnedDma.Storage.Internal;

/// <summary>
/// A frozen part of a file's translation, held by the layout layer (a pin or a Direct mapping). The volume
/// consults seals before every remap; this base class is the whole of what the volume knows about them, so
/// that Storage never reaches up into Layout.
/// </summary>
internal abstract class Seal
{
    protected Seal(Inode inode, long firstBlock, long blockCount)
    {
        Inode = inode;
        FirstBlock = firstBlock;
        BlockCount = blockCount;
    }

    public Inode Inode { get; }
    public long FirstBlock { get; }
    public long BlockCount { get; }
    public long EndBlock => FirstBlock + BlockCount;

    /// <summary>The translation frozen at seal time (file-block keyed). Compared by device block and generation.</summary>
    public Extent[] Frozen { get; set; } = Array.Empty<Extent>();

    /// <summary>The range left the file under Defer (or the file was deleted); the seal owns its blocks now.</summary>
    public bool Detached { get; set; }

    /// <summary>DMA may write through it: clones from the file copy these blocks instead of sharing them.</summary>
    public abstract bool WriteAccess { get; }

    /// <summary>Break behaves as Deny (an unbreakable, exclusive pin or a Direct mapping).</summary>
    public abstract bool Unbreakable { get; }

    /// <summary>Defer may detach it (false for Direct mappings: any remap of their range fails busy).</summary>
    public virtual bool Deferrable => true;

    /// <summary>Completes when the seal is released or revoked.</summary>
    public abstract Task Gone { get; }

    /// <summary>Asks the holder to give the lease back (callback and awaitable). Called outside the volume lock.</summary>
    public abstract void RequestBreak(TimeSpan timeout, string reason);

    /// <summary>
    /// Revokes: new DMA fails, in-flight DMA drains, then the seal is removed. Called outside the volume lock;
    /// returns once no access through the seal can touch the blocks any more.
    /// </summary>
    public abstract void Revoke(string reason);

    /// <summary><see cref="Revoke"/> without blocking a thread while the in-flight DMA drains.</summary>
    public abstract ValueTask RevokeAsync(string reason);
}
