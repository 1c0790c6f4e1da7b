namespace PinnedDma.Verbs;

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
