using PinnedDma.Layout;

namespace PinnedDma.Storage.Internal;

// How an operation meets the seals of pins and Direct mappings: every operation that may remap runs as a body here.
// The body validates and finds its conflicts first, asking Check (LayoutLease.Resolve) about each set and changing
// nothing; on Pending or Busy it returns at once, and only after every check passed does it mutate. The runner then
// throws the refusal (Busy), or leaves the lock for LayoutLease.Settle / SettleAsync and runs the body again (Pending).

/// <summary>
/// The mutate loop of a <see cref="Volume"/>: runs an operation's body under the volume's lock until it completes
/// without stopping on a lease conflict, makes its changes one journal record, and settles a pending Wait or Break
/// outside the lock — blocking in the sync form, awaiting in the async form. One loop serves both.
/// </summary>
internal sealed class OperationRunner
{
    private readonly object _gate;
    private readonly MetadataJournal _journal;
    private readonly Microsoft.Extensions.Logging.ILogger _log;
    private readonly Action _throwIfDisposed;

    /// <param name="gate">The volume's lock (<see cref="Volume.Gate"/>).</param>
    /// <param name="journal">Where each completed body's changes become one record.</param>
    /// <param name="log">The volume's logger, for lease breaks.</param>
    /// <param name="throwIfDisposed">Checked under the lock before each run of a body.</param>
    public OperationRunner(object gate, MetadataJournal journal, Microsoft.Extensions.Logging.ILogger log, Action throwIfDisposed)
    {
        _gate = gate;
        _journal = journal;
        _log = log;
        _throwIfDisposed = throwIfDisposed;
    }

    /// <summary>Runs <paramref name="body"/> under the lock until it completes without a pending Wait or Break.</summary>
    public T Mutate<T>(RemapContext ctx, Func<RemapContext, T> body) =>
        Mutate(ctx, body, static (ctx, body) => body(ctx));

    /// <summary>
    /// Runs <paramref name="body"/> with <paramref name="state"/> (which may be a span) under the lock until it
    /// completes without stopping on a lease conflict: a refusal is thrown, a pending Wait or Break is settled outside
    /// the lock (blocking this thread) and the body runs again. The body's changes become one journal record.
    /// </summary>
    public T Mutate<TState, T>(RemapContext ctx, TState state, Func<RemapContext, TState, T> body)
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
    public async ValueTask<T> MutateAsync<TState, T>(RemapContext ctx, TState state, Func<RemapContext, TState, T> body, CancellationToken cancellationToken)
    {
        while (true)
        {
            cancellationToken.ThrowIfCancellationRequested();
            if (MutateStep(ctx, state, body, out var result)) return result;
            await LayoutLease.SettleAsync(ctx, _log, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary><see cref="MutateAsync{TState, T}"/> for a body without state.</summary>
    public ValueTask<T> MutateAsync<T>(RemapContext ctx, Func<RemapContext, T> body, CancellationToken cancellationToken) =>
        MutateAsync(ctx, body, static (ctx, body) => body(ctx), cancellationToken);

    /// <summary>A void async form's task: completed at once when the operation completed synchronously.</summary>
    public static ValueTask Discard<T>(ValueTask<T> task)
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
        lock (_gate)
        {
            _throwIfDisposed();
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
}
