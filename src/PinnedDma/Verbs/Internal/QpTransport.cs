namespace PinnedDma.Verbs.Internal;

/// <summary>
/// What carries a connected queue pair's work to its peer and serves the peer's requests: the one seam between the
/// verbs layer (queue pairs, the DMA engine's loop, budget, RNR retry and fences) and a wire (the in-process loopback
/// fabric, iWARP over TCP, ...). Verbs knows transports only through this class.
/// </summary>
/// <remarks>
/// <para>
/// Turns. The <see cref="DmaEngine"/> that <see cref="Engine"/> names executes the queue pair's send queue in turns:
/// when the queue pair is rung (a post, a receive posted at the peer, a response arrived) the engine takes it off its
/// doorbell, enters the queue pair's active gate and calls, in this order, <see cref="TakeTurn"/>, then for each send
/// work request <see cref="ParkForFence"/> / <see cref="ParkForOrd"/> (RDMA Reads and fenced requests only) and
/// <see cref="Execute"/>, then <see cref="FlushPending"/>. A transport driven by its own event loop (an I/O
/// thread serving many connections) never runs requester work itself: when it has something for the engine
/// (an inbound RDMA Read to answer, a parked request that may go on) it calls <c>Engine.Ring(qp)</c>, and the engine
/// asks it to take a turn.
/// </para>
/// <para>
/// Threads and locks. A posting thread may take the turn itself (<see cref="SupportsInline"/>); one thread at a time
/// holds a queue pair's turn. <see cref="TakeTurn"/>, <see cref="Execute"/>, <see cref="ParkForFence"/>,
/// <see cref="ParkForOrd"/>, <see cref="CompleteInOrder"/> and <see cref="FlushPending"/> run on the engine's thread,
/// one queue pair at a time, inside the queue pair's active gate and with no lock held (in particular not
/// <see cref="QueuePair.Sync"/>): they may block on the wire, take the queue pair's lock (to complete or fail a
/// request) and ring engines. <see cref="Close"/> runs on any thread with no queue-pair lock held, possibly inside the
/// active gate (a fault on the engine thread), and may be called more than once. <see cref="Abandon"/> runs under
/// <see cref="QueuePair.Sync"/> and must not take it. <see cref="Start"/> runs once, after the transport was attached,
/// with no lock held. <see cref="ReceivePosted"/> runs on the poster's thread after a receive was queued, with no lock
/// held.
/// </para>
/// <para>
/// Completions. A transport completes what it deferred (an RDMA Read over a network) and delivers the engine's other
/// completions through <see cref="CompleteInOrder"/>, so that the send queue completes in posting order. Every
/// request the engine handed to <see cref="Execute"/> completes exactly once, also when the transport closes.
/// </para>
/// </remarks>
internal abstract class QpTransport
{
    /// <summary>
    /// Installed by the loopback fabric: the transport of a queue pair moved to RTR with the number of a queue pair in
    /// this process (<see cref="QpAttributes.DestQpNumber"/>). Verbs reaches it through this hook, never by name.
    /// </summary>
    internal static Func<QueuePair, QueuePair, QpTransport>? ConnectByNumber;

    /// <summary>The engine that executes the queue pair's send queue and answers its inbound reads.</summary>
    public abstract DmaEngine Engine { get; }

    /// <summary>Why the transport ended, once it did (null while it serves, and for a transport that never ends).</summary>
    public virtual string? CloseReason => null;

    /// <summary>
    /// True when an RDMA Read completes later, from the transport (when its response arrives), rather than when
    /// <see cref="Execute"/> returns: the engine then frees the read's send-queue slot before executing it.
    /// </summary>
    public virtual bool CompletesReadsLater => false;

    /// <summary>
    /// True when a posting thread may execute small work requests itself, on an idle queue pair (no hand-off to the
    /// engine's thread). The transport's <see cref="Execute"/> must then never block and be safe on any thread.
    /// </summary>
    public virtual bool SupportsInline => false;

    /// <summary>The largest local SGE (bytes) a posting thread executes inline.</summary>
    public virtual uint InlineLimit => 0;

    /// <summary>
    /// True when the transport cannot take a work request now (its socket is full, or it may not transmit yet): the
    /// engine stops the turn and the transport rings the queue pair when it can go on.
    /// </summary>
    public virtual bool ParkForSend() => false;

    /// <summary>Begins serving (a receive loop starts); called once, after the queue pair took the transport.</summary>
    public virtual void Start()
    {
    }

    /// <summary>The queue pair refused the transport (wrong state): it ends without touching the queue pair.</summary>
    public virtual void Abandon()
    {
    }

    /// <summary>Start of a turn: work the transport queued for the engine (inbound RDMA Read Requests) is done first.</summary>
    public virtual void TakeTurn()
    {
    }

    /// <summary>
    /// Executes one send work request whose local SGE the engine has resolved (<paramref name="local"/> at
    /// <paramref name="localOffset"/>; null for a zero-length SGE).
    /// </summary>
    /// <param name="wr">The request at the head of the send queue.</param>
    /// <param name="local">The local region.</param>
    /// <param name="localOffset">Offset of the SGE in <paramref name="local"/>.</param>
    /// <param name="outcome">
    /// <see cref="TransportOutcome.Done"/>: the result is the completion status; <see cref="TransportOutcome.Deferred"/>:
    /// the transport completes the request later (status Success); <see cref="TransportOutcome.ReceiverNotReady"/>: the
    /// peer has no receive posted, nothing moved, the engine retries (RNR).
    /// </param>
    /// <returns>The completion status.</returns>
    public abstract WcStatus Execute(in SendWorkRequest wr, MemoryRegion? local, long localOffset, out TransportOutcome outcome);

    /// <summary>
    /// True when a fenced request must wait for outstanding RDMA Reads; the transport rings the queue pair when the last
    /// one completes.
    /// </summary>
    public virtual bool ParkForFence() => false;

    /// <summary>
    /// True when an RDMA Read must wait because as many reads as the peer takes are outstanding; the transport rings
    /// the queue pair when one completes.
    /// </summary>
    public virtual bool ParkForOrd() => false;

    /// <summary>Delivers a successful signaled completion the engine produced, in posting order.</summary>
    /// <param name="wc">The completion.</param>
    public abstract void CompleteInOrder(in WorkCompletion wc);

    /// <summary>End of a turn: sends what the turn's requests encoded.</summary>
    public virtual void FlushPending()
    {
    }

    /// <summary>A receive was posted on the queue pair: a peer waiting for one (RNR) may go on.</summary>
    public virtual void ReceivePosted()
    {
    }

    /// <summary>
    /// Ends the transport: remote access ends, deferred requests complete with an error and the queue pair moves to
    /// Error. Idempotent.
    /// </summary>
    /// <param name="reason">Why, for <see cref="CloseReason"/> and the log.</param>
    public virtual void Close(string reason)
    {
    }
}

/// <summary>What <see cref="QpTransport.Execute"/> did with a work request.</summary>
internal enum TransportOutcome
{
    /// <summary>Finished: the returned status completes it.</summary>
    Done,

    /// <summary>Under way: the transport completes it later.</summary>
    Deferred,

    /// <summary>The responder had no receive posted: nothing moved, retry later.</summary>
    ReceiverNotReady,

    /// <summary>
    /// Under way but parked (the socket is full): the transport rings the queue pair when it can go on, and the engine
    /// executes the same request again, which the transport then finishes.
    /// </summary>
    Blocked,
}
