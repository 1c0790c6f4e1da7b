using System.Net;
using System.Net.Sockets;
using PinnedDma.Verbs.Iwarp;

namespace PinnedDma.Verbs;

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
    public void Accept(QueuePair qp, ReadOnlySpan<byte> privateData = default)
    {
        ArgumentNullException.ThrowIfNull(qp);
        qp.CheckConnectable(); // before any side effect: a QP in the wrong state is refused and the request stays undecided
        if (Interlocked.Exchange(ref _decided, 1) != 0) throw new InvalidOperationException("Already accepted or rejected.");
        using var activity = Diagnostics.Telemetry.Source.StartActivity("pinneddma.iwarp.accept", System.Diagnostics.ActivityKind.Server);
        activity?.SetTag("client.address", Diagnostics.Telemetry.PeerOf(_socket));
        var decision = MpaNegotiation.Respond(_request, _options.ToMpa(privateData.ToArray()));
        _socket.Send(decision.Reply.ToArray());
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
    public void Reject(ReadOnlySpan<byte> privateData = default)
    {
        if (Interlocked.Exchange(ref _decided, 1) != 0) throw new InvalidOperationException("Already accepted or rejected.");
        var reply = MpaNegotiation.BuildReject(_request, _options.ToMpa(privateData.ToArray()));
        Diagnostics.Telemetry.Connections.Add(1, Diagnostics.Telemetry.Rejected);
        Diagnostics.Log.ConnectionRejected(Diagnostics.Log.For(_options.LoggerFactory, Diagnostics.Log.IwarpCategory), Diagnostics.Telemetry.PeerOf(_socket), "rejected by the listener's owner");
        try { _socket.Send(reply.ToArray()); } catch (SocketException) { }
        _rx.Dispose(); // and the socket it owns
    }
}
