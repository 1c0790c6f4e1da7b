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

/// <summary>One mapped extent: file bytes [FileOffset, FileOffset+Length) live at device bytes [DeviceOffset, ...).</summary>
/// <param name="FileOffset">Byte offset in the file.</param>
/// <param name="DeviceOffset">Byte offset on the device: the "physical address".</param>
/// <param name="Length">Length in bytes (whole blocks).</param>
/// <param name="Generation">Allocation generation of the device blocks; changes when a block is freed and reallocated.</param>
/// <param name="Flags">Shared, sealed, last.</param>
public readonly record struct FileExtent(long FileOffset, long DeviceOffset, long Length, ulong Generation, FileExtentFlags Flags);
