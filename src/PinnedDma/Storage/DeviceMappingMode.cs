namespace PinnedDma.Storage;

/// <summary>How a <see cref="BlockDevice"/>'s bytes reach memory, and so what <see cref="BlockDevice.Flush(long, long)"/> costs.</summary>
public enum DeviceMappingMode
{
    /// <summary>Anonymous native memory; nothing survives the process.</summary>
    Memory,
    /// <summary>A real file mapped with <c>mmap(MAP_SHARED)</c>; Flush is <c>msync(MS_SYNC)</c> plus <c>fsync</c>.</summary>
    MapShared,
    /// <summary>
    /// <c>MAP_SHARED_VALIDATE | MAP_SYNC</c> on a DAX file system: the page is the storage block, stores are
    /// durable once the CPU caches are flushed and the file system never needs a page-cache writeback.
    /// </summary>
    MapSync,
}
