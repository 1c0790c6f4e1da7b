namespace PinnedDma.Verbs;

/// <summary>Memory region access flags, with libibverbs' values (IBV_ACCESS_*).</summary>
[Flags]
public enum AccessFlags
{
    /// <summary>Local read only.</summary>
    None = 0,
    /// <summary>IBV_ACCESS_LOCAL_WRITE: receives, RDMA READ sinks and atomic results may write the region.</summary>
    LocalWrite = 1,
    /// <summary>IBV_ACCESS_REMOTE_WRITE: a peer may RDMA WRITE it. Requires LocalWrite.</summary>
    RemoteWrite = 2,
    /// <summary>IBV_ACCESS_REMOTE_READ: a peer may RDMA READ it.</summary>
    RemoteRead = 4,
    /// <summary>IBV_ACCESS_REMOTE_ATOMIC: a peer may run atomics on it. Requires LocalWrite.</summary>
    RemoteAtomic = 8,
    /// <summary>IBV_ACCESS_ON_DEMAND: no pin; each access translates through the file's current extent map.</summary>
    OnDemand = 64,
}

/// <summary>Work completion status, with libibverbs' values (enum ibv_wc_status).</summary>
public enum WcStatus
{
    /// <summary>IBV_WC_SUCCESS.</summary>
    Success = 0,
    /// <summary>IBV_WC_LOC_LEN_ERR: a local buffer is too small.</summary>
    LocLenErr = 1,
    /// <summary>IBV_WC_LOC_QP_OP_ERR: the work request is not valid for the QP.</summary>
    LocQpOpErr = 2,
    /// <summary>IBV_WC_LOC_EEC_OP_ERR.</summary>
    LocEecOpErr = 3,
    /// <summary>IBV_WC_LOC_PROT_ERR: a local key is invalid, in another PD, or lacks the access.</summary>
    LocProtErr = 4,
    /// <summary>IBV_WC_WR_FLUSH_ERR: flushed because the QP is in the Error state.</summary>
    WrFlushErr = 5,
    /// <summary>IBV_WC_MW_BIND_ERR.</summary>
    MwBindErr = 6,
    /// <summary>IBV_WC_BAD_RESP_ERR.</summary>
    BadRespErr = 7,
    /// <summary>IBV_WC_LOC_ACCESS_ERR.</summary>
    LocAccessErr = 8,
    /// <summary>IBV_WC_REM_INV_REQ_ERR: the responder found the request invalid (e.g. receive buffer too small).</summary>
    RemInvReqErr = 9,
    /// <summary>IBV_WC_REM_ACCESS_ERR: bad or stale rkey, out of bounds, missing access, invalidated or revoked region.</summary>
    RemAccessErr = 10,
    /// <summary>IBV_WC_REM_OP_ERR: the responder could not complete the operation.</summary>
    RemOpErr = 11,
    /// <summary>IBV_WC_RETRY_EXC_ERR: transport retries exceeded (peer gone).</summary>
    RetryExcErr = 12,
    /// <summary>IBV_WC_RNR_RETRY_EXC_ERR: the responder had no receive posted, retries exceeded.</summary>
    RnrRetryExcErr = 13,
    /// <summary>IBV_WC_LOC_RDD_VIOL_ERR.</summary>
    LocRddViolErr = 14,
    /// <summary>IBV_WC_REM_INV_RD_REQ_ERR.</summary>
    RemInvRdReqErr = 15,
    /// <summary>IBV_WC_REM_ABORT_ERR.</summary>
    RemAbortErr = 16,
    /// <summary>IBV_WC_INV_EECN_ERR.</summary>
    InvEecnErr = 17,
    /// <summary>IBV_WC_INV_EEC_STATE_ERR.</summary>
    InvEecStateErr = 18,
    /// <summary>IBV_WC_FATAL_ERR.</summary>
    FatalErr = 19,
    /// <summary>IBV_WC_RESP_TIMEOUT_ERR.</summary>
    RespTimeoutErr = 20,
    /// <summary>IBV_WC_GENERAL_ERR.</summary>
    GeneralErr = 21,
}

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

/// <summary>Work completion flags (enum ibv_wc_flags).</summary>
[Flags]
public enum WcFlags
{
    /// <summary>None.</summary>
    None = 0,
    /// <summary>IBV_WC_WITH_IMM: <see cref="WorkCompletion.ImmData"/> is valid.</summary>
    WithImm = 2,
    /// <summary>IBV_WC_WITH_INV: <see cref="WorkCompletion.InvalidatedRKey"/> was invalidated by a Send with Invalidate.</summary>
    WithInv = 8,
}

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

/// <summary>Send flags (enum ibv_send_flags).</summary>
[Flags]
public enum SendFlags
{
    /// <summary>Unsignaled: no completion on success (errors always complete).</summary>
    None = 0,
    /// <summary>
    /// IBV_SEND_FENCE: the request starts only after every earlier RDMA Read (and atomic) of the queue pair completed,
    /// so, for instance, an RDMA Write after a Read of the same remote bytes cannot overtake the Read's response.
    /// </summary>
    Fence = 1,
    /// <summary>IBV_SEND_SIGNALED: a completion on success too.</summary>
    Signaled = 2,
    /// <summary>IBV_SEND_SOLICITED.</summary>
    Solicited = 4,
}

/// <summary>A scatter/gather element (struct ibv_sge): a local address range in a memory region named by its lkey.</summary>
/// <param name="Address">Address inside the region (the region's <see cref="MemoryRegion.Address"/> plus an offset).</param>
/// <param name="Length">Bytes.</param>
/// <param name="LKey">The region's local key.</param>
public readonly record struct ScatterGatherElement(ulong Address, uint Length, uint LKey);

/// <summary>A send-queue work request (struct ibv_send_wr), a value type so posting allocates nothing.</summary>
public struct SendWorkRequest
{
    /// <summary>Returned in the completion.</summary>
    public ulong WrId;
    /// <summary>What to do.</summary>
    public WrOpcode Opcode;
    /// <summary>Signaled, fence, solicited.</summary>
    public SendFlags Flags;
    /// <summary>The local buffer (source of sends and writes; sink of reads and atomics).</summary>
    public ScatterGatherElement Local;
    /// <summary>Remote address for RDMA and atomics.</summary>
    public ulong RemoteAddress;
    /// <summary>Remote key for RDMA and atomics.</summary>
    public uint RKey;
    /// <summary>Immediate data for the *WithImm opcodes.</summary>
    public uint ImmData;
    /// <summary>The rkey to invalidate (SendWithInvalidate: at the responder; LocalInvalidate: locally).</summary>
    public uint InvalidateRKey;
    /// <summary>Compare value (compare-and-swap) or addend (fetch-and-add).</summary>
    public ulong CompareAdd;
    /// <summary>Swap value (compare-and-swap).</summary>
    public ulong Swap;
}

/// <summary>A receive-queue work request (struct ibv_recv_wr).</summary>
/// <param name="WrId">Returned in the completion.</param>
/// <param name="Local">Where the incoming send lands.</param>
public readonly record struct RecvWorkRequest(ulong WrId, ScatterGatherElement Local);

/// <summary>A work completion (struct ibv_wc).</summary>
public readonly record struct WorkCompletion(ulong WrId, WcStatus Status, WcOpcode Opcode, uint ByteLength, uint QpNumber, WcFlags Flags, uint ImmData, uint InvalidatedRKey)
{
    /// <inheritdoc />
    public override string ToString() => $"wr {WrId} {Opcode} {Status} {ByteLength} bytes qp {QpNumber}";
}

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
