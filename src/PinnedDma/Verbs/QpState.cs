namespace PinnedDma.Verbs;

/// <summary>RC queue pair states (enum ibv_qp_state).</summary>
public enum QpState
{
    /// <summary>IBV_QPS_RESET.</summary>
    Reset = 0,
    /// <summary>IBV_QPS_INIT.</summary>
    Init = 1,
    /// <summary>IBV_QPS_RTR: ready to receive.</summary>
    Rtr = 2,
    /// <summary>IBV_QPS_RTS: ready to send.</summary>
    Rts = 3,
    /// <summary>IBV_QPS_SQD: send queue drained.</summary>
    Sqd = 4,
    /// <summary>IBV_QPS_SQE: send queue error.</summary>
    Sqe = 5,
    /// <summary>IBV_QPS_ERR.</summary>
    Error = 6,
}
