using PinnedDma.Storage.Internal;

namespace PinnedDma.Storage;

/// <summary>
/// A handle to a file of a <see cref="Volume"/>. Offsets and lengths are in bytes. Operations that would remap a
/// pinned range follow the conflict policy: the one passed to the call, else <see cref="ConflictPolicy"/>, else the
/// volume's default.
/// </summary>
public sealed class VolumeFile
{
    internal VolumeFile(Volume volume, Inode inode)
    {
        Volume = volume;
        Inode = inode;
    }

    internal Inode Inode { get; }

    /// <summary>The volume the file lives on.</summary>
    public Volume Volume { get; }

    /// <summary>The file's name.</summary>
    public string Name => Inode.Name;

    /// <summary>The inode number.</summary>
    public long Id => Inode.Id;

    /// <summary>False once the file has been deleted.</summary>
    public bool Exists => !Inode.Deleted;

    /// <summary>Size in bytes.</summary>
    public long Length
    {
        get { lock (Volume.Gate) return Inode.Size; }
    }

    /// <summary>Per-file override of the volume's conflict policy; null means the volume's.</summary>
    public ConflictPolicy? ConflictPolicy
    {
        get { lock (Volume.Gate) return Inode.Policy; }
        set { lock (Volume.Gate) Inode.Policy = value; }
    }

    /// <summary>Reads up to <c>destination.Length</c> bytes at <paramref name="offset"/>; returns how many (0 at or past EOF). Holes read as zeros.</summary>
    public int Read(long offset, Span<byte> destination) => Volume.Read(Inode, offset, destination);

    /// <summary>
    /// Writes <paramref name="data"/> at <paramref name="offset"/>, extending the file. Holes are allocated; a shared
    /// block is copied first (COW) unless this file has it pinned, in which case the other sharers get the copy.
    /// </summary>
    public void Write(long offset, ReadOnlySpan<byte> data, ConflictPolicy? policy = null) =>
        Volume.Write(Inode, offset, data, policy, sync: false);

    /// <summary>Sets the size. Shrinking frees the blocks past the new EOF and zeroes the tail of the last block.</summary>
    public void Truncate(long length, ConflictPolicy? policy = null) => Volume.Truncate(Inode, length, policy);

    /// <summary>Deallocates whole blocks in the range and zeroes partial ones (FALLOC_FL_PUNCH_HOLE | KEEP_SIZE).</summary>
    public void PunchHole(long offset, long length, ConflictPolicy? policy = null) => Volume.PunchHole(Inode, offset, length, policy);

    /// <summary>Makes the range read as zeros (FALLOC_FL_ZERO_RANGE): deallocates whole blocks, except pinned ones, which are zeroed in place.</summary>
    public void ZeroRange(long offset, long length, bool keepSize = false, ConflictPolicy? policy = null) =>
        Volume.ZeroRange(Inode, offset, length, keepSize, policy);

    /// <summary>Allocates zeroed blocks for the holes in the range (fallocate mode 0).</summary>
    public void Allocate(long offset, long length, bool keepSize = false) => Volume.Allocate(Inode, offset, length, keepSize);

    /// <summary>Removes a block-aligned range and shifts the rest down (FALLOC_FL_COLLAPSE_RANGE). The range must end before EOF.</summary>
    public void CollapseRange(long offset, long length, ConflictPolicy? policy = null) => Volume.CollapseRange(Inode, offset, length, policy);

    /// <summary>Inserts a block-aligned hole and shifts the rest up (FALLOC_FL_INSERT_RANGE). The offset must be before EOF.</summary>
    public void InsertRange(long offset, long length, ConflictPolicy? policy = null) => Volume.InsertRange(Inode, offset, length, policy);

    /// <summary>Reflinks <paramref name="length"/> bytes of <paramref name="source"/> at <paramref name="sourceOffset"/> into this file at <paramref name="offset"/> (FICLONERANGE). A length of 0 clones to the source's EOF; with a source offset past that EOF it is <see cref="PinnedDmaError.InvalidArgument"/> (EINVAL).</summary>
    public void CloneRangeFrom(VolumeFile source, long sourceOffset, long offset, long length, ConflictPolicy? policy = null)
    {
        ArgumentNullException.ThrowIfNull(source);
        CheckSameVolume(source);
        Volume.CloneRange(source.Inode, sourceOffset, Inode, offset, length, policy);
    }

    /// <summary>
    /// Shares <paramref name="source"/>'s blocks over this file's range when the contents are equal (FIDEDUPERANGE).
    /// Returns the length asked for, as Linux reports it (<c>bytes_deduped</c>), though only whole blocks are shared
    /// (a partial last block only where both ranges end at their files' EOF). A length of 0 dedupes nothing; a
    /// source offset past the source's EOF is <see cref="PinnedDmaError.InvalidArgument"/> (EINVAL).
    /// </summary>
    public long DedupeRangeFrom(VolumeFile source, long sourceOffset, long offset, long length, ConflictPolicy? policy = null)
    {
        ArgumentNullException.ThrowIfNull(source);
        CheckSameVolume(source);
        return Volume.DedupeRange(source.Inode, sourceOffset, Inode, offset, length, policy);
    }

    /// <summary>
    /// Gives every shared block of the range a private copy (FALLOC_FL_UNSHARE_RANGE); pinned blocks stay and their
    /// other sharers move. As in Linux, a range reaching past EOF grows the file to its end, unless
    /// <paramref name="keepSize"/> (FALLOC_FL_KEEP_SIZE). Holes in the range stay holes (XFS also preallocates them;
    /// what the file reads is the same).
    /// </summary>
    public void UnshareRange(long offset, long length, ConflictPolicy? policy = null, bool keepSize = false) =>
        Volume.UnshareRange(Inode, offset, length, keepSize, policy);

    /// <summary>The mapped extents that intersect the byte range, like FIEMAP.</summary>
    public IReadOnlyList<FileExtent> GetExtents(long offset = 0, long length = long.MaxValue) => Volume.GetExtents(Inode, offset, length);

    /// <summary>fsync: commits the volume's journal (data first).</summary>
    public void Flush() => Volume.Commit();

    private void CheckSameVolume(VolumeFile other)
    {
        if (other.Volume != Volume) throw new ArgumentException("Both files must be on the same volume (EXDEV).", nameof(other));
    }

    /// <inheritdoc />
    public override string ToString() => $"{Name} ({Inode.Size} bytes)";
}
