namespace PinnedDma;

/// <summary>
/// The drain primitive a DMA engine holds around every access through a pin: <see cref="TryEnter"/> before touching
/// the pinned blocks, <see cref="Exit"/> after. <see cref="Close"/> makes every later TryEnter fail and returns once
/// the accesses already inside have left, so a lease revocation waits for in-flight DMA and then knows that nothing
/// can touch the blocks any more (the same guarantee as an epoch or an SRCU grace period).
/// </summary>
/// <remarks>State: bit 30 is "closed", the low bits count accesses inside. Lock-free on the access path.</remarks>
public sealed class DmaDrain
{
    private const int Closed = 1 << 30;
    private const int CountMask = Closed - 1;
    private int _state;
    private ManualResetEventSlim? _drained; // created only when Close has to wait
    private TaskCompletionSource? _drainedAsync; // created only when CloseAsync has to wait

    /// <summary>True once <see cref="Close"/> was called.</summary>
    public bool IsClosed => (Volatile.Read(ref _state) & Closed) != 0;

    /// <summary>Accesses currently inside.</summary>
    public int InFlight => Volatile.Read(ref _state) & CountMask;

    /// <summary>Enters an access; false when the drain is closed (the pin was revoked or released).</summary>
    /// <returns>True when entered (pair it with one <see cref="Exit"/>); false when the drain is closed.</returns>
    public bool TryEnter()
    {
        int s = Volatile.Read(ref _state);
        while (true)
        {
            if ((s & Closed) != 0) return false;
            int seen = Interlocked.CompareExchange(ref _state, s + 1, s);
            if (seen == s) return true;
            s = seen;
        }
    }

    /// <summary>Leaves an access entered with <see cref="TryEnter"/>.</summary>
    /// <exception cref="InvalidOperationException">
    /// No access is inside (an Exit without a successful TryEnter); the drain is left as it was, so the accesses
    /// really inside are still counted and a closed drain stays closed.
    /// </exception>
    public void Exit()
    {
        int s = Volatile.Read(ref _state);
        while (true)
        {
            if ((s & CountMask) == 0) throw new InvalidOperationException("DmaDrain.Exit without a successful TryEnter.");
            int seen = Interlocked.CompareExchange(ref _state, s - 1, s);
            if (seen == s) break;
            s = seen;
        }
        if (s - 1 == Closed)
        {
            Volatile.Read(ref _drained)?.Set();
            Volatile.Read(ref _drainedAsync)?.TrySetResult();
        }
    }

    /// <summary>
    /// Closes the drain and waits until no access is inside. Idempotent; safe from several threads. An access still
    /// inside after <see cref="StallGrace"/> is one that waits on something outside (a send to a peer that does not
    /// read): its stall handlers run, once, to cut it off, so a revocation is bounded whatever a peer does.
    /// </summary>
    public void Close()
    {
        int s = Interlocked.Or(ref _state, Closed);
        if ((s & CountMask) == 0 || (Volatile.Read(ref _state) & CountMask) == 0) return;
        var spin = new SpinWait();
        for (int i = 0; i < 50 && (Volatile.Read(ref _state) & CountMask) != 0; i++) spin.SpinOnce();
        var ev = LazyInitializer.EnsureInitialized(ref _drained, () => new ManualResetEventSlim(false));
        long cutAt = Environment.TickCount64 + (long)StallGrace.TotalMilliseconds;
        bool cut = false;
        while ((Volatile.Read(ref _state) & CountMask) != 0)
        {
            ev.Wait(1);
            if (!cut && Environment.TickCount64 >= cutAt)
            {
                cut = true;
                RunStallHandlers();
            }
        }
    }

    /// <summary>
    /// <see cref="Close"/> without blocking a thread: closes the drain at once (every later <see cref="TryEnter"/>
    /// fails, whatever happens to the returned task) and completes once no access is inside, running the stall
    /// handlers after <see cref="StallGrace"/> as <see cref="Close"/> does. Idempotent; safe from several threads
    /// and together with <see cref="Close"/>.
    /// </summary>
    /// <param name="cancellationToken">Ends the wait (not the close) with <see cref="OperationCanceledException"/>.</param>
    /// <returns>A task that completes when the accesses inside have left; already completed when none was inside.</returns>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was canceled before the accesses left; the drain stays closed.</exception>
    public ValueTask CloseAsync(CancellationToken cancellationToken = default)
    {
        int s = Interlocked.Or(ref _state, Closed);
        if ((s & CountMask) == 0) return default;
        var tcs = LazyInitializer.EnsureInitialized(ref _drainedAsync, static () => new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously));
        // An Exit that brought the count to 0 before the source existed did not see it: look again.
        if ((Volatile.Read(ref _state) & CountMask) == 0) tcs.TrySetResult();
        if (tcs.Task.IsCompleted) return default;
        return WaitDrained(tcs.Task, cancellationToken);
    }

    private async ValueTask WaitDrained(Task drained, CancellationToken cancellationToken)
    {
        try
        {
            await drained.WaitAsync(StallGrace, cancellationToken).ConfigureAwait(false);
            return;
        }
        catch (TimeoutException)
        {
        }
        RunStallHandlers();
        await drained.WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    private void RunStallHandlers()
    {
        Action[] handlers;
        lock (_stallHandlers) handlers = _stallHandlers.ToArray();
        foreach (var h in handlers) h();
    }

    /// <summary>How long <see cref="Close"/> lets an access finish on its own before it runs the stall handlers.</summary>
    internal static readonly TimeSpan StallGrace = TimeSpan.FromMilliseconds(100);

    private readonly List<Action> _stallHandlers = new();

    /// <summary>
    /// Registers, for the time of one access that may wait on the outside world, how to cut it off (close the
    /// connection it waits on). Pair with <see cref="RemoveStallHandler"/> before <see cref="Exit"/>.
    /// </summary>
    internal void AddStallHandler(Action cutOff)
    {
        lock (_stallHandlers) _stallHandlers.Add(cutOff);
    }

    internal void RemoveStallHandler(Action cutOff)
    {
        lock (_stallHandlers) _stallHandlers.Remove(cutOff);
    }
}
