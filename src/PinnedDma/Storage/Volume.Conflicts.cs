using PinnedDma.Internal;
using PinnedDma.Storage.Internal;

namespace PinnedDma.Storage;

// How an operation meets the seals of pins and Direct mappings. An operation runs in two phases under the volume
// lock: first it finds every seal it would violate and asks Check, changing nothing; then it mutates. Deny and Defer
// are settled under the lock. Wait and Break need the holders to act, so Check unwinds the operation (nothing was
// changed), the waiting or breaking happens outside the lock, and the operation runs again from the start.
public sealed partial class Volume
{
    private const long MaxFileSize = 1L << 50;
    private long MaxFileBlocks => MaxFileSize >> BlockShift;

    /// <summary>Seals whose blocks now belong to their pins (Defer, or the file was deleted).</summary>
    private readonly List<Seal> _detached = new();

    internal sealed class RemapContext(string operation, ConflictPolicy? policy)
    {
        public string Operation { get; } = operation;
        public ConflictPolicy? Policy { get; } = policy;
        public List<Seal>? Pending;
        public ConflictPolicyKind PendingKind;
        public TimeSpan Timeout;
        public long Deadline;
        public HashSet<Seal>? BreakRequested;
    }

    private sealed class RetrySignal : Exception
    {
        public static readonly RetrySignal Instance = new();
    }

    private enum Verdict { Proceed, Detach }

    /// <summary>Runs <paramref name="body"/> under the lock until it completes without a pending Wait or Break.</summary>
    private T Mutate<T>(RemapContext ctx, Func<RemapContext, T> body)
    {
        while (true)
        {
            lock (Gate)
            {
                ThrowIfDisposed();
                try
                {
                    T result = body(ctx);
                    EndOp();
                    return result;
                }
                catch (RetrySignal)
                {
                    System.Diagnostics.Debug.Assert(_txn.Length == 0, "an operation asked to retry after it had changed something");
                }
                catch
                {
                    // Operations validate before they change anything; an exception after a change is a bug, and the
                    // half-operation must not reach the journal.
                    _txn.Clear();
                    throw;
                }
            }
            ResolveOutsideLock(ctx);
        }
    }

    /// <summary>
    /// Decides what to do about <paramref name="conflicts"/> (attached seals an operation would violate). Throws busy,
    /// unwinds for Wait/Break, or answers Detach when Defer lets a space-freeing operation go on without the pins.
    /// </summary>
    private Verdict Check(RemapContext ctx, List<Seal> conflicts, bool deferrable)
    {
        if (conflicts.Count == 0) return Verdict.Proceed;
        var policy = ctx.Policy ?? conflicts[0].Inode.Policy ?? DefaultConflictPolicy;
        switch (policy.Kind)
        {
            case ConflictPolicyKind.Defer when deferrable && conflicts.All(s => s.Deferrable):
                return Verdict.Detach;
            case ConflictPolicyKind.Wait:
                Unwind(ctx, conflicts, policy);
                break;
            case ConflictPolicyKind.Break when !conflicts.Any(s => s.Unbreakable):
                Unwind(ctx, conflicts, policy);
                break;
        }
        throw Busy(ctx, conflicts, policy);
    }

    private static void Unwind(RemapContext ctx, List<Seal> conflicts, ConflictPolicy policy)
    {
        if (ctx.Deadline != 0 && Environment.TickCount64 >= ctx.Deadline && policy.Kind == ConflictPolicyKind.Wait)
            throw Busy(ctx, conflicts, policy);
        ctx.Pending = conflicts.Distinct().ToList();
        ctx.PendingKind = policy.Kind;
        ctx.Timeout = policy.Timeout;
        throw RetrySignal.Instance;
    }

    private static PinnedDmaException Busy(RemapContext ctx, List<Seal> conflicts, ConflictPolicy policy)
    {
        var s = conflicts[0];
        return new PinnedDmaException(PinnedDmaError.Busy,
            $"{ctx.Operation} on '{s.Inode.Name}' would remap file blocks [{s.FirstBlock}, {s.EndBlock}) held by {conflicts.Distinct().Count()} pin(s) or Direct mapping(s) (policy {policy}).");
    }

    private void ResolveOutsideLock(RemapContext ctx)
    {
        var pending = ctx.Pending!;
        ctx.Pending = null;
        if (ctx.Deadline == 0) ctx.Deadline = Environment.TickCount64 + (long)ctx.Timeout.TotalMilliseconds;
        var remaining = TimeSpan.FromMilliseconds(Math.Max(0, ctx.Deadline - Environment.TickCount64));
        var gone = pending.Select(s => s.Gone).ToArray();
        if (ctx.PendingKind == ConflictPolicyKind.Wait)
        {
            if (!Task.WaitAll(gone, remaining))
                throw new PinnedDmaException(PinnedDmaError.Busy, $"{ctx.Operation}: pins still held after waiting {ctx.Timeout.TotalMilliseconds} ms.");
            return;
        }
        ctx.BreakRequested ??= new HashSet<Seal>();
        foreach (var s in pending)
            if (ctx.BreakRequested.Add(s)) s.RequestBreak(ctx.Timeout, ctx.Operation);
        Task.WaitAll(gone, remaining);
        foreach (var s in pending)
            if (!s.Gone.IsCompleted) s.Revoke($"lease break timed out for {ctx.Operation}");
    }

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
        foreach (var inode in _byId.Values)
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
        foreach (var inode in _byId.Values)
            foreach (var s in inode.Seals)
            {
                if (except is not null && except.Contains(s)) continue;
                foreach (var e in s.Frozen)
                    if (e.DeviceBlock < end && e.DeviceEnd > start) { l.Add(s); break; }
            }
        return l;
    }

    /// <summary>Before Defer detaches <paramref name="seals"/>: other pins on sharers of their blocks block the detach.</summary>
    private void CheckDetachable(RemapContext ctx, List<Seal> seals)
    {
        var others = new List<Seal>();
        foreach (var s in seals)
            foreach (var e in s.Frozen)
                others.AddRange(SealsOnDeviceBlocks(e.DeviceBlock, e.Count, seals));
        Check(ctx, others, deferrable: false);
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
        if (_alloc.BusyBlocks > 0) CommitLocked();
        if (blocks > _alloc.FreeBlocks)
            ThrowHelper.Throw(PinnedDmaError.NoSpace, $"Volume full: the operation needs {blocks} blocks, {_alloc.FreeBlocks} are free.");
    }

    private long ExtentCount()
    {
        long n = 0;
        foreach (var i in _byId.Values) n += i.Map.Count;
        return n;
    }

    /// <summary>Refuses an operation that could push the metadata past what a checkpoint can hold.</summary>
    private void CheckMetadataRoom(long newExtents)
    {
        long max = MaxExtentsFor(_sb.BlockCount) - 256;
        if (ExtentCount() + newExtents > max)
            ThrowHelper.Throw(PinnedDmaError.NoSpace, $"Metadata full: the volume tracks at most {max} extents.");
    }
}
