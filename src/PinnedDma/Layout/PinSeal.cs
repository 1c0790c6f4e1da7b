using PinnedDma.Internal;
using PinnedDma.Storage;
using PinnedDma.Storage.Internal;

namespace PinnedDma.Layout;

/// <summary>
/// The state behind a <see cref="PinHandle"/>: the seal the volume honours, the drain DMA holds, the memlock charge
/// and the lease-break plumbing. The owner holds this object, not the handle, so that a handle the application drops
/// can be finalized and its pin released.
/// </summary>
internal sealed class PinSeal : Seal
{
    private readonly TaskCompletionSource _gone = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly bool _unbreakable;
    private volatile PinAccess _access;
    private int _status; // PinStatus
    private int _ended;

    public PinSeal(PinOwner owner, Inode inode, long firstBlock, long blockCount, Extent[] frozen, PinAccess access,
        bool unbreakable, long offset, long length, long charged, BlockDevice device)
        : base(inode, firstBlock, blockCount)
    {
        Owner = owner;
        Device = device;
        Frozen = frozen;
        _access = access;
        _unbreakable = unbreakable;
        Offset = offset;
        Length = length;
        Charged = charged;
        BlockShift = owner.Volume.BlockShift;
        FrozenStarts = new long[frozen.Length];
        for (int i = 0; i < frozen.Length; i++) FrozenStarts[i] = frozen[i].FileBlock;
    }

    public PinOwner Owner { get; }

    /// <summary>The device memory DMA goes through; the seal holds a reference on it until <see cref="End"/>.</summary>
    public BlockDevice Device { get; }
    public long Offset { get; }
    public long Length { get; }
    public long Charged { get; }
    public int BlockShift { get; }
    public long[] FrozenStarts { get; }
    public DmaDrain Drain { get; } = new();
    public PinAccess Access { get => _access; set => _access = value; }
    public string? EndReason { get; private set; }

    /// <summary>Switches to WRITE; called by the volume under its lock, in the same hold as the upgrade's COW break.</summary>
    public void GrantWrite() => _access = PinAccess.Write;

    /// <summary>The layout lease the pin holds on its range.</summary>
    public LayoutLease Lease { get; } = new();

    public event EventHandler<LeaseBreakEventArgs>? LeaseBreaking
    {
        add => Lease.Breaking += value;
        remove => Lease.Breaking -= value;
    }

    public PinStatus Status
    {
        get
        {
            var s = (PinStatus)Volatile.Read(ref _status);
            return s is PinStatus.Active or PinStatus.Breaking && Detached ? PinStatus.Detached : s;
        }
    }

    public Task<LeaseBreakEventArgs> BreakRequested => Lease.BreakRequested;

    public override bool WriteAccess => _access == PinAccess.Write;
    public override bool Unbreakable => _unbreakable;
    public override Task Gone => _gone.Task;

    /// <summary>Marks the pin Breaking and tells the holder once (<see cref="LayoutLease.RequestBreak"/>).</summary>
    public override void RequestBreak(TimeSpan timeout, string reason)
    {
        Interlocked.CompareExchange(ref _status, (int)PinStatus.Breaking, (int)PinStatus.Active);
        Lease.RequestBreak(this, timeout, reason);
    }

    public override void Revoke(string reason) => End(PinStatus.Revoked, reason);

    public override ValueTask RevokeAsync(string reason) => EndAsync(PinStatus.Revoked, reason);

    /// <summary>Ends the pin: closes the drain (waits for in-flight DMA), then gives the range back to the volume.</summary>
    public void End(PinStatus how, string reason)
    {
        if (!Begin(how, reason))
        {
            Drain.Close();
            Gone.Wait();
            return;
        }
        Drain.Close();
        Finish();
    }

    /// <summary><see cref="End"/> without blocking a thread: the drain and a concurrent end are awaited.</summary>
    public async ValueTask EndAsync(PinStatus how, string reason)
    {
        if (!Begin(how, reason))
        {
            await Drain.CloseAsync().ConfigureAwait(false);
            await Gone.ConfigureAwait(false);
            return;
        }
        await Drain.CloseAsync().ConfigureAwait(false);
        Finish();
    }

    /// <summary>True for the one caller that ends the pin; it records how.</summary>
    private bool Begin(PinStatus how, string reason)
    {
        if (Interlocked.Exchange(ref _ended, 1) != 0) return false;
        Volatile.Write(ref _status, (int)how);
        EndReason = reason;
        return true;
    }

    /// <summary>After the drain closed: the range goes back to the volume, the charge and device reference are returned.</summary>
    private void Finish()
    {
        var volume = Owner.Volume;
        lock (volume.Gate)
        {
            volume.RemoveSeal(this);
        }
        Owner.Forget(this);
        Device.Release();
        Lease.End();
        _gone.TrySetResult();
    }

    /// <summary>Finds the frozen extent that holds file block <paramref name="fileBlock"/>.</summary>
    public int FindExtent(long fileBlock)
    {
        int i = Array.BinarySearch(FrozenStarts, fileBlock);
        return i >= 0 ? i : ~i - 1;
    }

    public PinnedDmaException EndedError() =>
        (PinStatus)Volatile.Read(ref _status) == PinStatus.Revoked
            ? new PinnedDmaException(PinnedDmaError.Revoked, $"The pin's lease was revoked ({EndReason}).")
            : new PinnedDmaException(PinnedDmaError.Released, "The pin was released.");

    public void ThrowIfNoWrite()
    {
        if (_access != PinAccess.Write) ThrowHelper.Throw(PinnedDmaError.AccessDenied, "The pin is READ only.");
    }
}
