using System.Net.Sockets;

namespace PinnedDma.Verbs.Iwarp;

/// <summary>
/// The receive side of a socket as a read-only stream for a <see cref="System.IO.Pipelines.PipeReader"/>, with a
/// settable bound on one read. The connection lowers the bound when the next bytes are probably the header of a large
/// tagged segment: the pipe then takes only the header, and the payload goes from the socket straight into the region.
/// </summary>
internal sealed class SocketReceiveStream : Stream
{
    private readonly Socket _socket;

    public SocketReceiveStream(Socket socket) => _socket = socket;

    /// <summary>Most bytes one read takes off the socket.</summary>
    public int ReadLimit { get; set; } = int.MaxValue;

    public override bool CanRead => true;

    public override bool CanSeek => false;

    public override bool CanWrite => false;

    public override long Length => throw new NotSupportedException();

    public override long Position
    {
        get => throw new NotSupportedException();
        set => throw new NotSupportedException();
    }

    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) =>
        _socket.ReceiveAsync(buffer.Length > ReadLimit ? buffer[..ReadLimit] : buffer, SocketFlags.None, cancellationToken);

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override int Read(Span<byte> buffer) => _socket.Receive(buffer.Length > ReadLimit ? buffer[..ReadLimit] : buffer, SocketFlags.None);

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override void Flush()
    {
    }

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
}
