namespace PinnedDma;

/// <summary>One entry of a pin's frozen scatter-gather list: device bytes and their allocation generation.</summary>
/// <param name="DeviceOffset">Byte offset on the device.</param>
/// <param name="Length">Bytes.</param>
/// <param name="Generation">Allocation generation of the blocks.</param>
public readonly record struct ScatterGatherEntry(long DeviceOffset, long Length, ulong Generation);
