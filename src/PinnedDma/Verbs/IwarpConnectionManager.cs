using System.Net;
using System.Net.Sockets;
using PinnedDma.Interop;
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
    /// Inbound RDMA Read depth advertised in revision 2 and enforced: a peer with more Read Requests outstanding is
    /// ended with a Terminate. Revision 1 advertises nothing; the responder then accepts up to 128 (or this, if larger).
    /// Default 16.
    /// </summary>
    public ushort Ird { get; init; } = 16;

    /// <summary>
    /// Outbound RDMA Read depth advertised in revision 2. Reads outstanding at once are capped at the negotiated ORD
    /// (the lower of this and the peer's IRD; with revision 1, this); further Reads wait at the head of the send queue.
    /// A negotiated ORD of 0 refuses Reads (they complete with LocQpOpErr). Default 16.
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
        if (((int)RtrTypes & ~7) != 0 || (PeerToPeer && RtrTypes == IwarpRtrTypes.None))
            throw new ArgumentOutOfRangeException(nameof(RtrTypes), RtrTypes, "RTR types are a non-empty combination of the three RFC 6581 types.");
        if (SendStallTimeout <= TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(SendStallTimeout), SendStallTimeout, "The send stall timeout must be positive.");
        if (MaxPendingHandshakesPerSource is < 1 or > 65536) throw new ArgumentOutOfRangeException(nameof(MaxPendingHandshakesPerSource), MaxPendingHandshakesPerSource, "The per-source handshake limit is 1 to 65536.");
        if (MaxPendingHandshakes is < 1 or > 65536) throw new ArgumentOutOfRangeException(nameof(MaxPendingHandshakes), MaxPendingHandshakes, "The pending handshake limit is 1 to 65536.");
        if (SetupTimeout <= TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(SetupTimeout), SetupTimeout, "The setup timeout must be positive.");
        if (MaxInvalidStagConnections < 0) throw new ArgumentOutOfRangeException(nameof(MaxInvalidStagConnections), MaxInvalidStagConnections, "The limit is 0 (off) or more.");
    }
}

/// <summary>
/// Listens for iWARP connections on a TCP endpoint (rdma_listen). Each incoming MPA request becomes an
/// <see cref="IwarpConnectionRequest"/> to accept onto a queue pair or reject, with private data both ways.
/// </summary>
/// <remarks>
/// One thread accepts connections and reads every pending MPA request with <c>poll</c> and non-blocking receives, so a
/// silent connection costs a table entry, not a thread. Each handshake is bounded by
/// <see cref="IwarpOptions.SetupTimeout"/>, each source address may hold at most
/// <see cref="IwarpOptions.MaxPendingHandshakesPerSource"/> pending handshakes (a newer one from that address is closed
/// at once) and the listener at most <see cref="IwarpOptions.MaxPendingHandshakes"/> (when full, the oldest pending
/// handshake of the address holding the most is closed to make room), so silent or half-handshake clients cannot keep a
/// well-behaved client waiting.
/// </remarks>
public sealed class IwarpListener : IDisposable
{
    private readonly Socket _listener;
    private readonly IwarpOptions _options;
    private readonly System.Threading.Channels.Channel<IwarpConnectionRequest> _ready =
        System.Threading.Channels.Channel.CreateBounded<IwarpConnectionRequest>(new System.Threading.Channels.BoundedChannelOptions(ReadyQueueLength) { FullMode = System.Threading.Channels.BoundedChannelFullMode.Wait });
    private readonly CancellationTokenSource _stop = new();
    private readonly Thread _handshakeThread;

    /// <summary>Complete requests waiting for <see cref="AcceptAsync"/>; more wait, still pending, in the handshake table.</summary>
    private const int ReadyQueueLength = 64;

    /// <summary>Longest sleep of the handshake thread between looks at the stop flag.</summary>
    private const int MaxPollMilliseconds = 200;

    /// <summary>Binds and listens on <paramref name="endpoint"/> (use port 0 for an ephemeral port).</summary>
    public IwarpListener(IPEndPoint endpoint, IwarpOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(endpoint);
        _options = options ?? new IwarpOptions();
        _options.Validate();
        _listener = new Socket(endpoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            _listener.Bind(endpoint);
            _listener.Listen(Math.Max(128, _options.MaxPendingHandshakes));
            // Accepted from poll's readiness: a connection that vanished in between must not block the thread.
            _listener.Blocking = false;
        }
        catch
        {
            _listener.Dispose();
            throw;
        }
        _handshakeThread = new Thread(HandshakeLoop) { IsBackground = true, Name = "iwarp-handshakes" };
        _handshakeThread.Start();
    }

    /// <summary>Where it listens.</summary>
    public IPEndPoint LocalEndPoint => (IPEndPoint)_listener.LocalEndPoint!;

    /// <summary>
    /// Waits for the next client whose MPA request arrived and was well formed. Throws
    /// <see cref="ObjectDisposedException"/> once the listener is disposed (or its socket failed), and
    /// <see cref="InvalidOperationException"/> with the cause if its handshake thread stopped on an unexpected fault.
    /// </summary>
    public async Task<IwarpConnectionRequest> AcceptAsync(CancellationToken cancellationToken = default)
    {
        try
        {
            return await _ready.Reader.ReadAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (System.Threading.Channels.ChannelClosedException e) when (e.InnerException is { } cause)
        {
            throw new InvalidOperationException("The listener stopped after a fault on its handshake thread.", cause);
        }
        catch (System.Threading.Channels.ChannelClosedException)
        {
            throw new ObjectDisposedException(nameof(IwarpListener));
        }
    }

    /// <summary>A connection whose MPA request has not (all) arrived yet, or whose request waits for room in the ready queue.</summary>
    private sealed class PendingHandshake(SocketReceivePipe rx, IPAddress source, long deadline)
    {
        public SocketReceivePipe Rx { get; } = rx;
        public IPAddress Source { get; } = source;
        public long Deadline { get; } = deadline;
        public IwarpConnectionRequest? Complete { get; set; }
    }

    /// <summary>
    /// The handshake thread: accepts, and reads every pending MPA request, with <c>poll</c> and non-blocking receives on
    /// this one thread. The sockets are never used asynchronously: none joins the runtime's socket event loop, so the
    /// connection's own receive thread later gets every wake-up straight from the kernel.
    /// </summary>
    private unsafe void HandshakeLoop()
    {
        var pending = new List<PendingHandshake>(); // oldest first
        var perSource = new Dictionary<IPAddress, int>();
        bool listenerReferenced = false;
        long acceptPausedUntil = 0;
        try
        {
            // The descriptor stays valid (not reused) while this thread polls it, even once Dispose closed the socket.
            _listener.SafeHandle.DangerousAddRef(ref listenerReferenced);
            int listenFd = (int)_listener.SafeHandle.DangerousGetHandle();
            var fds = new SocketInterop.PollFd[1 + _options.MaxPendingHandshakes];
            var polled = new PendingHandshake?[fds.Length];
            while (!_stop.IsCancellationRequested)
            {
                HandOverComplete(pending, perSource);
                long now = Environment.TickCount64;
                long wait = MaxPollMilliseconds;
                int count = 0;
                if (now >= acceptPausedUntil)
                {
                    fds[count] = new SocketInterop.PollFd { Fd = listenFd, Events = SocketInterop.PollReadable };
                    polled[count++] = null;
                }
                else
                {
                    wait = Math.Min(wait, acceptPausedUntil - now);
                }
                for (int i = pending.Count - 1; i >= 0; i--)
                {
                    var p = pending[i];
                    if (p.Complete is not null)
                    {
                        wait = Math.Min(wait, 10); // waiting for room in the ready queue
                        continue;
                    }
                    if (now >= p.Deadline)
                    {
                        Drop(pending, perSource, i); // SetupTimeout passed without a whole request
                        continue;
                    }
                    wait = Math.Min(wait, p.Deadline - now);
                    fds[count] = new SocketInterop.PollFd { Fd = p.Rx.Fd, Events = SocketInterop.PollReadable };
                    polled[count++] = p;
                }
                int ready;
                fixed (SocketInterop.PollFd* f = fds) ready = SocketInterop.PollMany(f, count, (int)Math.Max(0, wait));
                if (_stop.IsCancellationRequested) break;
                if (ready <= 0) continue;
                bool acceptReady = false;
                for (int i = 0; i < count; i++)
                {
                    if (fds[i].Returned == 0) continue;
                    if (polled[i] is { } p) ReadRequest(pending, perSource, p);
                    else acceptReady = true;
                }
                if (acceptReady && !AcceptWaiting(pending, perSource))
                    acceptPausedUntil = Environment.TickCount64 + 50; // out of descriptors: let some handshakes end first
            }
        }
        catch (Exception e) when (e is ObjectDisposedException or SocketException)
        {
            // The listening socket was closed or failed: no more connections.
        }
        catch (Exception e)
        {
            // Nothing may escape this thread (it would end the process): the listener stops, AcceptAsync reports it.
            _ready.Writer.TryComplete(e);
        }
        finally
        {
            _ready.Writer.TryComplete();
            foreach (var p in pending) p.Rx.Dispose(); // and the socket it owns
            if (listenerReferenced) _listener.SafeHandle.DangerousRelease();
        }
    }

    /// <summary>Accepts what waits in the backlog; false when the process ran out of descriptors.</summary>
    private bool AcceptWaiting(List<PendingHandshake> pending, Dictionary<IPAddress, int> perSource)
    {
        for (int n = 0; n < 256 && !_stop.IsCancellationRequested; n++)
        {
            Socket socket;
            try
            {
                socket = _listener.Accept();
            }
            catch (SocketException e) when (e.SocketErrorCode is SocketError.WouldBlock or SocketError.Interrupted
                or SocketError.ConnectionAborted or SocketError.ConnectionReset)
            {
                return true;
            }
            catch (SocketException e) when (e.SocketErrorCode is SocketError.TooManyOpenSockets or SocketError.NoBufferSpaceAvailable)
            {
                return false;
            }
            Admit(socket, pending, perSource);
        }
        return true;
    }

    /// <summary>Takes a new connection into the table, making room or refusing it as the limits say.</summary>
    private void Admit(Socket socket, List<PendingHandshake> pending, Dictionary<IPAddress, int> perSource)
    {
        IPAddress source;
        try
        {
            socket.Blocking = true; // as every iWARP socket: the transport's own calls poll where they must not block
            socket.NoDelay = true;
            source = ((IPEndPoint)socket.RemoteEndPoint!).Address;
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            socket.Dispose(); // gone already
            return;
        }
        if (source.IsIPv4MappedToIPv6) source = source.MapToIPv4();
        if (IsRefused(source))
        {
            // A peer that kept naming invalid STags: refused before it costs a handshake.
            socket.Dispose();
            return;
        }
        perSource.TryGetValue(source, out int held);
        if (held >= _options.MaxPendingHandshakesPerSource)
        {
            // This address already has its share of handshakes in progress: the newest is refused at once.
            socket.Dispose();
            return;
        }
        SocketReceivePipe rx;
        try
        {
            rx = new SocketReceivePipe(socket);
        }
        catch (ObjectDisposedException)
        {
            socket.Dispose();
            return;
        }
        if (pending.Count >= _options.MaxPendingHandshakes) EvictOne(pending, perSource);
        perSource[source] = held + 1;
        pending.Add(new PendingHandshake(rx, source, Environment.TickCount64 + (long)_options.SetupTimeout.TotalMilliseconds));
    }

    /// <summary>The table is full: closes the oldest pending handshake of the address that holds the most.</summary>
    private static void EvictOne(List<PendingHandshake> pending, Dictionary<IPAddress, int> perSource)
    {
        IPAddress? top = null;
        int most = 0;
        foreach (var (address, held) in perSource)
        {
            if (held > most)
            {
                most = held;
                top = address;
            }
        }
        int victim = top is null ? 0 : pending.FindIndex(p => p.Source.Equals(top));
        Drop(pending, perSource, Math.Max(0, victim));
    }

    /// <summary>Reads what a pending connection sent; a whole request is handed to <see cref="AcceptAsync"/>.</summary>
    private void ReadRequest(List<PendingHandshake> pending, Dictionary<IPAddress, int> perSource, PendingHandshake p)
    {
        int index = pending.IndexOf(p);
        if (index < 0) return; // evicted during this round
        try
        {
            if (!p.Rx.TryReadMpaFrameNow(MpaFrameKind.Request, out var request)) return;
            p.Complete = new IwarpConnectionRequest(p.Rx, request, _options, this);
        }
        catch (IwarpProtocolException e)
        {
            if (e.Error.Kind != IwarpErrorKind.StreamTruncated)
            {
                // Answer a malformed request with a reject reply, then drop it (RFC 5044 section 7.1.5).
                try
                {
                    p.Rx.Socket.Send(new MpaFrame { Kind = MpaFrameKind.Reply, Reject = true, Revision = 1 }.ToArray());
                }
                catch (Exception se) when (se is SocketException or ObjectDisposedException)
                {
                }
            }
            Drop(pending, perSource, index);
            return;
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or InvalidOperationException)
        {
            Drop(pending, perSource, index);
            return;
        }
        HandOverComplete(pending, perSource);
    }

    /// <summary>Moves complete requests, oldest first, into the ready queue while it has room.</summary>
    private void HandOverComplete(List<PendingHandshake> pending, Dictionary<IPAddress, int> perSource)
    {
        for (int i = 0; i < pending.Count; i++)
        {
            var p = pending[i];
            if (p.Complete is null) continue;
            if (!_ready.Writer.TryWrite(p.Complete)) return;
            // The request owns the pipe and the socket now.
            pending.RemoveAt(i--);
            Release(perSource, p.Source);
        }
    }

    private static void Drop(List<PendingHandshake> pending, Dictionary<IPAddress, int> perSource, int index)
    {
        var p = pending[index];
        pending.RemoveAt(index);
        Release(perSource, p.Source);
        p.Rx.Dispose(); // and the socket it owns
    }

    private static void Release(Dictionary<IPAddress, int> perSource, IPAddress source)
    {
        if (perSource.TryGetValue(source, out int held) && held > 1) perSource[source] = held - 1;
        else perSource.Remove(source);
    }

    // Connections ended for an invalid or foreign STag, per peer address (see IwarpOptions.MaxInvalidStagConnections).
    private readonly System.Collections.Concurrent.ConcurrentDictionary<IPAddress, int> _stagOffences = new();

    private bool IsRefused(IPAddress source) =>
        _options.MaxInvalidStagConnections > 0 && _stagOffences.TryGetValue(source, out int n) && n >= _options.MaxInvalidStagConnections;

    internal void ReportInvalidStag(IPAddress peer) =>
        _stagOffences.AddOrUpdate(peer.IsIPv4MappedToIPv6 ? peer.MapToIPv4() : peer, 1, (_, n) => n + 1);

    /// <summary>Stops listening; handshakes in progress are dropped and requests not yet accepted are rejected.</summary>
    public void Dispose()
    {
        _stop.Cancel();
        try
        {
            _listener.Shutdown(SocketShutdown.Both); // stops listening now and wakes the handshake thread's poll
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
        _listener.Dispose();
        if (Thread.CurrentThread != _handshakeThread) _handshakeThread.Join(TimeSpan.FromSeconds(2));
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
        var decision = MpaNegotiation.Respond(_request, _options.ToMpa(privateData.ToArray()));
        _socket.Send(decision.Reply.ToArray());
        if (!decision.Accepted)
        {
            _rx.Dispose(); // and the socket it owns
            throw new PinnedDmaException(PinnedDmaError.ConnectionRejected, $"Connection refused by MPA negotiation: {decision.Error}");
        }
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
