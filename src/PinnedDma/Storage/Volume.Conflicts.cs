using PinnedDma.Internal;
using PinnedDma.Layout;
using PinnedDma.Storage.Internal;

namespace PinnedDma.Storage;

// The mutate loop itself is Internal/OperationRunner; here are the volume's entry points to it and the seal removal
// the layout layer calls.
public sealed partial class Volume
{
    private const long MaxFileSize = VolumeState.MaxFileSize;

    /// <summary>Runs a prepared operation (<see cref="VolumeOp{T}"/>) in the mutate loop, blocking on a Wait or Break.</summary>
    internal T Run<T>(VolumeOp<T> op) => _runner.Mutate(op.Ctx, op.Body);

    /// <summary>Runs a prepared operation in the mutate loop, awaiting a Wait or Break.</summary>
    internal ValueTask<T> RunAsync<T>(VolumeOp<T> op, CancellationToken cancellationToken) => _runner.MutateAsync(op.Ctx, op.Body, cancellationToken);

    /// <summary><see cref="RunAsync{T}"/> for an operation whose result is not wanted.</summary>
    internal ValueTask RunVoidAsync<T>(VolumeOp<T> op, CancellationToken cancellationToken) => OperationRunner.Discard(RunAsync(op, cancellationToken));

    /// <summary>The volume's internal parts, which build the operations that <see cref="Run{T}"/> runs.</summary>
    internal VolumeState Parts => _s;

    /// <summary>
    /// Called by the layout layer when a seal goes (release or revoke), without any lock of its own: an attached seal
    /// leaves the seal table under the table's lock alone; a detached one also gives its blocks back to the allocator,
    /// which takes <see cref="Gate"/> here (Gate first, then the table: the documented order).
    /// </summary>
    internal void RemoveSeal(Seal seal)
    {
        if (_seals.TryRemoveAttached(seal, out bool detached) || !detached) return;
        lock (Gate)
        {
            if (_seals.RemoveDetached(seal))
                foreach (var e in seal.Frozen) _alloc.Release(e.DeviceBlock, e.Count);
        }
    }

    /// <summary>The seal table, for tests.</summary>
    internal SealTable Seals => _seals;
}
