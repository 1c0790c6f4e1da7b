namespace PinnedDma.Verbs;

/// <summary>Send work request opcode (enum ibv_wr_opcode).</summary>
public enum WrOpcode
{
    /// <summary>IBV_WR_RDMA_WRITE.</summary>
    RdmaWrite = 0,
    /// <summary>IBV_WR_RDMA_WRITE_WITH_IMM.</summary>
    RdmaWriteWithImm = 1,
    /// <summary>IBV_WR_SEND.</summary>
    Send = 2,
    /// <summary>IBV_WR_SEND_WITH_IMM.</summary>
    SendWithImm = 3,
    /// <summary>IBV_WR_RDMA_READ.</summary>
    RdmaRead = 4,
    /// <summary>IBV_WR_ATOMIC_CMP_AND_SWP.</summary>
    AtomicCompareSwap = 5,
    /// <summary>IBV_WR_ATOMIC_FETCH_AND_ADD.</summary>
    AtomicFetchAdd = 6,
    /// <summary>IBV_WR_LOCAL_INV.</summary>
    LocalInvalidate = 7,
    /// <summary>IBV_WR_SEND_WITH_INV.</summary>
    SendWithInvalidate = 9,
}
