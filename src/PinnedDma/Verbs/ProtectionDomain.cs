using PinnedDma.Internal;
using PinnedDma.Storage;

namespace PinnedDma.Verbs;

/// <summary>A protection domain (ibv_pd): memory regions and queue pairs of one PD can reach each other, no others.</summary>
public sealed class ProtectionDomain : IDisposable
{
    private int _disposed;

    internal ProtectionDomain(RdmaDevice device) => Device = device;

    /// <summary>The device.</summary>
    public RdmaDevice Device { get; }

    /// <summary>
    /// ibv_reg_mr over a file range: pins it (COW broken for READ and WRITE regions alike, holes populated,
    /// translation frozen, memlock charged to <paramref name="owner"/>). With <see cref="AccessFlags.OnDemand"/>
    /// nothing is pinned and each access translates through the current extent map.
    /// </summary>
    public MemoryRegion RegisterFile(PinOwner owner, VolumeFile file, long offset, long length, AccessFlags access, PinOptions options = PinOptions.None)
    {
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
        Device.Keys.Add(mr);
        return mr;
    }

    /// <summary>Registers a fresh page-aligned native buffer of <paramref name="length"/> bytes (pinned by construction).</summary>
    public MemoryRegion RegisterBuffer(int length, AccessFlags access)
    {
        ThrowIfDisposed();
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(length);
        CheckAccess(access, isFile: false);
        var mr = new MemoryRegion(this, length, access);
        Device.Keys.Add(mr);
        return mr;
    }

    /// <summary>Creates an RC queue pair.</summary>
    public QueuePair CreateQueuePair(QueuePairOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        ThrowIfDisposed();
        return new QueuePair(this, options);
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

    /// <summary>Deallocates the PD.</summary>
    public void Dispose() => Interlocked.Exchange(ref _disposed, 1);
}
