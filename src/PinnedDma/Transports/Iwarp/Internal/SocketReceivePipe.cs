using System.Buffers;
using System.Diagnostics.CodeAnalysis;
using System.IO.Pipelines;
using System.Net.Sockets;
using PinnedDma.Interop;

namespace PinnedDma.Transports.Iwarp.Internal;

/// <summary>
/// The receive side of one iWARP socket: a <see cref="Pipe"/> that the owning thread fills with <c>recv</c> and drains
/// itself — first the MPA handshake, then (handed to the connection with whatever followed the handshake) the FPDU
/// stream. The socket is never used asynchronously, so it never joins the runtime's socket event loop: every wake-up
/// comes from the kernel straight to the thread that waits. A reference on the socket handle is held until
/// <see cref="Dispose"/>, so the descriptor cannot be closed and reused under a thread still using it; the pipe owns
/// the socket and disposes it last (others only shut it down).
/// </summary>
internal sealed unsafe class SocketReceivePipe : IDisposable
{
    /// <summary>Bytes asked of one receive (a whole maximal FPDU).</summary>
    public const int Chunk = 64 * 1024;

    private readonly Socket _socket;
    private readonly Pipe _pipe = new(new PipeOptions(pauseWriterThreshold: 0, resumeWriterThreshold: 0, minimumSegmentSize: Chunk,
        readerScheduler: PipeScheduler.Inline, writerScheduler: PipeScheduler.Inline, useSynchronizationContext: false));
    private bool _referenced;

    public SocketReceivePipe(Socket socket)
    {
        _socket = socket;
        socket.SafeHandle.DangerousAddRef(ref _referenced);
        Fd = (int)socket.SafeHandle.DangerousGetHandle();
    }

    public Socket Socket => _socket;

    public int Fd { get; }

    /// <summary>The parsing side; only the filling thread reads it.</summary>
    public PipeReader Reader => _pipe.Reader;

    /// <summary>
    /// One receive of what the socket holds now, at most <paramref name="limit"/> bytes, into the pipe, without
    /// waiting: the count (readable at once on this thread), 0 at the end of the stream, -1 when nothing is there.
    /// </summary>
    public int FillNow(int limit)
    {
        var writer = _pipe.Writer;
        Span<byte> into = writer.GetSpan(Chunk);
        if (into.Length > limit) into = into[..limit];
        int n;
        fixed (byte* p = into) n = SocketInterop.ReceiveAvailable(Fd, p, into.Length);
        if (n <= 0)
        {
            // Ends the write: once the parser consumed everything, the pipe hands its buffer back to the pool, so an
            // idle connection holds none.
            writer.Advance(0);
            _ = writer.FlushAsync(CancellationToken.None);
            return n;
        }
        writer.Advance(n);
        // No pause threshold: the flush completes synchronously.
        var flush = writer.FlushAsync(CancellationToken.None);
        if (!flush.IsCompletedSuccessfully) throw new InvalidOperationException("The receive pipe paused its writer.");
        return n;
    }

    /// <summary>
    /// Takes what the socket holds now into the pipe, without waiting, and tries to read one MPA frame of kind
    /// <paramref name="expected"/> from what has arrived: true with the frame, false when more bytes are needed. The
    /// end of the stream throws <see cref="IwarpProtocolException"/> (stream truncated), as does a malformed frame.
    /// </summary>
    public bool TryReadMpaFrameNow(MpaFrameKind expected, [NotNullWhen(true)] out MpaFrame? frame)
    {
        var writer = _pipe.Writer;
        Span<byte> into = writer.GetSpan(Chunk);
        int n;
        fixed (byte* p = into) n = SocketInterop.ReceiveAvailable(Fd, p, into.Length);
        if (n == 0)
            throw new IwarpProtocolException(IwarpError.Mpa(IwarpErrorKind.StreamTruncated, MpaErrorCode.TcpConnectionLost, "Stream ended during MPA connection setup."));
        if (n > 0)
        {
            writer.Advance(n);
            var flush = writer.FlushAsync(CancellationToken.None);
            if (!flush.IsCompletedSuccessfully) throw new InvalidOperationException("The receive pipe paused its writer.");
        }
        var reader = _pipe.Reader;
        frame = null;
        return reader.TryRead(out ReadResult result) && TryTakeMpaFrame(reader, result.Buffer, expected, out frame);
    }

    /// <summary>
    /// Takes one MPA Request or Reply off the front of <paramref name="buffer"/> (what <paramref name="reader"/> last
    /// returned): true with the reader advanced past it, false with everything marked examined (more bytes needed).
    /// A malformed frame throws <see cref="IwarpProtocolException"/>.
    /// </summary>
    public static bool TryTakeMpaFrame(PipeReader reader, ReadOnlySequence<byte> buffer, MpaFrameKind expected, [NotNullWhen(true)] out MpaFrame? frame)
    {
        ParseStatus status = MpaFrame.TryParse(ref buffer, expected, out frame, out IwarpError error);
        if (status == ParseStatus.Frame && frame is not null)
        {
            reader.AdvanceTo(buffer.Start);
            return true;
        }
        if (status == ParseStatus.Error)
        {
            reader.AdvanceTo(buffer.Start);
            throw new IwarpProtocolException(error);
        }
        reader.AdvanceTo(buffer.Start, buffer.End);
        return false;
    }

    /// <summary>Ends the pipe, releases the handle reference, then disposes the socket (which it owns).</summary>
    public void Dispose()
    {
        _pipe.Reader.Complete();
        _pipe.Writer.Complete();
        if (_referenced)
        {
            _referenced = false;
            _socket.SafeHandle.DangerousRelease();
        }
        _socket.Dispose();
    }
}
