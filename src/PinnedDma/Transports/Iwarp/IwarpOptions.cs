using PinnedDma.Transports.Iwarp.Internal;

namespace PinnedDma.Transports.Iwarp;

/// <summary>iWARP connection settings (MPA, RFC 5044 and RFC 6581).</summary>
public sealed class IwarpOptions
{
    /// <summary>
    /// Highest MPA revision this side speaks: 2 (default) for the enhanced connection setup of RFC 6581 §5 with IRD/ORD
    /// (and peer-to-peer mode), or 1 (RFC 5044 §7.1). The initiator offers it; the listener answers a revision 2 request
    /// with a revision 2 reply and a revision 1 request with a revision 1 reply (never above what it was offered).
    /// </summary>
    public byte MpaRevision { get; init; } = 2;

    /// <summary>Ask for CRC32c on every FPDU. Default true.</summary>
    public bool Crc { get; init; } = true;

    /// <summary>
    /// Where connections log (established, rejected, failed handshakes, Terminates sent and received, closes). Default:
    /// no logging.
    /// </summary>
    public Microsoft.Extensions.Logging.ILoggerFactory? LoggerFactory { get; init; }

    /// <summary>
    /// Inbound RDMA Read depth advertised in revision 2 and enforced: a peer with more Read Requests outstanding is
    /// ended with a Terminate. Revision 1 advertises nothing; the responder then accepts up to 128 (or this, if larger).
    /// Default 16; with MPA revision 2 at most 16383 (a 14-bit field).
    /// </summary>
    public ushort Ird { get; init; } = 16;

    /// <summary>
    /// Outbound RDMA Read depth advertised in revision 2. Reads outstanding at once are capped at the negotiated ORD
    /// (the lower of this and the peer's IRD; with revision 1, this); further Reads wait at the head of the send queue.
    /// A negotiated ORD of 0 refuses Reads (they complete with LocQpOpErr). Default 16; with MPA revision 2 at most
    /// 16383 (a 14-bit field).
    /// </summary>
    public ushort Ord { get; init; } = 16;

    /// <summary>
    /// Largest FPDU this side sends (length field to CRC field), or 0 (default) to size FPDUs to the connection's TCP
    /// segment: after connect and accept the effective MSS is read (TCP_MAXSEG) and the MULPDU is EMSS - 6, rounded
    /// down to keep the 4-byte alignment (RFC 5044 §5.1, no markers), so that one FPDU fits in one segment. A positive
    /// value (64 to 65 541) overrides that. What the peer sends is accepted up to 65 535 bytes of ULPDU either way.
    /// </summary>
    public int MaxFpduSize { get; init; }

    /// <summary>
    /// Initiator: request the peer-to-peer mode of RFC 6581 §7 (MPA revision 2 only), offering <see cref="RtrTypes"/>;
    /// the connection then starts with a zero-length RTR message of the type the responder picked, which the other side
    /// consumes without a completion, so either side may send first. Without it (default) the responder sends nothing
    /// until the initiator's first FPDU arrived (RFC 5044 §7.1.2), so the initiator must send first. A listener accepts
    /// peer-to-peer requests whenever one of its <see cref="RtrTypes"/> was offered, whatever this setting.
    /// </summary>
    public bool PeerToPeer { get; init; }

    /// <summary>
    /// The RFC 6581 RTR message types this side supports: offered when requesting peer-to-peer mode, accepted as the
    /// responder (which picks a zero-length RDMA Write, then Read, then Send among the offered ones). Default: all three.
    /// </summary>
    public IwarpRtrTypes RtrTypes { get; init; } = IwarpRtrTypes.ZeroLengthSend | IwarpRtrTypes.ZeroLengthRdmaWrite | IwarpRtrTypes.ZeroLengthRdmaRead;

    /// <summary>Time allowed for the MPA exchange. Default 5 s.</summary>
    public TimeSpan SetupTimeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>
    /// How long a send may make no progress (the peer stops reading and TCP's buffers are full) before the connection
    /// is closed and the queue pair moves to Error. Sends never block an I/O thread: a connection whose peer does not
    /// read parks its own send side, so a stalled peer holds up only its own queue pair; this bounds how long (a
    /// revocation waiting on such a send cuts the connection off sooner, through the region's drain). Default 10 s.
    /// </summary>
    public TimeSpan SendStallTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>
    /// How many I/O threads serve this process's iWARP connections made with these options: each runs epoll over its
    /// share of the connections and their queue pairs' send queues, so thousands of connections cost this many threads.
    /// Connections with the same value share one set of threads, created on first use and kept for the process's
    /// life (idle, they sleep). 0 (the default) means one per core (<see cref="Environment.ProcessorCount"/>).
    /// </summary>
    public int IoThreads { get; init; }

    /// <summary>
    /// Listener only: once connections from one peer address were ended this many times for naming an invalid or
    /// foreign STag (a guessed or stale key), further connections from that address are closed at once, before the MPA
    /// exchange, so key guessing cannot go on across reconnects. 0 (the default) turns the limit off.
    /// </summary>
    public int MaxInvalidStagConnections { get; init; }

    /// <summary>
    /// Listener only: MPA handshakes one source address may have in progress at once (connected, request not yet
    /// complete). A further connection from that address is closed at once, so one host cannot crowd out the others.
    /// Default 8; 1 to 65 536.
    /// </summary>
    public int MaxPendingHandshakesPerSource { get; init; } = 8;

    /// <summary>
    /// Listener only: MPA handshakes in progress at once, all sources together. When the table is full, a new connection
    /// makes room by closing the oldest pending handshake of the source address that holds the most, so a new peer is
    /// never starved by silent ones. Pending handshakes cost a table entry and a socket each, no thread. Default 256;
    /// 1 to 65 536.
    /// </summary>
    public int MaxPendingHandshakes { get; init; } = 256;

    internal MpaLocalSettings ToMpa(ReadOnlyMemory<byte> privateData) => new()
    {
        Revision = MpaRevision,
        WantCrc = Crc,
        Ird = Ird,
        Ord = Ord,
        PeerToPeer = PeerToPeer,
        RtrTypes = (MpaRtrTypes)RtrTypes,
        PrivateData = privateData,
    };

    internal void Validate()
    {
        if (MpaRevision is not (1 or 2)) throw new ArgumentOutOfRangeException(nameof(MpaRevision), MpaRevision, "MPA revision is 1 or 2.");
        if (MaxFpduSize != 0 && MaxFpduSize is < 64 or > ushort.MaxValue + 6) throw new ArgumentOutOfRangeException(nameof(MaxFpduSize), MaxFpduSize, "FPDU size is 0 (from the TCP MSS) or 64 to 65541 bytes.");
        if (PeerToPeer && MpaRevision != 2) throw new ArgumentException("Peer-to-peer mode (RFC 6581) needs MPA revision 2.", nameof(PeerToPeer));
        // Revision 2 advertises both in 14-bit fields (RFC 6581 §9.1): a larger value could not be sent in any reply.
        if (MpaRevision == 2 && Ird > MpaEnhancedParameters.MaxQueueDepth) throw new ArgumentOutOfRangeException(nameof(Ird), Ird, "With MPA revision 2, IRD is 0 to 16383.");
        if (MpaRevision == 2 && Ord > MpaEnhancedParameters.MaxQueueDepth) throw new ArgumentOutOfRangeException(nameof(Ord), Ord, "With MPA revision 2, ORD is 0 to 16383.");
        if (((int)RtrTypes & ~7) != 0 || (PeerToPeer && RtrTypes == IwarpRtrTypes.None))
            throw new ArgumentOutOfRangeException(nameof(RtrTypes), RtrTypes, "RTR types are a non-empty combination of the three RFC 6581 types.");
        if (IoThreads is < 0 or > 256) throw new ArgumentOutOfRangeException(nameof(IoThreads), IoThreads, "The I/O thread count is 0 (one per core) to 256.");
        if (SendStallTimeout <= TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(SendStallTimeout), SendStallTimeout, "The send stall timeout must be positive.");
        if (MaxPendingHandshakesPerSource is < 1 or > 65536) throw new ArgumentOutOfRangeException(nameof(MaxPendingHandshakesPerSource), MaxPendingHandshakesPerSource, "The per-source handshake limit is 1 to 65536.");
        if (MaxPendingHandshakes is < 1 or > 65536) throw new ArgumentOutOfRangeException(nameof(MaxPendingHandshakes), MaxPendingHandshakes, "The pending handshake limit is 1 to 65536.");
        if (SetupTimeout <= TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(SetupTimeout), SetupTimeout, "The setup timeout must be positive.");
        if (MaxInvalidStagConnections < 0) throw new ArgumentOutOfRangeException(nameof(MaxInvalidStagConnections), MaxInvalidStagConnections, "The limit is 0 (off) or more.");
    }
}
