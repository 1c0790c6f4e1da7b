using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Xunit;

namespace PinnedDma.Tests.Iwarp;

/// <summary>
/// An iWARP peer written from the RFC texts on a raw TCP socket, independent of the library's codec: MPA frames and
/// FPDUs are built and parsed byte by byte here (RFC 5044 §7.1 frames, §4.1 FPDU layout: ULPDU_Length, ULPDU, pad to
/// 4, 4-byte CRC field, zero when CRC is not negotiated). Every wait is bounded.
/// </summary>
internal sealed class RawIwarpPeer : IDisposable
{
    public static readonly TimeSpan Bound = TimeSpan.FromSeconds(15);
    private const int IpProtoTcp = 6, TcpMaxSeg = 2;

    private readonly byte[] _in = new byte[256 * 1024];
    private int _have;

    public RawIwarpPeer(Socket socket) => Socket = socket;

    public Socket Socket { get; }

    /// <summary>Whether FPDUs carry a CRC32c (otherwise the CRC field is zero and not checked).</summary>
    public bool Crc { get; set; }

    /// <summary>Every FPDU wire length received, in order.</summary>
    public List<int> ReceivedWireLengths { get; } = new();

    private static Socket NewSocket(int mss)
    {
        var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        s.ReceiveTimeout = (int)Bound.TotalMilliseconds;
        s.SendTimeout = (int)Bound.TotalMilliseconds;
        if (mss > 0) SetMss(s, mss);
        return s;
    }

    /// <summary>Sets TCP_MAXSEG (before connect or listen: it bounds the MSS this side announces).</summary>
    public static void SetMss(Socket s, int mss)
    {
        var v = new byte[4];
        BinaryPrimitives.WriteInt32LittleEndian(v, mss);
        s.SetRawSocketOption(IpProtoTcp, TcpMaxSeg, v);
    }

    /// <summary>TCP_MAXSEG of a connected socket: the MSS the kernel segments this connection's sends with.</summary>
    public static int GetMss(Socket s)
    {
        var v = new byte[4];
        s.GetRawSocketOption(IpProtoTcp, TcpMaxSeg, v);
        return BinaryPrimitives.ReadInt32LittleEndian(v);
    }

    /// <summary>Connects to <paramref name="endpoint"/> and sends <paramref name="request"/> (exact MPA Request bytes).</summary>
    public static RawIwarpPeer Connect(IPEndPoint endpoint, byte[] request, int mss = 0)
    {
        var s = NewSocket(mss);
        s.Connect(endpoint);
        var peer = new RawIwarpPeer(s);
        peer.Send(request);
        return peer;
    }

    /// <summary>A listening socket on 127.0.0.1 (port 0), announcing <paramref name="mss"/> when given.</summary>
    public static Socket Listen(int mss = 0)
    {
        var l = NewSocket(mss);
        l.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        l.Listen(4);
        return l;
    }

    /// <summary>Accepts one connection on <paramref name="listener"/> (bounded).</summary>
    public static RawIwarpPeer Accept(Socket listener)
    {
        Assert.True(listener.Poll((int)(Bound.TotalMilliseconds * 1000), SelectMode.SelectRead), "no connection to accept");
        var s = listener.Accept();
        s.NoDelay = true;
        s.ReceiveTimeout = (int)Bound.TotalMilliseconds;
        s.SendTimeout = (int)Bound.TotalMilliseconds;
        return new RawIwarpPeer(s);
    }

    public void Send(ReadOnlySpan<byte> bytes)
    {
        while (!bytes.IsEmpty) bytes = bytes[Socket.Send(bytes)..];
    }

    // ------------------------------------------------------------ MPA frames (RFC 5044 §7.1, RFC 6581 §5)

    public static byte[] Key(bool request) => Encoding.ASCII.GetBytes(request ? "MPA ID Req Frame" : "MPA ID Rep Frame");

    /// <summary>An MPA Request or Reply: key, flags (M C R S), revision, PD_Length, private data.</summary>
    public static byte[] MpaFrame(bool request, byte flags, byte revision, ReadOnlySpan<byte> privateData)
    {
        var f = new byte[20 + privateData.Length];
        Key(request).CopyTo(f, 0);
        f[16] = flags;
        f[17] = revision;
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(18), (ushort)privateData.Length);
        privateData.CopyTo(f.AsSpan(20));
        return f;
    }

    /// <summary>RFC 6581 §5 enhanced setup data: |A|B| IRD |, |C|D| ORD | (A = P2P, B = zero-length Send, C = Write, D = Read).</summary>
    public static byte[] Enhanced(ushort ird, ushort ord, bool p2p, bool send, bool write, bool read)
    {
        var b = new byte[4];
        BinaryPrimitives.WriteUInt16BigEndian(b, (ushort)(ird | (p2p ? 0x8000 : 0) | (send ? 0x4000 : 0)));
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(2), (ushort)(ord | (write ? 0x8000 : 0) | (read ? 0x4000 : 0)));
        return b;
    }

    /// <summary>A received MPA frame, raw.</summary>
    public sealed record RawMpa(byte[] Bytes)
    {
        public byte Flags => Bytes[16];
        public byte Revision => Bytes[17];
        public bool Crc => (Flags & 0x40) != 0;
        public bool Reject => (Flags & 0x20) != 0;
        public bool Enhanced => (Flags & 0x10) != 0;
        public int PdLength => BinaryPrimitives.ReadUInt16BigEndian(Bytes.AsSpan(18));
        public ReadOnlySpan<byte> PrivateData => Bytes.AsSpan(20);
        public ushort Word0 => BinaryPrimitives.ReadUInt16BigEndian(Bytes.AsSpan(20));
        public ushort Word1 => BinaryPrimitives.ReadUInt16BigEndian(Bytes.AsSpan(22));
        public bool P2p => Enhanced && (Word0 & 0x8000) != 0;
        public bool RtrSend => Enhanced && (Word0 & 0x4000) != 0;
        public bool RtrWrite => Enhanced && (Word1 & 0x8000) != 0;
        public bool RtrRead => Enhanced && (Word1 & 0x4000) != 0;
        public int Ird => Word0 & 0x3FFF;
        public int Ord => Word1 & 0x3FFF;
    }

    /// <summary>Reads one MPA frame (header and private data) and checks its key.</summary>
    public RawMpa ReadMpa(bool request)
    {
        byte[] head = ReadExactly(20);
        Assert.True(head.AsSpan(0, 16).SequenceEqual(Key(request)), $"expected the {(request ? "request" : "reply")} key");
        int pd = BinaryPrimitives.ReadUInt16BigEndian(head.AsSpan(18));
        byte[] all = new byte[20 + pd];
        head.CopyTo(all, 0);
        ReadExactly(pd).CopyTo(all, 20);
        return new RawMpa(all);
    }

    // ------------------------------------------------------------ FPDUs (RFC 5044 §4.1)

    /// <summary>An FPDU around <paramref name="ulpdu"/>: ULPDU_Length, ULPDU, pad, CRC field (CRC32c or zero).</summary>
    public static byte[] Fpdu(ReadOnlySpan<byte> ulpdu, bool crc)
    {
        int pad = (4 - ((ulpdu.Length + 2) & 3)) & 3;
        var f = new byte[2 + ulpdu.Length + pad + 4];
        BinaryPrimitives.WriteUInt16BigEndian(f, (ushort)ulpdu.Length);
        ulpdu.CopyTo(f.AsSpan(2));
        if (crc) BinaryPrimitives.WriteUInt32LittleEndian(f.AsSpan(f.Length - 4), IwarpTestUtil.ReferenceCrc32C(f.AsSpan(0, f.Length - 4)));
        return f;
    }

    public void SendFpdu(ReadOnlySpan<byte> ulpdu) => Send(Fpdu(ulpdu, Crc));

    /// <summary>RFC 5041 §4.2 tagged header with RFC 5040 §4.2 control byte: 14 bytes.</summary>
    public static byte[] Tagged(byte opcode, bool last, uint stag, ulong to, ReadOnlySpan<byte> payload)
    {
        var u = new byte[14 + payload.Length];
        u[0] = (byte)(0x80 | (last ? 0x40 : 0) | 0x01);
        u[1] = (byte)(0x40 | opcode);
        BinaryPrimitives.WriteUInt32BigEndian(u.AsSpan(2), stag);
        BinaryPrimitives.WriteUInt64BigEndian(u.AsSpan(6), to);
        payload.CopyTo(u.AsSpan(14));
        return u;
    }

    /// <summary>RFC 5041 §4.3 untagged header: 18 bytes (the RDMAP field at 2 is Invalidate STag or reserved).</summary>
    public static byte[] Untagged(byte opcode, bool last, uint qn, uint msn, uint mo, ReadOnlySpan<byte> payload, uint inv = 0)
    {
        var u = new byte[18 + payload.Length];
        u[0] = (byte)((last ? 0x40 : 0) | 0x01);
        u[1] = (byte)(0x40 | opcode);
        BinaryPrimitives.WriteUInt32BigEndian(u.AsSpan(2), inv);
        BinaryPrimitives.WriteUInt32BigEndian(u.AsSpan(6), qn);
        BinaryPrimitives.WriteUInt32BigEndian(u.AsSpan(10), msn);
        BinaryPrimitives.WriteUInt32BigEndian(u.AsSpan(14), mo);
        payload.CopyTo(u.AsSpan(18));
        return u;
    }

    /// <summary>RFC 5040 §4.4 RDMA Read Request body (28 bytes).</summary>
    public static byte[] ReadRequestBody(uint sinkStag, ulong sinkTo, uint size, uint srcStag, ulong srcTo)
    {
        var b = new byte[28];
        BinaryPrimitives.WriteUInt32BigEndian(b, sinkStag);
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(4), sinkTo);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(12), size);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(16), srcStag);
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(20), srcTo);
        return b;
    }

    /// <summary>One received FPDU, decoded by hand.</summary>
    public sealed record RawFpdu(byte[] Ulpdu, uint CrcField, int WireLength)
    {
        public bool Tagged => (Ulpdu[0] & 0x80) != 0;
        public bool Last => (Ulpdu[0] & 0x40) != 0;
        public int Opcode => Ulpdu[1] & 0x0F;
        public uint STag => BinaryPrimitives.ReadUInt32BigEndian(Ulpdu.AsSpan(2));
        public ulong TaggedOffset => BinaryPrimitives.ReadUInt64BigEndian(Ulpdu.AsSpan(6));
        public uint Qn => BinaryPrimitives.ReadUInt32BigEndian(Ulpdu.AsSpan(6));
        public uint Msn => BinaryPrimitives.ReadUInt32BigEndian(Ulpdu.AsSpan(10));
        public uint Mo => BinaryPrimitives.ReadUInt32BigEndian(Ulpdu.AsSpan(14));
        public ReadOnlySpan<byte> Payload => Ulpdu.AsSpan(Tagged ? 14 : 18);

        /// <summary>Terminate body (RFC 5040 §4.8): Layer, EType, Code, then the M/D/R bits.</summary>
        public (int Layer, int EType, int Code, bool M, bool D, bool R) TerminateControl
        {
            get
            {
                var p = Payload;
                return (p[0] >> 4, p[0] & 0x0F, p[1], (p[2] & 0x80) != 0, (p[2] & 0x40) != 0, (p[2] & 0x20) != 0);
            }
        }

        /// <summary>Terminate's DDP Segment Length field (RFC 5040 §4.8), present when D is set.</summary>
        public int TerminateSegmentLength => BinaryPrimitives.ReadUInt16BigEndian(Payload.Slice(4));
    }

    /// <summary>
    /// Reads the next FPDU; null when the stream ends cleanly at an FPDU boundary. Checks the CRC field: the CRC32c
    /// when <see cref="Crc"/>, zero otherwise (RFC 5044 §4.4 asks a sender without CRC for zeros).
    /// </summary>
    public RawFpdu? ReceiveFpdu()
    {
        if (!Fill(2, allowEnd: true)) return null;
        int ulpdu = BinaryPrimitives.ReadUInt16BigEndian(_in);
        int pad = (4 - ((ulpdu + 2) & 3)) & 3;
        int total = 2 + ulpdu + pad + 4;
        Assert.True(Fill(total, allowEnd: false));
        uint field = BinaryPrimitives.ReadUInt32LittleEndian(_in.AsSpan(total - 4));
        if (Crc) Assert.Equal(IwarpTestUtil.ReferenceCrc32C(_in.AsSpan(0, total - 4)), field);
        else Assert.Equal(0u, field);
        Assert.True(_in.AsSpan(2 + ulpdu, pad).IndexOfAnyExcept((byte)0) < 0, "pad bytes are not zero");
        var f = new RawFpdu(_in.AsSpan(2, ulpdu).ToArray(), field, total);
        Buffer.BlockCopy(_in, total, _in, 0, _have - total);
        _have -= total;
        ReceivedWireLengths.Add(total);
        return f;
    }

    /// <summary>Reads FPDUs until one with <paramref name="opcode"/> arrives (others are kept in <paramref name="skipped"/>).</summary>
    public RawFpdu ReceiveUntil(int opcode, List<RawFpdu>? skipped = null)
    {
        var sw = Stopwatch.StartNew();
        while (sw.Elapsed < Bound)
        {
            var f = ReceiveFpdu();
            Assert.True(f is not null, $"the stream ended before an FPDU with opcode {opcode}");
            if (f!.Opcode == opcode) return f;
            skipped?.Add(f);
        }
        Assert.Fail($"no FPDU with opcode {opcode} within {Bound}");
        throw new TimeoutException();
    }

    /// <summary>Requires the stream to end (after any FPDUs still in flight, which are returned).</summary>
    public List<RawFpdu> ReadToEnd()
    {
        var all = new List<RawFpdu>();
        var sw = Stopwatch.StartNew();
        while (sw.Elapsed < Bound)
        {
            var f = ReceiveFpdu();
            if (f is null) return all;
            all.Add(f);
        }
        Assert.Fail($"the stream did not end within {Bound}");
        throw new TimeoutException();
    }

    /// <summary>True when no byte arrives for <paramref name="quiet"/> (nothing is consumed).</summary>
    public bool NothingArrives(TimeSpan quiet) => _have == 0 && !Socket.Poll((int)(quiet.TotalMilliseconds * 1000), SelectMode.SelectRead);

    public byte[] ReadExactly(int n)
    {
        Assert.True(Fill(n, allowEnd: false));
        var b = _in.AsSpan(0, n).ToArray();
        Buffer.BlockCopy(_in, n, _in, 0, _have - n);
        _have -= n;
        return b;
    }

    private bool Fill(int n, bool allowEnd)
    {
        var sw = Stopwatch.StartNew();
        while (_have < n)
        {
            Assert.True(sw.Elapsed < Bound, $"waited over {Bound} for {n} bytes ({_have} held)");
            int got = Socket.Receive(_in, _have, _in.Length - _have, SocketFlags.None);
            if (got == 0)
            {
                Assert.True(allowEnd && _have == 0, $"the stream ended with {_have} of {n} bytes");
                return false;
            }
            _have += got;
        }
        return true;
    }

    public void Dispose() => Socket.Dispose();
}
