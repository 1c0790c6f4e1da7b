using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using PinnedDma.Transports.Loopback.Internal;
using PinnedDma.Verbs;
using PinnedDma.Verbs.Internal;

namespace PinnedDma.Transports.Loopback;

/// <summary>
/// The in-process loopback fabric: queue pairs of the soft devices in one process connect by queue-pair number
/// (<see cref="QpAttributes.DestQpNumber"/> on the move to <see cref="QpState.Rtr"/>) and the requester's DMA engine
/// plays the responder, copying between the two sides' registered regions.
/// </summary>
public static class LoopbackFabric
{
    /// <summary>Connects two queue pairs over the loopback fabric: Reset → Init → Rtr → Rts on both sides.</summary>
    /// <remarks>All or nothing: both queue pairs are checked before either moves, so a refusal changes neither.</remarks>
    /// <param name="a">One queue pair, in Reset or Init.</param>
    /// <param name="b">The other, in Reset or Init (<paramref name="a"/> itself connects a queue pair to itself).</param>
    /// <param name="remoteAccess">Remote operations both accept.</param>
    /// <exception cref="ArgumentNullException"><paramref name="a"/> or <paramref name="b"/> is null.</exception>
    /// <exception cref="ObjectDisposedException">Either queue pair is disposed; neither moved.</exception>
    /// <exception cref="PinnedDmaException">
    /// <see cref="PinnedDmaError.InvalidArgument"/>: a queue pair is not in Reset or Init; neither moved.
    /// </exception>
    public static void Connect(QueuePair a, QueuePair b, AccessFlags remoteAccess = AccessFlags.RemoteRead | AccessFlags.RemoteWrite | AccessFlags.RemoteAtomic)
    {
        ArgumentNullException.ThrowIfNull(a);
        ArgumentNullException.ThrowIfNull(b);
        QueuePair.ConnectPair(a, b, remoteAccess);
    }

    /// <summary>
    /// Serves every queue pair connected by number: the verbs layer reaches this transport through
    /// <see cref="QpTransport.ConnectByNumber"/>, never by name. It runs when the library is loaded, before any queue
    /// pair can exist.
    /// </summary>
    [ModuleInitializer]
    [SuppressMessage("Usage", "CA2255:The 'ModuleInitializer' attribute should not be used in libraries",
        Justification = "The library wires its own internal transport into its own verbs layer; no user code runs.")]
    internal static void Install() => QpTransport.ConnectByNumber = static (qp, peer) => new LoopbackTransport(qp, peer);
}
