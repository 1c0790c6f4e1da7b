namespace PinnedDma.Storage;

/// <summary>Flags of a <see cref="FileExtent"/>, after FIEMAP's.</summary>
[Flags]
public enum FileExtentFlags
{
    /// <summary>No flag.</summary>
    None = 0,
    /// <summary>Another file (or a deferred pin) references these blocks too (FIEMAP_EXTENT_SHARED).</summary>
    Shared = 1,
    /// <summary>A pin or Direct mapping freezes this extent's translation.</summary>
    Sealed = 2,
    /// <summary>The last mapped extent of the file (FIEMAP_EXTENT_LAST).</summary>
    Last = 4,
}
