using PinnedDma.Internal;
using PinnedDma.Storage;
using PinnedDma.Storage.Internal;

namespace PinnedDma;

/// <summary>
/// A mapped file range with mapping descriptors. Reads and writes through it change the file (Shared); Populate
/// allocates and unshares the range at map time; Sync commits allocation metadata before a write returns; Direct
/// seals the range so that no volume operation may remap it while the mapping lives, and exposes the device memory
/// of each extent as a span.
/// </summary>
public sealed class FileMapping : IDisposable
{
    private readonly PinOwner _owner;
    private readonly DirectSeal? _seal;
    private readonly BlockDevice? _device;
    private int _disposed;

    internal FileMapping(PinOwner owner, VolumeFile file, long offset, long length, MapFlags flags)
    {
        if ((flags & MapFlags.Shared) == 0) throw new ArgumentException("Only Shared mappings exist; include MapFlags.Shared.", nameof(flags));
        if ((flags & ~(MapFlags.Shared | MapFlags.Populate | MapFlags.Sync | MapFlags.Direct)) != 0)
            throw new ArgumentOutOfRangeException(nameof(flags), flags, "Unknown mapping flags.");
        ThrowHelper.CheckRange(offset, length);
        if (length == 0) throw new ArgumentOutOfRangeException(nameof(length), "A mapping needs a non-empty range.");
        _owner = owner;
        File = file;
        Offset = offset;
        Length = length;
        Flags = flags;
        var volume = file.Volume;
        if ((flags & MapFlags.Direct) != 0)
        {
            // The spans this mapping hands out stay addressable until it is disposed, even past Volume.Dispose: it
            // holds a reference on the device memory (after the volume's dispose its stores reach no device byte).
            _device = volume.Device;
            if (!_device.TryAddRef()) ThrowHelper.ThrowObjectDisposed(volume);
            try
            {
                _seal = (DirectSeal)volume.CreateSeal(file.Inode, offset, length, ConflictPolicy.Deny,
                    requirePrivate: (flags & MapFlags.Populate) == 0,
                    (inode, fb, count, frozen) => new DirectSeal(inode, fb, count, frozen));
            }
            catch
            {
                _device.Release();
                throw;
            }
        }
        else if ((flags & MapFlags.Populate) != 0)
        {
            // Allocate and unshare now; nothing stays frozen afterwards.
            var s = volume.CreateSeal(file.Inode, offset, length, null, requirePrivate: false,
                (inode, fb, count, frozen) => new DirectSeal(inode, fb, count, frozen));
            lock (volume.Gate) volume.RemoveSeal(s);
            ((DirectSeal)s).End();
        }
    }

    /// <summary>The mapped file.</summary>
    public VolumeFile File { get; }

    /// <summary>Byte offset of the mapping in the file.</summary>
    public long Offset { get; }

    /// <summary>Bytes mapped.</summary>
    public long Length { get; }

    /// <summary>The descriptors.</summary>
    public MapFlags Flags { get; }

    /// <summary>Reads mapped bytes at <paramref name="offset"/> (relative to the mapping); returns how many (stops at EOF).</summary>
    /// <param name="offset">Byte offset relative to the mapping.</param>
    /// <param name="destination">Where the bytes go.</param>
    /// <returns>Bytes read: <c>destination.Length</c>, fewer at the file's EOF.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="offset"/> is negative, or it plus the length overflows.</exception>
    /// <exception cref="ObjectDisposedException">The mapping or the volume is disposed.</exception>
    /// <exception cref="PinnedDmaException">
    /// <see cref="PinnedDmaError.AccessDenied"/>: the range is not inside the mapping;
    /// <see cref="PinnedDmaError.NotFound"/>: the file was deleted.
    /// </exception>
    public int Read(long offset, Span<byte> destination)
    {
        CheckBounds(offset, destination.Length);
        return File.Read(Offset + offset, destination);
    }

    /// <summary>Writes through the mapping. With <see cref="MapFlags.Sync"/> any allocation is committed before this returns.</summary>
    /// <param name="offset">Byte offset relative to the mapping.</param>
    /// <param name="source">The bytes to store.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="offset"/> is negative, or it plus the length overflows.</exception>
    /// <exception cref="ObjectDisposedException">The mapping or the volume is disposed.</exception>
    /// <exception cref="PinnedDmaException">
    /// <see cref="PinnedDmaError.AccessDenied"/>: the range is not inside the mapping; otherwise as for
    /// <see cref="VolumeFile.Write"/> (with the file's or the volume's policy): <see cref="PinnedDmaError.NotFound"/>,
    /// <see cref="PinnedDmaError.Busy"/>, <see cref="PinnedDmaError.NoSpace"/>; with <see cref="MapFlags.Sync"/> also
    /// what the commit throws (<see cref="PinnedDmaError.IoError"/>).
    /// </exception>
    public void Write(long offset, ReadOnlySpan<byte> source)
    {
        CheckBounds(offset, source.Length);
        File.Volume.Write(File.Inode, Offset + offset, source, null, sync: (Flags & MapFlags.Sync) != 0);
    }

    /// <summary>Makes the mapped data durable (and, without Sync, the metadata too): msync + journal commit.</summary>
    /// <exception cref="ObjectDisposedException">The volume is disposed.</exception>
    /// <exception cref="PinnedDmaException">As for <see cref="Volume.Commit"/>: <see cref="PinnedDmaError.IoError"/> or <see cref="PinnedDmaError.NoSpace"/>.</exception>
    public void Flush() => File.Volume.Commit();

    /// <summary>The extents behind the mapping now (for a Direct mapping, frozen).</summary>
    /// <exception cref="ObjectDisposedException">The volume is disposed.</exception>
    /// <exception cref="PinnedDmaException"><see cref="PinnedDmaError.NotFound"/>: the file was deleted.</exception>
    public IReadOnlyList<FileExtent> Extents => File.GetExtents(Offset, Length);

    /// <summary>Number of extents a Direct mapping exposes through <see cref="GetExtentSpan"/>.</summary>
    /// <exception cref="ObjectDisposedException">The mapping is disposed.</exception>
    /// <exception cref="PinnedDmaException"><see cref="PinnedDmaError.NotSupported"/>: not a Direct mapping.</exception>
    public int ExtentCount => RequireDirect().Frozen.Length;

    /// <summary>
    /// Device memory of extent <paramref name="index"/> of a Direct mapping, clipped to the mapped range: loads and
    /// stores on the span go straight to the file's blocks (DAX). Valid until the mapping is disposed.
    /// </summary>
    /// <param name="index">0 to <see cref="ExtentCount"/> - 1.</param>
    /// <returns>The bytes of the extent that lie in the mapped range.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="index"/> is not below <see cref="ExtentCount"/>.</exception>
    /// <exception cref="ObjectDisposedException">
    /// The mapping is disposed, or the volume is (spans taken before stay addressable; new ones are refused).
    /// </exception>
    /// <exception cref="PinnedDmaException"><see cref="PinnedDmaError.NotSupported"/>: not a Direct mapping.</exception>
    /// <exception cref="OverflowException">The extent's part of the mapped range is 2 GiB or more (more than a span holds).</exception>
    public Span<byte> GetExtentSpan(int index)
    {
        var seal = RequireDirect();
        if ((uint)index >= (uint)seal.Frozen.Length) throw new ArgumentOutOfRangeException(nameof(index));
        var e = seal.Frozen[index];
        int shift = File.Volume.BlockShift;
        long s = Math.Max(Offset, e.FileBlock << shift), t = Math.Min(Offset + Length, e.FileEnd << shift);
        return File.Volume.Device.GetSpan((e.DeviceBlock << shift) + (s - (e.FileBlock << shift)), checked((int)(t - s)));
    }

    /// <summary>Pins part of the mapping (offsets relative to the mapping).</summary>
    /// <param name="offset">Byte offset relative to the mapping.</param>
    /// <param name="length">Bytes (non-zero).</param>
    /// <param name="access">READ or WRITE.</param>
    /// <param name="options">Unbreakable for an exclusive pin.</param>
    /// <returns>The live pin (see <see cref="PinOwner.Pin"/>).</returns>
    /// <exception cref="ArgumentOutOfRangeException">
    /// <paramref name="offset"/> or <paramref name="length"/> is negative or their sum overflows, or
    /// <paramref name="access"/> is neither READ nor WRITE.
    /// </exception>
    /// <exception cref="ObjectDisposedException">The mapping, its owner or the volume is disposed.</exception>
    /// <exception cref="PinnedDmaException">
    /// <see cref="PinnedDmaError.AccessDenied"/>: the range is not inside the mapping; otherwise as for
    /// <see cref="PinOwner.Pin"/>: <see cref="PinnedDmaError.InvalidArgument"/> (an empty range, or past the file's
    /// end), <see cref="PinnedDmaError.NotFound"/>, <see cref="PinnedDmaError.MemlockLimitExceeded"/>,
    /// <see cref="PinnedDmaError.Busy"/>, <see cref="PinnedDmaError.NoSpace"/>.
    /// </exception>
    public PinHandle Pin(long offset, long length, PinAccess access, PinOptions options = PinOptions.None)
    {
        CheckBounds(offset, length);
        return _owner.Pin(File, Offset + offset, length, access, options);
    }

    private DirectSeal RequireDirect()
    {
        if (Volatile.Read(ref _disposed) != 0) ThrowHelper.ThrowObjectDisposed(this);
        return _seal ?? ThrowHelper.Throw<DirectSeal>(PinnedDmaError.NotSupported, "Extent spans are for Direct mappings only: without the seal the translation may change under the span.");
    }

    private void CheckBounds(long offset, long length)
    {
        if (Volatile.Read(ref _disposed) != 0) ThrowHelper.ThrowObjectDisposed(this);
        ThrowHelper.CheckRange(offset, length);
        if (offset + length > Length)
            ThrowHelper.Throw(PinnedDmaError.AccessDenied, $"Access [{offset}, +{length}) is outside the mapping's {Length} bytes.");
    }

    /// <summary>Unmaps; a Direct mapping's seal ends.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        if (_seal is not null)
        {
            var volume = File.Volume;
            if (!volume.IsDisposed)
                lock (volume.Gate) volume.RemoveSeal(_seal);
            _seal.End();
            _device!.Release();
        }
        _owner.Forget(this);
    }
}

/// <summary>The seal of a Direct mapping: unbreakable, never deferred, writable in place.</summary>
internal sealed class DirectSeal : Seal
{
    private readonly TaskCompletionSource _gone = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public DirectSeal(Inode inode, long firstBlock, long count, Extent[] frozen)
        : base(inode, firstBlock, count) => Frozen = frozen;

    public override bool WriteAccess => true;
    public override bool Unbreakable => true;
    public override bool Deferrable => false;
    public override Task Gone => _gone.Task;
    public override void RequestBreak(TimeSpan timeout, string reason) { }
    public override void Revoke(string reason) => End();
    public override ValueTask RevokeAsync(string reason)
    {
        End();
        return default;
    }
    public void End() => _gone.TrySetResult();
}
