namespace PinnedDma.Storage.Internal;

/// <summary>A volume's on-disk layout: planned from the options at format, read back and checked at open and mount.</summary>
internal static class VolumeGeometry
{
    /// <summary>The on-disk layout <paramref name="options"/> ask for; every bad option throws <see cref="ArgumentOutOfRangeException"/>.</summary>
    public static Superblock Plan(int bs, long bc, VolumeOptions options)
    {
        if (bs < 512 || bs > 65536 || (bs & (bs - 1)) != 0)
            throw new ArgumentOutOfRangeException(nameof(options), bs, "BlockSize must be a power of two from 512 to 65536.");
        if (bc < 1 || bc > Volume.MaxBlockCount)
            throw new ArgumentOutOfRangeException(nameof(options), bc, $"BlockCount must be from 1 to {Volume.MaxBlockCount}.");
        if (options.MaxFiles < 0 || options.MaxFiles > 1 << 20)
            throw new ArgumentOutOfRangeException(nameof(options), options.MaxFiles, "MaxFiles must be from 1 to 2^20 (0 picks one).");
        if (options.CowGranuleBlocks < 1 || options.CowGranuleBlocks > 4096)
            throw new ArgumentOutOfRangeException(nameof(options), options.CowGranuleBlocks, "CowGranuleBlocks must be from 1 to 4096.");
        if (options.JournalBlocks < 0 || options.JournalBlocks > bc)
            throw new ArgumentOutOfRangeException(nameof(options), options.JournalBlocks, "JournalBlocks must be from 0 (pick one) to BlockCount.");
        int maxFiles = options.MaxFiles > 0 ? options.MaxFiles : (int)Math.Clamp(bc / 16, 16, 1024);
        long journal = options.JournalBlocks > 0 ? options.JournalBlocks : Math.Clamp(bc / 32, 16, 8192);
        // A checkpoint holds every file and extent; size it for the extent limit (see MaxExtents).
        long ckptBytes = 64 + (long)maxFiles * (8 + 8 + 2 + 255 + 4) + MetadataJournal.MaxExtentsFor(bc) * MetadataJournal.ExtentRecordBytes;
        long ckpt = (ckptBytes + bs - 1) / bs;
        var sb = new Superblock
        {
            BlockSize = bs,
            BlockCount = bc,
            JournalStart = 2,
            JournalBlocks = journal,
            CheckpointStart0 = 2 + journal,
            CheckpointStart1 = 2 + journal + ckpt,
            CheckpointBlocks = ckpt,
            DataStart = 2 + journal + 2 * ckpt,
            CowGranuleBlocks = options.CowGranuleBlocks,
            MaxFiles = maxFiles,
            JournalBaseSeq = 1,
        };
        if (sb.DataStart + 8 > bc)
            throw new ArgumentOutOfRangeException(nameof(options), bc, $"A volume of {bc} blocks has no room for data after {sb.DataStart} metadata blocks.");
        return sb;
    }

    public static Superblock ReadFromFile(string path, long length)
    {
        using var h = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        Span<byte> first = stackalloc byte[Superblock.Size];
        if (length < Superblock.Size || RandomAccess.Read(h, first, 0) != Superblock.Size)
            throw new PinnedDmaException(PinnedDmaError.Corrupt, $"'{path}' is {length} bytes: too short to be a volume.");
        var a = Superblock.TryRead(first, out var whyA);
        int bs = a?.BlockSize ?? 0;
        Superblock? b = null;
        string? whyB = "not read";
        Span<byte> second = stackalloc byte[Superblock.Size];
        // The second copy sits at block 1; try the block size the first copy names, else every legal size.
        foreach (int size in bs != 0 ? new[] { bs } : new[] { 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536 })
        {
            if (length < size + Superblock.Size) break;
            RandomAccess.Read(h, second, size);
            b = Superblock.TryRead(second, out whyB);
            if (b is not null && b.BlockSize == size) break;
            b = null;
        }
        // Only the geometry is taken from here (both copies carry the same); Mount decides which state to load.
        var sb = (a ?? b) ?? throw new PinnedDmaException(PinnedDmaError.Corrupt,
            $"'{path}' has no valid superblock (copy 0: {whyA}; copy 1: {whyB}).");
        long want = sb.BlockCount * sb.BlockSize;
        if (length < want)
            throw new PinnedDmaException(PinnedDmaError.Corrupt, $"'{path}' is {length} bytes but its superblock describes {want}: the file was truncated.");
        return sb;
    }

    /// <summary>
    /// The geometry in <paramref name="device"/>'s superblock copies, checked against the device;
    /// <paramref name="named"/> is the newest sequence a copy names (recovery decides which state to load).
    /// </summary>
    public static Superblock ReadFromDevice(BlockDevice device, out ulong named)
    {
        int bs = device.BlockSize;
        var a = Superblock.TryRead(device.GetSpan(0, Superblock.Size), out var whyA);
        var b = Superblock.TryRead(device.GetSpan(bs, Superblock.Size), out var whyB);
        var geometry = (a ?? b) ?? throw new PinnedDmaException(PinnedDmaError.Corrupt,
            $"No valid superblock (copy 0: {whyA}; copy 1: {whyB}).");
        if (a is not null && b is not null && !a.SameGeometry(b))
            throw new PinnedDmaException(PinnedDmaError.Corrupt, "The two superblock copies describe different geometries.");
        if (geometry.BlockSize != bs || geometry.BlockCount > device.BlockCount)
            throw new PinnedDmaException(PinnedDmaError.Corrupt, $"Superblock geometry ({geometry.BlockCount} x {geometry.BlockSize}) does not fit the device ({device.BlockCount} x {bs}).");
        named = Math.Max(a?.Sequence ?? 0, b?.Sequence ?? 0);
        return geometry;
    }
}
