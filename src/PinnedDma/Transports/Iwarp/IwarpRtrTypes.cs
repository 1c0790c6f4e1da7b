namespace PinnedDma.Transports.Iwarp;

/// <summary>The zero-length ready-to-receive (RTR) messages of RFC 6581 §7 that may open a peer-to-peer connection.</summary>
[Flags]
public enum IwarpRtrTypes
{
    /// <summary>None.</summary>
    None = 0,
    /// <summary>A zero-length Send (the B bit of the enhanced setup data).</summary>
    ZeroLengthSend = 1,
    /// <summary>A zero-length RDMA Write (the C bit).</summary>
    ZeroLengthRdmaWrite = 2,
    /// <summary>A zero-length RDMA Read (the D bit).</summary>
    ZeroLengthRdmaRead = 4,
}
