namespace PinnedDma.Storage;

/// <summary>Geometry and behaviour of a volume. Geometry is fixed at format time and read back from the superblock.</summary>
public sealed class VolumeOptions
{
    /// <summary>Bytes per block (power of two, 512 to 65536). Default 4096.</summary>
    public int BlockSize { get; init; } = 4096;

    /// <summary>Blocks on the device, metadata included. Default 16384 (64 MiB at 4 KiB blocks).</summary>
    public long BlockCount { get; init; } = 16384;

    /// <summary>Journal size in blocks; 0 picks one from the volume size.</summary>
    public long JournalBlocks { get; init; }

    /// <summary>Most files (live names) the volume holds; 0 (the default) picks BlockCount/16, from 16 to 1024.</summary>
    public int MaxFiles { get; init; }

    /// <summary>
    /// COW granule in blocks (XFS's cowextsize): a write to a shared block copies the whole aligned granule around it,
    /// moving unshared neighbours too, except sealed (pinned) ones. Default 1.
    /// </summary>
    public int CowGranuleBlocks { get; init; } = 1;

    /// <summary>What an operation does when it would remap a pinned range; overridable per file and per operation.</summary>
    public ConflictPolicy DefaultConflictPolicy { get; init; } = ConflictPolicy.Deny;

    /// <summary>Try <c>MAP_SHARED_VALIDATE | MAP_SYNC</c> before plain <c>MAP_SHARED</c>. Default true.</summary>
    public bool TryMapSync { get; init; } = true;

    /// <summary>
    /// The repair path of <see cref="Volume.Open"/> and <see cref="Volume.Mount"/>. When the newest state on disk is
    /// damaged (the checkpoint the newest superblock names fails its checksum, or a journal record is damaged while
    /// committed records follow it), opening throws <see cref="PinnedDmaError.Corrupt"/> by default. With this set,
    /// the volume opens at the newest intact state instead, dropping what lay past the damage, says so in
    /// <see cref="Volume.RollbackReason"/>, and writes a checkpoint of that state at once (the damage is then gone).
    /// Default false.
    /// </summary>
    public bool AllowRollback { get; init; }

    /// <summary>
    /// Where the volume logs (recovery findings such as a dropped torn tail or a rollback, lease breaks and forced
    /// revocations). Default: no logging.
    /// </summary>
    public Microsoft.Extensions.Logging.ILoggerFactory? LoggerFactory { get; init; }

    /// <summary>Flush data and journal with msync/fsync on commit. Off only for tests that measure logic, not disks.</summary>
    public bool DurableCommits { get; init; } = true;
}
