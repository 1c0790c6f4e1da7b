using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using PinnedDma.Internal;

namespace PinnedDma.Storage;

/// <summary>
/// Bytes addressed by block number: the bottom layer. A device offset is what the design calls a physical address;
/// a DMA engine reads and writes these bytes through a pin's scatter-gather list only.
/// </summary>
/// <remarks>
/// Lifetime: the memory is reference-counted like a <see cref="System.Runtime.InteropServices.SafeHandle"/>. The
/// device holds one reference, dropped by <see cref="Dispose"/>; every pin and Direct mapping over it holds another
/// (<see cref="TryAddRef"/> / <see cref="Release"/>). The memory is released when the last reference goes, so a holder
/// that is still inside an access when the device is disposed never touches unmapped memory. Dispose with holders
/// left also cuts the backing off (<see cref="DetachCore"/>): their later stores land in private memory that nothing
/// reads, never in the device's bytes.
/// </remarks>
public abstract unsafe class BlockDevice : IDisposable
{
    private byte* _base;
    private int _disposed;
    private int _refs = 1; // the device's own reference (dropped by Dispose) plus one per holder

    /// <summary>Sets up the geometry; the subclass provides the memory.</summary>
    /// <summary>Refuses a geometry no device can have (before anything is opened or resized for it).</summary>
    private protected static void CheckGeometry(int blockSize, long blockCount)
    {
        if (blockSize < 512 || blockSize > 65536 || (blockSize & (blockSize - 1)) != 0)
            throw new ArgumentOutOfRangeException(nameof(blockSize), blockSize, "Block size must be a power of two from 512 to 65536.");
        if (blockCount <= 0 || blockCount > int.MaxValue)
            throw new ArgumentOutOfRangeException(nameof(blockCount), blockCount, "Block count must be from 1 to 2^31-1.");
    }

    private protected BlockDevice(int blockSize, long blockCount)
    {
        CheckGeometry(blockSize, blockCount);
        BlockSize = blockSize;
        BlockCount = blockCount;
        BlockShift = System.Numerics.BitOperations.Log2((uint)blockSize);
    }

    /// <summary>Bytes per block.</summary>
    public int BlockSize { get; }

    /// <summary>log2 of <see cref="BlockSize"/>.</summary>
    internal int BlockShift { get; }

    /// <summary>Number of blocks.</summary>
    public long BlockCount { get; }

    /// <summary>Size in bytes.</summary>
    public long Length => BlockCount << BlockShift;

    /// <summary>How the bytes are backed, and so what a flush does.</summary>
    public abstract DeviceMappingMode MappingMode { get; }

    /// <summary>True once disposed.</summary>
    public bool IsDisposed => Volatile.Read(ref _disposed) != 0;

    private protected void SetBase(byte* pointer) => _base = pointer;

    internal byte* Base
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get
        {
            if (_disposed != 0) ThrowHelper.ThrowObjectDisposed(this);
            return _base;
        }
    }

    /// <summary>
    /// The base address for a holder of a reference (<see cref="TryAddRef"/>): valid, though perhaps detached, until
    /// the holder releases it, so it never throws.
    /// </summary>
    internal byte* HeldBase => _base;

    /// <summary>A span over device bytes for a holder of a reference (see <see cref="HeldBase"/>). Offsets are checked.</summary>
    internal Span<byte> HeldSpan(long offset, int length)
    {
        CheckRange(offset, length);
        return new Span<byte>(_base + offset, length);
    }

    /// <summary>
    /// Takes a reference on the device memory (a pin or a Direct mapping starting); false once Dispose has begun, and
    /// then nothing was taken. Every true must be paired with one <see cref="Release"/>.
    /// </summary>
    internal bool TryAddRef()
    {
        int r = Volatile.Read(ref _refs);
        while (true)
        {
            if (r <= 0) return false;
            int seen = Interlocked.CompareExchange(ref _refs, r + 1, r);
            if (seen == r) break;
            r = seen;
        }
        // Dispose sets the flag, then reads the count; this increments, then reads the flag: one of the two sees the other.
        if (Volatile.Read(ref _disposed) != 0)
        {
            Release();
            return false;
        }
        return true;
    }

    /// <summary>Drops a reference; the last one releases the memory.</summary>
    internal void Release()
    {
        int r = Interlocked.Decrement(ref _refs);
        if (r == 0)
        {
            var p = _base;
            _base = null;
            ReleaseCore(p);
        }
        else if (r < 0)
        {
            throw new InvalidOperationException("BlockDevice.Release without a reference.");
        }
    }

    /// <summary>A span over device bytes; valid until the device is disposed. Offsets are checked.</summary>
    /// <param name="offset">Byte offset on the device.</param>
    /// <param name="length">Bytes.</param>
    /// <returns>The device bytes themselves (no copy).</returns>
    /// <exception cref="ArgumentOutOfRangeException">The offset or the length is negative.</exception>
    /// <exception cref="PinnedDmaException"><see cref="PinnedDmaError.InvalidArgument"/>: the range ends past the device.</exception>
    /// <exception cref="ObjectDisposedException">The device is disposed.</exception>
    public Span<byte> GetSpan(long offset, int length)
    {
        CheckRange(offset, length);
        return new Span<byte>(Base + offset, length);
    }

    /// <summary>Copies device bytes at <paramref name="offset"/> into <paramref name="destination"/>.</summary>
    /// <param name="offset">Byte offset on the device.</param>
    /// <param name="destination">Where the bytes go; the whole span is filled.</param>
    /// <exception cref="ArgumentOutOfRangeException">The offset or the length is negative.</exception>
    /// <exception cref="PinnedDmaException"><see cref="PinnedDmaError.InvalidArgument"/>: the range ends past the device.</exception>
    /// <exception cref="ObjectDisposedException">The device is disposed.</exception>
    public void Read(long offset, Span<byte> destination)
    {
        CheckRange(offset, destination.Length);
        new ReadOnlySpan<byte>(Base + offset, destination.Length).CopyTo(destination);
    }

    /// <summary>Copies <paramref name="source"/> to device bytes at <paramref name="offset"/>.</summary>
    /// <param name="offset">Byte offset on the device.</param>
    /// <param name="source">The bytes to store.</param>
    /// <exception cref="ArgumentOutOfRangeException">The offset or the length is negative.</exception>
    /// <exception cref="PinnedDmaException"><see cref="PinnedDmaError.InvalidArgument"/>: the range ends past the device.</exception>
    /// <exception cref="ObjectDisposedException">The device is disposed.</exception>
    public void Write(long offset, ReadOnlySpan<byte> source)
    {
        CheckRange(offset, source.Length);
        source.CopyTo(new Span<byte>(Base + offset, source.Length));
    }

    /// <summary>Makes the bytes of the range durable (msync for a mapped file; nothing for memory).</summary>
    /// <param name="offset">Byte offset on the device.</param>
    /// <param name="length">Bytes.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="offset"/> or <paramref name="length"/> is negative.</exception>
    /// <exception cref="PinnedDmaException">
    /// <see cref="PinnedDmaError.InvalidArgument"/>: the range ends past the device;
    /// <see cref="PinnedDmaError.IoError"/>: <c>msync</c> failed (a file device).
    /// </exception>
    /// <exception cref="ObjectDisposedException">A file device is disposed (a memory device has nothing to flush and does not check).</exception>
    public void Flush(long offset, long length)
    {
        CheckRange(offset, length);
        if (length > 0) FlushCore(offset, length);
    }

    /// <summary>Makes every byte durable.</summary>
    /// <exception cref="PinnedDmaException"><see cref="PinnedDmaError.IoError"/>: <c>msync</c> failed (a file device).</exception>
    /// <exception cref="ObjectDisposedException">A file device is disposed (a memory device has nothing to flush and does not check).</exception>
    public void Flush() => FlushCore(0, Length);

    private protected abstract void FlushCore(long offset, long length);

    internal void CopyBlocks(long sourceBlock, long destinationBlock, long count)
    {
        long bytes = count << BlockShift;
        Buffer.MemoryCopy(Base + (sourceBlock << BlockShift), Base + (destinationBlock << BlockShift), bytes, bytes);
    }

    internal void ZeroBlocks(long block, long count) =>
        NativeMemory.Clear(Base + (block << BlockShift), checked((nuint)(count << BlockShift)));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void CheckRange(long offset, long length)
    {
        if ((ulong)offset > (ulong)Length || (ulong)length > (ulong)(Length - offset)) ThrowOutside(offset, length);
    }

    private void ThrowOutside(long offset, long length)
    {
        ThrowHelper.CheckRange(offset, length); // a negative offset or length is the caller's mistake: ArgumentOutOfRangeException
        ThrowHelper.Throw(PinnedDmaError.InvalidArgument, $"Device range [{offset}, +{length}) is outside the device's {Length} bytes.");
    }

    /// <summary>
    /// Releases the memory or the mapping. Pins and Direct mappings still holding a reference keep the address range
    /// valid until they end, but from here on what they store reaches no device byte (see the type's remarks).
    /// </summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        if (Volatile.Read(ref _refs) > 1) DetachCore(_base);
        Release();
        GC.SuppressFinalize(this);
    }

    private protected abstract void ReleaseCore(byte* pointer);

    /// <summary>
    /// Dispose while holders remain: keep [pointer, +Length) addressable but make it stop being the device's bytes (a
    /// file device maps anonymous memory over it). The memory device has nothing to cut off: nobody reads it again.
    /// </summary>
    private protected virtual void DetachCore(byte* pointer) { }

    /// <summary>Releases native memory a caller forgot to dispose.</summary>
    ~BlockDevice()
    {
        // Unreachable: no holder is left (each one references the device), so the memory can go whatever the count says.
        if (Interlocked.Exchange(ref _refs, 0) > 0 && _base != null) ReleaseCore(_base);
    }
}
