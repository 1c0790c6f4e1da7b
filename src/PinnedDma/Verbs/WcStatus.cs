namespace PinnedDma.Verbs;

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
