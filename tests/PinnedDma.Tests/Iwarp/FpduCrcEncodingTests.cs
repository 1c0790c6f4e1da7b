using System.Buffers;
using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using FsCheck.Xunit;
using PinnedDma.Transports.Iwarp.Internal;
using Xunit;

namespace PinnedDma.Tests.Iwarp;

/// <summary>
/// The encoder checksums copied payload in the copy's own pass: every way a payload reaches an FPDU (a span, a
/// segmented sequence, gathered parts copied into the send stage or referenced) must yield the same wire bytes, whose
/// CRC field is the CRC32c of everything before it (RFC 5044 §4.1), with payload lengths that reach every chunk size
/// of the CRC's streams.
/// </summary>
public sealed class FpduCrcEncodingTests
{
    private static FpduOptions Options(bool crc) => new() { Crc = crc, MaxUlpduLength = ushort.MaxValue };

    private static DdpRdmapHeader Header(Random rng, bool last) =>
        rng.Next(2) == 0
            ? DdpRdmapHeader.ForTagged(RdmapOpcode.RdmaWrite, (uint)rng.Next(), (ulong)rng.NextInt64(), last)
            : DdpRdmapHeader.ForUntagged(RdmapOpcode.Send, DdpQueue.Send, (uint)rng.Next(), (uint)rng.Next(1 << 20), last);

    private static int PayloadLength(Random rng, int max) => rng.Next(3) switch
    {
        0 => rng.Next(Math.Min(max, 2048) + 1),
        _ => rng.Next(max + 1),
    };

    /// <summary>Checks framing and CRC field of one encoded FPDU and returns its payload bytes.</summary>
    private static byte[] CheckFrame(byte[] wire, int headerLength, bool crc)
    {
        int ulpdu = BinaryPrimitives.ReadUInt16BigEndian(wire);
        Assert.Equal(Fpdu.WireLengthFor(ulpdu), wire.Length);
        uint field = BinaryPrimitives.ReadUInt32LittleEndian(wire.AsSpan(wire.Length - Fpdu.CrcSize));
        Assert.Equal(crc ? IwarpTestUtil.ReferenceCrc32C(wire.AsSpan(0, wire.Length - Fpdu.CrcSize)) : 0u, field);
        return wire.AsSpan(Fpdu.LengthFieldSize + headerLength, ulpdu - headerLength).ToArray();
    }

    [Property(MaxTest = 60)]
    public void Span_and_sequence_payloads_encode_to_the_same_checked_frame(int seed, bool crc)
    {
        var rng = new Random(seed);
        var encoder = new FpduEncoder(Options(crc));
        var header = Header(rng, rng.Next(2) == 0);
        int length = PayloadLength(rng, encoder.MaxPayload(header.Length));
        int offset = rng.Next(16);
        var source = new byte[offset + length];
        rng.NextBytes(source);
        byte[] payload = source.AsSpan(offset).ToArray();

        byte[] fromSpan = IwarpTestUtil.Encode(encoder, w => encoder.Write(w, header, source.AsSpan(offset)));
        Assert.Equal(payload, CheckFrame(fromSpan, header.Length, crc));

        var sequence = IwarpTestUtil.Chunked(payload, 1 + rng.Next(Math.Max(1, length)));
        byte[] fromSequence = IwarpTestUtil.Encode(encoder, w => encoder.Write(w, header, sequence));
        Assert.Equal(fromSpan, fromSequence);

        var decoded = new ReadOnlySequence<byte>(fromSpan);
        Assert.Equal(ParseStatus.Frame, new FpduDecoder(Options(crc)).TryParse(ref decoded, out Fpdu f, out IwarpError error));
        Assert.Equal(IwarpError.None, error);
        Assert.Equal(payload, f.Payload.ToArray());
    }

    /// <summary>
    /// Gathered FPDUs, their parts each either copied into the stage (fused copy and CRC) or referenced in native memory
    /// (CRC pass only), sent through a real send queue over a 127.0.0.1 socket: the receiver sees what
    /// <see cref="FpduEncoder.Write(IBufferWriter{byte}, in DdpRdmapHeader, ReadOnlySpan{byte})"/> writes.
    /// </summary>
    [Property(MaxTest = 25)]
    public unsafe void Gathered_parts_copied_or_referenced_encode_as_one_write(int seed, bool crc)
    {
        var rng = new Random(seed);
        var encoder = new FpduEncoder(Options(crc));
        var header = Header(rng, true);
        int length = PayloadLength(rng, encoder.MaxPayload(header.Length));
        int offset = rng.Next(16);
        byte* native = (byte*)NativeMemory.AlignedAlloc((nuint)(offset + length + 1), 64);
        try
        {
            var payload = new Span<byte>(native + offset, length);
            rng.NextBytes(payload);
            var writer = new ArrayBufferWriter<byte>();
            encoder.Write(writer, header, payload);
            byte[] expected = writer.WrittenSpan.ToArray();

            using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            listener.Listen(1);
            using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            client.Connect(listener.LocalEndPoint!);
            using var server = listener.Accept();
            var received = new byte[expected.Length];
            var receiver = Task.Run(() =>
            {
                server.ReceiveTimeout = 30_000;
                for (int at = 0; at < received.Length;)
                {
                    int n = server.Receive(received, at, received.Length - at, SocketFlags.None);
                    if (n == 0) throw new IOException($"peer closed after {at} of {received.Length} bytes");
                    at += n;
                }
            });

            var queue = new FpduSendQueue((int)client.SafeHandle.DangerousGetHandle());
            uint state = encoder.BeginGather(queue, header, length);
            for (int at = 0; at < length;)
            {
                int part = Math.Min(length - at, 1 + rng.Next(rng.Next(2) == 0 ? 64 : 20_000));
                // As the sender does: only whole pieces of at least 4 KiB go by reference (an FPDU then fits the
                // queue's iovecs); the rest are copied into the stage.
                encoder.Gather(queue, payload.Slice(at, part), byReference: part >= 4096 && rng.Next(2) == 0, ref state);
                at += part;
            }
            encoder.EndGather(queue, header.Length, length, state);
            // The queue never blocks: hand the kernel what it takes until everything left (the receiver drains it).
            var flushing = System.Diagnostics.Stopwatch.StartNew();
            while (!queue.TryFlush() && flushing.Elapsed < TimeSpan.FromSeconds(30)) Thread.Sleep(1);
            Assert.True(queue.IsEmpty, "the send queue did not drain");

            Assert.True(receiver.Wait(TimeSpan.FromSeconds(30)), "the receiver did not get the whole FPDU");
            Assert.Equal(expected, received);
            CheckFrame(received, header.Length, crc);
        }
        finally
        {
            NativeMemory.AlignedFree(native);
        }
    }
}
