using System.Threading.Tasks.Sources;

namespace PinnedDma.Verbs.Internal;

/// <summary>
/// The one reusable awaitable behind <see cref="CompletionQueue.WaitAsync(CancellationToken)"/>: a
/// <see cref="ManualResetValueTaskSourceCore{TResult}"/> with a state machine around it that gives every wait exactly
/// one outcome (a push, a cancellation or the owner's dispose, whichever claims it first), a final state, and no
/// allocation per wait (the core is reset in place; a cancellation registration reuses the token source's nodes).
/// </summary>
/// <remarks>
/// <para>States (every transition is made under the owner's lock, <c>_sync</c>):</para>
/// <code>
///   Idle    --Arm(token)-----------------------------&gt; Armed      (core reset, token registered; a ValueTask handed out)
///   Armed   --TryClaim (a completion was pushed)-----&gt; Signaled   then, outside the lock: SetResult
///   Armed   --cancellation callback, same token------&gt; Signaled   then, outside the lock: SetException(OperationCanceled)
///   Armed   --Close (the owner is disposed)----------&gt; Signaled   then, outside the lock: SetException(ObjectDisposed)
///   Signaled --GetResult (the awaiter consumes it)---&gt; Idle
///   any     --Close---------------------------------&gt; closed too (final: a later Arm faults at once with ObjectDisposed)
/// </code>
/// <para>
/// Only the thread that moves Armed to Signaled completes the core, so a push racing a cancellation (or a dispose)
/// yields one outcome, never two and never none. The core is reset only in Arm, and Arm requires Idle, which only the
/// awaiter's GetResult restores: a second wait while one is Armed or Signaled-but-unconsumed is refused
/// (<see cref="InvalidOperationException"/>), so it can never reset the core under a pending awaiter. A cancellation
/// callback that lost the race may still run late; it checks that the wait it would cancel is Armed with the token it
/// was registered on (a token canceled once stays canceled, so a later wait on that same token is rightly canceled).
/// </para>
/// </remarks>
internal sealed class CompletionWaiter : IValueTaskSource
{
    private enum State : byte
    {
        Idle,
        Armed,
        Signaled,
    }

    private readonly object _sync;
    private readonly object _owner;
    private ManualResetValueTaskSourceCore<bool> _core = new() { RunContinuationsAsynchronously = true };
    private State _state;
    private bool _closed;
    private CancellationToken _token;
    private CancellationTokenRegistration _registration;

    /// <param name="sync">The owner's lock: readiness and the waiter's state change together under it.</param>
    /// <param name="owner">Named in the <see cref="ObjectDisposedException"/> of a wait after <see cref="Close"/>.</param>
    public CompletionWaiter(object sync, object owner)
    {
        _sync = sync;
        _owner = owner;
    }

    /// <summary>True while a wait is handed out and not yet consumed (Armed or Signaled). Under the lock.</summary>
    public bool Busy => _state != State.Idle;

    /// <summary>True once <see cref="Close"/> ran. Under the lock.</summary>
    public bool Closed => _closed;

    private ObjectDisposedException Disposed() => new(_owner.GetType().Name);

    /// <summary>
    /// Under the lock, when nothing is ready: hands out the pending wait. Faults at once after <see cref="Close"/>,
    /// throws when a wait is already out, completes canceled when the token already is.
    /// </summary>
    public ValueTask Arm(CancellationToken cancellationToken)
    {
        if (_closed) return ValueTask.FromException(Disposed());
        if (_state != State.Idle) throw new InvalidOperationException("Only one WaitAsync may be pending on a completion queue (and each must be awaited once).");
        if (cancellationToken.IsCancellationRequested) return ValueTask.FromCanceled(cancellationToken);
        _core.Reset();
        _state = State.Armed;
        short version = _core.Version;
        _token = default;
        _registration = default;
        if (cancellationToken.CanBeCanceled)
        {
            _token = cancellationToken;
            // Runs synchronously (re-entering the lock) if the token is canceled between the check above and here.
            _registration = cancellationToken.UnsafeRegister(static (s, ct) => ((CompletionWaiter)s!).OnCanceled(ct), this);
        }
        return new ValueTask(this, version);
    }

    /// <summary>
    /// Under the lock: claims the armed wait for a push. True when the caller must call <see cref="Complete"/>
    /// (after leaving the lock).
    /// </summary>
    public bool TryClaim()
    {
        if (_state != State.Armed) return false;
        _state = State.Signaled;
        return true;
    }

    /// <summary>Under the lock: enters the final state; true when an armed wait was claimed (complete it with ObjectDisposed).</summary>
    public bool Close()
    {
        _closed = true;
        return TryClaim();
    }

    /// <summary>Outside the lock, by the one thread whose <see cref="TryClaim"/> or <see cref="Close"/> returned true.</summary>
    public void Complete(bool disposed)
    {
        UnregisterCancellation();
        if (disposed) _core.SetException(Disposed());
        else _core.SetResult(true);
    }

    private void UnregisterCancellation()
    {
        CancellationTokenRegistration registration;
        lock (_sync)
        {
            registration = _registration;
            _registration = default;
            _token = default;
        }
        // Unregister does not wait for a callback that is running: that callback finds the wait no longer Armed.
        registration.Unregister();
    }

    private void OnCanceled(CancellationToken ct)
    {
        lock (_sync)
        {
            if (_state != State.Armed || _token != ct) return; // lost the race, or a stale registration
            _state = State.Signaled;
        }
        UnregisterCancellation();
        _core.SetException(new OperationCanceledException(ct));
    }

    void IValueTaskSource.GetResult(short token)
    {
        bool current = token == _core.Version;
        try
        {
            _core.GetResult(token); // throws for a stale token, or the wait's exception
        }
        finally
        {
            if (current)
            {
                lock (_sync)
                    if (_state == State.Signaled) _state = State.Idle;
            }
        }
    }

    ValueTaskSourceStatus IValueTaskSource.GetStatus(short token) => _core.GetStatus(token);

    void IValueTaskSource.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);
}
