namespace PinnedDma.Verbs.Internal;

/// <summary>
/// The soft NIC's DMA engine: takes queue pairs off a doorbell queue and executes their send queues in order, on one
/// thread: a named background thread of its own (the device's engine, for the loopback fabric), or an I/O loop's thread
/// that hosts it (iWARP connections: the loop serves their sockets and their send queues alike). A poster may run a
/// few small requests of an idle queue pair itself (<see cref="Posted"/>); one thread at a time works for a queue pair. Every byte moves through
/// memory-region translation while the region's drain is held, so a lease revocation waits for the copy in flight and
/// then no later access can touch the blocks. A fault while working for one queue pair is not swallowed and does not
/// end the process: that QP's head request completes in error and the QP moves to Error (so it stops touching memory),
/// and the engine goes on with the others.
/// </summary>
internal sealed class DmaEngine : IDisposable
{
    private const int Budget = 32;
    // Work requests a posting thread runs itself (inline) before it hands the rest to the engine.
    private const int InlineBudget = 4;
    private readonly object _sync = new();
    private readonly Queue<QueuePair> _doorbell = new(64);
    private readonly List<QueuePair> _rnr = new();
    private readonly ManualResetEventSlim? _wake;
    private readonly Thread? _thread;
    private readonly IEngineHost? _host;
    private volatile bool _stop;
    private volatile int _pending;
    private long _rnrDue = long.MaxValue;

    /// <summary>An engine on a thread of its own (the device's, for the loopback fabric).</summary>
    public DmaEngine(string name)
    {
        _wake = new ManualResetEventSlim(false, spinCount: 0);
        _thread = new Thread(Run) { IsBackground = true, Name = $"pinneddma-dma-{name}" };
        _thread.Start();
    }

    /// <summary>An engine run by <paramref name="host"/>'s thread (an I/O loop), which calls <see cref="RunPending"/>.</summary>
    public DmaEngine(IEngineHost host)
    {
        _host = host;
    }

    /// <summary>Work requests executed (for tests and benchmarks).</summary>
    public long Executed;

    /// <summary>Work requests a posting thread executed itself (for tests and benchmarks).</summary>
    public long ExecutedInline;

    /// <summary>Hosted: queue pairs wait in the doorbell.</summary>
    public bool HasWork => _pending != 0;

    /// <summary>Hosted: when receiver-not-ready retries are due (<see cref="Environment.TickCount64"/>; long.MaxValue for none).</summary>
    public long RetryDue => Volatile.Read(ref _rnrDue);

    public void Ring(QueuePair qp)
    {
        lock (_sync)
        {
            if (qp.InDoorbell) return;
            qp.InDoorbell = true;
            _doorbell.Enqueue(qp);
            _pending = _doorbell.Count;
        }
        if (_host is not null) _host.Wake();
        else _wake!.Set();
    }

    /// <summary>
    /// A send work request was posted. When the queue pair's transport allows it and nobody is working for the queue
    /// pair, the posting thread executes the first few requests itself (as a NIC takes an inline post straight from
    /// the doorbell write): no hand-off to the engine's thread and no wake-up for a small request on an idle queue pair.
    /// Anything the poster does not finish goes to the engine.
    /// </summary>
    public void Posted(QueuePair qp)
    {
        var transport = qp.Transport;
        if (transport is { SupportsInline: true } && !qp.InDoorbell && TryBeginTurn(qp))
        {
            ProcessTurn(qp, InlineBudget, inline: true);
            EndTurn(qp);
            return;
        }
        Ring(qp);
    }

    /// <summary>Hosted: processes the queue pairs rung so far (each gets one turn); the host's thread calls it.</summary>
    public void RunPending()
    {
        int n;
        lock (_sync) n = _doorbell.Count;
        for (; n > 0; n--)
        {
            QueuePair? qp;
            lock (_sync)
            {
                if (!_doorbell.TryDequeue(out qp)) break;
                qp.InDoorbell = false;
                _pending = _doorbell.Count;
            }
            Process(qp);
        }
    }

    /// <summary>Rings the queue pairs whose peer had no receive posted, once their back-off passed.</summary>
    public void RetryReceiverNotReady()
    {
        QueuePair[] again;
        lock (_sync)
        {
            if (_rnr.Count == 0 || Environment.TickCount64 < _rnrDue) return;
            again = _rnr.ToArray();
            _rnr.Clear();
            Volatile.Write(ref _rnrDue, long.MaxValue);
        }
        foreach (var q in again) Ring(q);
    }

    private void Run()
    {
        while (!_stop)
        {
            QueuePair? qp = null;
            lock (_sync)
            {
                if (_doorbell.Count > 0)
                {
                    qp = _doorbell.Dequeue();
                    qp.InDoorbell = false;
                    _pending = _doorbell.Count;
                }
            }
            if (qp is not null)
            {
                Process(qp);
                continue;
            }
            if (RetryDue != long.MaxValue)
            {
                // Receiver-not-ready: retry after a short back-off, as RNR NAK timers do.
                int wait = (int)Math.Clamp(RetryDue - Environment.TickCount64, 0, 1);
                if (wait > 0) Thread.Sleep(wait);
                RetryReceiverNotReady();
                continue;
            }
            // Spin briefly for latency, then sleep until the next doorbell.
            var spin = new SpinWait();
            for (int i = 0; i < 64 && _pending == 0 && !_stop; i++) spin.SpinOnce(sleep1Threshold: -1);
            if (_pending != 0) continue;
            _wake!.Reset();
            // Stop sets the event after setting the flag: re-checked after the reset, a stop is never slept through.
            if (_stop) break;
            lock (_sync)
                if (_doorbell.Count > 0) continue;
            // Ring sets the event after enqueuing and the queue is re-checked after the reset, so no doorbell is missed;
            // the timeout is only a safety net.
            _wake.Wait(1000);
        }
    }

    // A queue pair's turn is taken by one thread at a time (the engine's, or a poster running it inline): 0 free,
    // 1 taken, 2 taken and rung meanwhile (the taker hands the queue pair to the engine when it ends the turn).
    private static bool TryBeginTurn(QueuePair qp)
    {
        while (true)
        {
            int s = Volatile.Read(ref qp.Turn);
            if (s == 0)
            {
                if (Interlocked.CompareExchange(ref qp.Turn, 1, 0) == 0) return true;
            }
            else if (s == 2 || Interlocked.CompareExchange(ref qp.Turn, 2, 1) == 1)
            {
                return false;
            }
        }
    }

    private void EndTurn(QueuePair qp)
    {
        if (Interlocked.CompareExchange(ref qp.Turn, 0, 1) == 1) return;
        Volatile.Write(ref qp.Turn, 0);
        Ring(qp);
    }

    private void Process(QueuePair qp)
    {
        if (!TryBeginTurn(qp)) return; // a poster is running it; it rings again when it ends
        ProcessTurn(qp, Budget, inline: false);
        EndTurn(qp);
    }

    private void ProcessTurn(QueuePair qp, int budget, bool inline)
    {
        // The QP's gate: a QP moved to Error or disposed has ended remote and local access, so its engine work stops;
        // whoever moved it waits for the work inside to leave.
        if (!qp.TryEnterActive()) return;
        try
        {
            var transport = qp.Transport;
            transport?.TakeTurn();
            ProcessSendQueue(qp, transport, budget, inline);
            transport?.FlushPending();
        }
        catch (Exception e)
        {
            // A fault while executing one QP's work must not take the engine (and every other QP) down, nor leave the
            // QP half-done: its head request fails and the QP moves to Error, flushing the rest.
            Fault(qp, e);
        }
        finally
        {
            qp.ExitActive();
        }
    }

    /// <summary>A fault inside the engine: the QP's head request completes in error (LocQpOpErr) and the QP moves to Error.</summary>
    internal static void Fault(QueuePair qp, Exception e)
    {
        if (qp.TryPeekSend(out var wr, out int epoch) && qp.PopSend(epoch))
            qp.FailRequest(qp.SendCq, new WorkCompletion(wr.WrId, WcStatus.LocQpOpErr, QueuePair.ToWcOpcode(wr.Opcode), 0, qp.QpNumber, WcFlags.None, 0, 0));
        else
            qp.EnterError();
        qp.Transport?.Close($"engine fault: {e.GetType().Name}: {e.Message}");
    }

    private void ProcessSendQueue(QueuePair qp, QpTransport? transport, int budget, bool inline)
    {
        for (int n = 0; n < budget; n++)
        {
            if (!qp.TryPeekSend(out var wr, out int epoch)) return;
            // The transport cannot take more now (its socket is full, or it may not transmit yet): it rings the queue
            // pair when it can.
            if (transport is not null && transport.ParkForSend()) return;
            // A poster runs small requests only; a large one goes to the engine's thread.
            if (inline && wr.Local.Length > transport!.InlineLimit)
            {
                Ring(qp);
                return;
            }
            // Fence: wait for earlier RDMA Reads the transport completes later; the last one rings the queue pair again.
            if ((wr.Flags & SendFlags.Fence) != 0 && transport is not null && transport.ParkForFence()) return;
            // An RDMA Read the transport completes later may complete before Execute returns: free its send-queue slot
            // first, or a poster that saw the completion and refills the queue gets a false "full".
            bool popFirst = transport is { CompletesReadsLater: true } && wr.Opcode == WrOpcode.RdmaRead;
            // ORD: no more RDMA Reads outstanding than the peer's IRD; the next one to complete rings the queue pair.
            if (popFirst && transport!.ParkForOrd()) return;
            if (popFirst && !qp.PopSend(epoch)) return; // flushed meanwhile: the flush completed it
            var status = Execute(qp, transport, in wr, out uint bytes, out var outcome);
            // Under way and parked on the transport (a full socket): it rings the queue pair when it can go on, and the
            // same request is executed again to finish.
            if (outcome == TransportOutcome.Blocked) return;
            if (outcome == TransportOutcome.ReceiverNotReady)
            {
                long now = Environment.TickCount64;
                if (qp.RnrDeadline == 0) qp.RnrDeadline = now + (long)qp.RnrTimeout.TotalMilliseconds;
                if (now < qp.RnrDeadline)
                {
                    lock (_sync)
                    {
                        _rnr.Add(qp);
                        if (_rnrDue == long.MaxValue) Volatile.Write(ref _rnrDue, now + 1);
                    }
                    return;
                }
                status = WcStatus.RnrRetryExcErr;
            }
            qp.RnrDeadline = 0;
            // A flush (move to Error, Dispose) since the peek completed this request already.
            if (!popFirst && !qp.PopSend(epoch)) return;
            Interlocked.Increment(ref Executed);
            if (inline) Interlocked.Increment(ref ExecutedInline);
            if (status == WcStatus.Success && outcome == TransportOutcome.Deferred)
            {
                // The transport completes it.
            }
            else if (status == WcStatus.Success)
            {
                if (qp.SignalAll || (wr.Flags & SendFlags.Signaled) != 0)
                {
                    var wc = new WorkCompletion(wr.WrId, status, QueuePair.ToWcOpcode(wr.Opcode), bytes, qp.QpNumber, WcFlags.None, 0, 0);
                    // A completion may have to wait behind an outstanding RDMA Read the transport completes later.
                    if (transport is not null) transport.CompleteInOrder(wc);
                    else qp.SendCq.Push(wc);
                }
            }
            else
            {
                qp.FailRequest(qp.SendCq, new WorkCompletion(wr.WrId, status, QueuePair.ToWcOpcode(wr.Opcode), 0, qp.QpNumber, WcFlags.None, 0, 0));
                return;
            }
        }
        Ring(qp); // more work: take turns with other queue pairs
    }

    private static WcStatus Execute(QueuePair qp, QpTransport? transport, in SendWorkRequest wr, out uint bytes, out TransportOutcome outcome)
    {
        outcome = TransportOutcome.Done;
        bytes = wr.Local.Length;
        if (wr.Opcode == WrOpcode.LocalInvalidate)
        {
            var target = qp.Pd.Device.Keys.Lookup(wr.InvalidateRKey);
            if (target is null || target.Pd != qp.Pd) return WcStatus.LocProtErr;
            target.Invalidate();
            bytes = 0;
            return WcStatus.Success;
        }
        bool sinkIsLocal = wr.Opcode is WrOpcode.RdmaRead or WrOpcode.AtomicCompareSwap or WrOpcode.AtomicFetchAdd;
        var ls = ResolveLocal(qp, in wr.Local, sinkIsLocal, out var lmr, out long loff);
        if (ls != WcStatus.Success) return ls;
        // A QP in RTS without a transport has no peer (a move to Reset dropped it): the request cannot reach anyone.
        if (transport is null) return WcStatus.RetryExcErr;
        return transport.Execute(in wr, lmr, loff, out outcome);
    }

    /// <summary>Checks a local SGE against the QP's device and PD (lkey, bounds, LocalWrite for sinks).</summary>
    internal static WcStatus ResolveLocal(QueuePair qp, in ScatterGatherElement sge, bool write, out MemoryRegion? mr, out long offset)
    {
        offset = 0;
        mr = null;
        if (sge.Length == 0) return WcStatus.Success;
        mr = qp.Pd.Device.Keys.Lookup(sge.LKey);
        if (mr is null || mr.Pd != qp.Pd || !mr.IsValid) return WcStatus.LocProtErr;
        if (write && (mr.Access & AccessFlags.LocalWrite) == 0) return WcStatus.LocProtErr;
        if (sge.Address < mr.Address || sge.Address - mr.Address > (ulong)mr.Length || sge.Length > (ulong)mr.Length - (sge.Address - mr.Address))
            return WcStatus.LocProtErr;
        offset = (long)(sge.Address - mr.Address);
        return WcStatus.Success;
    }

    public void Dispose()
    {
        Stop();
        if (_thread is not null && Thread.CurrentThread != _thread) _thread.Join(TimeSpan.FromSeconds(5));
    }

    /// <summary>
    /// Asks the thread to end after the queue pair it is working on, without waiting for it (a caller may hold a lock
    /// that thread needs). Every access it still makes is inside a region's drain, so revocations stay exact.
    /// </summary>
    public void Stop()
    {
        _stop = true;
        _wake?.Set();
    }
}

/// <summary>The thread that runs a hosted <see cref="DmaEngine"/> (an I/O loop).</summary>
internal interface IEngineHost
{
    /// <summary>The engine was rung: run <see cref="DmaEngine.RunPending"/> soon.</summary>
    void Wake();
}

/// <summary>The responder's checks, shared by the loopback engine and network transports.</summary>
internal static class Responder
{
    /// <summary>Validates an incoming RDMA/atomic request against the responder QP: rkey, PD, validity, access, bounds.</summary>
    public static WcStatus ResolveRemote(QueuePair responder, uint rkey, ulong address, uint length, AccessFlags need, out MemoryRegion? mr, out long offset)
    {
        offset = 0;
        mr = null;
        if ((responder.RemoteAccess & need) == 0) return WcStatus.RemAccessErr;
        mr = responder.Pd.Device.Keys.Lookup(rkey);
        if (mr is null || mr.Pd != responder.Pd || !mr.IsValid || (mr.Access & need) != need) return WcStatus.RemAccessErr;
        if (address < mr.Address || address - mr.Address > (ulong)mr.Length || length > (ulong)mr.Length - (address - mr.Address))
            return WcStatus.RemAccessErr;
        offset = (long)(address - mr.Address);
        return WcStatus.Success;
    }
}
