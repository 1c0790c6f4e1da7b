using System.Buffers;
using System.Net;
using System.Net.Sockets;
using PinnedDma.Transports.Iwarp.Internal;
using Xunit;

namespace PinnedDma.Tests.Iwarp;

internal sealed class ChunkSegment : ReadOnlySequenceSegment<byte>
{
    public ChunkSegment(ReadOnlyMemory<byte> memory, long runningIndex)
    {
        Memory = memory;
        RunningIndex = runningIndex;
    }

    public ChunkSegment Append(ReadOnlyMemory<byte> memory)
    {
        var next = new ChunkSegment(memory, RunningIndex + Memory.Length);
        Next = next;
        return next;
    }
}

internal static class IwarpTestUtil
{
    /// <summary>Splits <paramref name="data"/> into a multi-segment sequence, cutting at the given positions.</summary>
    public static ReadOnlySequence<byte> Chunked(byte[] data, int chunkSize)
    {
        if (data.Length == 0 || chunkSize <= 0 || chunkSize >= data.Length) return new ReadOnlySequence<byte>(data);
        var first = new ChunkSegment(data.AsMemory(0, chunkSize), 0);
        ChunkSegment last = first;
        for (int off = chunkSize; off < data.Length; off += chunkSize)
            last = last.Append(data.AsMemory(off, Math.Min(chunkSize, data.Length - off)));
        return new ReadOnlySequence<byte>(first, 0, last, last.Memory.Length);
    }

    public static byte[] Encode(FpduEncoder encoder, Action<IBufferWriter<byte>> write)
    {
        var w = new ArrayBufferWriter<byte>();
        write(w);
        return w.WrittenSpan.ToArray();
    }

    /// <summary>
    /// A raw TCP peer playing the MPA initiator against a real listener: connects, sends a revision 1 request, reads and
    /// parses the reply (the listener's accept must run meanwhile). Bounded by <paramref name="timeout"/>.
    /// </summary>
    public static (Socket Socket, MpaFrame Reply) ConnectRawMpa(IPEndPoint endpoint, bool wantCrc, TimeSpan timeout, int receiveBufferSize = 0, byte revision = 1, ushort ird = 16, ushort ord = 16)
    {
        var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)
        {
            NoDelay = true,
            ReceiveTimeout = (int)timeout.TotalMilliseconds,
            SendTimeout = (int)timeout.TotalMilliseconds,
        };
        if (receiveBufferSize > 0) s.ReceiveBufferSize = receiveBufferSize;
        s.Connect(endpoint);
        s.Send(MpaNegotiation.BuildRequest(new MpaLocalSettings { Revision = revision, WantCrc = wantCrc, Ird = ird, Ord = ord }).ToArray());
        return (s, ReadMpaFrame(s, MpaFrameKind.Reply));
    }

    /// <summary>Reads one MPA Request or Reply (header and private data) from a raw socket and requires it to parse.</summary>
    public static MpaFrame ReadMpaFrame(Socket s, MpaFrameKind kind)
    {
        var bytes = new byte[MpaFrame.HeaderSize];
        ReceiveExactly(s, bytes, 0, bytes.Length);
        int pd = System.Buffers.Binary.BinaryPrimitives.ReadUInt16BigEndian(bytes.AsSpan(18));
        Array.Resize(ref bytes, MpaFrame.HeaderSize + pd);
        ReceiveExactly(s, bytes, MpaFrame.HeaderSize, pd);
        var seq = new ReadOnlySequence<byte>(bytes);
        Assert.Equal(ParseStatus.Frame, MpaFrame.TryParse(ref seq, kind, out var frame, out _));
        return frame!;
    }

    private static void ReceiveExactly(Socket s, byte[] into, int offset, int count)
    {
        for (int got = 0; got < count;)
        {
            int n = s.Receive(into, offset + got, count - got, SocketFlags.None);
            Assert.True(n > 0, "the other side closed during MPA setup");
            got += n;
        }
    }

    /// <summary>Bit-at-a-time CRC32C, independent of the library's implementation.</summary>
    public static uint ReferenceCrc32C(ReadOnlySpan<byte> data)
    {
        uint crc = 0xFFFFFFFF;
        foreach (byte b in data)
        {
            crc ^= b;
            for (int i = 0; i < 8; i++) crc = (crc & 1) != 0 ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
        }
        return ~crc;
    }

    /// <summary>The Terminate code the RFCs assign to each error kind (independent restatement of the mapping).</summary>
    public static TerminateCode ExpectedTerminate(IwarpError error, bool taggedHeader)
    {
        return error.Kind switch
        {
            IwarpErrorKind.StreamTruncated => new(TerminateLayer.Llp, 0, 0x01),
            IwarpErrorKind.CrcMismatch => new(TerminateLayer.Llp, 0, 0x02),
            IwarpErrorKind.FpduLengthTooLarge => new(TerminateLayer.Llp, 0, 0x03),
            IwarpErrorKind.MpaInvalidKey or IwarpErrorKind.MpaUnsupportedRevision or IwarpErrorKind.MpaPrivateDataTooLong
                or IwarpErrorKind.MpaMarkersRequested or IwarpErrorKind.MpaEnhancedDataMissing or IwarpErrorKind.MpaRejectedByPeer
                or IwarpErrorKind.MpaInvalidReply => new(TerminateLayer.Llp, 0, 0x04),
            IwarpErrorKind.MpaInsufficientIrd => new(TerminateLayer.Llp, 0, 0x06),
            IwarpErrorKind.MpaNoMatchingRtr => new(TerminateLayer.Llp, 0, 0x07),
            IwarpErrorKind.UlpduTooShort => new(TerminateLayer.Ddp, 0, 0x00),
            IwarpErrorKind.InvalidDdpVersion => taggedHeader ? new(TerminateLayer.Ddp, 1, 0x04) : new(TerminateLayer.Ddp, 2, 0x06),
            IwarpErrorKind.InvalidQueueNumber => new(TerminateLayer.Ddp, 2, 0x01),
            IwarpErrorKind.InvalidMessageOffset => new(TerminateLayer.Ddp, 2, 0x04),
            IwarpErrorKind.InvalidRdmapVersion => new(TerminateLayer.Rdmap, 2, 0x05),
            IwarpErrorKind.UnknownOpcode or IwarpErrorKind.OpcodeBufferModelMismatch or IwarpErrorKind.OpcodeQueueMismatch => new(TerminateLayer.Rdmap, 2, 0x06),
            IwarpErrorKind.MalformedReadRequest or IwarpErrorKind.MalformedTerminate => new(TerminateLayer.Rdmap, 2, 0xFF),
            _ => throw new InvalidOperationException($"No terminate mapping for {error.Kind}"),
        };
    }
}
