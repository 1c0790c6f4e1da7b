namespace PinnedDma.Verbs;

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
