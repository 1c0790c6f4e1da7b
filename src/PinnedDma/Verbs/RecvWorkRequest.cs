namespace PinnedDma.Verbs;

/// <summary>A receive-queue work request (struct ibv_recv_wr).</summary>
/// <param name="WrId">Returned in the completion.</param>
/// <param name="Local">Where the incoming send lands.</param>
public readonly record struct RecvWorkRequest(ulong WrId, ScatterGatherElement Local);
