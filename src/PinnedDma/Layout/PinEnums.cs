namespace PinnedDma;

/// <summary>What DMA through a pin may do. Both break COW at pin time (a READ pin on a shared block would otherwise keep the old block when another sharer's write breaks the sharing).</summary>
public enum PinAccess
{
    /// <summary>DMA reads the blocks (an RDMA READ source, a send buffer).</summary>
    Read = 1,
    /// <summary>DMA reads and writes the blocks.</summary>
    Write = 2,
}

/// <summary>Options of a pin.</summary>
[Flags]
public enum PinOptions
{
    /// <summary>A breakable pin.</summary>
    None = 0,
    /// <summary>An exclusive pin whose lease cannot be broken: under the Break policy a conflicting operation fails busy.</summary>
    Unbreakable = 1,
}

/// <summary>Where a pin is in its life.</summary>
public enum PinStatus
{
    /// <summary>Translation frozen, DMA works.</summary>
    Active,
    /// <summary>A lease break was requested; DMA still works until the holder releases or the timeout revokes.</summary>
    Breaking,
    /// <summary>Defer moved the range out of the file; the pin owns its blocks, DMA still works.</summary>
    Detached,
    /// <summary>The lease was revoked: DMA fails.</summary>
    Revoked,
    /// <summary>Released by its holder or its owner.</summary>
    Released,
}

/// <summary>Mapping descriptors, after mmap's flags.</summary>
[Flags]
public enum MapFlags
{
    /// <summary>The only mapping kind: stores through the mapping change the file.</summary>
    Shared = 1,
    /// <summary>MAP_POPULATE: allocate every hole and break every shared block at map time.</summary>
    Populate = 2,
    /// <summary>MAP_SYNC: a write that allocates commits the metadata before it returns; after Flush the data is durable.</summary>
    Sync = 4,
    /// <summary>MAP_DIRECT: the mapping never causes a block-map update; the range is sealed against every remap while it lives.</summary>
    Direct = 8,
}

/// <summary>One entry of a pin's frozen scatter-gather list: device bytes and their allocation generation.</summary>
/// <param name="DeviceOffset">Byte offset on the device.</param>
/// <param name="Length">Bytes.</param>
/// <param name="Generation">Allocation generation of the blocks.</param>
public readonly record struct ScatterGatherEntry(long DeviceOffset, long Length, ulong Generation);

/// <summary>Tells a pin holder that an operation wants its lease back.</summary>
public sealed class LeaseBreakEventArgs : EventArgs
{
    internal LeaseBreakEventArgs(string operation, TimeSpan timeout)
    {
        Operation = operation;
        Timeout = timeout;
    }

    /// <summary>The operation that needs the range.</summary>
    public string Operation { get; }

    /// <summary>How long the holder has to release before the lease is revoked.</summary>
    public TimeSpan Timeout { get; }
}
