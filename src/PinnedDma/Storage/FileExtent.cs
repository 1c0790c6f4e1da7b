namespace PinnedDma.Storage;

/// <summary>One mapped extent: file bytes [FileOffset, FileOffset+Length) live at device bytes [DeviceOffset, ...).</summary>
/// <param name="FileOffset">Byte offset in the file.</param>
/// <param name="DeviceOffset">Byte offset on the device: the "physical address".</param>
/// <param name="Length">Length in bytes (whole blocks).</param>
/// <param name="Generation">Allocation generation of the device blocks; changes when a block is freed and reallocated.</param>
/// <param name="Flags">Shared, sealed, last.</param>
public readonly record struct FileExtent(long FileOffset, long DeviceOffset, long Length, ulong Generation, FileExtentFlags Flags);
