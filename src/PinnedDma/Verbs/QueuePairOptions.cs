namespace PinnedDma.Verbs;

/// <summary>Creation attributes of a queue pair (struct ibv_qp_init_attr).</summary>
public sealed class QueuePairOptions
{
    /// <summary>Where send completions go.</summary>
    public required CompletionQueue SendCq { get; init; }

    /// <summary>Where receive completions go.</summary>
    public required CompletionQueue RecvCq { get; init; }

    /// <summary>Send queue capacity. Default 128.</summary>
    public int MaxSendWr { get; init; } = 128;

    /// <summary>Receive queue capacity. Default 128.</summary>
    public int MaxRecvWr { get; init; } = 128;

    /// <summary>sq_sig_all: every send WR completes, signaled or not.</summary>
    public bool SignalAll { get; init; }
}

/// <summary>Attributes for <see cref="QueuePair.Modify"/> (struct ibv_qp_attr; unset fields keep their value).</summary>
public sealed class QpAttributes
{
    /// <summary>The state to move to.</summary>
    public required QpState State { get; init; }

    /// <summary>RTR: the peer queue pair number (loopback fabric).</summary>
    public uint? DestQpNumber { get; init; }

    /// <summary>INIT: remote operations the QP accepts (RemoteWrite, RemoteRead, RemoteAtomic).</summary>
    public AccessFlags? AccessFlags { get; init; }

    /// <summary>How long a send waits for the responder to post a receive before RnrRetryExcErr. Default 100 ms.</summary>
    public TimeSpan? RnrTimeout { get; init; }
}
