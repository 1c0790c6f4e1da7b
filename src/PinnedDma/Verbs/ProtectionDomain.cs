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
    public MemoryRegion RegisterBuffer(int length, AccessFlags access)
    {
        ThrowIfDisposed();
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(length);
        CheckAccess(access, isFile: false);
        return Publish(new MemoryRegion(this, length, access));
    }

    /// <summary>Creates an RC queue pair.</summary>
    public QueuePair CreateQueuePair(QueuePairOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        ThrowIfDisposed();
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
