using PinnedDma.Verbs.Internal;

namespace PinnedDma.Verbs;

/// <summary>
/// A soft RDMA NIC: a key table (the NIC's translation table) and a DMA engine on its own thread that moves every
/// byte through memory-region translation while holding the pin's drain. Queue pairs of devices in one process
/// connect over the in-process loopback fabric.
/// </summary>
public sealed class RdmaDevice : IDisposable
{
    private int _disposed;

    /// <summary>Opens a soft device.</summary>
    public RdmaDevice(string name = "soft0")
    {
        Name = name;
        Engine = new DmaEngine(name);
    }

    /// <summary>Device name.</summary>
    public string Name { get; }

    internal KeyTable Keys { get; } = new();

    internal DmaEngine Engine { get; }

    /// <summary>ibv_alloc_pd.</summary>
    public ProtectionDomain AllocatePd() => new(this);

    /// <summary>ibv_create_cq with <paramref name="capacity"/> entries; an overrun is an error, not growth.</summary>
    public CompletionQueue CreateCompletionQueue(int capacity) => new(capacity);

    /// <summary>Stops the DMA engine.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        Engine.Dispose();
    }
}
