using PinnedDma.Internal;
using PinnedDma.Verbs.Internal;

namespace PinnedDma.Verbs;

/// <summary>
/// A reliable-connected queue pair (ibv_qp, IBV_QPT_RC) with the kernel's state table. Posting copies the work
/// request into a fixed ring and rings the DMA engine's doorbell: nothing is allocated in steady state. A local or
/// remote access error completes the work request with its status, moves the QP to Error and flushes every other
/// outstanding request with <see cref="WcStatus.WrFlushErr"/>.
/// </summary>
public sealed class QueuePair : IDisposable
{
    private static int s_nextQpn = 0x11;

    internal readonly object Sync = new();
    private readonly SendWorkRequest[] _sq;
    private int _sqHead, _sqCount;
    private readonly RecvWorkRequest[] _rq;
    private int _rqHead, _rqCount;
    private QpState _state;
    private int _disposed; // written under Sync

    internal QueuePair(ProtectionDomain pd, QueuePairOptions o)
    {
        // Validated here, at the API boundary: the engine and the transports' receive sides trust these.
        if (o.SendCq is null) throw new ArgumentNullException(nameof(o), "QueuePairOptions.SendCq is required.");
        if (o.RecvCq is null) throw new ArgumentNullException(nameof(o), "QueuePairOptions.RecvCq is required.");
        o.SendCq.ThrowIfDisposed();
        o.RecvCq.ThrowIfDisposed();
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(o.MaxSendWr);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(o.MaxRecvWr);
        Pd = pd;
        SendCq = o.SendCq;
        RecvCq = o.RecvCq;
        SignalAll = o.SignalAll;
        _sq = new SendWorkRequest[o.MaxSendWr];
        _rq = new RecvWorkRequest[o.MaxRecvWr];
        QpNumber = (uint)Interlocked.Increment(ref s_nextQpn);
        QpNumberTable.Add(this);
        Diagnostics.Telemetry.QueuePairMoved(null, QpState.Reset);
    }

    /// <summary>The protection domain.</summary>
    public ProtectionDomain Pd { get; }

    /// <summary>The queue pair number.</summary>
    public uint QpNumber { get; }

    /// <summary>Send completions.</summary>
    public CompletionQueue SendCq { get; }

    /// <summary>Receive completions.</summary>
    public CompletionQueue RecvCq { get; }

    /// <summary>sq_sig_all.</summary>
    public bool SignalAll { get; }

    /// <summary>Remote operations the QP accepts.</summary>
    public AccessFlags RemoteAccess { get; private set; }

    /// <summary>The connected peer's number, once RTR.</summary>
    public uint DestQpNumber { get; private set; }

    /// <summary>
    /// What carries this QP's work to its peer: set by a move to RTR (a queue pair in this process, by number) or by a
    /// connection manager (<see cref="AttachConnection"/>); null before either. A move to Reset closes it; the next
    /// RTR or connection replaces it.
    /// </summary>
    internal QpTransport? Transport { get; private set; }

    /// <summary>
    /// The engine that executes this QP's send queue: the transport's (an iWARP connection has its own, so a slow or
    /// stalled peer holds up only its own queue pair); the device's without one.
    /// </summary>
    internal DmaEngine Engine => Transport?.Engine ?? Pd.Device.Engine;

    /// <summary>Why the connection under this QP ended, if it did.</summary>
    public string? ConnectionCloseReason => Transport?.CloseReason;

    /// <summary>The connection manager attaches a connected transport: the QP moves (from Reset or Init) to RTS.</summary>
    internal void AttachConnection(QpTransport connection)
    {
        lock (Sync)
        {
            if (_disposed != 0 || _state is not (QpState.Reset or QpState.Init))
            {
                // The connection never belonged to this QP: it goes without touching the QP's state.
                connection.Abandon();
                if (_disposed != 0) ThrowHelper.ThrowObjectDisposed(this);
                ThrowHelper.Throw(PinnedDmaError.InvalidArgument, $"Connecting a QP in {_state}: it must be in Reset or Init.");
            }
            if (_state == QpState.Reset) RemoteAccess = AccessFlags.RemoteRead | AccessFlags.RemoteWrite;
            Transport = connection;
            SetStateLocked(QpState.Rts);
        }
        connection.Start();
    }

    /// <summary>
    /// Checks, before any side effect, that a connection may be attached (the connection manager calls it first, so a
    /// QP in the wrong state is refused without moving it to Error or touching the network).
    /// </summary>
    internal void CheckConnectable()
    {
        lock (Sync)
        {
            if (_disposed != 0) ThrowHelper.ThrowObjectDisposed(this);
            if (_state is not (QpState.Reset or QpState.Init))
                ThrowHelper.Throw(PinnedDmaError.InvalidArgument, $"Connecting a QP in {_state}: it must be in Reset or Init.");
        }
    }

    internal TimeSpan RnrTimeout { get; private set; } = TimeSpan.FromMilliseconds(100);

    internal long RnrDeadline;
    internal bool InDoorbell;

    /// <summary>Who works for this QP's send queue now (see DmaEngine: 0 nobody, 1 someone, 2 someone and rung meanwhile).</summary>
    internal int Turn;

    /// <summary>Current state.</summary>
    public QpState State
    {
        get { lock (Sync) return _state; }
    }

    /// <summary>Send work requests posted and not completed.</summary>
    public int SendQueueDepth
    {
        get { lock (Sync) return _sqCount; }
    }

    /// <summary>
    /// ibv_modify_qp. Legal moves are the kernel's (qp_state_table): any state to Reset or Error; Reset to Init;
    /// Init to Init or Rtr; Rtr to Rts; Rts to Rts or Sqd; Sqd to Sqd or Rts; Sqe to Rts. Anything else fails with
    /// InvalidArgument and nothing changes.
    /// </summary>
    /// <param name="attributes">The target state and the attributes that go with it.</param>
    /// <exception cref="ArgumentNullException"><paramref name="attributes"/> is null.</exception>
    /// <exception cref="ObjectDisposedException">The queue pair is disposed.</exception>
    /// <exception cref="PinnedDmaException">
    /// <see cref="PinnedDmaError.InvalidArgument"/>, and nothing changes: the move is not in the table above, or a move
    /// to <see cref="QpState.Rtr"/> has no <see cref="QpAttributes.DestQpNumber"/> or names no queue pair on the fabric.
    /// </exception>
    public void Modify(QpAttributes attributes)
    {
        ArgumentNullException.ThrowIfNull(attributes);
        ThrowIfDisposed();
        QueuePair? peer = null;
        if (attributes.State == QpState.Rtr)
        {
            if (attributes.DestQpNumber is not uint dest)
                ThrowHelper.Throw(PinnedDmaError.InvalidArgument, "RTR needs DestQpNumber.");
            else if ((peer = QpNumberTable.Find(dest)) is null)
                ThrowHelper.Throw(PinnedDmaError.InvalidArgument, $"No queue pair 0x{dest:x} on the fabric.");
        }
        lock (Sync)
        {
            if (_disposed != 0) ThrowHelper.ThrowObjectDisposed(this);
            if (!IsLegal(_state, attributes.State))
                ThrowHelper.Throw(PinnedDmaError.InvalidArgument, $"Illegal QP transition {_state} -> {attributes.State}.");
            switch (attributes.State)
            {
                case QpState.Reset:
                    // Whatever was outstanding completes (flushed) before the rings are emptied: no request is lost.
                    FlushAllLocked();
                    _sqCount = _rqCount = 0;
                    _sqHead = _rqHead = 0;
                    break;
                case QpState.Init:
                    if (attributes.AccessFlags is AccessFlags a) RemoteAccess = a;
                    break;
                case QpState.Rtr:
                    Transport = ByNumber(peer!);
                    DestQpNumber = attributes.DestQpNumber!.Value;
                    break;
                case QpState.Error:
                    FlushAllLocked();
                    break;
            }
            if (attributes.RnrTimeout is TimeSpan t) RnrTimeout = t;
            SetStateLocked(attributes.State);
        }
        if (attributes.State is QpState.Error or QpState.Reset)
        {
            // No remote access from here on: the connection ends and the accesses already inside leave first.
            Transport?.Close($"queue pair moved to {attributes.State}");
            WaitForActiveToLeave();
        }
        if (attributes.State is QpState.Rts) Engine.Ring(this);
    }

    internal static bool IsLegal(QpState from, QpState to) => to switch
    {
        QpState.Reset or QpState.Error => true,
        QpState.Init => from is QpState.Reset or QpState.Init,
        QpState.Rtr => from is QpState.Init,
        QpState.Rts => from is QpState.Rtr or QpState.Rts or QpState.Sqd or QpState.Sqe,
        QpState.Sqd => from is QpState.Rts or QpState.Sqd,
        _ => false,
    };

    /// <summary>
    /// ibv_post_send. Fails (InvalidArgument) before RTS and when the send queue is full (NoSpace); on a QP in Error
    /// the request completes at once with WrFlushErr.
    /// </summary>
    /// <remarks>
    /// The request itself (opcode, keys, addresses, lengths) is checked when the engine executes it: a bad one
    /// completes with an error status (<see cref="WcStatus.LocProtErr"/>, <see cref="WcStatus.RemAccessErr"/>, ...) on
    /// <see cref="SendCq"/> and moves the QP to Error; it does not throw here.
    /// </remarks>
    /// <param name="wr">The work request, copied into the send queue.</param>
    /// <exception cref="ObjectDisposedException">The queue pair is disposed.</exception>
    /// <exception cref="PinnedDmaException">
    /// Nothing is posted. <see cref="PinnedDmaError.InvalidArgument"/>: the QP is in Reset, Init, Rtr or Sqe (EINVAL);
    /// <see cref="PinnedDmaError.NoSpace"/>: the send queue already holds
    /// <see cref="QueuePairOptions.MaxSendWr"/> requests (ENOMEM).
    /// </exception>
    /// <example>
    /// An RDMA WRITE of 19 bytes from a registered buffer into a peer's region, then its completion:
    /// <code>
    /// MemoryRegion source = pd.RegisterBuffer(4096, AccessFlags.LocalWrite);
    /// "hello, pinned world"u8.CopyTo(source.GetBufferSpan());
    /// qp.PostSend(new SendWorkRequest
    /// {
    ///     WrId = 1, Opcode = WrOpcode.RdmaWrite, Flags = SendFlags.Signaled,
    ///     Local = new ScatterGatherElement(source.Address, 19, source.LKey),
    ///     RemoteAddress = target.Address, RKey = target.RKey,   // the peer's region, e.g. from RegisterFile
    /// });
    /// var wc = new WorkCompletion[1];
    /// if (qp.SendCq.Poll(wc, TimeSpan.FromSeconds(5)) == 1 &amp;&amp; wc[0].Status != WcStatus.Success)
    ///     Console.WriteLine($"write failed: {wc[0]}");
    /// </code>
    /// </example>
    public void PostSend(in SendWorkRequest wr)
    {
        lock (Sync)
        {
            if (_disposed != 0) ThrowHelper.ThrowObjectDisposed(this);
            if (_state == QpState.Error)
            {
                SendCq.Push(new WorkCompletion(wr.WrId, WcStatus.WrFlushErr, ToWcOpcode(wr.Opcode), 0, QpNumber, WcFlags.None, 0, 0));
                return;
            }
            if (_state is not (QpState.Rts or QpState.Sqd))
                ThrowHelper.Throw(PinnedDmaError.InvalidArgument, $"ibv_post_send on a QP in {_state} (EINVAL).");
            if (_sqCount == _sq.Length)
                ThrowHelper.Throw(PinnedDmaError.NoSpace, $"Send queue full ({_sq.Length} work requests) (ENOMEM).");
            _sq[(_sqHead + _sqCount) % _sq.Length] = wr;
            _sqCount++;
        }
        Diagnostics.Telemetry.Posted(wr);
        Engine.Posted(this);
    }

    /// <summary>ibv_post_recv. Allowed from Init on; on a QP in Error the request completes at once with WrFlushErr.</summary>
    /// <param name="wr">The work request, copied into the receive queue.</param>
    /// <exception cref="ObjectDisposedException">The queue pair is disposed.</exception>
    /// <exception cref="PinnedDmaException">
    /// Nothing is posted. <see cref="PinnedDmaError.InvalidArgument"/>: the QP is in Reset (EINVAL);
    /// <see cref="PinnedDmaError.NoSpace"/>: the receive queue already holds
    /// <see cref="QueuePairOptions.MaxRecvWr"/> requests (ENOMEM).
    /// </exception>
    public void PostRecv(in RecvWorkRequest wr)
    {
        lock (Sync)
        {
            if (_disposed != 0) ThrowHelper.ThrowObjectDisposed(this);
            if (_state == QpState.Error)
            {
                RecvCq.Push(new WorkCompletion(wr.WrId, WcStatus.WrFlushErr, WcOpcode.Recv, 0, QpNumber, WcFlags.None, 0, 0));
                return;
            }
            if (_state == QpState.Reset) ThrowHelper.Throw(PinnedDmaError.InvalidArgument, "ibv_post_recv on a QP in Reset (EINVAL).");
            if (_rqCount == _rq.Length) ThrowHelper.Throw(PinnedDmaError.NoSpace, $"Receive queue full ({_rq.Length} work requests) (ENOMEM).");
            _rq[(_rqHead + _rqCount) % _rq.Length] = wr;
            _rqCount++;
        }
        // A sender may be waiting for this receive (RNR).
        Transport?.ReceivePosted();
    }

    internal bool TryPeekSend(out SendWorkRequest wr, out int epoch)
    {
        lock (Sync)
        {
            epoch = _flushEpoch;
            // Sqd: the send queue is drained; posted work waits for the move back to Rts. Error: the move flushed it.
            if (_sqCount == 0 || _state != QpState.Rts) { wr = default; return false; }
            wr = _sq[_sqHead];
            return true;
        }
    }

    /// <summary>
    /// Frees the head of the send queue peeked at <paramref name="epoch"/>; false (and nothing popped) when a flush
    /// came in between: the flush completed that request already, so the engine must not complete it again.
    /// </summary>
    internal bool PopSend(int epoch)
    {
        lock (Sync)
        {
            if (_sqCount == 0 || epoch != _flushEpoch) return false;
            _sqHead = (_sqHead + 1) % _sq.Length;
            _sqCount--;
            return true;
        }
    }

    // ------------------------------------------------------------ the active gate

    // Every access the QP makes or serves (a requester work request on the engine, an incoming RDMA Write, Read or Send
    // on the receive side, a Read Response going out) runs inside this gate. It is open in Rtr, Rts and Sqd only; a
    // move to Error or Reset, and Dispose, shut it under Sync and then wait for the accesses inside to leave, so after
    // they return no byte moves on behalf of this QP. The gate is one word, the count of accesses inside plus a closed
    // bit that every state change sets or clears under Sync (SetStateLocked): entering is one compare-and-swap that
    // fails once the bit is set, so the hot paths (each FPDU, each work request) take no lock, and no access can start
    // after a move that closed the gate.
    private const int GateClosed = 1 << 30;
    private int _gate = GateClosed;
    private ManualResetEventSlim? _activeLeft;
    [ThreadStatic] private static int t_insideActive;

    /// <summary>Sets the state and opens or closes the active gate to match (callers hold <see cref="Sync"/>).</summary>
    private void SetStateLocked(QpState state)
    {
        Diagnostics.Telemetry.QueuePairMoved(_state, state);
        _state = state;
        if (_disposed == 0 && state is QpState.Rtr or QpState.Rts or QpState.Sqd) Interlocked.And(ref _gate, ~GateClosed);
        else Interlocked.Or(ref _gate, GateClosed);
    }

    /// <summary>Enters an access; false when the QP does not accept any (not Rtr/Rts/Sqd, or disposed).</summary>
    internal bool TryEnterActive()
    {
        int v = Volatile.Read(ref _gate);
        while (true)
        {
            if ((v & GateClosed) != 0) return false;
            int seen = Interlocked.CompareExchange(ref _gate, v + 1, v);
            if (seen == v) break;
            v = seen;
        }
        t_insideActive++;
        return true;
    }

    internal void ExitActive()
    {
        t_insideActive--;
        if ((Interlocked.Decrement(ref _gate) & ~GateClosed) == 0) Volatile.Read(ref _activeLeft)?.Set();
    }

    private int ActiveCount => Volatile.Read(ref _gate) & ~GateClosed;

    /// <summary>Waits until no access is inside the gate (after the gate was shut under Sync).</summary>
    private void WaitForActiveToLeave()
    {
        // A thread inside an access (a completion handler on the engine thread, say) cannot wait for itself.
        if (t_insideActive > 0) return;
        if (ActiveCount == 0) return;
        var ev = LazyInitializer.EnsureInitialized(ref _activeLeft, () => new ManualResetEventSlim(false));
        while (ActiveCount != 0)
        {
            ev.Reset();
            if (ActiveCount == 0) break;
            ev.Wait(1);
        }
    }

    /// <summary>True once Dispose has begun.</summary>
    internal bool IsDisposed => Volatile.Read(ref _disposed) != 0;

    private void ThrowIfDisposed()
    {
        if (Volatile.Read(ref _disposed) != 0) ThrowHelper.ThrowObjectDisposed(this);
    }

    private int _flushEpoch;

    internal bool TryTakeRecv(out RecvWorkRequest wr)
    {
        lock (Sync)
        {
            if (_rqCount == 0 || _state is QpState.Reset or QpState.Error or QpState.Init) { wr = default; return false; }
            wr = _rq[_rqHead];
            _rqHead = (_rqHead + 1) % _rq.Length;
            _rqCount--;
            return true;
        }
    }

    /// <summary>True when the QP accepts incoming requests.</summary>
    internal bool CanRespond
    {
        get { lock (Sync) return _state is QpState.Rtr or QpState.Rts or QpState.Sqd; }
    }

    /// <summary>Moves to Error after a failed request and flushes everything outstanding.</summary>
    internal void EnterError()
    {
        lock (Sync)
        {
            if (_state == QpState.Error) return;
            SetStateLocked(QpState.Error);
            FlushAllLocked();
        }
    }

    /// <summary>
    /// Completes a failed request and moves to Error in one step, as hardware does: whoever polls the error
    /// completion already sees the QP in Error, and the flushed requests follow it in order.
    /// </summary>
    internal void FailRequest(CompletionQueue cq, in WorkCompletion failed)
    {
        lock (Sync)
        {
            cq.Push(failed);
            if (_state == QpState.Error) return;
            SetStateLocked(QpState.Error);
            FlushAllLocked();
        }
    }

    /// <summary>
    /// Flushes everything outstanding, in order. Runs under <see cref="Sync"/> so that a PostSend or PostRecv racing
    /// the move to Error (which completes its request at once) cannot overtake the requests flushed here.
    /// </summary>
    private void FlushAllLocked()
    {
        _flushEpoch++;
        while (_sqCount > 0)
        {
            var s = _sq[_sqHead];
            _sqHead = (_sqHead + 1) % _sq.Length;
            _sqCount--;
            SendCq.Push(new WorkCompletion(s.WrId, WcStatus.WrFlushErr, ToWcOpcode(s.Opcode), 0, QpNumber, WcFlags.None, 0, 0));
        }
        while (_rqCount > 0)
        {
            var r = _rq[_rqHead];
            _rqHead = (_rqHead + 1) % _rq.Length;
            _rqCount--;
            RecvCq.Push(new WorkCompletion(r.WrId, WcStatus.WrFlushErr, WcOpcode.Recv, 0, QpNumber, WcFlags.None, 0, 0));
        }
    }

    internal static WcOpcode ToWcOpcode(WrOpcode op) => op switch
    {
        WrOpcode.RdmaWrite or WrOpcode.RdmaWriteWithImm => WcOpcode.RdmaWrite,
        WrOpcode.RdmaRead => WcOpcode.RdmaRead,
        WrOpcode.AtomicCompareSwap => WcOpcode.CompSwap,
        WrOpcode.AtomicFetchAdd => WcOpcode.FetchAdd,
        WrOpcode.LocalInvalidate => WcOpcode.LocalInv,
        _ => WcOpcode.Send,
    };

    /// <summary>The transport of a queue pair connected by number (the loopback fabric installs it).</summary>
    private QpTransport ByNumber(QueuePair peer) =>
        QpTransport.ConnectByNumber?.Invoke(this, peer) ?? throw new InvalidOperationException("No transport serves queue pairs connected by number.");

    /// <summary>
    /// Moves <paramref name="a"/> and <paramref name="b"/> (Reset or Init) through Init and Rtr (each naming the other)
    /// to Rts, all or nothing: both are checked under both locks before either moves, so a refusal changes neither.
    /// </summary>
    internal static void ConnectPair(QueuePair a, QueuePair b, AccessFlags remoteAccess)
    {
        var (first, second) = a.QpNumber <= b.QpNumber ? (a, b) : (b, a);
        lock (first.Sync)
            lock (second.Sync)
            {
                foreach (var q in new[] { a, b })
                {
                    if (q._disposed != 0) ThrowHelper.ThrowObjectDisposed(q);
                    if (q._state is not (QpState.Reset or QpState.Init))
                        ThrowHelper.Throw(PinnedDmaError.InvalidArgument, $"Connecting {q}: it is in {q._state}, it must be in Reset or Init.");
                }
                foreach (var (q, peer) in a == b ? new[] { (a, b) } : new[] { (a, b), (b, a) })
                {
                    q.RemoteAccess = remoteAccess;
                    q.SetStateLocked(QpState.Init);
                    q.Transport = q.ByNumber(peer);
                    q.DestQpNumber = peer.QpNumber;
                    q.SetStateLocked(QpState.Rtr);
                }
                a.SetStateLocked(QpState.Rts);
                if (a != b) b.SetStateLocked(QpState.Rts);
            }
        a.Engine.Ring(a);
        b.Engine.Ring(b);
    }

    /// <summary>
    /// ibv_destroy_qp: ends remote access first (the QP moves to Error, every outstanding request completes with
    /// WrFlushErr, the connection closes, accesses in flight leave), then leaves the fabric and its protection domain.
    /// After it returns no byte moves on behalf of this QP. Later calls on it throw <see cref="ObjectDisposedException"/>.
    /// </summary>
    public void Dispose()
    {
        lock (Sync)
        {
            if (_disposed != 0) return;
            _disposed = 1;
            Interlocked.Or(ref _gate, GateClosed);
            if (_state != QpState.Error)
            {
                SetStateLocked(QpState.Error);
                FlushAllLocked();
            }
        }
        Transport?.Close("queue pair destroyed");
        WaitForActiveToLeave();
        QpNumberTable.Remove(this);
        Diagnostics.Telemetry.QueuePairMoved(QpState.Error, null);
        Pd.Forget(this);
    }

    /// <inheritdoc />
    public override string ToString() => $"qp 0x{QpNumber:x} {State}";
}
