using System.Net;
using System.Net.Sockets;
using PinnedDma.Interop;
using PinnedDma.Transports.Iwarp.Internal;

namespace PinnedDma.Transports.Iwarp;

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
    /// <param name="endpoint">The local address and port.</param>
    /// <param name="options">MPA and connection settings for every connection it accepts; null for the defaults.</param>
    /// <exception cref="ArgumentNullException"><paramref name="endpoint"/> is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException">
    /// An option is out of range: <see cref="IwarpOptions.MpaRevision"/>, <see cref="IwarpOptions.MaxFpduSize"/>,
    /// <see cref="IwarpOptions.RtrTypes"/>, <see cref="IwarpOptions.Ird"/> or <see cref="IwarpOptions.Ord"/> over 16383
    /// with MPA revision 2, a timeout or a limit.
    /// </exception>
    /// <exception cref="ArgumentException"><see cref="IwarpOptions.PeerToPeer"/> without MPA revision 2.</exception>
    /// <exception cref="System.Net.Sockets.SocketException">The endpoint cannot be bound (in use, not a local address).</exception>
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
    /// <exception cref="ObjectDisposedException">The listener is disposed.</exception>
    public IPEndPoint LocalEndPoint => (IPEndPoint)_listener.LocalEndPoint!;

    /// <summary>
    /// Waits for the next client whose MPA request arrived and was well formed. Throws
    /// <see cref="ObjectDisposedException"/> once the listener is disposed (or its socket failed), and
    /// <see cref="InvalidOperationException"/> with the cause if its handshake thread stopped on an unexpected fault.
    /// </summary>
    /// <param name="cancellationToken">Stops the wait; the next request stays queued for a later call.</param>
    /// <returns>
    /// A task that completes with the request, to <see cref="IwarpConnectionRequest.Accept"/> or
    /// <see cref="IwarpConnectionRequest.Reject"/> (an undecided request times out on the initiator's side).
    /// </returns>
    /// <exception cref="ObjectDisposedException">In the task: the listener is disposed, or its socket failed.</exception>
    /// <exception cref="InvalidOperationException">In the task: the handshake thread stopped on an unexpected fault (the inner exception).</exception>
    /// <exception cref="OperationCanceledException">In the task: <paramref name="cancellationToken"/> was canceled.</exception>
    /// <example>
    /// Serve clients until canceled: accept each onto a fresh queue pair of its own:
    /// <code>
    /// using var listener = new IwarpListener(new IPEndPoint(IPAddress.Loopback, 4791));
    /// while (!stop.IsCancellationRequested)
    /// {
    ///     IwarpConnectionRequest request = await listener.AcceptAsync(stop);
    ///     QueuePair qp = pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = cq });
    ///     try
    ///     {
    ///         request.Accept(qp, "welcome"u8);   // qp is in RTS: the client may RDMA WRITE and READ its regions
    ///     }
    ///     catch (PinnedDmaException e) when (e.Error == PinnedDmaError.ConnectionRejected)
    ///     {
    ///         qp.Dispose();                      // MPA negotiation failed; the client was sent a reject
    ///     }
    /// }
    /// </code>
    /// </example>
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
    /// connection's I/O loop later gets every readiness event from its own epoll instance.
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
                        HandshakeFailed(p.Source, $"no whole MPA request within {_options.SetupTimeout}");
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

    private Microsoft.Extensions.Logging.ILogger? _log;

    /// <summary>Counts and logs a handshake that ended without a request (timed out or malformed).</summary>
    private void HandshakeFailed(IPAddress source, string why)
    {
        Diagnostics.Telemetry.Connections.Add(1, Diagnostics.Telemetry.Failed);
        _log ??= Diagnostics.Log.For(_options.LoggerFactory, Diagnostics.Log.IwarpCategory);
        Diagnostics.Log.HandshakeFailed(_log, source.ToString(), why);
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
            HandshakeFailed(p.Source, e.Error.ToString());
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
