namespace PinnedDma.Verbs;

/// <summary>Work completion opcode (enum ibv_wc_opcode).</summary>
public enum WcOpcode
{
    /// <summary>IBV_WC_SEND.</summary>
    Send = 0,
    /// <summary>IBV_WC_RDMA_WRITE.</summary>
    RdmaWrite = 1,
    /// <summary>IBV_WC_RDMA_READ.</summary>
    RdmaRead = 2,
    /// <summary>IBV_WC_COMP_SWAP.</summary>
    CompSwap = 3,
    /// <summary>IBV_WC_FETCH_ADD.</summary>
    FetchAdd = 4,
    /// <summary>IBV_WC_BIND_MW.</summary>
    BindMw = 5,
    /// <summary>IBV_WC_LOCAL_INV.</summary>
    LocalInv = 6,
    /// <summary>IBV_WC_RECV.</summary>
    Recv = 128,
    /// <summary>IBV_WC_RECV_RDMA_WITH_IMM.</summary>
    RecvRdmaWithImm = 129,
}
