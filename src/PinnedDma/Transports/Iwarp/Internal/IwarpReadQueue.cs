using Microsoft.Extensions.ObjectPool;
using PinnedDma.Verbs;

namespace PinnedDma.Transports.Iwarp.Internal;

/// <summary>
/// The requester's outstanding RDMA Reads on one iWARP connection, and the order in which the send queue completes:
/// a read completes when its last Read Response segment arrives (the receive side, on the I/O loop) or when the connection closes; the
/// completion of a request posted after a still outstanding read waits behind the read's (so a signaled completion
/// means every earlier request finished, as verbs promise). It also parks the engine: a fenced request until no read is
/// outstanding, a read while the negotiated ORD is reached; the read that ends the wait rings the queue pair.
/// </summary>
internal sealed class IwarpReadQueue
{
    private readonly IwarpConnection _connection;
    private readonly QueuePair _qp;
    private readonly object _lock = new();
    private readonly Queue<PendingRead> _reads = new();
    private readonly ObjectPool<PendingRead> _pool = new DefaultObjectPool<PendingRead>(new DefaultPooledObjectPolicy<PendingRead>(), 64);
    // Entries are reads (in order, completing in order) and held completions of other requests.
    private readonly Queue<(PendingRead? Read, WorkCompletion Completion)> _order = new();
    private bool _fenceParked;
    private bool _ordParked;

    public IwarpReadQueue(IwarpConnection connection)
    {
        _connection = connection;
        _qp = connection.Qp;
    }

    /// <summary>One outstanding RDMA Read.</summary>
    internal sealed class PendingRead
    {
        /// <summary>The RTR message's zero-length read: completes no work request.</summary>
        public bool Internal;
        public ulong WrId;
        public bool Signaled;
        public MemoryRegion? Sink;
        public long SinkOffset;
        public ulong SinkTo;
        public uint SinkSTag;
        public uint Length;
        public uint Received;
        public bool Done;
        public WcStatus Status;
    }

    /// <summary>
    /// Tests only: runs in the queue pair's turn between an RDMA Read's first look at the closed flag and its queueing,
    /// so that a test can land a Close exactly in that window.
    /// </summary>
    public Action? BeforeReadQueued { get; set; }

    /// <summary>In the queue pair's turn: delivers the completion of a request other than an RDMA Read, in posting order.</summary>
    public void CompleteInOrder(in WorkCompletion wc)
    {
        lock (_lock)
        {
            if (_order.Count == 0) _qp.SendCq.Push(wc);
            else _order.Enqueue((null, wc));
        }
    }

    /// <summary>
    /// In the queue pair's turn: queues an RDMA Read before its request goes out; false (nothing queued) when the connection
    /// closed already: a read queued after Close completed what was queued would never complete.
    /// </summary>
    public bool TryAdd(in SendWorkRequest wr, MemoryRegion? sink, long sinkOffset)
    {
        var p = _pool.Get();
        p.WrId = wr.WrId;
        p.Signaled = _qp.SignalAll || (wr.Flags & SendFlags.Signaled) != 0;
        p.Sink = sink;
        p.SinkOffset = sinkOffset;
        p.SinkTo = wr.Local.Address;
        p.SinkSTag = wr.Local.LKey;
        p.Length = wr.Local.Length;
        p.Received = 0;
        p.Done = false;
        BeforeReadQueued?.Invoke();
        lock (_lock)
        {
            // Close sets the flag, then completes what is queued under this lock: a read queued after that would never
            // complete, so it is refused here instead (every posted request completes).
            if (_connection.IsClosed)
            {
                p.Sink = null;
                _pool.Return(p);
                return false;
            }
            _reads.Enqueue(p);
            _order.Enqueue((p, default));
        }
        return true;
    }

    /// <summary>The peer-to-peer RTR's zero-length read (RFC 6581 §7): answered like any, it completes nothing.</summary>
    public void AddRtrRead(uint stag)
    {
        lock (_lock)
            _reads.Enqueue(new PendingRead { Internal = true, SinkSTag = stag, SinkTo = 0, Length = 0 });
    }

    /// <summary>Receive thread: the oldest outstanding read (the one a Read Response must continue), if any.</summary>
    public PendingRead? Head
    {
        get
        {
            lock (_lock)
            {
                _reads.TryPeek(out var p);
                return p;
            }
        }
    }

    /// <summary>Whether any read is outstanding.</summary>
    public bool IsEmpty
    {
        get { lock (_lock) return _reads.Count == 0; }
    }

    /// <summary>
    /// In the queue pair's turn: true when a fenced request must wait for outstanding RDMA Reads (the last one to complete
    /// rings the queue pair); false when none is outstanding.
    /// </summary>
    public bool ParkForFence()
    {
        lock (_lock)
        {
            if (_reads.Count == 0) return false;
            _fenceParked = true;
            return true;
        }
    }

    /// <summary>
    /// In the queue pair's turn: true when an RDMA Read must wait because <see cref="IwarpConnection.OrdLimit"/> reads are
    /// outstanding already (RFC 6581 §5: a requester never exceeds the peer's IRD); the next read to complete rings the
    /// queue pair. The read stays at the head of the send queue, so nothing posted after it overtakes it. False with an
    /// ORD of 0: the read goes on to Execute, which refuses it (waiting would be forever).
    /// </summary>
    public bool ParkForOrd()
    {
        lock (_lock)
        {
            int ord = _connection.OrdLimit;
            if (ord == 0 || _reads.Count < ord) return false;
            _ordParked = true;
            return true;
        }
    }

    /// <summary>
    /// Completes the oldest outstanding read with <paramref name="status"/>, then delivers, in order, every completion
    /// no longer waiting for a read; rings the queue pair when a parked request may go on.
    /// </summary>
    public void CompleteHead(WcStatus status)
    {
        bool resume;
        lock (_lock)
        {
            if (_reads.TryDequeue(out var done))
            {
                done.Done = true;
                done.Status = status;
                // The RTR's read completes nothing (it never entered the completion order).
            }
            resume = _fenceParked && _reads.Count == 0;
            if (resume) _fenceParked = false;
            if (_ordParked && _reads.Count < _connection.OrdLimit)
            {
                _ordParked = false;
                resume = true;
            }
            // Deliver, in order, every completion no longer waiting for a read.
            while (_order.TryPeek(out var next))
            {
                if (next.Read is { } p)
                {
                    if (!p.Done) break;
                    _order.Dequeue();
                    var wc = new WorkCompletion(p.WrId, p.Status, WcOpcode.RdmaRead, p.Status == WcStatus.Success ? p.Length : 0, _qp.QpNumber, WcFlags.None, 0, 0);
                    bool signaled = p.Signaled;
                    p.Sink = null;
                    _pool.Return(p);
                    if (wc.Status != WcStatus.Success) _qp.FailRequest(_qp.SendCq, wc);
                    else if (signaled) _qp.SendCq.Push(wc);
                }
                else
                {
                    _order.Dequeue();
                    _qp.SendCq.Push(next.Completion);
                }
            }
        }
        // After the read's own completion, so the fenced request completes behind it.
        if (resume) _connection.Engine.Ring(_qp);
    }

    /// <summary>Close: every outstanding read completes with <paramref name="status"/>, in order.</summary>
    public void CompleteAll(WcStatus status)
    {
        while (!IsEmpty) CompleteHead(status);
    }
}
