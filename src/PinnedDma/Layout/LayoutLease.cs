using System.Diagnostics;
using PinnedDma.Storage.Internal;

namespace PinnedDma.Layout;

// Layout leases: what happens when a volume operation would change the translation a seal froze.
//
// An operation runs in two phases under the volume lock: first it finds every seal it would violate and asks
// Resolve, changing nothing; then it mutates. Deny and Defer are settled under the lock (Busy, or Detach: the pinned
// blocks leave the file and become the pin's). Wait and Break need the holders to act, which they cannot do while
// the breaker holds the lock: Resolve answers Pending, the operation returns without having changed anything, the
// volume leaves the lock and calls Settle (wait for the seals to go; or ask each holder once, wait up to the timeout
// and revoke the rest), and the operation runs again from the start, finding the conflicts anew.
//
// The volume knows seals only as Storage.Internal.Seal; this file is the whole of what a policy means for them.

/// <summary>What an operation does about the seals it would violate, as <see cref="LayoutLease.Resolve"/> decides.</summary>
internal enum ConflictResolution
{
    /// <summary>Nothing in the way: go on.</summary>
    Proceed,

    /// <summary>Defer: go on without the pins; their blocks leave the file and stay owned by the pins.</summary>
    Detach,

    /// <summary>Wait or Break: stop before changing anything; the holders act outside the lock, then run again.</summary>
    Pending,

    /// <summary>The policy refuses (Deny, an unbreakable seal, Wait out of time): stop; the operation fails busy.</summary>
    Busy,
}

/// <summary>
/// One volume operation's dealings with leases, kept across its runs: the policy it was given, what the last run
/// left pending or refused, the deadline of its wait or break, and which seals it has already asked to break.
/// </summary>
internal sealed class RemapContext(string operation, ConflictPolicy? policy)
{
    /// <summary>The operation's name, for the holders (<see cref="LeaseBreakEventArgs.Operation"/>) and errors.</summary>
    public string Operation { get; } = operation;

    /// <summary>The policy passed to the call; null for the file's, else the volume's.</summary>
    public ConflictPolicy? Policy { get; } = policy;

    /// <summary>Seals to wait for or break, set when the last run ended <see cref="ConflictResolution.Pending"/>.</summary>
    public List<Seal>? Pending { get; set; }

    /// <summary>Wait or Break, for <see cref="Pending"/>.</summary>
    public ConflictPolicyKind PendingKind { get; set; }

    /// <summary>The policy's timeout, for <see cref="Pending"/>.</summary>
    public TimeSpan Timeout { get; set; }

    /// <summary>When waiting or breaking ends (<see cref="Environment.TickCount64"/>); 0 before the first wait.</summary>
    public long Deadline { get; set; }

    /// <summary>Seals this operation has asked for their lease (each is asked once, however often it runs).</summary>
    public HashSet<Seal>? BreakRequested { get; set; }

    /// <summary>The error to throw, set when the last run ended <see cref="ConflictResolution.Busy"/>.</summary>
    public PinnedDmaException? Refusal { get; set; }

    /// <summary>The last run stopped on a lease conflict (pending or refused) before changing anything.</summary>
    public bool Halted => Pending is not null || Refusal is not null;
}

/// <summary>
/// The lease a pin holds on its range: tells the holder, once, that an operation wants it back (the
/// <see cref="Breaking"/> event on the thread pool and the awaitable <see cref="BreakRequested"/>). The static
/// members decide what a conflict policy means for an operation (<see cref="Resolve"/>) and carry out Wait and Break
/// outside the volume lock (<see cref="Settle"/>).
/// </summary>
internal sealed class LayoutLease
{
    private readonly TaskCompletionSource<LeaseBreakEventArgs> _breakRequested = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private int _breakNotified;

    /// <summary>Raised once, on the thread pool, when an operation first asks for the lease.</summary>
    public event EventHandler<LeaseBreakEventArgs>? Breaking;

    /// <summary>Completes when an operation first asks for the lease; canceled if the lease ends first.</summary>
    public Task<LeaseBreakEventArgs> BreakRequested => _breakRequested.Task;

    /// <summary>
    /// Tells the holder once, however many operations ask: the handlers run on the thread pool, never on the breaking
    /// thread, so the breaker's timeout holds whatever they do (one that never returns cannot keep the pin, it is
    /// revoked at the timeout), and a handler that breaks the same range again only joins the break in progress.
    /// </summary>
    public void RequestBreak(object sender, TimeSpan timeout, string operation)
    {
        if (Interlocked.Exchange(ref _breakNotified, 1) != 0) return;
        var args = new LeaseBreakEventArgs(operation, timeout);
        var handlers = Breaking;
        if (handlers is not null)
            ThreadPool.UnsafeQueueUserWorkItem(static st =>
            {
                try
                {
                    st.Handlers.Invoke(st.Sender, st.Args);
                }
                catch (Exception)
                {
                    // A faulty holder callback must not stop the breaker: the timeout revokes the pin anyway.
                }
            }, (Handlers: handlers, Sender: sender, Args: args), preferLocal: false);
        _breakRequested.TrySetResult(args);
    }

    /// <summary>The lease ended (released or revoked): a break no longer comes.</summary>
    public void End() => _breakRequested.TrySetCanceled();

    /// <summary>
    /// Decides what an operation does about <paramref name="conflicts"/> (attached seals it would violate) under the
    /// operation's policy, else the file's, else <paramref name="volumeDefault"/>. Records what
    /// <see cref="ConflictResolution.Pending"/> waits for, or the error of <see cref="ConflictResolution.Busy"/>, in
    /// <paramref name="ctx"/>. <paramref name="deferrable"/>: the operation frees the range, so Defer may detach.
    /// </summary>
    public static ConflictResolution Resolve(RemapContext ctx, List<Seal> conflicts, bool deferrable, ConflictPolicy volumeDefault)
    {
        Debug.Assert(!ctx.Halted, "an operation went on after a lease conflict stopped it");
        if (conflicts.Count == 0) return ConflictResolution.Proceed;
        var policy = ctx.Policy ?? conflicts[0].Inode.Policy ?? volumeDefault;
        switch (policy.Kind)
        {
            case ConflictPolicyKind.Defer when deferrable && conflicts.All(s => s.Deferrable):
                return ConflictResolution.Detach;
            case ConflictPolicyKind.Wait when ctx.Deadline != 0 && Environment.TickCount64 >= ctx.Deadline:
                // Waited once already, and the time is up: the seals found now are still in the way.
                break;
            case ConflictPolicyKind.Wait:
            case ConflictPolicyKind.Break when !conflicts.Any(s => s.Unbreakable):
                ctx.Pending = conflicts.Distinct().ToList();
                ctx.PendingKind = policy.Kind;
                ctx.Timeout = policy.Timeout;
                return ConflictResolution.Pending;
        }
        var s = conflicts[0];
        ctx.Refusal = new PinnedDmaException(PinnedDmaError.Busy,
            $"{ctx.Operation} on '{s.Inode.Name}' would remap file blocks [{s.FirstBlock}, {s.EndBlock}) held by {conflicts.Distinct().Count()} pin(s) or Direct mapping(s) (policy {policy}).");
        return ConflictResolution.Busy;
    }

    /// <summary>
    /// Carries out what the last run left pending, outside the volume lock, blocking the calling thread: Wait waits
    /// for the seals to go, up to the deadline, then fails busy; Break asks each holder (once per operation), waits up
    /// to the deadline and revokes the seals still there (each revocation drains its in-flight DMA). The operation
    /// then runs again. <see cref="SettleAsync"/> is the same steps with awaits in place of the blocking waits.
    /// </summary>
    public static void Settle(RemapContext ctx, Microsoft.Extensions.Logging.ILogger log)
    {
        var pending = TakePending(ctx);
        var gone = pending.Select(s => s.Gone).ToArray();
        if (ctx.PendingKind == ConflictPolicyKind.Wait)
        {
            if (!Task.WaitAll(gone, MillisecondsLeft(ctx))) throw WaitRanOut(ctx);
            return;
        }
        using var brk = new BreakRound(ctx, pending, log);
        var waiting = new List<Task>(gone);
        while (waiting.Count > 0)
        {
            int i = Task.WaitAny(waiting.ToArray(), MillisecondsLeft(ctx));
            if (i < 0) break;
            waiting.RemoveAt(i);
            brk.Released();
        }
        foreach (var s in brk.ToRevoke())
        {
            s.Revoke(brk.RevokeReason);
            brk.Revoked(s);
        }
    }

    /// <summary>
    /// <see cref="Settle"/> without holding a thread: the waits for the holders' release and the revocations' drains
    /// are awaited. <paramref name="cancellationToken"/> ends the wait with <see cref="OperationCanceledException"/>
    /// before anything is revoked; holders already asked to break stay asked (their pins stay
    /// <see cref="PinStatus.Breaking"/>, the event was raised and <see cref="PinHandle.BreakRequested"/> completed),
    /// since the request cannot be taken back. Once revocation has begun it runs to the end (it is bounded).
    /// </summary>
    public static async ValueTask SettleAsync(RemapContext ctx, Microsoft.Extensions.Logging.ILogger log, CancellationToken cancellationToken)
    {
        var pending = TakePending(ctx);
        var gone = pending.Select(s => s.Gone).ToArray();
        if (ctx.PendingKind == ConflictPolicyKind.Wait)
        {
            if (!await WaitUntil(Task.WhenAll(gone), ctx, cancellationToken).ConfigureAwait(false)) throw WaitRanOut(ctx);
            return;
        }
        using var brk = new BreakRound(ctx, pending, log);
        var waiting = new List<Task>(gone);
        while (waiting.Count > 0)
        {
            var any = Task.WhenAny(waiting);
            if (!await WaitUntil(any, ctx, cancellationToken).ConfigureAwait(false)) break;
            waiting.Remove(any.Result);
            brk.Released();
        }
        cancellationToken.ThrowIfCancellationRequested();
        foreach (var s in brk.ToRevoke())
        {
            await s.RevokeAsync(brk.RevokeReason).ConfigureAwait(false);
            brk.Revoked(s);
        }
    }

    /// <summary>Awaits <paramref name="task"/> up to the operation's deadline; false when the deadline came first.</summary>
    private static async ValueTask<bool> WaitUntil(Task task, RemapContext ctx, CancellationToken cancellationToken)
    {
        if (task.IsCompleted) return true;
        try
        {
            await task.WaitAsync(TimeSpan.FromMilliseconds(MillisecondsLeft(ctx)), cancellationToken).ConfigureAwait(false);
            return true;
        }
        catch (TimeoutException)
        {
            return false;
        }
    }

    /// <summary>The seals the last run left pending; starts the operation's deadline on its first wait.</summary>
    private static List<Seal> TakePending(RemapContext ctx)
    {
        var pending = ctx.Pending!;
        ctx.Pending = null;
        if (ctx.Deadline == 0) ctx.Deadline = Environment.TickCount64 + (long)Math.Min(ctx.Timeout.TotalMilliseconds, int.MaxValue - 1);
        return pending;
    }

    private static int MillisecondsLeft(RemapContext ctx) => (int)Math.Clamp(ctx.Deadline - Environment.TickCount64, 0, int.MaxValue - 1);

    private static PinnedDmaException WaitRanOut(RemapContext ctx)
    {
        Diagnostics.Telemetry.LeaseBreaks.Add(1, Diagnostics.Telemetry.Denied);
        return new PinnedDmaException(PinnedDmaError.Busy, $"{ctx.Operation}: pins still held after waiting {ctx.Timeout.TotalMilliseconds} ms.");
    }

    /// <summary>
    /// One round of a Break, shared by <see cref="Settle"/> and <see cref="SettleAsync"/>: asks each holder (once per
    /// operation) when created, counts and times the releases and revocations, and logs the round when disposed.
    /// </summary>
    private sealed class BreakRound : IDisposable
    {
        private readonly RemapContext _ctx;
        private readonly List<Seal> _pending;
        private readonly Microsoft.Extensions.Logging.ILogger _log;
        private readonly Activity? _activity;
        private readonly long _started = Stopwatch.GetTimestamp();
        private int _released, _revoked;

        public BreakRound(RemapContext ctx, List<Seal> pending, Microsoft.Extensions.Logging.ILogger log)
        {
            _ctx = ctx;
            _pending = pending;
            _log = log;
            _activity = Diagnostics.Telemetry.Source.StartActivity("pinneddma.lease.break");
            _activity?.SetTag("pinneddma.operation", ctx.Operation);
            _activity?.SetTag("pinneddma.lease.count", pending.Count);
            ctx.BreakRequested ??= new HashSet<Seal>();
            foreach (var s in pending)
                if (ctx.BreakRequested.Add(s)) s.RequestBreak(ctx.Timeout, ctx.Operation);
        }

        public string RevokeReason => $"lease break timed out for {_ctx.Operation}";

        /// <summary>A holder gave its lease back (the break-to-release latency is recorded as it happens).</summary>
        public void Released()
        {
            _released++;
            Diagnostics.Telemetry.LeaseBreaks.Add(1, Diagnostics.Telemetry.Released);
            Diagnostics.Telemetry.LeaseBreakDuration.Record(Stopwatch.GetElapsedTime(_started).TotalSeconds, Diagnostics.Telemetry.Released);
        }

        /// <summary>The seals still there at the deadline.</summary>
        public IEnumerable<Seal> ToRevoke() => _pending.Where(s => !s.Gone.IsCompleted).ToList();

        public void Revoked(Seal s)
        {
            _revoked++;
            Diagnostics.Telemetry.LeaseRevokes.Add(1);
            Diagnostics.Telemetry.LeaseBreaks.Add(1, Diagnostics.Telemetry.Revoked);
            Diagnostics.Telemetry.LeaseBreakDuration.Record(Stopwatch.GetElapsedTime(_started).TotalSeconds, Diagnostics.Telemetry.Revoked);
            Diagnostics.Log.LeaseRevoked(_log, s.Inode.Id, _ctx.Timeout.TotalMilliseconds);
        }

        public void Dispose()
        {
            _activity?.SetTag("pinneddma.lease.released", _released);
            _activity?.SetTag("pinneddma.lease.revoked", _revoked);
            var first = _pending[0];
            Diagnostics.Log.LeaseBreak(_log, first.Inode.Id, first.FirstBlock, first.EndBlock - first.FirstBlock, _ctx.Operation,
                _revoked == 0 ? $"{_released} released" : $"{_released} released, {_revoked} revoked", Stopwatch.GetElapsedTime(_started).TotalMilliseconds);
            _activity?.Dispose();
        }
    }
}

/// <summary>Helpers on <see cref="ConflictResolution"/>.</summary>
internal static class ConflictResolutionExtensions
{
    /// <summary>The operation must stop here, before changing anything (<see cref="ConflictResolution.Pending"/> or <see cref="ConflictResolution.Busy"/>).</summary>
    public static bool Halts(this ConflictResolution resolution) => resolution >= ConflictResolution.Pending;
}
