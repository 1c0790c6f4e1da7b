using System.Net;
using System.Net.Sockets;
using PinnedDma.Transports.Iwarp.Internal;
using PinnedDma.Verbs;

namespace PinnedDma.Transports.Iwarp;

/// <summary>The active side of the iWARP connection manager (rdma_connect).</summary>
public static class IwarpConnector
{
    /// <summary>
    /// Connects <paramref name="qp"/> (in Reset or Init) to a listener: TCP connect, MPA request with
    /// <paramref name="privateData"/>, reply. Returns the responder's private data; the QP is in RTS. A reject throws
    /// <see cref="PinnedDmaError.ConnectionRejected"/>.
    /// </summary>
    /// <param name="qp">The queue pair to connect, in Reset or Init.</param>
    /// <param name="endpoint">The listener's address.</param>
    /// <param name="privateData">Private data for the MPA request (at most 512 bytes, 508 with MPA revision 2).</param>
    /// <param name="options">MPA and connection settings; null for the defaults.</param>
    /// <param name="cancellationToken">Cancels the setup (not the connection once established).</param>
    /// <returns>
    /// A task that completes with the responder's private data once the connection is up and <paramref name="qp"/> is
    /// in RTS. On failure the socket is closed and the queue pair keeps its state.
    /// </returns>
    /// <exception cref="ArgumentNullException"><paramref name="qp"/> or <paramref name="endpoint"/> is null (thrown at once).</exception>
    /// <exception cref="ArgumentOutOfRangeException">
    /// An option is out of range (thrown at once): <see cref="IwarpOptions.MpaRevision"/>,
    /// <see cref="IwarpOptions.MaxFpduSize"/>, <see cref="IwarpOptions.RtrTypes"/>, <see cref="IwarpOptions.Ird"/> or
    /// <see cref="IwarpOptions.Ord"/> over 16383 with MPA revision 2, a timeout or a limit.
    /// </exception>
    /// <exception cref="ArgumentException">
    /// Thrown at once, before any socket is opened: <see cref="IwarpOptions.PeerToPeer"/> without MPA revision 2, or
    /// <paramref name="privateData"/> too long for an MPA frame.
    /// </exception>
    /// <exception cref="ObjectDisposedException"><paramref name="qp"/> is disposed (thrown at once, or in the task if it is disposed meanwhile).</exception>
    /// <exception cref="PinnedDmaException">
    /// <see cref="PinnedDmaError.InvalidArgument"/>: <paramref name="qp"/> is not in Reset or Init (thrown at once,
    /// before any socket is opened). In the task: <see cref="PinnedDmaError.ConnectionRejected"/>: the responder sent
    /// a reject (an MPA reply with the R flag); <see cref="PinnedDmaError.ProtocolError"/>: the reply is malformed, the
    /// stream ended before it, or it cannot be agreed with (no common RTR type, insufficient IRD: the responder is then
    /// sent a Terminate).
    /// </exception>
    /// <exception cref="System.Net.Sockets.SocketException">In the task: the TCP connection failed (refused, unreachable, reset).</exception>
    /// <exception cref="TimeoutException">In the task: the TCP connect or the MPA reply took longer than <see cref="IwarpOptions.SetupTimeout"/>.</exception>
    /// <exception cref="OperationCanceledException">In the task: <paramref name="cancellationToken"/> was canceled during the setup.</exception>
    /// <example>
    /// The active side: connect a queue pair to a listener, then use it as any RTS queue pair:
    /// <code>
    /// using var nic = new RdmaDevice();
    /// ProtectionDomain pd = nic.AllocatePd();
    /// CompletionQueue cq = nic.CreateCompletionQueue(64);
    /// QueuePair qp = pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = cq });
    /// using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(10));
    /// try
    /// {
    ///     ReadOnlyMemory&lt;byte&gt; reply = await IwarpConnector.ConnectAsync(
    ///         qp, new IPEndPoint(IPAddress.Loopback, 4791), "hello"u8.ToArray(), cancellationToken: cts.Token);
    ///     // qp.State == QpState.Rts: post RDMA WRITE, READ and SEND work requests
    /// }
    /// catch (PinnedDmaException e) when (e.Error == PinnedDmaError.ConnectionRejected)
    /// {
    ///     Console.WriteLine($"refused: {e.Message}");
    /// }
    /// </code>
    /// </example>
    public static Task<ReadOnlyMemory<byte>> ConnectAsync(QueuePair qp, IPEndPoint endpoint, ReadOnlyMemory<byte> privateData = default, IwarpOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(qp);
        ArgumentNullException.ThrowIfNull(endpoint);
        options ??= new IwarpOptions();
        options.Validate();
        // The request must be buildable before anything connects: too much private data fails here, not after a TCP
        // connect the listener would see.
        MpaNegotiation.BuildRequest(options.ToMpa(privateData)).Validate();
        qp.CheckConnectable(); // before any side effect (no socket, no state change)
        if (cancellationToken.IsCancellationRequested) return Task.FromCanceled<ReadOnlyMemory<byte>>(cancellationToken);
        // The setup runs on an I/O loop (no thread of its own): connect, MPA request, reply, each when the socket is ready.
        return ConnectOnLoopAsync(qp, endpoint, privateData, options, cancellationToken);
    }

    private static async Task<ReadOnlyMemory<byte>> ConnectOnLoopAsync(QueuePair qp, IPEndPoint endpoint, ReadOnlyMemory<byte> privateData, IwarpOptions options, CancellationToken cancellationToken)
    {
        using var activity = Diagnostics.Telemetry.Source.StartActivity("pinneddma.iwarp.connect", System.Diagnostics.ActivityKind.Client);
        activity?.SetTag("server.address", endpoint.Address.ToString());
        activity?.SetTag("server.port", endpoint.Port);
        try
        {
            var request = MpaNegotiation.BuildRequest(options.ToMpa(privateData));
            var reply = await InitiatorHandshake.Run(qp, endpoint, request, options, cancellationToken).ConfigureAwait(false);
            if (qp.Transport is IwarpConnection c)
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
}
