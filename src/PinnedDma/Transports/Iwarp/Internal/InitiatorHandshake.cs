using System.Net;
using System.Net.Sockets;
using PinnedDma.Interop;
using PinnedDma.Verbs;

namespace PinnedDma.Transports.Iwarp.Internal;

/// <summary>
/// The initiator's connection setup on an I/O loop, without a thread of its own: a non-blocking TCP connect, the MPA
/// Request, the Reply, each step when the socket is ready, all within <see cref="IwarpOptions.SetupTimeout"/>. On an
/// accepted reply the queue pair takes the connection (which joins a loop as every connection does); on any failure the
/// socket closes and the queue pair keeps its state.
/// </summary>
internal sealed class InitiatorHandshake : IoHandler
{
    private enum Step { Connecting, Sending, Reading, Done }

    private readonly QueuePair _qp;
    private readonly IPEndPoint _endpoint;
    private readonly IwarpOptions _options;
    private readonly CancellationToken _cancellationToken;
    private readonly IoLoop _loop;
    private readonly MpaFrame _request;
    private readonly byte[] _requestBytes;
    private readonly TaskCompletionSource<ReadOnlyMemory<byte>> _done = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Socket _socket;
    private readonly SocketReceivePipe _rx;
    private readonly long _deadline;
    private CancellationTokenRegistration _registration;
    private Step _step;
    private int _sent;

    private InitiatorHandshake(QueuePair qp, IPEndPoint endpoint, MpaFrame request, IwarpOptions options, CancellationToken cancellationToken)
    {
        _qp = qp;
        _endpoint = endpoint;
        _options = options;
        _cancellationToken = cancellationToken;
        _request = request;
        _requestBytes = request.ToArray();
        _loop = IoLoopGroup.Next(options.IoThreads);
        _deadline = Environment.TickCount64 + (long)options.SetupTimeout.TotalMilliseconds;
        _socket = new Socket(endpoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true, Blocking = false };
        try
        {
            _rx = new SocketReceivePipe(_socket); // holds the descriptor (and owns the socket) from here on
        }
        catch
        {
            _socket.Dispose();
            _loop.Release();
            throw;
        }
    }

    public override int Fd => _rx.Fd;

    public override long Deadline => _deadline;

    /// <summary>Starts the setup; the task completes with the responder's private data once the QP is in RTS.</summary>
    public static Task<ReadOnlyMemory<byte>> Run(QueuePair qp, IPEndPoint endpoint, MpaFrame request, IwarpOptions options, CancellationToken cancellationToken)
    {
        var h = new InitiatorHandshake(qp, endpoint, request, options, cancellationToken);
        h.Begin();
        return h._done.Task;
    }

    private void Begin()
    {
        try
        {
            _socket.Connect(_endpoint);
            _step = Step.Sending;
        }
        catch (SocketException e) when (e.SocketErrorCode is SocketError.WouldBlock or SocketError.InProgress or SocketError.AlreadyInProgress)
        {
            _step = Step.Connecting;
        }
        catch (Exception e)
        {
            Release();
            _done.TrySetException(e);
            return;
        }
        _loop.Post(() =>
        {
            if (_step == Step.Done) return;
            if (!_loop.Register(this, EpollInterop.EPOLLOUT))
            {
                Fail(new ObjectDisposedException(nameof(Socket)));
                return;
            }
            _loop.Timed(this, on: true);
        });
        if (_cancellationToken.CanBeCanceled)
            _registration = _cancellationToken.UnsafeRegister(static s =>
            {
                var h = (InitiatorHandshake)s!;
                h._loop.Post(() => h.Fail(new OperationCanceledException("Connection setup was canceled.", h._cancellationToken)));
            }, this);
    }

    public override void OnEvents(uint events)
    {
        try
        {
            Advance(events);
        }
        catch (Exception e)
        {
            Fail(e);
        }
    }

    private void Advance(uint events)
    {
        if (_step == Step.Connecting)
        {
            int error = (int)_socket.GetSocketOption(SocketOptionLevel.Socket, SocketOptionName.Error)!;
            if (error != 0)
            {
                Fail(new SocketException(error));
                return;
            }
            // Tells the socket its non-blocking connect finished (it then reports itself connected).
            if (!_socket.Poll(0, SelectMode.SelectWrite)) return;
            _step = Step.Sending;
        }
        if (_step == Step.Sending)
        {
            int n = _socket.Send(_requestBytes, _sent, _requestBytes.Length - _sent, SocketFlags.None, out SocketError status);
            if (status is not (SocketError.Success or SocketError.WouldBlock)) throw new SocketException((int)status);
            _sent += Math.Max(0, n);
            if (_sent < _requestBytes.Length) return;
            _step = Step.Reading;
            _loop.SetInterest(this, EpollInterop.EPOLLIN | EpollInterop.EPOLLRDHUP);
            return;
        }
        if (_step != Step.Reading || (events & ~EpollInterop.EPOLLOUT) == 0) return;
        MpaFrame? reply;
        try
        {
            if (!_rx.TryReadMpaFrameNow(MpaFrameKind.Reply, out reply)) return;
        }
        catch (IwarpProtocolException e)
        {
            Fail(new PinnedDmaException(PinnedDmaError.ProtocolError, $"Bad MPA reply: {e.Error}"));
            return;
        }
        Complete(reply);
    }

    private void Complete(MpaFrame reply)
    {
        var error = MpaNegotiation.CompleteInitiator(_request, reply, out var negotiated);
        if (error.IsError && !reply.Reject && error.Kind is IwarpErrorKind.MpaNoMatchingRtr or IwarpErrorKind.MpaInsufficientIrd)
            SendSetupTerminate(_request.Crc || reply.Crc, error.Terminate);
        if (error.IsError)
        {
            Fail(new PinnedDmaException(reply.Reject ? PinnedDmaError.ConnectionRejected : PinnedDmaError.ProtocolError, $"Connection not established: {error}"));
            return;
        }
        _step = Step.Done;
        _loop.Unregister(this);
        _loop.Release(); // before the connection picks its own loop
        _registration.Dispose();
        try
        {
            // The QP refuses a connection in the wrong state: the connection then closes the socket itself.
            _qp.AttachConnection(new IwarpConnection(_rx, _qp, negotiated, _options, initiator: true));
        }
        catch (Exception e)
        {
            _done.TrySetException(e);
            return;
        }
        _done.TrySetResult(reply.PrivateData);
    }

    /// <summary>
    /// An accepted reply the initiator cannot work with (no matching RTR type, RFC 6581 §7.1; insufficient IRD): the
    /// connection is in FPDU mode, so the refusal is a Terminate carrying the MPA error code (RFC 6581 §9), then a close.
    /// </summary>
    private void SendSetupTerminate(bool crc, TerminateCode code)
    {
        try
        {
            var bytes = new System.Buffers.ArrayBufferWriter<byte>(64);
            new FpduEncoder(new FpduOptions { Crc = crc }).WriteTerminate(bytes, 1, new TerminateMessage { Code = code });
            _socket.Send(bytes.WrittenSpan, SocketFlags.None, out _); // a few bytes into an empty socket buffer
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
    }

    public override void OnDeadline(long now) => Fail(new TimeoutException(_step == Step.Connecting
        ? $"TCP connect to {_endpoint} took over {_options.SetupTimeout}."
        : $"The peer did not answer the MPA request within {_options.SetupTimeout}."));

    private void Fail(Exception e)
    {
        if (_step == Step.Done) return;
        _step = Step.Done;
        _loop.Unregister(this);
        Release();
        _done.TrySetException(e);
    }

    private void Release()
    {
        _registration.Dispose();
        _rx.Dispose(); // and the socket it owns
        _loop.Release();
    }
}
