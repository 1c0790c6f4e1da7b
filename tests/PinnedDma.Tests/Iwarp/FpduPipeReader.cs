using System.Buffers;
using System.IO.Pipelines;
using PinnedDma.Transports.Iwarp.Internal;

namespace PinnedDma.Tests.Iwarp;

/// <summary>Drives the codec from an asynchronous <see cref="PipeReader"/> (the shape a pipe-based transport would use).</summary>
internal static class FpduPipeReader
{
    /// <summary>
    /// Reads FPDUs until the reader completes or an error occurs, handing each to <paramref name="onFpdu"/> (which must
    /// copy whatever it keeps from the payload; returning false stops the loop). Returns <see cref="IwarpError.None"/>
    /// on a clean end of stream at an FPDU boundary, the protocol error otherwise (a stream that ends inside an FPDU
    /// is <see cref="IwarpErrorKind.StreamTruncated"/>).
    /// </summary>
    public static async ValueTask<IwarpError> ReadAllAsync(PipeReader reader, FpduDecoder decoder, Func<Fpdu, bool> onFpdu, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(reader);
        ArgumentNullException.ThrowIfNull(decoder);
        ArgumentNullException.ThrowIfNull(onFpdu);
        while (true)
        {
            ReadResult result = await reader.ReadAsync(cancellationToken).ConfigureAwait(false);
            ReadOnlySequence<byte> buffer = result.Buffer;
            IwarpError error = default;
            bool stop = false;
            while (!stop)
            {
                ParseStatus status = decoder.TryParse(ref buffer, out Fpdu fpdu, out error);
                if (status == ParseStatus.Frame)
                {
                    if (!onFpdu(fpdu)) stop = true;
                    continue;
                }
                if (status == ParseStatus.Error) stop = true;
                break;
            }
            if (error.IsError || stop)
            {
                reader.AdvanceTo(buffer.Start);
                return error;
            }
            if (result.IsCompleted || result.IsCanceled)
            {
                bool clean = buffer.IsEmpty;
                reader.AdvanceTo(buffer.Start, buffer.End);
                if (result.IsCanceled) throw new OperationCanceledException("The pipe read was canceled.");
                return clean ? IwarpError.None
                    : IwarpError.Mpa(IwarpErrorKind.StreamTruncated, MpaErrorCode.TcpConnectionLost, $"Stream ended inside an FPDU ({buffer.Length} bytes left).");
            }
            reader.AdvanceTo(buffer.Start, buffer.End);
        }
    }

    /// <summary>Reads one MPA Request or Reply frame from <paramref name="reader"/>.</summary>
    public static async ValueTask<MpaFrame> ReadMpaFrameAsync(PipeReader reader, MpaFrameKind expected, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(reader);
        while (true)
        {
            ReadResult result = await reader.ReadAsync(cancellationToken).ConfigureAwait(false);
            if (SocketReceivePipe.TryTakeMpaFrame(reader, result.Buffer, expected, out var frame)) return frame;
            if (result.IsCompleted || result.IsCanceled)
                throw new IwarpProtocolException(IwarpError.Mpa(IwarpErrorKind.StreamTruncated, MpaErrorCode.TcpConnectionLost, "Stream ended during MPA connection setup."));
        }
    }
}
