using PinnedDma.Internal;
using PinnedDma.Layout;

namespace PinnedDma.Storage.Internal;

/// <summary>
/// What a volume's internal parts share: the device, the superblock, the allocator, the inode table, the journal,
/// the seal table and the default conflict policy, and the parts themselves. Everything here is guarded by the
/// volume lock (Volume.Gate), except the seal table, which has its own (see <see cref="SealTable"/>).
/// </summary>
internal sealed class VolumeState
{
    /// <summary>The largest file size, 2^50 bytes.</summary>
    public const long MaxFileSize = 1L << 50;

    public VolumeState(BlockDevice device, Superblock sb, BlockAllocator alloc, InodeTable files, MetadataJournal journal, SealTable seals, ConflictPolicy defaultPolicy)
    {
        Device = device;
        Sb = sb;
        Alloc = alloc;
        Files = files;
        Journal = journal;
        Seals = seals;
        DefaultPolicy = defaultPolicy;
        Writer = new ExtentWriter(this);
        Space = new SpaceOperations(this);
        Sharing = new BlockSharing(this);
        Compactor = new Compactor(this);
        Checker = new VolumeChecker(this);
    }

    public BlockDevice Device { get; }
    public Superblock Sb { get; }
    public BlockAllocator Alloc { get; }
    public InodeTable Files { get; }
    public MetadataJournal Journal { get; }
    public SealTable Seals { get; }

    /// <summary>Policy for operations that conflict with pins, unless a file or the operation overrides it.</summary>
    public ConflictPolicy DefaultPolicy { get; set; }

    public ExtentWriter Writer { get; }
    public SpaceOperations Space { get; }
    public BlockSharing Sharing { get; }
    public Compactor Compactor { get; }
    public VolumeChecker Checker { get; }
}

/// <summary>An operation ready to run in the mutate loop: its lease context and its body (validated, nothing changed yet).</summary>
internal readonly record struct VolumeOp<T>(RemapContext Ctx, Func<RemapContext, T> Body);

/// <summary>
/// Base of the volume's internal parts: the shared state under short names, and the checks every operation body
/// uses (ranges, space, metadata room, the lease check). Used under the volume lock only.
/// </summary>
internal abstract class VolumePart(VolumeState s)
{
    protected VolumeState S { get; } = s;
    protected BlockDevice Device => S.Device;
    protected Superblock Sb => S.Sb;
    protected BlockAllocator Alloc => S.Alloc;
    protected InodeTable Files => S.Files;
    protected MetadataJournal Journal => S.Journal;
    protected SealTable Seals => S.Seals;
    protected ExtentWriter Writer => S.Writer;
    protected int BlockShift => Device.BlockShift;
    protected int BlockSize => Sb.BlockSize;
    protected const long MaxFileSize = VolumeState.MaxFileSize;
    protected long MaxFileBlocks => MaxFileSize >> BlockShift;

    /// <summary>The inode, unless it was deleted (the volume's disposal was checked when the operation began).</summary>
    public static Inode Live(Inode inode)
    {
        if (inode.Deleted) ThrowHelper.Throw(PinnedDmaError.NotFound, $"File '{inode.Name}' was deleted.");
        return inode;
    }

    public (long First, long End) BlockSpan(long offset, long length) =>
        length == 0 ? (offset >> BlockShift, offset >> BlockShift) : (offset >> BlockShift, ((offset + length - 1) >> BlockShift) + 1);

    /// <summary>
    /// A byte range of a file: <see cref="ArgumentOutOfRangeException"/> naming the caller's parameter when negative or
    /// overflowing, EFBIG past the largest file size.
    /// </summary>
    public void CheckFileRange(long offset, long length, string offsetName = "offset")
    {
        ThrowHelper.CheckRange(offset, length, offsetName);
        if (offset + length > MaxFileSize)
            ThrowHelper.Throw(PinnedDmaError.InvalidArgument, $"Range ends past the largest file size ({MaxFileSize} bytes) (EFBIG).");
    }

    public void CheckAligned(long value, string name)
    {
        if ((value & (BlockSize - 1)) != 0)
            ThrowHelper.Throw(PinnedDmaError.InvalidArgument, $"{name} ({value}) must be a multiple of the block size ({BlockSize}).");
    }

    /// <summary>
    /// What to do about <paramref name="conflicts"/> (attached seals an operation would violate): see
    /// <see cref="LayoutLease.Resolve"/>. On <see cref="ConflictResolution.Pending"/> or
    /// <see cref="ConflictResolution.Busy"/> the caller returns at once, having changed nothing.
    /// </summary>
    public ConflictResolution Check(RemapContext ctx, List<Seal> conflicts, bool deferrable) =>
        LayoutLease.Resolve(ctx, conflicts, deferrable, S.DefaultPolicy);

    /// <summary>Attached seals of <paramref name="inode"/> overlapping file blocks [first, end).</summary>
    public List<Seal> SealsOverlapping(Inode inode, long first, long end) => Seals.Overlapping(inode, first, end);

    /// <summary>Checks that there is room for <paramref name="blocks"/> new blocks, committing to free busy ones if that helps.</summary>
    public void EnsureSpace(long blocks)
    {
        if (blocks <= Alloc.FreeBlocks) return;
        if (Alloc.BusyBlocks > 0) Journal.Commit();
        if (blocks > Alloc.FreeBlocks)
            ThrowHelper.Throw(PinnedDmaError.NoSpace, $"Volume full: the operation needs {blocks} blocks, {Alloc.FreeBlocks} are free.");
    }

    public long ExtentCount()
    {
        long n = 0;
        foreach (var i in Files.ById.Values) n += i.Map.Count;
        return n;
    }

    /// <summary>Refuses an operation that could push the metadata past what a checkpoint can hold.</summary>
    public void CheckMetadataRoom(long newExtents)
    {
        long max = MetadataJournal.MaxExtentsFor(Sb.BlockCount) - 256;
        if (ExtentCount() + newExtents > max)
            ThrowHelper.Throw(PinnedDmaError.NoSpace, $"Metadata full: the volume tracks at most {max} extents.");
    }
}
