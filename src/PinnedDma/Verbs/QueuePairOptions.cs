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
