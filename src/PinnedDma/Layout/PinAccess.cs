namespace PinnedDma;

/// <summary>What DMA through a pin may do. Both break COW at pin time (a READ pin on a shared block would otherwise keep the old block when another sharer's write breaks the sharing).</summary>
public enum PinAccess
{
    /// <summary>DMA reads the blocks (an RDMA READ source, a send buffer).</summary>
    Read = 1,
    /// <summary>DMA reads and writes the blocks.</summary>
    Write = 2,
}
