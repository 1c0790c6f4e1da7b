namespace PinnedDma.Verbs;

/// <summary>A scatter/gather element (struct ibv_sge): a local address range in a memory region named by its lkey.</summary>
/// <param name="Address">Address inside the region (the region's <see cref="MemoryRegion.Address"/> plus an offset).</param>
/// <param name="Length">Bytes.</param>
/// <param name="LKey">The region's local key.</param>
public readonly record struct ScatterGatherElement(ulong Address, uint Length, uint LKey);
