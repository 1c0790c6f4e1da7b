namespace PinnedDma.Verbs;

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
