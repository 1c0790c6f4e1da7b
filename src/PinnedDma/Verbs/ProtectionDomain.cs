using PinnedDma.Internal;
using PinnedDma.Storage;

namespace PinnedDma.Verbs;

/// <summary>A protection domain (ibv_pd): memory regions and queue pairs of one PD can reach each other, no others.</summary>
/// <remarks>
/// Lifetime: the PD holds its queue pairs and memory regions (each child names its PD, and the PD knows its
/// children). Disposing the PD cascades: its queue pairs are destroyed first (remote access ends, outstanding work
/// completes with WrFlushErr), then its regions are deregistered (keys stop working, in-flight DMA drains). No child
/// can be created once the PD's dispose has begun.
/// </remarks>
public sealed class ProtectionDomain : IDisposable
{
    private readonly object _sync = new();
    private readonly HashSet<QueuePair> _qps = new();
    private readonly HashSet<WeakReference<MemoryRegion>> _mrs = new(); // weak: a dropped region can be finalized
    private int _disposed; // written under _sync

    internal ProtectionDomain(RdmaDevice device) => Device = device;

    /// <summary>Adds a child; false (nothing added) once the PD's dispose has begun.</summary>
    private bool TryAdopt(QueuePair? qp, MemoryRegion? mr)
    {
        lock (_sync)
        {
            if (_disposed != 0) return false;
            if (qp is not null) _qps.Add(qp);
            if (mr is not null) _mrs.Add(mr.Weak);
            return true;
        }
    }

    internal void Forget(QueuePair qp)
    {
        lock (_sync) _qps.Remove(qp);
    }

    internal void Forget(MemoryRegion mr)
    {
        lock (_sync) _mrs.Remove(mr.Weak);
    }

    /// <summary>The device.</summary>
    public RdmaDevice Device { get; }

    /// <summary>
    /// ibv_reg_mr over a file range: pins it (COW broken for READ and WRITE regions alike, holes populated,
    /// translation frozen, memlock charged to <paramref name="owner"/>). With <see cref="AccessFlags.OnDemand"/>
    /// nothing is pinned and each access translates through the current extent map.
    /// </summary>
    /// <param name="owner">Whose memlock account the pin is charged to (unused with <see cref="AccessFlags.OnDemand"/>).</param>
    /// <param name="file">The file.</param>
    /// <param name="offset">Byte offset in the file.</param>
    /// <param name="length">Bytes: 1 to 4 GiB, within the file's size.</param>
    /// <param name="access">Local and remote access (remote write and atomic need local write), optionally OnDemand.</param>
    /// <param name="options">Unbreakable for an exclusive pin.</param>
    /// <returns>
    /// The region: its <see cref="MemoryRegion.LKey"/>, <see cref="MemoryRegion.RKey"/> and
    /// <see cref="MemoryRegion.Address"/> (the file offset where the range starts) name it in work requests, until it is disposed or
    /// its pin's lease is revoked.
    /// </returns>
    /// <exception cref="ArgumentNullException"><paramref name="owner"/> or <paramref name="file"/> is null.</exception>
    /// <exception cref="ArgumentException">
    /// <paramref name="file"/> is on another volume than <paramref name="owner"/>'s.
    /// </exception>
    /// <exception cref="ArgumentOutOfRangeException">
    /// <paramref name="access"/> has unknown flags, <paramref name="offset"/> or <paramref name="length"/> is negative
    /// or their sum overflows, or <paramref name="length"/> is 0 or over 4 GiB.
    /// </exception>
    /// <exception cref="ObjectDisposedException">
    /// The device or the protection domain is disposed, or, for a pinned region, the owner or the volume.
    /// </exception>
    /// <exception cref="PinnedDmaException">
    /// Nothing is registered, pinned or charged. <see cref="PinnedDmaError.InvalidArgument"/>:
    /// <see cref="AccessFlags.RemoteWrite"/> or <see cref="AccessFlags.RemoteAtomic"/> without
    /// <see cref="AccessFlags.LocalWrite"/>, or the range goes past the file's end; for a pinned region also what
    /// <see cref="PinOwner.Pin"/> throws: <see cref="PinnedDmaError.MemlockLimitExceeded"/>,
    /// <see cref="PinnedDmaError.Busy"/> (breaking COW would move a block another pin holds and the volume's policy
    /// refuses), <see cref="PinnedDmaError.NoSpace"/>.
    /// </exception>
    /// <example>
    /// Register a file range as an RDMA target and let a peer write into it over the loopback fabric:
    /// <code>
    /// using var nic = new RdmaDevice();
    /// ProtectionDomain pd = nic.AllocatePd();
    /// using var owner = new PinOwner(volume, memlockLimit: 1 &lt;&lt; 20);
    /// MemoryRegion target = pd.RegisterFile(owner, file, offset: 0, length: 64 * 1024,
    ///     AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteRead);
    /// target.LeaseBreaking += (_, e) => target.Dispose();   // deregister when a truncate or punch asks
    /// // a peer's RDMA WRITE names it with RemoteAddress = target.Address + offsetInRange and RKey = target.RKey
    /// </code>
    /// </example>
    public MemoryRegion RegisterFile(PinOwner owner, VolumeFile file, long offset, long length, AccessFlags access, PinOptions options = PinOptions.None)
    {
        Device.ThrowIfDisposed();
        ArgumentNullException.ThrowIfNull(owner);
        ArgumentNullException.ThrowIfNull(file);
        ThrowIfDisposed();
        CheckAccess(access, isFile: true);
        ThrowHelper.CheckRange(offset, length);
        if (length == 0 || length > uint.MaxValue) throw new ArgumentOutOfRangeException(nameof(length), length, "A region is 1 byte to 4 GiB.");
        MemoryRegion mr;
        if ((access & AccessFlags.OnDemand) != 0)
        {
            if (file.Volume != owner.Volume) throw new ArgumentException("The file is on another volume.", nameof(file));
            if (offset + length > file.Length)
                ThrowHelper.Throw(PinnedDmaError.InvalidArgument, $"ODP range [{offset}, +{length}) goes past EOF ({file.Length}).");
            mr = new MemoryRegion(this, file, offset, length, access);
        }
        else
        {
            var pin = owner.Pin(file, offset, length, MemoryRegion.NeedsWrite(access) ? PinAccess.Write : PinAccess.Read, options);
            mr = new MemoryRegion(this, pin, access);
        }
        return Publish(mr);
    }

    /// <summary>Registers a fresh page-aligned native buffer of <paramref name="length"/> bytes (pinned by construction).</summary>
    /// <param name="length">Bytes: 1 to 1 GiB.</param>
    /// <param name="access">Local and remote access (remote write and atomic need local write); not OnDemand.</param>
    /// <returns>The region; <see cref="MemoryRegion.GetBufferSpan"/> gives its bytes.</returns>
    /// <exception cref="ArgumentOutOfRangeException">
    /// <paramref name="length"/> is not from 1 to 1 GiB (the buffer is allocated and zeroed at once: a careless
    /// <see cref="int.MaxValue"/> would commit 2 GiB), or <paramref name="access"/> has unknown flags.
    /// </exception>
    /// <exception cref="ObjectDisposedException">The protection domain is disposed.</exception>
    /// <exception cref="PinnedDmaException">
    /// <see cref="PinnedDmaError.InvalidArgument"/>: <see cref="AccessFlags.RemoteWrite"/> or
    /// <see cref="AccessFlags.RemoteAtomic"/> without <see cref="AccessFlags.LocalWrite"/>, or
    /// <see cref="AccessFlags.OnDemand"/> (it applies to file ranges only).
    /// </exception>
    public MemoryRegion RegisterBuffer(int length, AccessFlags access)
    {
        ThrowIfDisposed();
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(length);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(length, MaxBufferLength);
        CheckAccess(access, isFile: false);
        return Publish(new MemoryRegion(this, length, access));
    }

    /// <summary>Creates an RC queue pair.</summary>
    /// <param name="options">Completion queues and queue depths.</param>
    /// <returns>The queue pair, in <see cref="QpState.Reset"/>.</returns>
    /// <exception cref="ArgumentNullException">
    /// <paramref name="options"/> is null, or its <see cref="QueuePairOptions.SendCq"/> or
    /// <see cref="QueuePairOptions.RecvCq"/> is null.
    /// </exception>
    /// <exception cref="ArgumentException">A completion queue belongs to another device (ibv_create_qp: EINVAL).</exception>
    /// <exception cref="ArgumentOutOfRangeException">
    /// <see cref="QueuePairOptions.MaxSendWr"/> or <see cref="QueuePairOptions.MaxRecvWr"/> is not from 1 to
    /// 65536 (the device's max_qp_wr).
    /// </exception>
    /// <exception cref="ObjectDisposedException">The protection domain or one of the completion queues is disposed.</exception>
    public QueuePair CreateQueuePair(QueuePairOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        ThrowIfDisposed();
        if (options.SendCq is null) throw new ArgumentNullException(nameof(options), "QueuePairOptions.SendCq is required.");
        if (options.RecvCq is null) throw new ArgumentNullException(nameof(options), "QueuePairOptions.RecvCq is required.");
        // A queue pair completes into CQs of its own device only: another device's CQ goes when that device goes.
        if (options.SendCq.Device is { } sd && sd != Device)
            throw new ArgumentException($"The send CQ belongs to device {sd.Name}, not {Device.Name}.", nameof(options));
        if (options.RecvCq.Device is { } rd && rd != Device)
            throw new ArgumentException($"The receive CQ belongs to device {rd.Name}, not {Device.Name}.", nameof(options));
        // Checked before the queues are allocated: a careless int.MaxValue must not become a multi-gigabyte array.
        ArgumentOutOfRangeException.ThrowIfGreaterThan(options.MaxSendWr, MaxQueueDepth, nameof(options));
        ArgumentOutOfRangeException.ThrowIfGreaterThan(options.MaxRecvWr, MaxQueueDepth, nameof(options));
        var qp = new QueuePair(this, options);
        if (!TryAdopt(qp, null))
        {
            qp.Dispose();
            ThrowHelper.ThrowObjectDisposed(this);
        }
        return qp;
    }

    /// <summary>Adopts a new region, then gives it a key: a region the PD's dispose may have missed never gets one.</summary>
    private MemoryRegion Publish(MemoryRegion mr)
    {
        if (!TryAdopt(null, mr))
        {
            mr.Dispose();
            ThrowHelper.ThrowObjectDisposed(this);
        }
        Device.Keys.Add(mr);
        // The PD's dispose may have deregistered the region between the adoption and the key: give the key back.
        if (!mr.IsValid && mr.IsDisposed) Device.Keys.Remove(mr);
        return mr;
    }

    /// <summary>The largest buffer region.</summary>
    internal const int MaxBufferLength = 1 << 30;

    /// <summary>The most work requests a send or receive queue holds (max_qp_wr).</summary>
    internal const int MaxQueueDepth = 1 << 16;

    internal static void CheckAccess(AccessFlags access, bool isFile)
    {
        const AccessFlags known = AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteRead | AccessFlags.RemoteAtomic | AccessFlags.OnDemand;
        if ((access & ~known) != 0) throw new ArgumentOutOfRangeException(nameof(access), access, "Unknown access flags.");
        // As ibv_reg_mr: remote write and atomic need local write (EINVAL).
        if ((access & (AccessFlags.RemoteWrite | AccessFlags.RemoteAtomic)) != 0 && (access & AccessFlags.LocalWrite) == 0)
            ThrowHelper.Throw(PinnedDmaError.InvalidArgument, "RemoteWrite and RemoteAtomic require LocalWrite (EINVAL).");
        if (!isFile && (access & AccessFlags.OnDemand) != 0)
            ThrowHelper.Throw(PinnedDmaError.InvalidArgument, "OnDemand applies to file ranges.");
    }

    private void ThrowIfDisposed()
    {
        if (Volatile.Read(ref _disposed) != 0) ThrowHelper.ThrowObjectDisposed(this);
    }

    /// <summary>
    /// ibv_dealloc_pd, cascading (see the remarks): destroys the PD's queue pairs, then deregisters its regions. After
    /// it returns no byte moves through anything of this PD.
    /// </summary>
    public void Dispose()
    {
        QueuePair[] qps;
        MemoryRegion[] mrs;
        lock (_sync)
        {
            if (_disposed != 0) return;
            _disposed = 1;
            qps = _qps.ToArray();
            mrs = _mrs.Select(w => w.TryGetTarget(out var mr) ? mr : null).OfType<MemoryRegion>().ToArray();
        }
        foreach (var qp in qps) qp.Dispose();
        foreach (var mr in mrs) mr.Dispose();
        Device.Forget(this);
    }
}
