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
