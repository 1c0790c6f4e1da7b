namespace PinnedDma.Storage;

/// <summary>What <see cref="Volume.Fsck"/> found.</summary>
public sealed class FsckReport
{
    internal FsckReport(IReadOnlyList<string> problems, int files, long extents, long usedBlocks, long freeBlocks, long sharedBlocks)
    {
        Problems = problems;
        Files = files;
        Extents = extents;
        UsedBlocks = usedBlocks;
        FreeBlocks = freeBlocks;
        SharedBlocks = sharedBlocks;
    }

    /// <summary>True when no problem was found.</summary>
    public bool IsClean => Problems.Count == 0;

    /// <summary>Each inconsistency, in words.</summary>
    public IReadOnlyList<string> Problems { get; }

    /// <summary>Files checked.</summary>
    public int Files { get; }

    /// <summary>Extents checked.</summary>
    public long Extents { get; }

    /// <summary>Data blocks with a reference.</summary>
    public long UsedBlocks { get; }

    /// <summary>Data blocks free.</summary>
    public long FreeBlocks { get; }

    /// <summary>Data blocks with more than one reference.</summary>
    public long SharedBlocks { get; }

    /// <inheritdoc />
    public override string ToString() => IsClean
        ? $"clean: {Files} files, {Extents} extents, {UsedBlocks} used, {SharedBlocks} shared, {FreeBlocks} free blocks"
        : $"{Problems.Count} problems: " + string.Join("; ", Problems.Take(10));
}
