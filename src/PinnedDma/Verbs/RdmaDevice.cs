using PinnedDma.Internal;
using PinnedDma.Verbs.Internal;

namespace PinnedDma.Verbs;

/// <summary>
/// A soft RDMA NIC: a key table (the NIC's translation table) and a DMA engine on its own thread that moves every
/// byte through memory-region translation while holding the pin's drain. Queue pairs of devices in one process
/// connect over the in-process loopback fabric.
/// </summary>
/// <remarks>
/// Lifetime: disposing the device cascades, as process exit does for an ibv_context (the choice this library makes
/// over libibverbs' EBUSY rule, because a Dispose in a finally block must not fail): every protection domain is
/// disposed (its queue pairs destroyed, then its regions deregistered), then every completion queue (pending waiters
/// fault with <see cref="ObjectDisposedException"/>), then the DMA engine stops and its thread is joined. No child can
/// be created once the device's dispose has begun, and after it returns no byte moves through the device.
/// </remarks>
public sealed class RdmaDevice : IDisposable
{
    private readonly object _sync = new();
    private readonly HashSet<ProtectionDomain> _pds = new();
    private readonly HashSet<CompletionQueue> _cqs = new();
    private int _disposed; // written under _sync

    /// <summary>Opens a soft device.</summary>
    /// <param name="name">The device's name (its DMA engine thread and its telemetry carry it).</param>
    /// <exception cref="ArgumentNullException"><paramref name="name"/> is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="name"/> is empty or only white space.</exception>
    public RdmaDevice(string name = "soft0")
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        Name = name;
        Engine = new DmaEngine(name);
    }

    /// <summary>Device name.</summary>
    public string Name { get; }

    internal KeyTable Keys { get; } = new();

    internal DmaEngine Engine { get; }

    /// <summary>ibv_alloc_pd.</summary>
    /// <returns>A new protection domain on this device.</returns>
    /// <exception cref="ObjectDisposedException">The device is disposed.</exception>
    public ProtectionDomain AllocatePd()
    {
        ThrowIfDisposed();
        var pd = new ProtectionDomain(this);
        lock (_sync)
        {
            if (_disposed != 0) ThrowHelper.ThrowObjectDisposed(this);
            _pds.Add(pd);
        }
        return pd;
    }

    /// <summary>ibv_create_cq with <paramref name="capacity"/> entries; an overrun is an error, not growth.</summary>
    /// <param name="capacity">Entries: 1 to 4194304 (2^22).</param>
    /// <returns>A new, empty completion queue on this device.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="capacity"/> is not from 1 to 2^22.</exception>
    /// <exception cref="ObjectDisposedException">The device is disposed.</exception>
    public CompletionQueue CreateCompletionQueue(int capacity)
    {
        ThrowIfDisposed();
        var cq = new CompletionQueue(capacity, this);
        lock (_sync)
        {
            if (_disposed != 0) ThrowHelper.ThrowObjectDisposed(this);
            _cqs.Add(cq);
        }
        return cq;
    }

    internal void ThrowIfDisposed()
    {
        if (Volatile.Read(ref _disposed) != 0) ThrowHelper.ThrowObjectDisposed(this);
    }

    internal void Forget(ProtectionDomain pd)
    {
        lock (_sync) _pds.Remove(pd);
    }

    internal void Forget(CompletionQueue cq)
    {
        lock (_sync) _cqs.Remove(cq);
    }

    /// <summary>Closes the device, cascading to everything opened on it (see the remarks).</summary>
    public void Dispose()
    {
        ProtectionDomain[] pds;
        CompletionQueue[] cqs;
        lock (_sync)
        {
            if (_disposed != 0) return;
            _disposed = 1;
            pds = _pds.ToArray();
            cqs = _cqs.ToArray();
        }
        foreach (var pd in pds) pd.Dispose();
        foreach (var cq in cqs) cq.Dispose();
        Engine.Dispose();
    }
}
