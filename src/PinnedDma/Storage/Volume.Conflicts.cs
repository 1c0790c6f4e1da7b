using PinnedDma.Internal;
using PinnedDma.Layout;
using PinnedDma.Storage.Internal;

namespace PinnedDma.Storage;

// How an operation meets the seals of pins and Direct mappings: every operation that may remap runs as a body inside
// Mutate. The body validates and finds its conflicts first, asking Check (LayoutLease.Resolve) about each set and
// changing nothing; on Pending or Busy it returns at once, and only after every check passed does it mutate. Mutate
// then throws the refusal (Busy), or leaves the lock for LayoutLease.Settle and runs the body again (Pending).
public sealed partial class Volume
{
    private const long MaxFileSize = VolumeState.MaxFileSize;

    /// <summary>Runs <paramref name="body"/> under the lock until it completes without a pending Wait or Break.</summary>
    private T Mutate<T>(RemapContext ctx, Func<RemapContext, T> body) =>
        Mutate(ctx, body, static (ctx, body) => body(ctx));

    /// <summary>
    /// Runs <paramref name="body"/> with <paramref name="state"/> (which may be a span) under the lock until it
    /// completes without stopping on a lease conflict: a refusal is thrown, a pending Wait or Break is settled outside
    /// the lock (blocking this thread) and the body runs again. The body's changes become one journal record.
    /// </summary>
    private T Mutate<TState, T>(RemapContext ctx, TState state, Func<RemapContext, TState, T> body)
        where TState : allows ref struct
    {
        T result;
        while (!MutateStep(ctx, state, body, out result)) LayoutLease.Settle(ctx, _log);
        return result;
    }

    /// <summary>
    /// <see cref="Mutate{TState, T}"/> for the async forms: the same steps, with the settling of a pending Wait or
    /// Break awaited (<see cref="LayoutLease.SettleAsync"/>) instead of blocking. With no conflict, or under Deny or
    /// Defer, it completes synchronously. <paramref name="cancellationToken"/> is looked at before each run of the
    /// body and during the waits: cancellation before the body has applied the operation leaves the volume
    /// unchanged and throws <see cref="OperationCanceledException"/>.
    /// </summary>
    private async ValueTask<T> MutateAsync<TState, T>(RemapContext ctx, TState state, Func<RemapContext, TState, T> body, CancellationToken cancellationToken)
    {
        while (true)
        {
            cancellationToken.ThrowIfCancellationRequested();
            if (MutateStep(ctx, state, body, out var result)) return result;
            await LayoutLease.SettleAsync(ctx, _log, cancellationToken).ConfigureAwait(false);
        }
    }

    private ValueTask<T> MutateAsync<T>(RemapContext ctx, Func<RemapContext, T> body, CancellationToken cancellationToken) =>
        MutateAsync(ctx, body, static (ctx, body) => body(ctx), cancellationToken);

    /// <summary>Runs a prepared operation (<see cref="VolumeOp{T}"/>) in the mutate loop, blocking on a Wait or Break.</summary>
    internal T Run<T>(VolumeOp<T> op) => Mutate(op.Ctx, op.Body);

    /// <summary>Runs a prepared operation in the mutate loop, awaiting a Wait or Break.</summary>
    internal ValueTask<T> RunAsync<T>(VolumeOp<T> op, CancellationToken cancellationToken) => MutateAsync(op.Ctx, op.Body, cancellationToken);

    /// <summary><see cref="RunAsync{T}"/> for an operation whose result is not wanted.</summary>
    internal ValueTask RunVoidAsync<T>(VolumeOp<T> op, CancellationToken cancellationToken) => Discard(RunAsync(op, cancellationToken));

    /// <summary>The volume's internal parts, which build the operations that <see cref="Run{T}"/> runs.</summary>
    internal VolumeState Parts => _s;

    /// <summary>A void async form's task: completed at once when the operation completed synchronously.</summary>
    private static ValueTask Discard<T>(ValueTask<T> task)
    {
        if (task.IsCompletedSuccessfully) return default;
        return Await(task);

        static async ValueTask Await(ValueTask<T> t) => await t.ConfigureAwait(false);
    }

    /// <summary>
    /// One run of <paramref name="body"/> under the lock. True when it completed (its changes are one journal record);
    /// false when it stopped on a pending Wait or Break, having changed nothing (settle, then run again). A refusal
    /// (Busy) is thrown.
    /// </summary>
    private bool MutateStep<TState, T>(RemapContext ctx, TState state, Func<RemapContext, TState, T> body, out T result)
        where TState : allows ref struct
    {
        lock (Gate)
        {
            ThrowIfDisposed();
            try
            {
                result = body(ctx, state);
            }
            catch
            {
                // Operations validate before they change anything; an exception after a change is a bug, and the
                // half-operation must not reach the journal.
                _journal.DropOp();
                throw;
            }
            if (!ctx.Halted)
            {
                _journal.EndOp();
                return true;
            }
            System.Diagnostics.Debug.Assert(!_journal.HasOpenOp, "an operation stopped on a lease conflict after it had changed something");
            _journal.DropOp();
            if (ctx.Refusal is { } refusal)
            {
                ctx.Refusal = null;
                Diagnostics.Telemetry.LeaseBreaks.Add(1, Diagnostics.Telemetry.Denied);
                throw refusal;
            }
            return false;
        }
    }

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
