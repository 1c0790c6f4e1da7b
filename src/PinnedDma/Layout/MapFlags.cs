namespace PinnedDma;

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
