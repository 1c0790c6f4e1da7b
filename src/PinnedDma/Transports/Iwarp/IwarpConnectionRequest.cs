using System.Net;
using System.Net.Sockets;
using PinnedDma.Transports.Iwarp.Internal;
using PinnedDma.Verbs;

namespace PinnedDma.Transports.Iwarp;

/// <summary>An incoming iWARP connection waiting for <see cref="Accept"/> or <see cref="Reject"/>.</summary>
public sealed class IwarpConnectionRequest
{
    private readonly Socket _socket;
    private readonly SocketReceivePipe _rx;
    private readonly MpaFrame _request;
    private readonly IwarpOptions _options;
    private readonly IwarpListener? _listener;
    private int _decided;

    internal IwarpConnectionRequest(SocketReceivePipe rx, MpaFrame request, IwarpOptions options, IwarpListener? listener = null)
    {
        _listener = listener;
        _socket = rx.Socket;
        _rx = rx;
        _request = request;
        _options = options;
        // Taken now: once the peer hangs up, the socket can no longer tell (and must not throw from a getter).
        try
        {
            RemoteEndPoint = (IPEndPoint)_socket.RemoteEndPoint!;
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            RemoteEndPoint = new IPEndPoint(IPAddress.None, 0);
        }
    }

    /// <summary>The initiator's private data.</summary>
    public ReadOnlyMemory<byte> PrivateData => _request.PrivateData;

    /// <summary>The initiator's address.</summary>
    public IPEndPoint RemoteEndPoint { get; }

    /// <summary>The MPA revision the initiator offered.</summary>
    public byte MpaRevision => _request.Revision;

    /// <summary>Accepts onto <paramref name="qp"/> (in Reset or Init); the QP moves to RTS.</summary>
    /// <param name="qp">The queue pair to connect, in Reset or Init.</param>
    /// <param name="privateData">Private data for the MPA reply (at most 512 bytes, 508 with MPA revision 2).</param>
    /// <exception cref="ArgumentNullException"><paramref name="qp"/> is null; the request stays undecided.</exception>
    /// <exception cref="ObjectDisposedException"><paramref name="qp"/> is disposed.</exception>
    /// <exception cref="InvalidOperationException">The request was already accepted or rejected.</exception>
    /// <exception cref="ArgumentException">
    /// <paramref name="privateData"/> is too long for an MPA frame; the request stays undecided.
    /// </exception>
    /// <exception cref="PinnedDmaException">
    /// <see cref="PinnedDmaError.InvalidArgument"/>: <paramref name="qp"/> is not in Reset or Init (checked first: the
    /// request stays undecided and can still be accepted or rejected); <see cref="PinnedDmaError.ConnectionRejected"/>:
    /// MPA negotiation failed (markers asked for, no common RTR type): a reject reply was sent and the connection closed.
    /// </exception>
    /// <exception cref="System.Net.Sockets.SocketException">Sending the MPA reply failed (the initiator went away).</exception>
    /// <example>
    /// The passive side: listen, accept one client onto a queue pair, with private data both ways:
    /// <code>
    /// using var listener = new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0));   // port 0: ephemeral
    /// IwarpConnectionRequest request = await listener.AcceptAsync(cancellationToken);
    /// if (request.PrivateData.Length > 64)
    ///     request.Reject("too long"u8);
    /// else
    ///     request.Accept(qp, "welcome"u8);        // qp in Reset or Init; it is in RTS now
    /// </code>
    /// </example>
    public void Accept(QueuePair qp, ReadOnlySpan<byte> privateData = default)
    {
        ArgumentNullException.ThrowIfNull(qp);
        qp.CheckConnectable(); // before any side effect: a QP in the wrong state is refused and the request stays undecided
        // The reply is built before the request is decided: private data too long for it is refused with the request
        // still open (the caller may then Reject it), never half-decided with its socket left open.
        var decision = MpaNegotiation.Respond(_request, _options.ToMpa(privateData.ToArray()));
        byte[] reply = decision.Reply.ToArray();
        if (Interlocked.Exchange(ref _decided, 1) != 0) throw new InvalidOperationException("Already accepted or rejected.");
        using var activity = Diagnostics.Telemetry.Source.StartActivity("pinneddma.iwarp.accept", System.Diagnostics.ActivityKind.Server);
        activity?.SetTag("client.address", Diagnostics.Telemetry.PeerOf(_socket));
        try
        {
            _socket.Send(reply);
        }
        catch
        {
            _rx.Dispose(); // the peer is gone: the request ends here, its socket closed
            throw;
        }
        if (!decision.Accepted)
        {
            Diagnostics.Telemetry.Connections.Add(1, Diagnostics.Telemetry.Rejected);
            Diagnostics.Log.ConnectionRejected(Diagnostics.Log.For(_options.LoggerFactory, Diagnostics.Log.IwarpCategory), Diagnostics.Telemetry.PeerOf(_socket), decision.Error.ToString());
            activity?.SetStatus(System.Diagnostics.ActivityStatusCode.Error, decision.Error.ToString());
            _rx.Dispose(); // and the socket it owns
            throw new PinnedDmaException(PinnedDmaError.ConnectionRejected, $"Connection refused by MPA negotiation: {decision.Error}");
        }
        activity?.SetTag("pinneddma.mpa.revision", (int)decision.Negotiated.Revision);
        activity?.SetTag("pinneddma.mpa.crc", decision.Negotiated.Crc);
        var connection = new IwarpConnection(_rx, qp, decision.Negotiated, _options, initiator: false);
        if (_listener is { } listener && _options.MaxInvalidStagConnections > 0)
        {
            var peer = RemoteEndPoint.Address;
            connection.InvalidStagNamed = () => listener.ReportInvalidStag(peer);
        }
        qp.AttachConnection(connection);
    }

    /// <summary>Rejects with an MPA reply that has the R flag set.</summary>
    /// <remarks>The reply is sent as far as the socket allows (an initiator that went away is not an error), then the connection is closed.</remarks>
    /// <param name="privateData">Private data for the reject reply (at most 512 bytes, 508 with MPA revision 2).</param>
    /// <exception cref="InvalidOperationException">The request was already accepted or rejected.</exception>
    /// <exception cref="ArgumentException">
    /// <paramref name="privateData"/> is too long for an MPA frame; the request stays undecided.
    /// </exception>
    public void Reject(ReadOnlySpan<byte> privateData = default)
    {
        byte[] reply = MpaNegotiation.BuildReject(_request, _options.ToMpa(privateData.ToArray())).ToArray();
        if (Interlocked.Exchange(ref _decided, 1) != 0) throw new InvalidOperationException("Already accepted or rejected.");
        Diagnostics.Telemetry.Connections.Add(1, Diagnostics.Telemetry.Rejected);
        Diagnostics.Log.ConnectionRejected(Diagnostics.Log.For(_options.LoggerFactory, Diagnostics.Log.IwarpCategory), Diagnostics.Telemetry.PeerOf(_socket), "rejected by the listener's owner");
        try { _socket.Send(reply); } catch (SocketException) { }
        _rx.Dispose(); // and the socket it owns
    }
}
