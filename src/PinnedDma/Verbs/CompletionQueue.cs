using System.Threading.Tasks.Sources;
using PinnedDma.Internal;

namespace PinnedDma.Verbs;

/// <summary>
/// A completion queue (ibv_cq): a fixed ring the DMA engine fills and <see cref="Poll(Span{WorkCompletion})"/> drains into the caller's
/// span. <see cref="WaitAsync(CancellationToken)"/> is an allocation-free awaitable (a reusable value-task source) for one waiter.
/// An overrun (the engine finds the ring full) puts the CQ in error, as IBV_EVENT_CQ_ERR does.
/// </summary>
public sealed class CompletionQueue : IDisposable, IValueTaskSource
{
    private readonly object _sync = new();
    private readonly WorkCompletion[] _ring;
    private int _head, _count;
    private bool _overrun;
    // Waiter state machine: 0 idle, 1 a waiter is armed; Push completes an armed waiter once.
    private ManualResetValueTaskSourceCore<bool> _waiter = new() { RunContinuationsAsynchronously = true };
    private bool _armed;
    // Threads blocked in Poll(span, timeout), woken by Push.
    private readonly ManualResetEventSlim _available = new(false, 0);
    private int _blocked;
    private bool _disposed; // under _sync
    private CancellationTokenRegistration _cancel;
    private readonly RdmaDevice? _device;

    internal CompletionQueue(int capacity, RdmaDevice? device = null)
    {
        _device = device;
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(capacity);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(capacity, 1 << 22);
        _ring = new WorkCompletion[capacity];
    }

    /// <summary>Entries the ring holds.</summary>
    public int Capacity => _ring.Length;

    /// <summary>Completions waiting to be polled.</summary>
    public int Count
    {
        get { lock (_sync) return _count; }
    }

    /// <summary>ibv_poll_cq: moves up to <c>into.Length</c> completions into <paramref name="into"/>; returns how many.</summary>
    /// <param name="into">Where the completions go, oldest first.</param>
    /// <returns>How many completions were moved (0 when none is waiting).</returns>
    /// <exception cref="ObjectDisposedException">The completion queue is disposed.</exception>
    /// <exception cref="PinnedDmaException">
    /// <see cref="PinnedDmaError.NoSpace"/>: the queue overran (a completion arrived when it held
    /// <see cref="Capacity"/>), so completions were lost; every later poll throws it too.
    /// </exception>
    public int Poll(Span<WorkCompletion> into)
    {
        lock (_sync)
        {
            if (_disposed) ThrowHelper.ThrowObjectDisposed(this);
            if (_overrun) ThrowHelper.Throw(PinnedDmaError.NoSpace, $"Completion queue overrun (capacity {_ring.Length}): completions were lost.");
            int n = Math.Min(into.Length, _count);
            for (int i = 0; i < n; i++)
            {
                into[i] = _ring[_head];
                _head = (_head + 1) % _ring.Length;
            }
            _count -= n;
            return n;
        }
    }

    /// <summary>Completes when at least one completion can be polled. One waiter at a time; allocates nothing.</summary>
    /// <returns>A task that completes when a completion can be polled (or the queue overran).</returns>
    /// <exception cref="InvalidOperationException">Another WaitAsync is pending (thrown at once).</exception>
    /// <exception cref="ObjectDisposedException">In the task: the completion queue (or its device) is disposed first.</exception>
    public ValueTask WaitAsync() => WaitAsync(CancellationToken.None);

    /// <summary>
    /// Completes when at least one completion can be polled (ibv_req_notify_cq + ibv_get_cq_event). One waiter at a
    /// time. Faults with <see cref="OperationCanceledException"/> when <paramref name="cancellationToken"/> is
    /// canceled first, and with <see cref="ObjectDisposedException"/> when the CQ (or its device) is disposed first.
    /// </summary>
    /// <param name="cancellationToken">Stops the wait.</param>
    /// <returns>A task that completes when a completion can be polled (or the queue overran).</returns>
    /// <exception cref="InvalidOperationException">Another WaitAsync is pending (thrown at once).</exception>
    /// <exception cref="ObjectDisposedException">In the task: the completion queue (or its device) is disposed first.</exception>
    /// <exception cref="OperationCanceledException">In the task: <paramref name="cancellationToken"/> is canceled first.</exception>
    public ValueTask WaitAsync(CancellationToken cancellationToken)
    {
        lock (_sync)
        {
            if (_disposed) return ValueTask.FromException(new ObjectDisposedException(nameof(CompletionQueue)));
            if (_count > 0 || _overrun) return ValueTask.CompletedTask;
            if (cancellationToken.IsCancellationRequested) return ValueTask.FromCanceled(cancellationToken);
            if (_armed) throw new InvalidOperationException("Only one WaitAsync may be pending on a completion queue.");
            _waiter.Reset();
            _armed = true;
            short version = _waiter.Version;
            if (cancellationToken.CanBeCanceled)
                _cancel = cancellationToken.UnsafeRegister(static (st, ct) => ((CompletionQueue)st!).CancelWaiter(ct), this);
            return new ValueTask(this, version);
        }
    }

    // Waiter state machine: whoever clears _armed under _sync (Push, CancelWaiter, Dispose) completes the waiter, once.
    private void CancelWaiter(CancellationToken ct)
    {
        lock (_sync)
        {
            if (!_armed) return;
            _armed = false;
        }
        _waiter.SetException(new OperationCanceledException(ct));
    }

    internal void ThrowIfDisposed()
    {
        lock (_sync)
            if (_disposed) ThrowHelper.ThrowObjectDisposed(this);
    }

    /// <summary>
    /// Polls, waiting up to <paramref name="timeout"/> for at least one completion: a short spin, then the thread
    /// sleeps until the engine pushes one (the blocking counterpart of ibv_get_cq_event), so a waiting consumer costs
    /// no CPU and wakes without a polling delay.
    /// </summary>
    /// <param name="into">Where the completions go, oldest first.</param>
    /// <param name="timeout">How long to wait for the first one; zero or negative polls once.</param>
    /// <returns>How many completions were moved; 0 when none came within <paramref name="timeout"/>.</returns>
    /// <exception cref="ObjectDisposedException">The completion queue is disposed (before or while waiting).</exception>
    /// <exception cref="PinnedDmaException">
    /// <see cref="PinnedDmaError.NoSpace"/>: the queue overran, so completions were lost (see <see cref="Poll(Span{WorkCompletion})"/>).
    /// </exception>
    public int Poll(Span<WorkCompletion> into, TimeSpan timeout)
    {
        long deadline = Environment.TickCount64 + (long)timeout.TotalMilliseconds;
        var spin = new SpinWait();
        while (true)
        {
            int n = Poll(into);
            if (n > 0) return n;
            long left = deadline - Environment.TickCount64;
            if (left <= 0) return 0;
            if (!spin.NextSpinWillYield)
            {
                spin.SpinOnce();
                continue;
            }
            lock (_sync)
            {
                if (_disposed) ThrowHelper.ThrowObjectDisposed(this);
                if (_count > 0 || _overrun) continue;
                _available.Reset();
                _blocked++;
            }
            try
            {
                _available.Wait((int)Math.Min(left, int.MaxValue));
            }
            finally
            {
                lock (_sync) _blocked--;
            }
        }
    }

    internal void Push(in WorkCompletion wc)
    {
        if (Diagnostics.Telemetry.Completions.Enabled) Diagnostics.Telemetry.Completions.Add(1, Diagnostics.Telemetry.Status(wc.Status));
        bool wake = false;
        lock (_sync)
        {
            if (_disposed) return; // nobody can poll it any more
            if (_count == _ring.Length)
            {
                _overrun = true;
                Diagnostics.Telemetry.CqOverruns.Add(1);
            }
            else
            {
                _ring[(_head + _count) % _ring.Length] = wc;
                _count++;
            }
            if (_armed)
            {
                _armed = false;
                wake = true;
            }
            if (_blocked > 0) _available.Set();
        }
        if (wake)
        {
            _cancel.Unregister();
            _waiter.SetResult(true);
        }
    }

    void IValueTaskSource.GetResult(short token) => _waiter.GetResult(token);

    ValueTaskSourceStatus IValueTaskSource.GetStatus(short token) => _waiter.GetStatus(token);

    void IValueTaskSource.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _waiter.OnCompleted(continuation, state, token, flags);

    /// <summary>
    /// ibv_destroy_cq. A pending <see cref="WaitAsync()"/> faults with <see cref="ObjectDisposedException"/>, a thread
    /// blocked in <see cref="Poll(Span{WorkCompletion}, TimeSpan)"/> wakes and throws it, and so does every later call.
    /// Queue pairs still completing into it lose those completions (dispose them first: disposing the device does).
    /// </summary>
    public void Dispose()
    {
        bool wake;
        lock (_sync)
        {
            if (_disposed) return;
            _disposed = true;
            wake = _armed;
            _armed = false;
            _available.Set();
        }
        if (wake)
        {
            _cancel.Unregister();
            _waiter.SetException(new ObjectDisposedException(nameof(CompletionQueue)));
        }
        _device?.Forget(this);
    }
}
