using PinnedDma.Internal;
using PinnedDma.Layout;
using PinnedDma.Storage;
using PinnedDma.Storage.Internal;

namespace PinnedDma;

/// <summary>
/// Who pins: the analogue of a process's mm. Holds a memlock account with a limit (RLIMIT_MEMLOCK): a pin that would
/// exceed it fails with <see cref="PinnedDmaError.MemlockLimitExceeded"/> and nothing is pinned. Disposing the owner
/// releases every pin and mapping it holds, as process exit does.
/// </summary>
public sealed class PinOwner : IDisposable
{
    private readonly object _sync = new();
    private readonly HashSet<PinSeal> _pins = new();
    private readonly HashSet<FileMapping> _mappings = new();
    private long _locked;
    private int _disposed;

    /// <summary>Creates an owner pinning on <paramref name="volume"/> with a memlock limit in bytes.</summary>
    /// <param name="volume">The volume pinned on.</param>
    /// <param name="memlockLimit">Most bytes pinned at once (0 or more).</param>
    /// <param name="name">A name for messages; null for "owner".</param>
    /// <exception cref="ArgumentNullException"><paramref name="volume"/> is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="memlockLimit"/> is negative.</exception>
    public PinOwner(Volume volume, long memlockLimit, string? name = null)
    {
        ArgumentNullException.ThrowIfNull(volume);
        ArgumentOutOfRangeException.ThrowIfNegative(memlockLimit);
        Volume = volume;
        MemlockLimit = memlockLimit;
        Name = name ?? "owner";
        Diagnostics.Telemetry.Track(this);
    }

    internal bool IsDisposed => Volatile.Read(ref _disposed) != 0;

    /// <summary>The volume pinned on.</summary>
    public Volume Volume { get; }

    /// <summary>A name for messages.</summary>
    public string Name { get; }

    /// <summary>Most bytes this owner may have pinned at once.</summary>
    public long MemlockLimit { get; }

    /// <summary>Bytes pinned now (whole blocks): the sum over live pins.</summary>
    public long LockedBytes => Interlocked.Read(ref _locked);

    /// <summary>Live pins.</summary>
    public int PinCount
    {
        get { lock (_sync) return _pins.Count; }
    }

    /// <summary>
    /// mpin: breaks COW (READ and WRITE), populates holes, freezes the translation of [offset, offset+length) and takes a
    /// layout lease. The range must lie within the file's size.
    /// </summary>
    /// <param name="file">The file.</param>
    /// <param name="offset">Byte offset.</param>
    /// <param name="length">Bytes (non-zero).</param>
    /// <param name="access">READ or WRITE.</param>
    /// <param name="options">Unbreakable for an exclusive pin.</param>
    /// <param name="policy">Policy if the COW break must move another file's pinned block.</param>
    /// <returns>
    /// The live pin: its <see cref="PinHandle.ScatterGatherList"/> is the frozen translation to hand to a DMA engine,
    /// valid until the pin ends (dispose, owner dispose, or a revoke after an unanswered lease break).
    /// </returns>
    /// <exception cref="ArgumentNullException"><paramref name="file"/> is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="file"/> is on another volume than the owner's.</exception>
    /// <exception cref="ArgumentOutOfRangeException">
    /// <paramref name="access"/> is neither READ nor WRITE, <paramref name="offset"/> or <paramref name="length"/> is
    /// negative, or their sum overflows.
    /// </exception>
    /// <exception cref="ObjectDisposedException">The owner or its volume is disposed.</exception>
    /// <exception cref="PinnedDmaException">
    /// Nothing is pinned, charged or moved. <see cref="PinnedDmaError.InvalidArgument"/>: an empty range or one past
    /// the file's end; <see cref="PinnedDmaError.NotFound"/>: the file was deleted;
    /// <see cref="PinnedDmaError.MemlockLimitExceeded"/>: the owner's limit;
    /// <see cref="PinnedDmaError.Busy"/>: breaking COW would move a block another pin holds and
    /// <paramref name="policy"/> is Deny, a Wait ran out, or that pin is unbreakable (under Break its holder is asked
    /// and, after the timeout, revoked, and the pin goes on); <see cref="PinnedDmaError.NoSpace"/>: no free block for
    /// the copy or for a hole, or no metadata room.
    /// </exception>
    /// <example>
    /// Pin a file range for DMA and give it back when the file system asks:
    /// <code>
    /// using var owner = new PinOwner(volume, memlockLimit: 1 &lt;&lt; 20);
    /// PinHandle pin = owner.Pin(file, offset: 0, length: 64 * 1024, PinAccess.Write);
    /// pin.LeaseBreaking += (_, e) => pin.Dispose();      // a truncate or punch over the range asks first
    /// foreach (ScatterGatherEntry sg in pin.ScatterGatherList)
    ///     Console.WriteLine($"device offset {sg.DeviceOffset}, {sg.Length} B");
    /// pin.Write(0, "hello"u8);                            // CPU access through the pin's translation
    /// file.Truncate(0, ConflictPolicy.Break(TimeSpan.FromSeconds(1)));   // breaks the lease, then truncates
    /// </code>
    /// </example>
    public PinHandle Pin(VolumeFile file, long offset, long length, PinAccess access, PinOptions options = PinOptions.None, ConflictPolicy? policy = null)
    {
        ArgumentNullException.ThrowIfNull(file);
        if (file.Volume != Volume) throw new ArgumentException("The file is on another volume.", nameof(file));
        if (access is not (PinAccess.Read or PinAccess.Write)) throw new ArgumentOutOfRangeException(nameof(access));
        ThrowHelper.CheckRange(offset, length);
        ThrowIfDisposed();
        int bs = Volume.BlockSize;
        long first = offset / bs * bs;
        long charge = length == 0 ? 0 : ((offset + length + bs - 1) / bs * bs) - first;
        // The pin's reference on the device memory: taken before the seal, so a pin never outlives the mapping its DMA
        // goes through, and refused once the volume's dispose has begun.
        var device = Volume.Device;
        if (!device.TryAddRef()) ThrowHelper.ThrowObjectDisposed(Volume);
        bool late = false;
        PinSeal? seal = null;
        try
        {
            Charge(charge);
            try
            {
                seal = (PinSeal)Volume.CreateSeal(file.Inode, offset, length, policy, requirePrivate: false,
                    (inode, fb, count, frozen) =>
                    {
                        var s = new PinSeal(this, inode, fb, count, frozen, access, (options & PinOptions.Unbreakable) != 0, offset, length, charge, device);
                        lock (_sync)
                        {
                            _pins.Add(s);
                            Diagnostics.Telemetry.PinChanged(1, charge);
                            // Dispose sets its flag before it takes its snapshot under this lock: a pin added after the
                            // snapshot sees the flag here and ends itself below.
                            late = _disposed != 0;
                        }
                        return s;
                    }, readPin: access == PinAccess.Read);
            }
            catch
            {
                Uncharge(charge);
                throw;
            }
        }
        catch
        {
            device.Release();
            throw;
        }
        // From here the seal owns the charge and the device reference (End gives both back).
        if (late)
        {
            seal!.End(PinStatus.Released, "owner disposed");
            ThrowHelper.ThrowObjectDisposed(this);
        }
        return new PinHandle(seal!);
    }

    /// <summary>Maps a file range with mapping descriptors (see <see cref="MapFlags"/>).</summary>
    /// <param name="file">The file.</param>
    /// <param name="offset">Byte offset.</param>
    /// <param name="length">Bytes (non-zero).</param>
    /// <param name="flags">Shared, plus Populate, Sync or Direct.</param>
    /// <returns>The mapping; a Direct one holds a layout seal on the range until it is disposed.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="file"/> is null.</exception>
    /// <exception cref="ArgumentException">
    /// <paramref name="file"/> is on another volume than the owner's, or <paramref name="flags"/> lacks
    /// <see cref="MapFlags.Shared"/>.
    /// </exception>
    /// <exception cref="ArgumentOutOfRangeException">
    /// <paramref name="flags"/> has unknown bits, <paramref name="offset"/> or <paramref name="length"/> is negative or
    /// their sum overflows, or <paramref name="length"/> is 0.
    /// </exception>
    /// <exception cref="ObjectDisposedException">
    /// The owner is disposed, or, with <see cref="MapFlags.Direct"/> or <see cref="MapFlags.Populate"/>, its volume.
    /// </exception>
    /// <exception cref="PinnedDmaException">
    /// With <see cref="MapFlags.Direct"/> or <see cref="MapFlags.Populate"/> (a plain mapping checks nothing more):
    /// <see cref="PinnedDmaError.InvalidArgument"/>: the range goes past the file's end, or a Direct mapping without
    /// Populate covers a hole or a shared block; <see cref="PinnedDmaError.NotFound"/>: the file was deleted;
    /// <see cref="PinnedDmaError.Busy"/>: populating would move a block another pin holds and the policy refuses
    /// (always Deny for Direct); <see cref="PinnedDmaError.NoSpace"/>: no free block for a hole or a copy, or no
    /// metadata room.
    /// </exception>
    public FileMapping Map(VolumeFile file, long offset, long length, MapFlags flags)
    {
        ArgumentNullException.ThrowIfNull(file);
        if (file.Volume != Volume) throw new ArgumentException("The file is on another volume.", nameof(file));
        ThrowIfDisposed();
        var m = new FileMapping(this, file, offset, length, flags);
        lock (_sync)
        {
            if (_disposed != 0) { m.Dispose(); ThrowHelper.ThrowObjectDisposed(this); }
            _mappings.Add(m);
        }
        return m;
    }

    private void Charge(long bytes)
    {
        while (true)
        {
            long cur = Interlocked.Read(ref _locked);
            if (cur + bytes > MemlockLimit)
                ThrowHelper.Throw(PinnedDmaError.MemlockLimitExceeded,
                    $"Pinning {bytes} bytes would take '{Name}' to {cur + bytes} bytes, over its memlock limit of {MemlockLimit}.");
            if (Interlocked.CompareExchange(ref _locked, cur + bytes, cur) == cur) return;
        }
    }

    private void Uncharge(long bytes) => Interlocked.Add(ref _locked, -bytes);

    internal void Forget(PinSeal seal)
    {
        bool had;
        lock (_sync) had = _pins.Remove(seal);
        if (had)
        {
            Uncharge(seal.Charged);
            Diagnostics.Telemetry.PinChanged(-1, -seal.Charged);
        }
    }

    internal void Forget(FileMapping mapping)
    {
        lock (_sync) _mappings.Remove(mapping);
    }

    private void ThrowIfDisposed()
    {
        if (Volatile.Read(ref _disposed) != 0) ThrowHelper.ThrowObjectDisposed(this);
    }

    /// <summary>Releases every pin and mapping (waiting for their in-flight DMA).</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        PinSeal[] pins;
        FileMapping[] maps;
        lock (_sync)
        {
            pins = _pins.ToArray();
            maps = _mappings.ToArray();
        }
        foreach (var p in pins) p.End(PinStatus.Released, "owner disposed");
        foreach (var m in maps) m.Dispose();
    }

    /// <inheritdoc />
    public override string ToString() => $"{Name}: {LockedBytes}/{MemlockLimit} bytes locked in {PinCount} pins";
}
