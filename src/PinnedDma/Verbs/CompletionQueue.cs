using PinnedDma.Internal;
using PinnedDma.Verbs.Internal;

namespace PinnedDma.Verbs;

/// <summary>
/// A completion queue (ibv_cq): a fixed ring the DMA engine fills and <see cref="Poll(Span{WorkCompletion})"/> drains into the caller's
/// span. <see cref="WaitAsync(CancellationToken)"/> is an allocation-free awaitable (a reusable value-task source) for one waiter.
/// </summary>
/// <remarks>
/// An overrun (the engine finds the ring full) puts the CQ in error for good, as IBV_EVENT_CQ_ERR does: the completion
/// that did not fit is lost, so the caller's count of outstanding work requests no longer matches what will complete,
/// and no poll can make it match again. The completions already in the ring are still handed out (they report work
/// that did happen); once they are drained, every poll throws <see cref="PinnedDmaError.NoSpace"/>. The way out is
/// the verbs one: dispose the queue pairs completing into this CQ and the CQ, then create a larger CQ and new queue
/// pairs (a CQ needs at least as many entries as the work requests that can be outstanding on it).
/// </remarks>
public sealed class CompletionQueue : IDisposable
{
    private readonly object _sync = new();
    private readonly WorkCompletion[] _ring;
    private int _head, _count;
    private bool _overrun;
    private readonly CompletionWaiter _waiter; // its state changes under _sync (see its state machine)
    // Threads blocked in Poll(span, timeout), woken by Push.
    private readonly ManualResetEventSlim _available = new(false, 0);
    private int _blocked;
    private bool _disposed; // under _sync
    private readonly RdmaDevice? _device;

    internal const int MaxCapacity = 1 << 22;

    /// <summary>How long a blocking <see cref="Poll(Span{WorkCompletion}, TimeSpan)"/> spins before it sleeps.</summary>
    private const int SpinMicroseconds = 50;

    private static readonly long SpinTicks = System.Diagnostics.Stopwatch.Frequency * SpinMicroseconds / 1_000_000;

    internal CompletionQueue(int capacity, RdmaDevice? device = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(capacity);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(capacity, MaxCapacity);
        _device = device;
        _ring = new WorkCompletion[capacity];
        _waiter = new CompletionWaiter(_sync, this);
    }

    /// <summary>The device that created it (null for a queue made by the library's own tests).</summary>
    internal RdmaDevice? Device => _device;

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
    /// <see cref="Capacity"/>), so completions were lost, and the completions that did fit have all been polled; every
    /// later poll throws it too (the CQ is in error: see the remarks for the way out).
    /// </exception>
    public int Poll(Span<WorkCompletion> into)
    {
        lock (_sync)
        {
            if (_disposed) ThrowHelper.ThrowObjectDisposed(this);
            if (_overrun && _count == 0)
                ThrowHelper.Throw(PinnedDmaError.NoSpace, $"Completion queue overrun (capacity {_ring.Length}): completions were lost; the CQ is in error.");
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
    /// <returns>A task that completes when a completion can be polled (or the queue overran); await it once.</returns>
    /// <exception cref="InvalidOperationException">Another WaitAsync is pending or not yet awaited (thrown at once).</exception>
    /// <exception cref="ObjectDisposedException">In the task: the completion queue (or its device) is disposed first.</exception>
    public ValueTask WaitAsync() => WaitAsync(CancellationToken.None);

    /// <summary>
    /// Completes when at least one completion can be polled (ibv_req_notify_cq + ibv_get_cq_event). One waiter at a
    /// time, and each returned task must be awaited (or its result read) once before the next wait. Faults with
    /// <see cref="OperationCanceledException"/> when <paramref name="cancellationToken"/> is canceled first, and with
    /// <see cref="ObjectDisposedException"/> when the CQ (or its device) is disposed first; once disposed, every later
    /// wait faults at once. A completion racing a cancellation gives the wait exactly one of the two outcomes. A wait
    /// allocates nothing, with a cancelable token or without.
    /// </summary>
    /// <param name="cancellationToken">Stops the wait.</param>
    /// <returns>A task that completes when a completion can be polled (or the queue overran); await it once.</returns>
    /// <exception cref="InvalidOperationException">Another WaitAsync is pending or not yet awaited (thrown at once).</exception>
    /// <exception cref="ObjectDisposedException">In the task: the completion queue (or its device) is disposed first.</exception>
    /// <exception cref="OperationCanceledException">In the task: <paramref name="cancellationToken"/> is canceled first.</exception>
    public ValueTask WaitAsync(CancellationToken cancellationToken)
    {
        lock (_sync)
        {
            if (_waiter.Closed || _waiter.Busy) return _waiter.Arm(cancellationToken); // faults, or throws for a second wait
            if (_count > 0 || _overrun) return ValueTask.CompletedTask;
            return _waiter.Arm(cancellationToken);
        }
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
    /// <param name="timeout">
    /// How long to wait for the first one: <see cref="Timeout.InfiniteTimeSpan"/> (-1 ms) waits until one comes (or
    /// the CQ is disposed), zero or any other negative value polls once.
    /// </param>
    /// <returns>
    /// How many completions were moved; 0 when none came within <paramref name="timeout"/> (and at once when
    /// <paramref name="into"/> is empty).
    /// </returns>
    /// <exception cref="ObjectDisposedException">The completion queue is disposed (before or while waiting).</exception>
    /// <exception cref="PinnedDmaException">
    /// <see cref="PinnedDmaError.NoSpace"/>: the queue overran, so completions were lost (see <see cref="Poll(Span{WorkCompletion})"/>).
    /// </exception>
    public int Poll(Span<WorkCompletion> into, TimeSpan timeout)
    {
        bool infinite = timeout == Timeout.InfiniteTimeSpan; // TimeSpan.MaxValue in ms still fits a long deadline
        long deadline = infinite ? long.MaxValue : Environment.TickCount64 + Math.Max(0, (long)timeout.TotalMilliseconds);
        var spin = new SpinWait();
        // A completion that comes within SpinMicroseconds is handed over without a wake-up: the pusher sees no blocked
        // poller and sets no event, the spinning poller finds it (as a NIC's polling consumer does).
        long spinUntil = System.Diagnostics.Stopwatch.GetTimestamp() + SpinTicks;
        while (true)
        {
            int n = Poll(into);
            if (n > 0 || into.IsEmpty) return n;
            long left = infinite ? long.MaxValue : deadline - Environment.TickCount64;
            if (left <= 0) return 0;
            if (System.Diagnostics.Stopwatch.GetTimestamp() < spinUntil)
            {
                spin.SpinOnce(sleep1Threshold: -1); // yields now and then: a spinner never starves the thread it waits for
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
                _available.Wait(infinite ? Timeout.Infinite : (int)Math.Min(left, int.MaxValue));
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
            wake = _waiter.TryClaim();
            if (_blocked > 0) _available.Set();
        }
        if (wake) _waiter.Complete(disposed: false);
    }

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
            wake = _waiter.Close();
            _available.Set();
        }
        if (wake) _waiter.Complete(disposed: true);
        _device?.Forget(this);
    }
}
