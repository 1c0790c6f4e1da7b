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
    private const long MaxFileSize = 1L << 50;
    private long MaxFileBlocks => MaxFileSize >> BlockShift;

    /// <summary>Seals whose blocks now belong to their pins (Defer, or the file was deleted).</summary>
    private readonly List<Seal> _detached = new();

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

    /// <summary>An operation ready to run: its lease context and its body (validated, nothing changed yet).</summary>
    private readonly record struct Op<T>(RemapContext Ctx, Func<RemapContext, T> Body);

    private T Run<T>(Op<T> op) => Mutate(op.Ctx, op.Body);

    private ValueTask<T> RunAsync<T>(Op<T> op, CancellationToken cancellationToken) => MutateAsync(op.Ctx, op.Body, cancellationToken);

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
    /// What to do about <paramref name="conflicts"/> (attached seals an operation would violate): see
    /// <see cref="LayoutLease.Resolve"/>. On <see cref="ConflictResolution.Pending"/> or
    /// <see cref="ConflictResolution.Busy"/> the caller returns at once, having changed nothing.
    /// </summary>
    private ConflictResolution Check(RemapContext ctx, List<Seal> conflicts, bool deferrable) =>
        LayoutLease.Resolve(ctx, conflicts, deferrable, DefaultConflictPolicy);

    /// <summary>Attached seals of <paramref name="inode"/> overlapping file blocks [first, end).</summary>
    private static List<Seal> SealsOverlapping(Inode inode, long first, long end)
    {
        var l = new List<Seal>();
        foreach (var s in inode.Seals)
            if (s.FirstBlock < end && s.EndBlock > first) l.Add(s);
        return l;
    }

    /// <summary>Every (file, file block range) that maps some of device blocks [start, start+count).</summary>
    private List<(Inode Inode, Extent Piece)> FindMappings(long start, long count)
    {
        var found = new List<(Inode, Extent)>();
        long end = start + count;
        foreach (var inode in _files.ById.Values)
            foreach (var e in inode.Map.Extents)
                if (e.DeviceBlock < end && e.DeviceEnd > start)
                {
                    long s = Math.Max(start, e.DeviceBlock), t = Math.Min(end, e.DeviceEnd);
                    found.Add((inode, new Extent(e.FileBlock + (s - e.DeviceBlock), s, t - s, e.Generation)));
                }
        return found;
    }

    /// <summary>Attached seals, other than <paramref name="except"/>, whose frozen blocks intersect device blocks [start, start+count).</summary>
    private List<Seal> SealsOnDeviceBlocks(long start, long count, ICollection<Seal>? except = null)
    {
        var l = new List<Seal>();
        long end = start + count;
        foreach (var inode in _files.ById.Values)
            foreach (var s in inode.Seals)
            {
                if (except is not null && except.Contains(s)) continue;
                foreach (var e in s.Frozen)
                    if (e.DeviceBlock < end && e.DeviceEnd > start) { l.Add(s); break; }
            }
        return l;
    }

    /// <summary>Before Defer detaches <paramref name="seals"/>: other pins on sharers of their blocks block the detach.</summary>
    private ConflictResolution CheckDetachable(RemapContext ctx, List<Seal> seals)
    {
        var others = new List<Seal>();
        foreach (var s in seals)
            foreach (var e in s.Frozen)
                others.AddRange(SealsOnDeviceBlocks(e.DeviceBlock, e.Count, seals));
        return Check(ctx, others, deferrable: false);
    }

    /// <summary>Blocks that detaching <paramref name="seals"/> will copy for the other mappings of their blocks.</summary>
    private long DetachCost(List<Seal> seals)
    {
        long n = 0;
        foreach (var s in seals)
            foreach (var e in s.Frozen)
                foreach (var m in FindMappings(e.DeviceBlock, e.Count)) n += m.Piece.Count;
        return n;
    }

    /// <summary>
    /// Defer: the seal's blocks leave the file and become the pin's alone. The pin takes a reference; every file
    /// range still mapping those blocks (the pinned file outside the operation's range, clones) gets a private copy,
    /// so that no one else ever sees DMA into them.
    /// </summary>
    private void DetachSeal(Seal seal)
    {
        seal.Inode.Seals.Remove(seal);
        foreach (var e in seal.Frozen)
        {
            _alloc.AddRef(e.DeviceBlock, e.Count);
            foreach (var (inode, piece) in FindMappings(e.DeviceBlock, e.Count))
                RelocateRange(inode, piece.FileBlock, piece.Count);
        }
        seal.Detached = true;
        _detached.Add(seal);
    }

    /// <summary>Called by the layout layer when a seal goes (release or revoke).</summary>
    internal void RemoveSeal(Seal seal)
    {
        if (seal.Detached)
        {
            if (_detached.Remove(seal))
            {
                foreach (var e in seal.Frozen) _alloc.Release(e.DeviceBlock, e.Count);
            }
            return;
        }
        seal.Inode.Seals.Remove(seal);
    }

    /// <summary>Checks that there is room for <paramref name="blocks"/> new blocks, committing to free busy ones if that helps.</summary>
    private void EnsureSpace(long blocks)
    {
        if (blocks <= _alloc.FreeBlocks) return;
        if (_alloc.BusyBlocks > 0) _journal.Commit();
        if (blocks > _alloc.FreeBlocks)
            ThrowHelper.Throw(PinnedDmaError.NoSpace, $"Volume full: the operation needs {blocks} blocks, {_alloc.FreeBlocks} are free.");
    }

    private long ExtentCount()
    {
        long n = 0;
        foreach (var i in _files.ById.Values) n += i.Map.Count;
        return n;
    }

    /// <summary>Refuses an operation that could push the metadata past what a checkpoint can hold.</summary>
    private void CheckMetadataRoom(long newExtents)
    {
        long max = MetadataJournal.MaxExtentsFor(_sb.BlockCount) - 256;
        if (ExtentCount() + newExtents > max)
            ThrowHelper.Throw(PinnedDmaError.NoSpace, $"Metadata full: the volume tracks at most {max} extents.");
    }
}
