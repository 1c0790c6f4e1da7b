using System.Runtime.CompilerServices;
using PinnedDma.Internal;
using PinnedDma.Layout;
using PinnedDma.Storage;

namespace PinnedDma;

/// <summary>
/// A pinned file range with a frozen scatter-gather list and a layout lease (the result of mpin). While it lives, no
/// volume operation remaps its blocks: conflicting operations follow their conflict policy (Deny, Wait, Break,
/// Defer). DMA reads and writes device memory through <see cref="ScatterGatherList"/> inside the pin's
/// <see cref="Drain"/>, so a revocation waits for in-flight DMA and then stops all access.
/// Dispose to release; a handle that is dropped without Dispose is released by its finalizer.
/// </summary>
public sealed unsafe class PinHandle : IDisposable, IAsyncDisposable
{
    private readonly PinSeal _seal;
    private ScatterGatherEntry[]? _sgl;

    internal PinHandle(PinSeal seal) => _seal = seal;

    internal PinSeal Seal => _seal;

    /// <summary>The pinned file.</summary>
    public VolumeFile File => new(_seal.Owner.Volume, _seal.Inode);

    /// <summary>The owner charged for the pin.</summary>
    public PinOwner Owner => _seal.Owner;

    /// <summary>Byte offset of the pinned range in the file.</summary>
    public long Offset => _seal.Offset;

    /// <summary>Bytes pinned.</summary>
    public long Length => _seal.Length;

    /// <summary>Bytes charged to the owner's memlock account (whole blocks).</summary>
    public long ChargedBytes => _seal.Charged;

    /// <summary>READ or WRITE.</summary>
    public PinAccess Access => _seal.Access;

    /// <summary>True for an exclusive pin that Break cannot take away.</summary>
    public bool IsUnbreakable => _seal.Unbreakable;

    /// <summary>Where the pin is in its life.</summary>
    public PinStatus Status => _seal.Status;

    /// <summary>The drain DMA holds around each access through this pin.</summary>
    public DmaDrain Drain => _seal.Drain;

    /// <summary>Completes when an operation asks for the lease back (the awaitable side of <see cref="LeaseBreaking"/>).</summary>
    public Task<LeaseBreakEventArgs> BreakRequested => _seal.BreakRequested;

    /// <summary>Completes when the pin is released or revoked.</summary>
    public Task Ended => _seal.Gone;

    /// <summary>
    /// Raised once, on a thread-pool thread, when an operation asks for the lease back; release the pin within the
    /// timeout or it is revoked. The operation does not wait for the handler, only for the pin to go or the timeout.
    /// </summary>
    public event EventHandler<LeaseBreakEventArgs>? LeaseBreaking
    {
        add => _seal.LeaseBreaking += value;
        remove => _seal.LeaseBreaking -= value;
    }

    /// <summary>The frozen translation: device ranges covering [Offset rounded down to a block, Offset+Length rounded up).</summary>
    public IReadOnlyList<ScatterGatherEntry> ScatterGatherList
    {
        get
        {
            if (_sgl is null)
            {
                int shift = _seal.BlockShift;
                _sgl = _seal.Frozen.Select(e => new ScatterGatherEntry(e.DeviceBlock << shift, e.Count << shift, e.Generation)).ToArray();
            }
            return _sgl;
        }
    }

    /// <summary>DMA read: copies pinned bytes at <paramref name="offset"/> (relative to <see cref="Offset"/>). Throws when revoked or released.</summary>
    /// <param name="offset">Byte offset relative to <see cref="Offset"/>.</param>
    /// <param name="destination">Where the bytes go; the whole span is filled.</param>
    /// <exception cref="PinnedDmaException">
    /// <see cref="PinnedDmaError.AccessDenied"/>: [<paramref name="offset"/>, +<c>destination.Length</c>) is not inside the pin (a negative
    /// offset included); <see cref="PinnedDmaError.Revoked"/>: the lease was revoked;
    /// <see cref="PinnedDmaError.Released"/>: the pin was released (disposed, or its owner or volume disposed).
    /// </exception>
    public void Read(long offset, Span<byte> destination)
    {
        if (!TryRead(offset, destination)) throw _seal.EndedError();
    }

    /// <summary>DMA write through the frozen translation. Needs WRITE access. Throws when revoked or released.</summary>
    /// <param name="offset">Byte offset relative to <see cref="Offset"/>.</param>
    /// <param name="source">The bytes to store.</param>
    /// <exception cref="PinnedDmaException">
    /// <see cref="PinnedDmaError.AccessDenied"/>: [<paramref name="offset"/>, +<c>source.Length</c>) is not inside the pin (a negative
    /// offset included), or the pin is READ only; <see cref="PinnedDmaError.Revoked"/>: the lease was
    /// revoked; <see cref="PinnedDmaError.Released"/>: the pin was released (disposed, or its owner or volume disposed).
    /// </exception>
    public void Write(long offset, ReadOnlySpan<byte> source)
    {
        if (!TryWrite(offset, source)) throw _seal.EndedError();
    }

    /// <summary>DMA read; false (nothing read) when the pin was revoked or released.</summary>
    /// <param name="offset">Byte offset relative to <see cref="Offset"/>.</param>
    /// <param name="destination">Where the bytes go; the whole span is filled.</param>
    /// <returns>True when the bytes were copied; false when the pin has ended.</returns>
    /// <exception cref="PinnedDmaException">
    /// <see cref="PinnedDmaError.AccessDenied"/>: [<paramref name="offset"/>, +<c>destination.Length</c>) is not inside the pin (a negative
    /// offset included).
    /// </exception>
    public bool TryRead(long offset, Span<byte> destination)
    {
        CheckBounds(offset, destination.Length);
        if (!_seal.Drain.TryEnter()) return false;
        try
        {
            Copy(offset, destination.Length, (byte* dev, int len, int at, ref CopyState st) =>
                new ReadOnlySpan<byte>(dev, len).CopyTo(st.Read.Slice(at)), new CopyState { Read = destination });
        }
        finally
        {
            _seal.Drain.Exit();
        }
        return true;
    }

    /// <summary>DMA write; false (nothing written) when the pin was revoked or released.</summary>
    /// <param name="offset">Byte offset relative to <see cref="Offset"/>.</param>
    /// <param name="source">The bytes to store.</param>
    /// <returns>True when the bytes were stored; false when the pin has ended.</returns>
    /// <exception cref="PinnedDmaException">
    /// <see cref="PinnedDmaError.AccessDenied"/>: [<paramref name="offset"/>, +<c>source.Length</c>) is not inside the pin (a negative
    /// offset included), or the pin is READ only.
    /// </exception>
    public bool TryWrite(long offset, ReadOnlySpan<byte> source)
    {
        CheckBounds(offset, source.Length);
        _seal.ThrowIfNoWrite();
        if (!_seal.Drain.TryEnter()) return false;
        try
        {
            Copy(offset, source.Length, (byte* dev, int len, int at, ref CopyState st) =>
                st.Write.Slice(at, len).CopyTo(new Span<byte>(dev, len)), new CopyState { Write = source });
        }
        finally
        {
            _seal.Drain.Exit();
        }
        return true;
    }

    private ref struct CopyState
    {
        public Span<byte> Read;
        public ReadOnlySpan<byte> Write;
    }

    private delegate void CopyPiece(byte* device, int length, int at, ref CopyState state);

    private void Copy(long offset, int length, CopyPiece piece, CopyState state)
    {
        // Inside the drain the seal holds its device reference: the memory is mapped whatever the volume does.
        byte* basePtr = _seal.Device.HeldBase;
        int shift = _seal.BlockShift;
        long fileByte = _seal.Offset + offset;
        int done = 0;
        var frozen = _seal.Frozen;
        int i = _seal.FindExtent(fileByte >> shift);
        while (done < length)
        {
            var e = frozen[i];
            long inExtent = fileByte - (e.FileBlock << shift);
            int n = (int)Math.Min(length - done, (e.Count << shift) - inExtent);
            piece(basePtr + (e.DeviceBlock << shift) + inExtent, n, done, ref state);
            done += n;
            fileByte += n;
            i++;
        }
    }

    /// <summary>The device byte offset that holds pinned byte <paramref name="offset"/>, and how many bytes follow contiguously.</summary>
    /// <param name="offset">Byte offset relative to <see cref="Offset"/>.</param>
    /// <returns>The device byte offset, and the bytes from there to the end of its extent or of the pin, whichever comes first.</returns>
    /// <exception cref="PinnedDmaException">
    /// <see cref="PinnedDmaError.AccessDenied"/>: <paramref name="offset"/> is not inside the pin (a negative one included).
    /// </exception>
    public (long DeviceOffset, long Contiguous) Translate(long offset)
    {
        CheckBounds(offset, 1);
        int shift = _seal.BlockShift;
        long fileByte = _seal.Offset + offset;
        var e = _seal.Frozen[_seal.FindExtent(fileByte >> shift)];
        long inExtent = fileByte - (e.FileBlock << shift);
        return ((e.DeviceBlock << shift) + inExtent, Math.Min((e.Count << shift) - inExtent, _seal.Length - offset));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void CheckBounds(long offset, long length)
    {
        if ((ulong)offset > (ulong)_seal.Length || (ulong)length > (ulong)(_seal.Length - offset))
            ThrowOutOfBounds(offset, length);
    }

    private void ThrowOutOfBounds(long offset, long length) =>
        ThrowHelper.Throw(PinnedDmaError.AccessDenied, $"Access [{offset}, +{length}) is outside the pin's {_seal.Length} bytes.");

    /// <summary>Re-pins for WRITE: other files that share the blocks (clones made after the pin) get copies; the translation stays.</summary>
    /// <param name="access">WRITE to upgrade; READ, or the access the pin already has, does nothing.</param>
    /// <param name="policy">Policy if a sharer's pinned block must move; null for the file's or the volume's.</param>
    /// <exception cref="ObjectDisposedException">The volume is disposed.</exception>
    /// <exception cref="PinnedDmaException">
    /// The pin stays READ. <see cref="PinnedDmaError.Revoked"/> or <see cref="PinnedDmaError.Released"/>: the pin has
    /// ended (a pin detached by Defer has not: its blocks are its own, and it is granted WRITE);
    /// <see cref="PinnedDmaError.Busy"/>: a block to copy
    /// is held by another pin or Direct mapping and the policy refuses (Deny, a Wait that ran out, an unbreakable pin);
    /// <see cref="PinnedDmaError.NoSpace"/>: no free block for a copy.
    /// </exception>
    public void Upgrade(PinAccess access, ConflictPolicy? policy = null)
    {
        if (access == _seal.Access || access == PinAccess.Read) return;
        if (_seal.Drain.IsClosed) throw _seal.EndedError();
        if (!_seal.Owner.Volume.ResealForWrite(_seal, policy, _seal.GrantWrite)) throw _seal.EndedError();
        UpgradeWindowForTest?.Invoke();
    }

    /// <summary>
    /// Test hook: runs right after <see cref="Upgrade"/> has returned from the volume, where a clone once could slip
    /// in between the COW break and the switch to WRITE. Never set by the library.
    /// </summary>
    internal Action? UpgradeWindowForTest;

    /// <summary>Releases the pin: waits for in-flight DMA, unfreezes the range, returns the memlock charge.</summary>
    public void Dispose()
    {
        _seal.End(PinStatus.Released, "released");
        GC.SuppressFinalize(this);
    }

    /// <summary>
    /// Releases the pin as <see cref="Dispose"/> does, but awaits the in-flight DMA instead of blocking a thread: the
    /// drain closes at once (no new access through the pin succeeds from here on), and the task completes once the
    /// accesses inside have left and the range, the charge and the device reference are given back.
    /// </summary>
    /// <returns>A task that completes when the pin is released (at once when no DMA was in flight).</returns>
    public ValueTask DisposeAsync()
    {
        GC.SuppressFinalize(this);
        return _seal.EndAsync(PinStatus.Released, "released");
    }

    /// <summary>A leaked handle: release its pin off the finalizer thread.</summary>
    ~PinHandle()
    {
        var seal = _seal;
        if (!seal.Gone.IsCompleted && !seal.Owner.Volume.IsDisposed)
            ThreadPool.UnsafeQueueUserWorkItem(s => s.End(PinStatus.Released, "leaked handle finalized"), seal, preferLocal: false);
    }

    /// <inheritdoc />
    public override string ToString() => $"pin {_seal.Inode.Name}[{Offset}, +{Length}) {Access} {Status}";
}
