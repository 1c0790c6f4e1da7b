using System.Runtime.InteropServices;
using PinnedDma.Internal;
using PinnedDma.Storage;

namespace PinnedDma.Verbs;

/// <summary>
/// A registered memory region (ibv_mr): a file range registered through a pin (COW broken for READ and WRITE
/// regions alike, translation frozen), an on-demand (ODP) file range that translates through the current extent map
/// at each access, or a plain pinned buffer. Remote peers name it by <see cref="RKey"/>, local work requests by
/// <see cref="LKey"/>; both carry a random key byte so that a stale or guessed key fails.
/// </summary>
public sealed unsafe class MemoryRegion : IDisposable
{
    private readonly PinHandle? _pin;
    private readonly VolumeFile? _odpFile;
    private readonly long _odpOffset;
    private readonly byte* _buffer;
    private readonly DmaDrain _bufferDrain = new();
    private volatile bool _invalidated;
    private int _disposed;

    private MemoryRegion(ProtectionDomain pd, long length, AccessFlags access)
    {
        Weak = new WeakReference<MemoryRegion>(this);
        Pd = pd;
        Length = length;
        Access = access;
    }

    internal MemoryRegion(ProtectionDomain pd, PinHandle pin, AccessFlags access)
        : this(pd, pin.Length, access)
    {
        _pin = pin;
        Address = (ulong)pin.Offset;
        // The pin's seal is held by its owner: a strong reference from it would keep a dropped region alive forever.
        var weak = Weak;
        pin.LeaseBreaking += (_, e) =>
        {
            if (weak.TryGetTarget(out var mr)) mr.LeaseBreaking?.Invoke(mr, e);
        };
    }

    internal MemoryRegion(ProtectionDomain pd, VolumeFile file, long offset, long length, AccessFlags access)
        : this(pd, length, access)
    {
        _odpFile = file;
        _odpOffset = offset;
        Address = (ulong)offset;
    }

    internal MemoryRegion(ProtectionDomain pd, int length, AccessFlags access)
        : this(pd, (long)length, access)
    {
        _buffer = (byte*)NativeMemory.AlignedAlloc((nuint)Math.Max(length, 1), 4096);
        NativeMemory.Clear(_buffer, (nuint)length);
        Address = (ulong)_buffer;
    }

    /// <summary>The protection domain.</summary>
    public ProtectionDomain Pd { get; }

    /// <summary>First address of the region (the file offset for file regions, the buffer's address for buffers).</summary>
    public ulong Address { get; }

    /// <summary>Bytes.</summary>
    public long Length { get; }

    /// <summary>Access rights.</summary>
    public AccessFlags Access { get; private set; }

    /// <summary>Local key.</summary>
    public uint LKey { get; internal set; }

    /// <summary>Remote key.</summary>
    public uint RKey => LKey;

    /// <summary>The pin behind a file region (null for ODP and buffers).</summary>
    public PinHandle? Pin => _pin;

    /// <summary>True for an on-demand (ODP) region.</summary>
    public bool IsOnDemand => _odpFile is not null;

    /// <summary>
    /// False once invalidated (LocalInvalidate, SendWithInvalidate), deregistered, or once the pin under it was
    /// revoked: remote accesses then complete with <see cref="WcStatus.RemAccessErr"/>.
    /// </summary>
    public bool IsValid => !_invalidated && Volatile.Read(ref _disposed) == 0 && (_pin is null || _pin.Status is not (PinStatus.Revoked or PinStatus.Released));

    /// <summary>
    /// Raised when a volume operation asks for the lease of the pin under this region. Deregister (Dispose) within
    /// the timeout and re-register afterwards; otherwise the region is invalidated when the lease is revoked.
    /// </summary>
    public event EventHandler<LeaseBreakEventArgs>? LeaseBreaking;

    /// <summary>The bytes of a buffer region.</summary>
    /// <returns>The buffer's bytes, valid until the region is disposed.</returns>
    /// <exception cref="PinnedDmaException"><see cref="PinnedDmaError.NotSupported"/>: a file region (use its <see cref="Pin"/>).</exception>
    /// <exception cref="ObjectDisposedException">The region is disposed.</exception>
    public Span<byte> GetBufferSpan()
    {
        if (_buffer == null) ThrowHelper.Throw(PinnedDmaError.NotSupported, "Only buffer regions expose a span; file regions go through their pin.");
        if (Volatile.Read(ref _disposed) != 0) ThrowHelper.ThrowObjectDisposed(this);
        return new Span<byte>(_buffer, (int)Length);
    }

    /// <summary>ibv_rereg_mr with IBV_REREG_MR_CHANGE_ACCESS: gaining write access re-pins for WRITE (other sharers move).</summary>
    /// <param name="access">The new access rights; <see cref="AccessFlags.OnDemand"/> must stay as it is.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="access"/> has unknown flags.</exception>
    /// <exception cref="ArgumentException"><paramref name="access"/> adds or drops <see cref="AccessFlags.OnDemand"/>.</exception>
    /// <exception cref="ObjectDisposedException">
    /// The region is disposed (deregistered), or a file region's volume is disposed (while gaining write access).
    /// </exception>
    /// <exception cref="PinnedDmaException">
    /// The access stays as it was. <see cref="PinnedDmaError.InvalidArgument"/>: <see cref="AccessFlags.RemoteWrite"/>
    /// or <see cref="AccessFlags.RemoteAtomic"/> without <see cref="AccessFlags.LocalWrite"/>, or
    /// <see cref="AccessFlags.OnDemand"/> on a buffer region; when a pinned file region gains write access, what
    /// <see cref="PinHandle.Upgrade"/> throws: <see cref="PinnedDmaError.Revoked"/> or
    /// <see cref="PinnedDmaError.Released"/> (the pin has ended, the region deregistered included),
    /// <see cref="PinnedDmaError.Busy"/>, <see cref="PinnedDmaError.NoSpace"/>.
    /// </exception>
    public void ReRegister(AccessFlags access)
    {
        if (Volatile.Read(ref _disposed) != 0) ThrowHelper.ThrowObjectDisposed(this);
        ProtectionDomain.CheckAccess(access, isFile: _pin is not null || _odpFile is not null);
        if ((access & AccessFlags.OnDemand) != (Access & AccessFlags.OnDemand))
            throw new ArgumentException("OnDemand cannot be changed by re-registration.", nameof(access));
        if (_pin is not null && NeedsWrite(access)) _pin.Upgrade(PinAccess.Write);
        Access = access;
    }

    internal static bool NeedsWrite(AccessFlags a) => (a & (AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteAtomic)) != 0;

    internal void Invalidate() => _invalidated = true;

    internal bool IsDisposed => Volatile.Read(ref _disposed) != 0;

    /// <summary>How the key table and the PD hold this region: weakly, so that a dropped region can be finalized.</summary>
    internal WeakReference<MemoryRegion> Weak { get; }

    internal DmaDrain Drain => _pin?.Drain ?? _bufferDrain;

    /// <summary>Enters the region for one DMA access; false when it was revoked or deregistered meanwhile.</summary>
    internal bool TryEnter() => !_invalidated && (_odpFile is not null ? Volatile.Read(ref _disposed) == 0 : Drain.TryEnter());

    internal void Exit()
    {
        if (_odpFile is null) Drain.Exit();
    }

    /// <summary>The contiguous device or buffer memory at region offset <paramref name="offset"/>, at most <paramref name="max"/> bytes. Not for ODP.</summary>
    internal Span<byte> Piece(long offset, long max)
    {
        if (_buffer != null) return new Span<byte>(_buffer + offset, (int)Math.Min(max, Length - offset));
        var (dev, contiguous) = _pin!.Translate(offset);
        return _pin.Seal.Device.HeldSpan(dev, (int)Math.Min(Math.Min(max, contiguous), int.MaxValue));
    }

    /// <summary>Copies into the region at <paramref name="offset"/>.</summary>
    internal void WriteAt(long offset, ReadOnlySpan<byte> source)
    {
        if (_odpFile is not null)
        {
            _odpFile.Write(_odpOffset + offset, source);
            return;
        }
        while (!source.IsEmpty)
        {
            var piece = Piece(offset, source.Length);
            source[..piece.Length].CopyTo(piece);
            source = source[piece.Length..];
            offset += piece.Length;
        }
    }

    /// <summary>Copies out of the region at <paramref name="offset"/>.</summary>
    internal void ReadAt(long offset, Span<byte> destination)
    {
        if (_odpFile is not null)
        {
            int n = _odpFile.Read(_odpOffset + offset, destination);
            destination[n..].Clear();
            return;
        }
        while (!destination.IsEmpty)
        {
            var piece = Piece(offset, destination.Length);
            piece.CopyTo(destination);
            destination = destination[piece.Length..];
            offset += piece.Length;
        }
    }

    /// <summary>An 8-byte atomic on the region; an ODP region's is done by the volume, serialised with the file's other writes.</summary>
    internal ulong Atomic(long offset, bool compareSwap, ulong compareAdd, ulong swap)
    {
        if (_odpFile is not null)
        {
            return _odpFile.Volume.Atomic(_odpFile.Inode, _odpOffset + offset, compareSwap, compareAdd, swap);
        }
        var piece = Piece(offset, 8);
        ref ulong target = ref MemoryMarshal.AsRef<ulong>(piece);
        return compareSwap
            ? Interlocked.CompareExchange(ref target, swap, compareAdd)
            : Interlocked.Add(ref target, compareAdd) - compareAdd;
    }

    /// <summary>ibv_dereg_mr: the key stops working, in-flight DMA drains, the pin is released.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _invalidated = true;
        Pd.Device.Keys.Remove(this);
        Pd.Forget(this);
        if (_pin is not null)
        {
            _pin.Dispose();
        }
        else if (_buffer != null)
        {
            _bufferDrain.Close();
            NativeMemory.AlignedFree(_buffer);
        }
        GC.SuppressFinalize(this);
    }

    /// <summary>
    /// A region dropped without Dispose: its key slot is freed, a buffer's memory too; the pin under a file region is
    /// unreachable as well, and its own finalizer gives back the range and the memlock charge.
    /// </summary>
    ~MemoryRegion()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        Pd.Device.Keys.Remove(this);
        Pd.Forget(this);
        if (_buffer != null) NativeMemory.AlignedFree(_buffer);
    }

    /// <inheritdoc />
    public override string ToString() => $"mr key 0x{LKey:x8} [{Address:x}, +{Length}) {Access}{(IsValid ? "" : " invalid")}";
}
