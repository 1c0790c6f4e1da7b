using System.Net;
using System.Net.Sockets;
using PinnedDma.Internal;
using PinnedDma.Verbs.Iwarp;

namespace PinnedDma.Verbs;

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

    /// <summary>Inbound RDMA Read depth advertised in revision 2. Default 16.</summary>
    public ushort Ird { get; init; } = 16;

    /// <summary>Outbound RDMA Read depth advertised in revision 2. Default 16.</summary>
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
    /// is closed and the queue pair moves to Error. The device's DMA engine sends for every queue pair, so this also
    /// bounds how long one stalled peer can hold up the others. Default 10 s.
    /// </summary>
    public TimeSpan SendStallTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>
    /// Listener only: once connections from one peer address were ended this many times for naming an invalid or
    /// foreign STag (a guessed or stale key), further connections from that address are closed at once, before the MPA
    /// exchange, so key guessing cannot go on across reconnects. 0 (the default) turns the limit off.
    /// </summary>
    public int MaxInvalidStagConnections { get; init; }

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
        if (((int)RtrTypes & ~7) != 0 || (PeerToPeer && RtrTypes == IwarpRtrTypes.None))
            throw new ArgumentOutOfRangeException(nameof(RtrTypes), RtrTypes, "RTR types are a non-empty combination of the three RFC 6581 types.");
        if (SendStallTimeout <= TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(SendStallTimeout), SendStallTimeout, "The send stall timeout must be positive.");
        if (MaxInvalidStagConnections < 0) throw new ArgumentOutOfRangeException(nameof(MaxInvalidStagConnections), MaxInvalidStagConnections, "The limit is 0 (off) or more.");
    }
}

/// <summary>
/// Listens for iWARP connections on a TCP endpoint (rdma_listen). Each incoming MPA request becomes an
/// <see cref="IwarpConnectionRequest"/> to accept onto a queue pair or reject, with private data both ways. Handshakes
/// run concurrently (up to 64, each on its own thread and bounded by
/// <see cref="IwarpOptions.SetupTimeout"/>), so a silent or hostile client cannot hold up the others.
/// </summary>
public sealed class IwarpListener : IDisposable
{
    private readonly Socket _listener;
    private readonly IwarpOptions _options;
    private readonly System.Threading.Channels.Channel<IwarpConnectionRequest> _ready =
        System.Threading.Channels.Channel.CreateBounded<IwarpConnectionRequest>(new System.Threading.Channels.BoundedChannelOptions(64) { FullMode = System.Threading.Channels.BoundedChannelFullMode.Wait });
    private readonly CancellationTokenSource _stop = new();
    private readonly SemaphoreSlim _handshakes = new(MaxConcurrentHandshakes);
    private readonly Task _acceptLoop;

    /// <summary>Handshakes in progress at once; further connections wait in the TCP backlog.</summary>
    internal const int MaxConcurrentHandshakes = 64;

    /// <summary>Binds and listens on <paramref name="endpoint"/> (use port 0 for an ephemeral port).</summary>
    public IwarpListener(IPEndPoint endpoint, IwarpOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(endpoint);
        _options = options ?? new IwarpOptions();
        _options.Validate();
        _listener = new Socket(endpoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        _listener.Bind(endpoint);
        _listener.Listen(64);
        _acceptLoop = Task.Run(AcceptLoopAsync);
    }

    /// <summary>Where it listens.</summary>
    public IPEndPoint LocalEndPoint => (IPEndPoint)_listener.LocalEndPoint!;

    /// <summary>Waits for the next client whose MPA request arrived and was well formed.</summary>
    public async Task<IwarpConnectionRequest> AcceptAsync(CancellationToken cancellationToken = default)
    {
        try
        {
            return await _ready.Reader.ReadAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (System.Threading.Channels.ChannelClosedException)
        {
            throw new ObjectDisposedException(nameof(IwarpListener));
        }
    }

    private async Task AcceptLoopAsync()
    {
        try
        {
            while (!_stop.IsCancellationRequested)
            {
                await _handshakes.WaitAsync(_stop.Token).ConfigureAwait(false);
                Socket socket;
                try
                {
                    socket = await _listener.AcceptAsync(_stop.Token).ConfigureAwait(false);
                }
                catch
                {
                    _handshakes.Release();
                    throw;
                }
                if (IsRefused(socket))
                {
                    // A peer that kept naming invalid STags: refused before it costs a handshake.
                    socket.Dispose();
                    _handshakes.Release();
                    continue;
                }
                var thread = new Thread(() => Handshake(socket)) { IsBackground = true, Name = "iwarp-handshake" };
                thread.Start();
            }
        }
        catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException)
        {
        }
        finally
        {
            _ready.Writer.TryComplete();
        }
    }

    /// <summary>
    /// Reads the MPA request on a thread of its own with blocking receives: the socket never joins the runtime's
    /// socket event loop, so the connection's own receive thread later gets every wake-up straight from the kernel.
    /// </summary>
    private void Handshake(Socket socket)
    {
        SocketReceivePipe? rx = null;
        bool handedOver = false;
        try
        {
            socket.NoDelay = true;
            rx = new SocketReceivePipe(socket);
            var request = rx.ReadMpaFrame(MpaFrameKind.Request, _options.SetupTimeout, _stop.Token);
            var incoming = new IwarpConnectionRequest(rx, request, _options, this);
            if (!_ready.Writer.TryWrite(incoming))
                _ready.Writer.WriteAsync(incoming, _stop.Token).AsTask().GetAwaiter().GetResult();
            handedOver = true; // the request owns the pipe and the socket now
        }
        catch (Exception e) when (e is IwarpProtocolException or OperationCanceledException or TimeoutException or IOException or SocketException
            or ObjectDisposedException or System.Threading.Channels.ChannelClosedException)
        {
            if (e is IwarpProtocolException)
            {
                // Answer a malformed request with a reject reply, then drop it (RFC 5044 section 7.1.5).
                try
                {
                    socket.Send(new MpaFrame { Kind = MpaFrameKind.Reply, Reject = true, Revision = 1 }.ToArray());
                }
                catch (Exception se) when (se is SocketException or ObjectDisposedException)
                {
                }
            }
        }
        finally
        {
            if (!handedOver)
            {
                if (rx is not null) rx.Dispose(); // and the socket it owns
                else socket.Dispose();
            }
            _handshakes.Release();
        }
    }

    // Connections ended for an invalid or foreign STag, per peer address (see IwarpOptions.MaxInvalidStagConnections).
    private readonly System.Collections.Concurrent.ConcurrentDictionary<IPAddress, int> _stagOffences = new();

    private bool IsRefused(Socket socket) =>
        _options.MaxInvalidStagConnections > 0 && socket.RemoteEndPoint is IPEndPoint ep
        && _stagOffences.TryGetValue(ep.Address, out int n) && n >= _options.MaxInvalidStagConnections;

    internal void ReportInvalidStag(IPAddress peer) => _stagOffences.AddOrUpdate(peer, 1, (_, n) => n + 1);

    /// <summary>Stops listening; handshakes in progress are dropped.</summary>
    public void Dispose()
    {
        _stop.Cancel();
        _listener.Dispose();
        _ready.Writer.TryComplete();
        while (_ready.Reader.TryRead(out var pending)) pending.Reject();
    }
}

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
    }

    /// <summary>The initiator's private data.</summary>
    public ReadOnlyMemory<byte> PrivateData => _request.PrivateData;

    /// <summary>The initiator's address.</summary>
    public IPEndPoint RemoteEndPoint => (IPEndPoint)_socket.RemoteEndPoint!;

    /// <summary>The MPA revision the initiator offered.</summary>
    public byte MpaRevision => _request.Revision;

    /// <summary>Accepts onto <paramref name="qp"/> (in Reset or Init); the QP moves to RTS.</summary>
    public void Accept(QueuePair qp, ReadOnlySpan<byte> privateData = default)
    {
        ArgumentNullException.ThrowIfNull(qp);
        qp.CheckConnectable(); // before any side effect: a QP in the wrong state is refused and the request stays undecided
        if (Interlocked.Exchange(ref _decided, 1) != 0) throw new InvalidOperationException("Already accepted or rejected.");
        using var activity = Diagnostics.Telemetry.Source.StartActivity("pinneddma.iwarp.accept", System.Diagnostics.ActivityKind.Server);
        activity?.SetTag("client.address", RemoteEndPoint.Address.ToString());
        var decision = MpaNegotiation.Respond(_request, _options.ToMpa(privateData.ToArray()));
        _socket.Send(decision.Reply.ToArray());
        if (!decision.Accepted)
        {
            Diagnostics.Telemetry.Connections.Add(1, Diagnostics.Telemetry.Rejected);
            Diagnostics.Log.ConnectionRejected(Diagnostics.Log.For(_options.LoggerFactory, Diagnostics.Log.IwarpCategory), RemoteEndPoint.ToString(), decision.Error.ToString());
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
        Diagnostics.Log.ConnectionRejected(Diagnostics.Log.For(_options.LoggerFactory, Diagnostics.Log.IwarpCategory), _socket.RemoteEndPoint?.ToString() ?? "?", "rejected by the listener's owner");
        try { _socket.Send(reply.ToArray()); } catch (SocketException) { }
        _rx.Dispose(); // and the socket it owns
    }
}

/// <summary>The active side of the iWARP connection manager (rdma_connect).</summary>
public static class IwarpConnector
{
    /// <summary>
    /// An accepted reply the initiator cannot work with (no matching RTR type, RFC 6581 §7.1; insufficient IRD): the
    /// connection is in FPDU mode, so the refusal is a Terminate carrying the MPA error code (RFC 6581 §9), then a close.
    /// </summary>
    private static void SendSetupTerminate(Socket socket, bool crc, TerminateCode code)
    {
        try
        {
            var bytes = new System.Buffers.ArrayBufferWriter<byte>(64);
            new FpduEncoder(new FpduOptions { Crc = crc }).WriteTerminate(bytes, 1, new TerminateMessage { Code = code });
            socket.Send(bytes.WrittenSpan);
        }
        catch (SocketException)
        {
        }
    }

    /// <summary>
    /// Connects <paramref name="qp"/> (in Reset or Init) to a listener: TCP connect, MPA request with
    /// <paramref name="privateData"/>, reply. Returns the responder's private data; the QP is in RTS. A reject throws
    /// <see cref="PinnedDmaError.ConnectionRejected"/>.
    /// </summary>
    public static Task<ReadOnlyMemory<byte>> ConnectAsync(QueuePair qp, IPEndPoint endpoint, ReadOnlyMemory<byte> privateData = default, IwarpOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(qp);
        ArgumentNullException.ThrowIfNull(endpoint);
        options ??= new IwarpOptions();
        options.Validate();
        qp.CheckConnectable(); // before any side effect (no socket, no state change)
        // Blocking calls on a thread of its own: the socket never joins the runtime's socket event loop (see IwarpListener).
        return Task.Factory.StartNew(() => Connect(qp, endpoint, privateData, options, cancellationToken), cancellationToken,
            TaskCreationOptions.LongRunning, TaskScheduler.Default);
    }

    private static ReadOnlyMemory<byte> Connect(QueuePair qp, IPEndPoint endpoint, ReadOnlyMemory<byte> privateData, IwarpOptions options, CancellationToken cancellationToken)
    {
        using var activity = Diagnostics.Telemetry.Source.StartActivity("pinneddma.iwarp.connect", System.Diagnostics.ActivityKind.Client);
        activity?.SetTag("server.address", endpoint.Address.ToString());
        activity?.SetTag("server.port", endpoint.Port);
        try
        {
            var reply = ConnectCore(qp, endpoint, privateData, options, cancellationToken);
            if (qp.Connection is { } c)
            {
                activity?.SetTag("pinneddma.mpa.revision", (int)c.Negotiated.Revision);
                activity?.SetTag("pinneddma.mpa.crc", c.Negotiated.Crc);
            }
            return reply;
        }
        catch (Exception e)
        {
            bool rejected = e is PinnedDmaException { Error: PinnedDmaError.ConnectionRejected };
            Diagnostics.Telemetry.Connections.Add(1, rejected ? Diagnostics.Telemetry.Rejected : Diagnostics.Telemetry.Failed);
            var log = Diagnostics.Log.For(options.LoggerFactory, Diagnostics.Log.IwarpCategory);
            if (rejected) Diagnostics.Log.ConnectionRejected(log, endpoint.ToString(), e.Message);
            else Diagnostics.Log.HandshakeFailed(log, endpoint.ToString(), e.Message);
            activity?.SetStatus(System.Diagnostics.ActivityStatusCode.Error, e.Message);
            throw;
        }
    }

    private static ReadOnlyMemory<byte> ConnectCore(QueuePair qp, IPEndPoint endpoint, ReadOnlyMemory<byte> privateData, IwarpOptions options, CancellationToken cancellationToken)
    {
        long deadline = Environment.TickCount64 + (long)options.SetupTimeout.TotalMilliseconds;
        var socket = new Socket(endpoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        SocketReceivePipe? rx = null;
        try
        {
            // A blocking connect honours the send timeout; cancellation closes the socket under it.
            socket.SendTimeout = Math.Max(1, (int)options.SetupTimeout.TotalMilliseconds);
            using (cancellationToken.Register(() => socket.Dispose()))
            {
                try
                {
                    socket.Connect(endpoint);
                }
                catch (Exception e) when (e is SocketException or ObjectDisposedException && cancellationToken.IsCancellationRequested)
                {
                    throw new OperationCanceledException("Connection setup was canceled.", e, cancellationToken);
                }
                catch (SocketException e) when (e.SocketErrorCode is SocketError.TimedOut or SocketError.WouldBlock or SocketError.InProgress)
                {
                    throw new TimeoutException($"TCP connect to {endpoint} took over {options.SetupTimeout}.", e);
                }
                socket.SendTimeout = 0;
                var request = MpaNegotiation.BuildRequest(options.ToMpa(privateData));
                socket.Send(request.ToArray());
                rx = new SocketReceivePipe(socket);
                MpaFrame reply;
                try
                {
                    reply = rx.ReadMpaFrame(MpaFrameKind.Reply, TimeSpan.FromMilliseconds(Math.Max(1, deadline - Environment.TickCount64)), cancellationToken);
                }
                catch (IwarpProtocolException e)
                {
                    throw new PinnedDmaException(PinnedDmaError.ProtocolError, $"Bad MPA reply: {e.Error}");
                }
                var error = MpaNegotiation.CompleteInitiator(request, reply, out var negotiated);
                if (error.IsError && !reply.Reject && error.Kind is IwarpErrorKind.MpaNoMatchingRtr or IwarpErrorKind.MpaInsufficientIrd)
                    SendSetupTerminate(socket, request.Crc || reply.Crc, error.Terminate);
                if (error.IsError)
                    throw new PinnedDmaException(reply.Reject ? PinnedDmaError.ConnectionRejected : PinnedDmaError.ProtocolError, $"Connection not established: {error}");
                qp.AttachConnection(new IwarpConnection(rx, qp, negotiated, options, initiator: true));
                return reply.PrivateData;
            }
        }
        catch
        {
            if (rx is not null) rx.Dispose(); // and the socket it owns
            else socket.Dispose();
            throw;
        }
    }
}
