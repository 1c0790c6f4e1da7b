namespace PinnedDma.Storage.Internal;

/// <summary>
/// One run of a file's extent map: file blocks [FileBlock, FileBlock+Count) live at device blocks
/// [DeviceBlock, DeviceBlock+Count). Generation is the allocation generation of that device run: a freed and
/// reallocated block gets a new one, so a translation is compared by number and generation.
/// </summary>
internal readonly record struct Extent(long FileBlock, long DeviceBlock, long Count, ulong Generation)
{
    public long FileEnd => FileBlock + Count;
    public long DeviceEnd => DeviceBlock + Count;

    /// <summary>The part of this extent inside file blocks [first, end).</summary>
    public Extent Clip(long first, long end)
    {
        long s = Math.Max(first, FileBlock), e = Math.Min(end, FileEnd);
        return new Extent(s, DeviceBlock + (s - FileBlock), e - s, Generation);
    }
}
