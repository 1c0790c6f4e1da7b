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
    /// <param name="offset">Byte offset.</param>
    /// <param name="destination">Where the bytes go.</param>
    /// <returns>Bytes read: <c>destination.Length</c>, fewer at EOF, 0 at or past it.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="offset"/> is negative, or it plus the destination's length overflows.</exception>
    /// <exception cref="ObjectDisposedException">The volume is disposed.</exception>
    /// <exception cref="PinnedDmaException"><see cref="PinnedDmaError.NotFound"/>: the file was deleted.</exception>
    public int Read(long offset, Span<byte> destination) => Volume.Read(Inode, offset, destination);

    /// <summary>
    /// Writes <paramref name="data"/> at <paramref name="offset"/>, extending the file. Holes are allocated; a shared
    /// block is copied first (COW) unless this file has it pinned, in which case the other sharers get the copy.
    /// </summary>
    /// <param name="offset">Byte offset.</param>
    /// <param name="data">The bytes (an empty span writes nothing).</param>
    /// <param name="policy">Policy for a conflict with a pin; null for the file's or the volume's.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="offset"/> is negative, or it plus the data's length overflows.</exception>
    /// <exception cref="ObjectDisposedException">The volume is disposed.</exception>
    /// <exception cref="PinnedDmaException">
    /// Nothing is written. <see cref="PinnedDmaError.InvalidArgument"/>: the write would end past the largest file
    /// size, 2^50 bytes (EFBIG); <see cref="PinnedDmaError.NotFound"/>: the file was deleted;
    /// <see cref="PinnedDmaError.Busy"/>: the operation would remap a block that a pin or a Direct mapping holds and
    /// the policy refuses (Deny, a Wait that ran out, an unbreakable pin or a Direct mapping; under Break the holder
    /// is asked and, after the timeout, revoked, and the operation goes on);
    /// <see cref="PinnedDmaError.NoSpace"/>: no free block for a hole or a copy, or no metadata room.
    /// </exception>
    public void Write(long offset, ReadOnlySpan<byte> data, ConflictPolicy? policy = null) =>
        Volume.Write(Inode, offset, data, policy, sync: false);

    /// <summary>Writes <paramref name="data"/> at <paramref name="offset"/>, awaiting a Wait or Break conflict instead of blocking.</summary>
    /// <param name="offset">Byte offset.</param>
    /// <param name="data">The bytes (empty writes nothing). Not to be changed until the task completes.</param>
    /// <param name="policy">Policy for a conflict with a pin; null for the file's or the volume's.</param>
    /// <returns>A task that completes when the data is written.</returns>
    /// <remarks>
    /// The async form of <see cref="Write(long, ReadOnlySpan{byte}, Nullable{ConflictPolicy})"/>, with the same checks, effects and errors; one mutate loop serves
    /// both. With no conflict, or under Deny or Defer, it completes synchronously (the returned task is already
    /// completed, faulted on an error). Under Wait or Break it awaits the holders' release (and, for Break, the
    /// revoked pins' drains) without holding a thread; the policy's timeout still applies. Cancellation before the
    /// operation is applied leaves the file unchanged and throws <see cref="OperationCanceledException"/>; a pin
    /// already asked to break stays asked (<see cref="PinStatus.Breaking"/>, its event raised), as the request cannot
    /// be taken back, and is not revoked by this call. Argument errors are thrown before a task is returned.
    /// </remarks>
    /// <param name="cancellationToken">Stops a Wait or Break before the operation is applied.</param>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was canceled before the operation was applied; nothing changed.</exception>
    /// <exception cref="ArgumentOutOfRangeException">As for the sync form.</exception>
    /// <exception cref="PinnedDmaException">As for the sync form.</exception>
    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, ConflictPolicy? policy = null, CancellationToken cancellationToken = default) =>
        Volume.WriteAsync(Inode, offset, data, policy, cancellationToken);

    /// <summary>Sets the size. Shrinking frees the blocks past the new EOF and zeroes the tail of the last block.</summary>
    /// <param name="length">The new size in bytes.</param>
    /// <param name="policy">Policy for pins past the new EOF; null for the file's or the volume's. Defer hands their blocks to the pins.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="length"/> is negative (the exception names the parameter <c>offset</c>).</exception>
    /// <exception cref="ObjectDisposedException">The volume is disposed.</exception>
    /// <exception cref="PinnedDmaException">
    /// Nothing changes. <see cref="PinnedDmaError.InvalidArgument"/>: <paramref name="length"/> is past the largest
    /// file size, 2^50 bytes (EFBIG); <see cref="PinnedDmaError.NotFound"/>: the file was deleted;
    /// <see cref="PinnedDmaError.Busy"/>: the operation would remap a block that a pin or a Direct mapping holds and
    /// the policy refuses (Deny, a Wait that ran out, an unbreakable pin or a Direct mapping; under Break the holder
    /// is asked and, after the timeout, revoked, and the operation goes on);
    /// <see cref="PinnedDmaError.NoSpace"/>: no free block for a copy (of a shared last block, or for Defer).
    /// </exception>
    public void Truncate(long length, ConflictPolicy? policy = null) => Volume.Truncate(Inode, length, policy);

    /// <summary>Sets the size, awaiting a Wait or Break conflict instead of blocking.</summary>
    /// <param name="length">The new size in bytes.</param>
    /// <param name="policy">Policy for pins past the new EOF; null for the file's or the volume's.</param>
    /// <returns>A task that completes when the size is set.</returns>
    /// <remarks>
    /// The async form of <see cref="Truncate(long, Nullable{ConflictPolicy})"/>, with the same checks, effects and errors; one mutate loop serves
    /// both. With no conflict, or under Deny or Defer, it completes synchronously (the returned task is already
    /// completed, faulted on an error). Under Wait or Break it awaits the holders' release (and, for Break, the
    /// revoked pins' drains) without holding a thread; the policy's timeout still applies. Cancellation before the
    /// operation is applied leaves the file unchanged and throws <see cref="OperationCanceledException"/>; a pin
    /// already asked to break stays asked (<see cref="PinStatus.Breaking"/>, its event raised), as the request cannot
    /// be taken back, and is not revoked by this call. Argument errors are thrown before a task is returned.
    /// </remarks>
    /// <param name="cancellationToken">Stops a Wait or Break before the operation is applied.</param>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was canceled before the operation was applied; nothing changed.</exception>
    /// <exception cref="ArgumentOutOfRangeException">As for the sync form.</exception>
    /// <exception cref="PinnedDmaException">As for the sync form.</exception>
    public ValueTask TruncateAsync(long length, ConflictPolicy? policy = null, CancellationToken cancellationToken = default) =>
        Volume.TruncateAsync(Inode, length, policy, cancellationToken);

    /// <summary>Deallocates whole blocks in the range and zeroes partial ones (FALLOC_FL_PUNCH_HOLE | KEEP_SIZE).</summary>
    /// <param name="offset">Byte offset.</param>
    /// <param name="length">Bytes (non-zero).</param>
    /// <param name="policy">Policy for pins over the whole blocks to deallocate; null for the file's or the volume's.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="offset"/> or <paramref name="length"/> is negative, or their sum overflows.</exception>
    /// <exception cref="ObjectDisposedException">The volume is disposed.</exception>
    /// <exception cref="PinnedDmaException">
    /// Nothing changes. <see cref="PinnedDmaError.InvalidArgument"/>: <paramref name="length"/> is 0, or the range
    /// ends past the largest file size, 2^50 bytes (EFBIG); <see cref="PinnedDmaError.NotFound"/>: the file was deleted;
    /// <see cref="PinnedDmaError.Busy"/>: the operation would remap a block that a pin or a Direct mapping holds and
    /// the policy refuses (Deny, a Wait that ran out, an unbreakable pin or a Direct mapping; under Break the holder
    /// is asked and, after the timeout, revoked, and the operation goes on);
    /// <see cref="PinnedDmaError.NoSpace"/>: no free block for a copy, or no metadata room.
    /// </exception>
    public void PunchHole(long offset, long length, ConflictPolicy? policy = null) => Volume.PunchHole(Inode, offset, length, policy);

    /// <summary>Punches a hole, awaiting a Wait or Break conflict instead of blocking.</summary>
    /// <param name="offset">Byte offset.</param>
    /// <param name="length">Bytes (non-zero).</param>
    /// <param name="policy">Policy for pins over the whole blocks to deallocate; null for the file's or the volume's.</param>
    /// <returns>A task that completes when the hole is punched.</returns>
    /// <remarks>
    /// The async form of <see cref="PunchHole(long, long, Nullable{ConflictPolicy})"/>, with the same checks, effects and errors; one mutate loop serves
    /// both. With no conflict, or under Deny or Defer, it completes synchronously (the returned task is already
    /// completed, faulted on an error). Under Wait or Break it awaits the holders' release (and, for Break, the
    /// revoked pins' drains) without holding a thread; the policy's timeout still applies. Cancellation before the
    /// operation is applied leaves the file unchanged and throws <see cref="OperationCanceledException"/>; a pin
    /// already asked to break stays asked (<see cref="PinStatus.Breaking"/>, its event raised), as the request cannot
    /// be taken back, and is not revoked by this call. Argument errors are thrown before a task is returned.
    /// </remarks>
    /// <param name="cancellationToken">Stops a Wait or Break before the operation is applied.</param>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was canceled before the operation was applied; nothing changed.</exception>
    /// <exception cref="ArgumentOutOfRangeException">As for the sync form.</exception>
    /// <exception cref="PinnedDmaException">As for the sync form.</exception>
    public ValueTask PunchHoleAsync(long offset, long length, ConflictPolicy? policy = null, CancellationToken cancellationToken = default) =>
        Volume.PunchHoleAsync(Inode, offset, length, policy, cancellationToken);

    /// <summary>Makes the range read as zeros (FALLOC_FL_ZERO_RANGE): deallocates whole blocks, except pinned ones, which are zeroed in place.</summary>
    /// <param name="offset">Byte offset.</param>
    /// <param name="length">Bytes (non-zero).</param>
    /// <param name="keepSize">True to leave the size alone when the range reaches past EOF (FALLOC_FL_KEEP_SIZE).</param>
    /// <param name="policy">Policy for pins of other files on blocks to copy; null for the file's or the volume's.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="offset"/> or <paramref name="length"/> is negative, or their sum overflows.</exception>
    /// <exception cref="ObjectDisposedException">The volume is disposed.</exception>
    /// <exception cref="PinnedDmaException">
    /// Nothing changes. <see cref="PinnedDmaError.InvalidArgument"/>: <paramref name="length"/> is 0, or the range
    /// ends past the largest file size, 2^50 bytes (EFBIG); <see cref="PinnedDmaError.NotFound"/>: the file was deleted;
    /// <see cref="PinnedDmaError.Busy"/>: the operation would remap a block that a pin or a Direct mapping holds and
    /// the policy refuses (Deny, a Wait that ran out, an unbreakable pin or a Direct mapping; under Break the holder
    /// is asked and, after the timeout, revoked, and the operation goes on);
    /// <see cref="PinnedDmaError.NoSpace"/>: no free block for a copy, or no metadata room.
    /// </exception>
    public void ZeroRange(long offset, long length, bool keepSize = false, ConflictPolicy? policy = null) =>
        Volume.ZeroRange(Inode, offset, length, keepSize, policy);

    /// <summary>Zeroes a range, awaiting a Wait or Break conflict instead of blocking.</summary>
    /// <param name="offset">Byte offset.</param>
    /// <param name="length">Bytes (non-zero).</param>
    /// <param name="keepSize">True to leave the size alone when the range reaches past EOF (FALLOC_FL_KEEP_SIZE).</param>
    /// <param name="policy">Policy for pins of other files on blocks to copy; null for the file's or the volume's.</param>
    /// <returns>A task that completes when the range reads as zeros.</returns>
    /// <remarks>
    /// The async form of <see cref="ZeroRange(long, long, bool, Nullable{ConflictPolicy})"/>, with the same checks, effects and errors; one mutate loop serves
    /// both. With no conflict, or under Deny or Defer, it completes synchronously (the returned task is already
    /// completed, faulted on an error). Under Wait or Break it awaits the holders' release (and, for Break, the
    /// revoked pins' drains) without holding a thread; the policy's timeout still applies. Cancellation before the
    /// operation is applied leaves the file unchanged and throws <see cref="OperationCanceledException"/>; a pin
    /// already asked to break stays asked (<see cref="PinStatus.Breaking"/>, its event raised), as the request cannot
    /// be taken back, and is not revoked by this call. Argument errors are thrown before a task is returned.
    /// </remarks>
    /// <param name="cancellationToken">Stops a Wait or Break before the operation is applied.</param>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was canceled before the operation was applied; nothing changed.</exception>
    /// <exception cref="ArgumentOutOfRangeException">As for the sync form.</exception>
    /// <exception cref="PinnedDmaException">As for the sync form.</exception>
    public ValueTask ZeroRangeAsync(long offset, long length, bool keepSize = false, ConflictPolicy? policy = null, CancellationToken cancellationToken = default) =>
        Volume.ZeroRangeAsync(Inode, offset, length, keepSize, policy, cancellationToken);

    /// <summary>Allocates zeroed blocks for the holes in the range (fallocate mode 0).</summary>
    /// <param name="offset">Byte offset.</param>
    /// <param name="length">Bytes (non-zero).</param>
    /// <param name="keepSize">True to leave the size alone when the range reaches past EOF (FALLOC_FL_KEEP_SIZE).</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="offset"/> or <paramref name="length"/> is negative, or their sum overflows.</exception>
    /// <exception cref="ObjectDisposedException">The volume is disposed.</exception>
    /// <exception cref="PinnedDmaException">
    /// Nothing changes. <see cref="PinnedDmaError.InvalidArgument"/>: <paramref name="length"/> is 0, or the range
    /// ends past the largest file size, 2^50 bytes (EFBIG); <see cref="PinnedDmaError.NotFound"/>: the file was deleted;
    /// <see cref="PinnedDmaError.NoSpace"/>: not enough free blocks, or no metadata room.
    /// </exception>
    public void Allocate(long offset, long length, bool keepSize = false) => Volume.Allocate(Inode, offset, length, keepSize);

    /// <summary>Removes a block-aligned range and shifts the rest down (FALLOC_FL_COLLAPSE_RANGE). The range must end before EOF.</summary>
    /// <param name="offset">Block-aligned byte offset.</param>
    /// <param name="length">Block-aligned bytes (non-zero).</param>
    /// <param name="policy">Policy for pins at or after <paramref name="offset"/>; null for the file's or the volume's.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="offset"/> or <paramref name="length"/> is negative, or their sum overflows.</exception>
    /// <exception cref="ObjectDisposedException">The volume is disposed.</exception>
    /// <exception cref="PinnedDmaException">
    /// Nothing changes. <see cref="PinnedDmaError.InvalidArgument"/>: <paramref name="offset"/> or
    /// <paramref name="length"/> is not a multiple of the block size, <paramref name="length"/> is 0, or the range does not end before EOF;
    /// <see cref="PinnedDmaError.NotFound"/>: the file was deleted; <see cref="PinnedDmaError.Busy"/>: a pin or Direct
    /// mapping holds a block at or after <paramref name="offset"/> (every such block moves) and the policy refuses
    /// (Deny, a Wait that ran out, an unbreakable pin, a Direct mapping; Defer cannot help here);
    /// <see cref="PinnedDmaError.NoSpace"/>: no metadata room.
    /// </exception>
    public void CollapseRange(long offset, long length, ConflictPolicy? policy = null) => Volume.CollapseRange(Inode, offset, length, policy);

    /// <summary>Collapses a range, awaiting a Wait or Break conflict instead of blocking.</summary>
    /// <param name="offset">Block-aligned byte offset.</param>
    /// <param name="length">Block-aligned bytes (non-zero).</param>
    /// <param name="policy">Policy for pins at or after <paramref name="offset"/>; null for the file's or the volume's.</param>
    /// <returns>A task that completes when the range is removed.</returns>
    /// <remarks>
    /// The async form of <see cref="CollapseRange(long, long, Nullable{ConflictPolicy})"/>, with the same checks, effects and errors; one mutate loop serves
    /// both. With no conflict, or under Deny or Defer, it completes synchronously (the returned task is already
    /// completed, faulted on an error). Under Wait or Break it awaits the holders' release (and, for Break, the
    /// revoked pins' drains) without holding a thread; the policy's timeout still applies. Cancellation before the
    /// operation is applied leaves the file unchanged and throws <see cref="OperationCanceledException"/>; a pin
    /// already asked to break stays asked (<see cref="PinStatus.Breaking"/>, its event raised), as the request cannot
    /// be taken back, and is not revoked by this call. Argument errors are thrown before a task is returned.
    /// </remarks>
    /// <param name="cancellationToken">Stops a Wait or Break before the operation is applied.</param>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was canceled before the operation was applied; nothing changed.</exception>
    /// <exception cref="ArgumentOutOfRangeException">As for the sync form.</exception>
    /// <exception cref="PinnedDmaException">As for the sync form.</exception>
    public ValueTask CollapseRangeAsync(long offset, long length, ConflictPolicy? policy = null, CancellationToken cancellationToken = default) =>
        Volume.CollapseRangeAsync(Inode, offset, length, policy, cancellationToken);

    /// <summary>Inserts a block-aligned hole and shifts the rest up (FALLOC_FL_INSERT_RANGE). The offset must be before EOF.</summary>
    /// <param name="offset">Block-aligned byte offset.</param>
    /// <param name="length">Block-aligned bytes (non-zero).</param>
    /// <param name="policy">Policy for pins at or after <paramref name="offset"/>; null for the file's or the volume's.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="offset"/> or <paramref name="length"/> is negative, or their sum overflows.</exception>
    /// <exception cref="ObjectDisposedException">The volume is disposed.</exception>
    /// <exception cref="PinnedDmaException">
    /// Nothing changes. <see cref="PinnedDmaError.InvalidArgument"/>: <paramref name="offset"/> or
    /// <paramref name="length"/> is not a multiple of the block size, <paramref name="length"/> is 0, <paramref name="offset"/> is not before EOF, or the file would grow past the largest file size (EFBIG);
    /// <see cref="PinnedDmaError.NotFound"/>: the file was deleted; <see cref="PinnedDmaError.Busy"/>: a pin or Direct
    /// mapping holds a block at or after <paramref name="offset"/> (every such block moves) and the policy refuses
    /// (Deny, a Wait that ran out, an unbreakable pin, a Direct mapping; Defer cannot help here);
    /// <see cref="PinnedDmaError.NoSpace"/>: no metadata room.
    /// </exception>
    public void InsertRange(long offset, long length, ConflictPolicy? policy = null) => Volume.InsertRange(Inode, offset, length, policy);

    /// <summary>Inserts a range, awaiting a Wait or Break conflict instead of blocking.</summary>
    /// <param name="offset">Block-aligned byte offset.</param>
    /// <param name="length">Block-aligned bytes (non-zero).</param>
    /// <param name="policy">Policy for pins at or after <paramref name="offset"/>; null for the file's or the volume's.</param>
    /// <returns>A task that completes when the hole is inserted.</returns>
    /// <remarks>
    /// The async form of <see cref="InsertRange(long, long, Nullable{ConflictPolicy})"/>, with the same checks, effects and errors; one mutate loop serves
    /// both. With no conflict, or under Deny or Defer, it completes synchronously (the returned task is already
    /// completed, faulted on an error). Under Wait or Break it awaits the holders' release (and, for Break, the
    /// revoked pins' drains) without holding a thread; the policy's timeout still applies. Cancellation before the
    /// operation is applied leaves the file unchanged and throws <see cref="OperationCanceledException"/>; a pin
    /// already asked to break stays asked (<see cref="PinStatus.Breaking"/>, its event raised), as the request cannot
    /// be taken back, and is not revoked by this call. Argument errors are thrown before a task is returned.
    /// </remarks>
    /// <param name="cancellationToken">Stops a Wait or Break before the operation is applied.</param>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was canceled before the operation was applied; nothing changed.</exception>
    /// <exception cref="ArgumentOutOfRangeException">As for the sync form.</exception>
    /// <exception cref="PinnedDmaException">As for the sync form.</exception>
    public ValueTask InsertRangeAsync(long offset, long length, ConflictPolicy? policy = null, CancellationToken cancellationToken = default) =>
        Volume.InsertRangeAsync(Inode, offset, length, policy, cancellationToken);

    /// <summary>Reflinks <paramref name="length"/> bytes of <paramref name="source"/> at <paramref name="sourceOffset"/> into this file at <paramref name="offset"/> (FICLONERANGE). A length of 0 clones to the source's EOF; with a source offset past that EOF it is <see cref="PinnedDmaError.InvalidArgument"/> (EINVAL).</summary>
    /// <param name="source">The file to share blocks from (may be this one, with ranges that do not overlap).</param>
    /// <param name="sourceOffset">Block-aligned byte offset in <paramref name="source"/>.</param>
    /// <param name="offset">Block-aligned byte offset in this file.</param>
    /// <param name="length">Bytes; 0 for the rest of the source.</param>
    /// <param name="policy">Policy for pins over the destination range; null for the file's or the volume's.</param>
    /// <exception cref="ArgumentNullException"><paramref name="source"/> is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="source"/> is on another volume (EXDEV).</exception>
    /// <exception cref="ArgumentOutOfRangeException">An offset or <paramref name="length"/> is negative, or an offset plus the length overflows.</exception>
    /// <exception cref="ObjectDisposedException">The volume is disposed.</exception>
    /// <exception cref="PinnedDmaException">
    /// Nothing changes. <see cref="PinnedDmaError.InvalidArgument"/>: an offset is not block-aligned, the source range
    /// goes past the source's EOF, a length that is not a block multiple does not end at the source's EOF and at or
    /// past the destination's, the ranges of one file overlap, or the destination would end past the largest file size
    /// (EFBIG); <see cref="PinnedDmaError.NotFound"/>: either file was deleted;
    /// <see cref="PinnedDmaError.Busy"/>: the operation would remap a block that a pin or a Direct mapping holds and
    /// the policy refuses (Deny, a Wait that ran out, an unbreakable pin or a Direct mapping; under Break the holder
    /// is asked and, after the timeout, revoked, and the operation goes on);
    /// <see cref="PinnedDmaError.NoSpace"/>: no free block for a copy, or no metadata room.
    /// </exception>
    public void CloneRangeFrom(VolumeFile source, long sourceOffset, long offset, long length, ConflictPolicy? policy = null)
    {
        ArgumentNullException.ThrowIfNull(source);
        CheckSameVolume(source);
        Volume.CloneRange(source.Inode, sourceOffset, Inode, offset, length, policy);
    }

    /// <summary>Reflinks a range of <paramref name="source"/> into this file, awaiting a Wait or Break conflict instead of blocking.</summary>
    /// <param name="source">The file to share blocks from.</param>
    /// <param name="sourceOffset">Block-aligned byte offset in <paramref name="source"/>.</param>
    /// <param name="offset">Block-aligned byte offset in this file.</param>
    /// <param name="length">Bytes; 0 for the rest of the source.</param>
    /// <param name="policy">Policy for pins over the destination range; null for the file's or the volume's.</param>
    /// <returns>A task that completes when the blocks are shared.</returns>
    /// <remarks>
    /// The async form of <see cref="CloneRangeFrom(VolumeFile, long, long, long, Nullable{ConflictPolicy})"/>, with the same checks, effects and errors; one mutate loop serves
    /// both. With no conflict, or under Deny or Defer, it completes synchronously (the returned task is already
    /// completed, faulted on an error). Under Wait or Break it awaits the holders' release (and, for Break, the
    /// revoked pins' drains) without holding a thread; the policy's timeout still applies. Cancellation before the
    /// operation is applied leaves the file unchanged and throws <see cref="OperationCanceledException"/>; a pin
    /// already asked to break stays asked (<see cref="PinStatus.Breaking"/>, its event raised), as the request cannot
    /// be taken back, and is not revoked by this call. Argument errors are thrown before a task is returned.
    /// </remarks>
    /// <param name="cancellationToken">Stops a Wait or Break before the operation is applied.</param>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was canceled before the operation was applied; nothing changed.</exception>
    /// <exception cref="ArgumentNullException"><paramref name="source"/> is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="source"/> is on another volume (EXDEV).</exception>
    /// <exception cref="ArgumentOutOfRangeException">As for the sync form.</exception>
    /// <exception cref="PinnedDmaException">As for the sync form.</exception>
    public ValueTask CloneRangeFromAsync(VolumeFile source, long sourceOffset, long offset, long length, ConflictPolicy? policy = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(source);
        CheckSameVolume(source);
        return Volume.CloneRangeAsync(source.Inode, sourceOffset, Inode, offset, length, policy, cancellationToken);
    }

    /// <summary>
    /// Shares <paramref name="source"/>'s blocks over this file's range when the contents are equal (FIDEDUPERANGE).
    /// Returns the length asked for, as Linux reports it (<c>bytes_deduped</c>), though only whole blocks are shared
    /// (a partial last block only where both ranges end at their files' EOF). A length of 0 dedupes nothing; a
    /// source offset past the source's EOF is <see cref="PinnedDmaError.InvalidArgument"/> (EINVAL).
    /// </summary>
    /// <param name="source">The file to share blocks from (may be this one, with ranges that do not overlap).</param>
    /// <param name="sourceOffset">Block-aligned byte offset in <paramref name="source"/>.</param>
    /// <param name="offset">Block-aligned byte offset in this file.</param>
    /// <param name="length">Bytes to compare and share.</param>
    /// <param name="policy">Policy for pins over the destination range; null for the file's or the volume's.</param>
    /// <returns><paramref name="length"/>, as Linux reports <c>bytes_deduped</c> (see above); 0 when <paramref name="length"/> is 0.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="source"/> is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="source"/> is on another volume (EXDEV).</exception>
    /// <exception cref="ArgumentOutOfRangeException">An offset or <paramref name="length"/> is negative, or an offset plus the length overflows.</exception>
    /// <exception cref="ObjectDisposedException">The volume is disposed.</exception>
    /// <exception cref="PinnedDmaException">
    /// Nothing changes. <see cref="PinnedDmaError.RangesDiffer"/>: the contents differ;
    /// <see cref="PinnedDmaError.InvalidArgument"/>: an offset is not block-aligned, either range goes past its file's
    /// EOF, the ranges of one file overlap, or a range ends past the largest file size (EFBIG);
    /// <see cref="PinnedDmaError.NotFound"/>: either file was deleted; <see cref="PinnedDmaError.Busy"/>: the
    /// operation would remap a block that a pin or a Direct mapping holds and the policy refuses (Deny, a Wait that
    /// ran out, an unbreakable pin or a Direct mapping; under Break the holder is asked and, after the timeout,
    /// revoked, and the operation goes on);
    /// <see cref="PinnedDmaError.NoSpace"/>: no free block for a copy, or no metadata room.
    /// </exception>
    public long DedupeRangeFrom(VolumeFile source, long sourceOffset, long offset, long length, ConflictPolicy? policy = null)
    {
        ArgumentNullException.ThrowIfNull(source);
        CheckSameVolume(source);
        return Volume.DedupeRange(source.Inode, sourceOffset, Inode, offset, length, policy);
    }

    /// <summary>Dedupes a range of <paramref name="source"/> into this file, awaiting a Wait or Break conflict instead of blocking.</summary>
    /// <param name="source">The file to share blocks from.</param>
    /// <param name="sourceOffset">Block-aligned byte offset in <paramref name="source"/>.</param>
    /// <param name="offset">Block-aligned byte offset in this file.</param>
    /// <param name="length">Bytes to compare and share.</param>
    /// <param name="policy">Policy for pins over the destination range; null for the file's or the volume's.</param>
    /// <returns>As for the sync form: <paramref name="length"/>, or 0 when it is 0.</returns>
    /// <remarks>
    /// The async form of <see cref="DedupeRangeFrom(VolumeFile, long, long, long, Nullable{ConflictPolicy})"/>, with the same checks, effects and errors; one mutate loop serves
    /// both. With no conflict, or under Deny or Defer, it completes synchronously (the returned task is already
    /// completed, faulted on an error). Under Wait or Break it awaits the holders' release (and, for Break, the
    /// revoked pins' drains) without holding a thread; the policy's timeout still applies. Cancellation before the
    /// operation is applied leaves the file unchanged and throws <see cref="OperationCanceledException"/>; a pin
    /// already asked to break stays asked (<see cref="PinStatus.Breaking"/>, its event raised), as the request cannot
    /// be taken back, and is not revoked by this call. Argument errors are thrown before a task is returned.
    /// </remarks>
    /// <param name="cancellationToken">Stops a Wait or Break before the operation is applied.</param>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was canceled before the operation was applied; nothing changed.</exception>
    /// <exception cref="ArgumentNullException"><paramref name="source"/> is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="source"/> is on another volume (EXDEV).</exception>
    /// <exception cref="ArgumentOutOfRangeException">As for the sync form.</exception>
    /// <exception cref="PinnedDmaException">As for the sync form.</exception>
    public ValueTask<long> DedupeRangeFromAsync(VolumeFile source, long sourceOffset, long offset, long length, ConflictPolicy? policy = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(source);
        CheckSameVolume(source);
        return Volume.DedupeRangeAsync(source.Inode, sourceOffset, Inode, offset, length, policy, cancellationToken);
    }

    /// <summary>
    /// Gives every shared block of the range a private copy (FALLOC_FL_UNSHARE_RANGE); pinned blocks stay and their
    /// other sharers move. As in Linux, a range reaching past EOF grows the file to its end, unless
    /// <paramref name="keepSize"/> (FALLOC_FL_KEEP_SIZE). Holes in the range stay holes (XFS also preallocates them;
    /// what the file reads is the same).
    /// </summary>
    /// <param name="offset">Byte offset.</param>
    /// <param name="length">Bytes (non-zero).</param>
    /// <param name="policy">Policy for pins of other sharers whose blocks would move; null for the file's or the volume's.</param>
    /// <param name="keepSize">True to leave the size alone when the range reaches past EOF (FALLOC_FL_KEEP_SIZE).</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="offset"/> or <paramref name="length"/> is negative, or their sum overflows.</exception>
    /// <exception cref="ObjectDisposedException">The volume is disposed.</exception>
    /// <exception cref="PinnedDmaException">
    /// Nothing changes. <see cref="PinnedDmaError.InvalidArgument"/>: <paramref name="length"/> is 0, or the range
    /// ends past the largest file size, 2^50 bytes (EFBIG); <see cref="PinnedDmaError.NotFound"/>: the file was deleted;
    /// <see cref="PinnedDmaError.Busy"/>: the operation would remap a block that a pin or a Direct mapping holds and
    /// the policy refuses (Deny, a Wait that ran out, an unbreakable pin or a Direct mapping; under Break the holder
    /// is asked and, after the timeout, revoked, and the operation goes on);
    /// <see cref="PinnedDmaError.NoSpace"/>: no free block for a copy, or no metadata room.
    /// </exception>
    public void UnshareRange(long offset, long length, ConflictPolicy? policy = null, bool keepSize = false) =>
        Volume.UnshareRange(Inode, offset, length, keepSize, policy);

    /// <summary>Unshares a range, awaiting a Wait or Break conflict instead of blocking.</summary>
    /// <param name="offset">Byte offset.</param>
    /// <param name="length">Bytes (non-zero).</param>
    /// <param name="policy">Policy for pins of other sharers whose blocks would move; null for the file's or the volume's.</param>
    /// <param name="keepSize">True to leave the size alone when the range reaches past EOF (FALLOC_FL_KEEP_SIZE).</param>
    /// <returns>A task that completes when the range is private.</returns>
    /// <remarks>
    /// The async form of <see cref="UnshareRange(long, long, Nullable{ConflictPolicy}, bool)"/>, with the same checks, effects and errors; one mutate loop serves
    /// both. With no conflict, or under Deny or Defer, it completes synchronously (the returned task is already
    /// completed, faulted on an error). Under Wait or Break it awaits the holders' release (and, for Break, the
    /// revoked pins' drains) without holding a thread; the policy's timeout still applies. Cancellation before the
    /// operation is applied leaves the file unchanged and throws <see cref="OperationCanceledException"/>; a pin
    /// already asked to break stays asked (<see cref="PinStatus.Breaking"/>, its event raised), as the request cannot
    /// be taken back, and is not revoked by this call. Argument errors are thrown before a task is returned.
    /// </remarks>
    /// <param name="cancellationToken">Stops a Wait or Break before the operation is applied.</param>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was canceled before the operation was applied; nothing changed.</exception>
    /// <exception cref="ArgumentOutOfRangeException">As for the sync form.</exception>
    /// <exception cref="PinnedDmaException">As for the sync form.</exception>
    public ValueTask UnshareRangeAsync(long offset, long length, ConflictPolicy? policy = null, bool keepSize = false, CancellationToken cancellationToken = default) =>
        Volume.UnshareRangeAsync(Inode, offset, length, keepSize, policy, cancellationToken);

    /// <summary>The mapped extents that intersect the byte range, like FIEMAP.</summary>
    /// <param name="offset">Byte offset.</param>
    /// <param name="length">Bytes; the default reaches the end of the file.</param>
    /// <returns>The extents in file order, split where sharing or sealing changes; the file's last one is flagged <see cref="FileExtentFlags.Last"/>.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="offset"/> or <paramref name="length"/> is negative.</exception>
    /// <exception cref="ObjectDisposedException">The volume is disposed.</exception>
    /// <exception cref="PinnedDmaException"><see cref="PinnedDmaError.NotFound"/>: the file was deleted.</exception>
    public IReadOnlyList<FileExtent> GetExtents(long offset = 0, long length = long.MaxValue) => Volume.GetExtents(Inode, offset, length);

    /// <summary>fsync: commits the volume's journal (data first).</summary>
    /// <exception cref="ObjectDisposedException">The volume is disposed.</exception>
    /// <exception cref="PinnedDmaException">As for <see cref="Volume.Commit"/>: <see cref="PinnedDmaError.IoError"/> or <see cref="PinnedDmaError.NoSpace"/>.</exception>
    public void Flush() => Volume.Commit();

    private void CheckSameVolume(VolumeFile other)
    {
        if (other.Volume != Volume) throw new ArgumentException("Both files must be on the same volume (EXDEV).", nameof(other));
    }

    /// <inheritdoc />
    public override string ToString() => $"{Name} ({Inode.Size} bytes)";
}
