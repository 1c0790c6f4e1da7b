using System.Buffers;
using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using FsCheck.Xunit;
using PinnedDma.Storage;
using PinnedDma.Transports.Iwarp;
using PinnedDma.Transports.Iwarp.Internal;
using PinnedDma.Verbs;
using Xunit;

namespace PinnedDma.Tests.Iwarp;

/// <summary>
/// A hostile peer on a raw TCP socket gets connected to a real queue pair through the real listener (it speaks just
/// enough MPA), then sends generated malformed, truncated, oversized and out-of-order frames. The real side must
/// answer each with a Terminate carrying the RFC 5040/5041/5044 layer, type and code, close the connection, move the
/// queue pair to Error, complete every posted receive, and change no byte outside a region that allowed it.
/// </summary>
public sealed class IwarpHostilePeerTests : IDisposable
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(15);
    private const int RecvLength = 1024;
    private const int DataFileLength = 128 * 1024;
    private const long RwOffset = 16 * 1024, RwLength = 32 * 1024;
    private const long ForeignOffset = 64 * 1024, ForeignLength = 16 * 1024;

    private readonly Volume _vol = Volume.CreateInMemory(new VolumeOptions { BlockCount = 1024 });
    private readonly RdmaDevice _dev = new("hostile");
    private readonly PinOwner _owner;
    private readonly ProtectionDomain _pd, _otherPd;
    private readonly MemoryRegion _rw, _ro, _foreign, _bystander, _recv;
    private readonly IwarpListener _listener;
    private readonly int _receiveLimit = FpduOptions.MaxUlpduForFpduSize(FpduOptions.DefaultMaxFpduSize);

    public IwarpHostilePeerTests()
    {
        _owner = new PinOwner(_vol, 16 << 20);
        var data = _vol.CreateFile("data");
        data.Write(0, Pattern(DataFileLength, 31));
        var ro = _vol.CreateFile("ro");
        ro.Write(0, Pattern(16 * 1024, 17));
        _pd = _dev.AllocatePd();
        _otherPd = _dev.AllocatePd();
        _rw = _pd.RegisterFile(_owner, data, RwOffset, RwLength, AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteRead);
        _ro = _pd.RegisterFile(_owner, ro, 0, 16 * 1024, AccessFlags.RemoteRead);
        _foreign = _otherPd.RegisterFile(_owner, data, ForeignOffset, ForeignLength, AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteRead);
        _bystander = _pd.RegisterBuffer(4096, AccessFlags.LocalWrite);
        Pattern(4096, 5).CopyTo(_bystander.GetBufferSpan());
        _recv = _pd.RegisterBuffer(4 * 1024, AccessFlags.LocalWrite);
        _listener = new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0));
    }

    public void Dispose()
    {
        _listener.Dispose();
        foreach (var mr in new[] { _rw, _ro, _foreign, _bystander, _recv }) mr.Dispose();
        _owner.Dispose();
        _dev.Dispose();
        _vol.Dispose();
    }

    private static byte[] Pattern(int length, int seed)
    {
        var b = new byte[length];
        for (int i = 0; i < b.Length; i++) b[i] = (byte)(i * seed + (i >> 8) + seed);
        return b;
    }

    private static bool WaitBounded(Task t) => t.Wait(Bound);

    private static int Pick(int value, int n) => (int)((uint)value % (uint)n);

    // ------------------------------------------------------------ wire building

    /// <summary>An FPDU around raw ULPDU bytes: ULPDU_Length, pad, CRC32c.</summary>
    private static byte[] Frame(ReadOnlySpan<byte> ulpdu)
    {
        int pad = Fpdu.PadLength(ulpdu.Length);
        var f = new byte[2 + ulpdu.Length + pad + 4];
        BinaryPrimitives.WriteUInt16BigEndian(f, (ushort)ulpdu.Length);
        ulpdu.CopyTo(f.AsSpan(2));
        BinaryPrimitives.WriteUInt32LittleEndian(f.AsSpan(f.Length - 4), IwarpTestUtil.ReferenceCrc32C(f.AsSpan(0, f.Length - 4)));
        return f;
    }

    private static byte[] Ulpdu(in DdpRdmapHeader h, ReadOnlySpan<byte> payload)
    {
        var u = new byte[h.Length + payload.Length];
        h.WriteTo(u);
        payload.CopyTo(u.AsSpan(h.Length));
        return u;
    }

    private static byte[] Frame(in DdpRdmapHeader h, ReadOnlySpan<byte> payload) => Frame(Ulpdu(h, payload));

    private static byte[] ReadRequestBody(in RdmaReadRequest rr)
    {
        var b = new byte[RdmaReadRequest.Size];
        rr.WriteTo(b);
        return b;
    }

    private static DdpRdmapHeader Write(uint stag, ulong to, bool last = true) => DdpRdmapHeader.ForTagged(RdmapOpcode.RdmaWrite, stag, to, last);

    private static DdpRdmapHeader SendHeader(uint msn, uint mo, bool last, RdmapOpcode op = RdmapOpcode.Send, uint inv = 0) =>
        DdpRdmapHeader.ForUntagged(op, DdpQueue.Send, msn, mo, last, inv);

    private static DdpRdmapHeader ReadHeader(uint msn) => DdpRdmapHeader.ForUntagged(RdmapOpcode.RdmaReadRequest, DdpQueue.RdmaReadRequest, msn, 0, true);

    private uint BogusStag(uint seed)
    {
        uint stag = seed | 0x0100_0000u; // an index far past any slot this device has handed out
        Assert.Null(_dev.Keys.Lookup(stag));
        return stag;
    }

    // ------------------------------------------------------------ one hostile session

    private sealed class Session : IDisposable
    {
        private readonly byte[] _in = new byte[256 * 1024];
        private int _have;

        public Session(Socket socket, QueuePair qp, CompletionQueue cq)
        {
            Socket = socket;
            Qp = qp;
            Cq = cq;
        }

        public Socket Socket { get; }
        public QueuePair Qp { get; }
        public CompletionQueue Cq { get; }
        public List<(DdpRdmapHeader Header, byte[] Payload)> Received { get; } = new();

        public void Send(byte[] bytes)
        {
            int sent = 0;
            while (sent < bytes.Length) sent += Socket.Send(bytes, sent, bytes.Length - sent, SocketFlags.None);
        }

        /// <summary>Reads FPDUs until a Terminate, then requires the stream to end (read returns 0). Bounded in time.</summary>
        public TerminateMessage ReadTerminateThenEof()
        {
            var dec = new FpduDecoder(new FpduOptions { Crc = true, MaxUlpduLength = ushort.MaxValue });
            var sw = Stopwatch.StartNew();
            TerminateMessage? term = null;
            while (sw.Elapsed < Bound)
            {
                var seq = new ReadOnlySequence<byte>(_in, 0, _have);
                var status = dec.TryParse(ref seq, out Fpdu f, out IwarpError e);
                Assert.True(status != ParseStatus.Error, $"the real side sent an undecodable frame: {e}");
                if (status == ParseStatus.Frame)
                {
                    Assert.True(term is null, $"frame {f.Header} after the Terminate");
                    if (f.Header.Opcode == RdmapOpcode.Terminate) term = f.Terminate;
                    else Received.Add((f.Header, f.Payload.ToArray()));
                    int used = _have - (int)seq.Length;
                    Buffer.BlockCopy(_in, used, _in, 0, _have - used);
                    _have -= used;
                    continue;
                }
                int n;
                try
                {
                    n = Socket.Receive(_in, _have, _in.Length - _have, SocketFlags.None);
                }
                catch (SocketException se)
                {
                    Assert.Fail($"receive failed ({se.SocketErrorCode}) after {sw.Elapsed}; Terminate seen: {term?.Code.ToString() ?? "none"}");
                    throw;
                }
                if (n == 0)
                {
                    Assert.True(_have == 0, $"{_have} stray bytes before the end of stream");
                    Assert.True(term is not null, "the real side closed the connection without a Terminate");
                    return term!.Value;
                }
                _have += n;
            }
            Assert.Fail($"no Terminate and end of stream within {Bound}");
            throw new TimeoutException();
        }

        public void Dispose()
        {
            Socket.Dispose();
            Qp.Dispose();
        }
    }

    private Session Connect(bool postRecv)
    {
        var cq = _dev.CreateCompletionQueue(64);
        var qp = _pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = cq });
        qp.Modify(new QpAttributes { State = QpState.Init, AccessFlags = AccessFlags.RemoteRead | AccessFlags.RemoteWrite });
        if (postRecv) qp.PostRecv(new RecvWorkRequest(77, new(_recv.Address, RecvLength, _recv.LKey)));
        using var cts = new CancellationTokenSource(Bound);
        var accept = Task.Run(async () => (await _listener.AcceptAsync(cts.Token)).Accept(qp));
        var (s, frame) = IwarpTestUtil.ConnectRawMpa(_listener.LocalEndPoint, wantCrc: true, Bound);
        var session = new Session(s, qp, cq);
        Assert.True(accept.Wait(Bound), "the listener did not accept the raw peer");
        Assert.False(frame.Reject);
        Assert.True(frame.Crc);
        Assert.Equal(QpState.Rts, qp.State);
        return session;
    }

    // ------------------------------------------------------------ memory checks

    private sealed record Snapshot(byte[] Device, byte[] Bystander, byte[] Recv);

    private Snapshot Take() => new(
        _vol.Device.GetSpan(0, (int)_vol.Device.Length).ToArray(),
        _bystander.GetBufferSpan().ToArray(),
        _recv.GetBufferSpan().ToArray());

    /// <summary>Applies <paramref name="data"/> at region offset <paramref name="offset"/> of a file region to a device image.</summary>
    private static void ApplyToImage(byte[] image, MemoryRegion mr, long offset, ReadOnlySpan<byte> data)
    {
        long done = 0;
        while (done < data.Length)
        {
            var (dev, contiguous) = mr.Pin!.Translate(offset + done);
            int n = (int)Math.Min(contiguous, data.Length - done);
            data.Slice((int)done, n).CopyTo(image.AsSpan((int)dev, n));
            done += n;
        }
    }

    private void AssertOnlyAllowedChanges(Snapshot expected, int recvMayChange)
    {
        var now = Take();
        int diff = FirstDifference(expected.Device, now.Device);
        Assert.True(diff < 0, $"device byte {diff} changed (0x{(diff < 0 ? 0 : expected.Device[diff]):X2} -> 0x{(diff < 0 ? 0 : now.Device[diff]):X2}) outside what the peer may write");
        Assert.True(FirstDifference(expected.Bystander, now.Bystander) < 0, "a region without remote access changed");
        Assert.True(FirstDifference(expected.Recv.AsSpan(recvMayChange), now.Recv.AsSpan(recvMayChange)) < 0, "receive buffer changed outside the posted receive");
    }

    private static int FirstDifference(ReadOnlySpan<byte> a, ReadOnlySpan<byte> b)
    {
        int n = a.CommonPrefixLength(b);
        return n == a.Length && a.Length == b.Length ? -1 : n;
    }

    private void AssertEnded(Session s, TerminateCode expected, TerminateMessage term, bool recvPosted)
    {
        var conn = s.Qp.Connection;
        Assert.NotNull(conn);
        Assert.True(conn!.Completion.Wait(Bound), "the receive loop did not end");
        Assert.True(expected == term.Code, $"Terminate {term.Code}, expected {expected} (close reason: {conn.CloseReason})");
        Assert.Equal(expected, conn.LastTerminateSent);
        Assert.NotNull(conn.CloseReason);
        Assert.Equal(QpState.Error, s.Qp.State);
        // Every posted receive completes (successfully, with an error or flushed) exactly once.
        var wcs = new WorkCompletion[64];
        int n = s.Cq.Poll(wcs);
        int recvCompletions = wcs.Take(n).Count(w => w.WrId == 77 && w.Opcode == WcOpcode.Recv);
        Assert.True(recvCompletions == (recvPosted ? 1 : 0), $"posted receive completed {recvCompletions} times: {string.Join(", ", wcs.Take(n))}");
        Assert.All(wcs.Take(n), w => Assert.NotEqual(WcStatus.Success, w.Status));
    }

    // ------------------------------------------------------------ the generated attacks

    private enum Attack
    {
        BadCrc, DdpVersion, RdmapVersion, UnknownOpcode, BadQueueNumber, OpcodeModelOrQueueMismatch, Oversized, Truncated,
        UlpduTooShort, WriteBadStag, WriteOutOfBounds, WriteForeignPd, WriteWithoutRemoteWrite, ReadBadSource, ReadWrongMsn,
        ReadMalformedBody, SendNoReceive, SendTooLong, SendWrongMsn, SendWrongMo, SendInvalidateForeign, UnsolicitedReadResponse,
    }

    private sealed record Plan(List<byte[]> Frames, TerminateCode Expected, bool PostRecv, bool HalfClose, DdpRdmapHeader? Offending, int RecvMayChange);

    private Plan Build(Attack attack, int a, int b, uint u, ulong l, byte[] data)
    {
        var frames = new List<byte[]>();
        bool postRecv = true, halfClose = false;
        DdpRdmapHeader? offending = null;
        int recvMayChange = 0;
        TerminateCode expected;
        byte[] payload = data.Length == 0 ? new byte[] { 0x5A } : data.Length > 1500 ? data[..1500] : data;
        uint inRw = (uint)Pick(a, (int)RwLength - payload.Length + 1);
        switch (attack)
        {
            case Attack.BadCrc:
                {
                    var f = Frame(Write(_rw.RKey, _rw.Address + inRw), payload);
                    int at = 2 + Pick(b, f.Length - 2);
                    f[at] ^= (byte)(1 << Pick(a >> 8, 8));
                    frames.Add(f);
                    expected = TerminateCode.Mpa(MpaErrorCode.CrcMismatch);
                    break;
                }
            case Attack.DdpVersion:
                {
                    bool tagged = (b & 1) != 0;
                    var u0 = tagged ? Ulpdu(Write(_rw.RKey, _rw.Address + inRw), payload) : Ulpdu(SendHeader(1, 0, true), payload[..Math.Min(payload.Length, RecvLength)]);
                    int dv = new[] { 0, 2, 3 }[Pick(a, 3)];
                    u0[0] = (byte)((u0[0] & ~3) | dv);
                    frames.Add(Frame(u0));
                    expected = tagged ? TerminateCode.Ddp(DdpErrorType.TaggedBuffer, DdpErrorCode.TaggedInvalidDdpVersion)
                                      : TerminateCode.Ddp(DdpErrorType.UntaggedBuffer, DdpErrorCode.UntaggedInvalidDdpVersion);
                    break;
                }
            case Attack.RdmapVersion:
                {
                    var u0 = (b & 1) != 0 ? Ulpdu(Write(_rw.RKey, _rw.Address + inRw), payload) : Ulpdu(ReadHeader(1), ReadRequestBody(new(1, 0, 8, _rw.RKey, _rw.Address)));
                    int rv = new[] { 0, 2, 3 }[Pick(a, 3)];
                    u0[1] = (byte)((u0[1] & 0x3F) | (rv << 6));
                    frames.Add(Frame(u0));
                    expected = TerminateCode.Rdmap(RdmapErrorType.RemoteOperation, RdmapErrorCode.InvalidRdmapVersion);
                    break;
                }
            case Attack.UnknownOpcode:
                {
                    var u0 = (b & 1) != 0 ? Ulpdu(Write(_rw.RKey, _rw.Address + inRw), payload) : Ulpdu(SendHeader(1, 0, true), payload[..Math.Min(payload.Length, RecvLength)]);
                    u0[1] = (byte)((u0[1] & 0xF0) | (8 + Pick(a, 8)));
                    frames.Add(Frame(u0));
                    expected = TerminateCode.Rdmap(RdmapErrorType.RemoteOperation, RdmapErrorCode.UnexpectedOpcode);
                    break;
                }
            case Attack.BadQueueNumber:
                {
                    uint qn = Math.Max(u, 3u);
                    var h = DdpRdmapHeader.ForUntagged(RdmapOpcode.Send, qn, 1, 0, true);
                    frames.Add(Frame(h, payload[..Math.Min(payload.Length, RecvLength)]));
                    expected = TerminateCode.Ddp(DdpErrorType.UntaggedBuffer, DdpErrorCode.UntaggedInvalidQn);
                    break;
                }
            case Attack.OpcodeModelOrQueueMismatch:
                {
                    switch (Pick(b, 4))
                    {
                        case 0: frames.Add(Frame(DdpRdmapHeader.ForUntagged(RdmapOpcode.Send, 1 + (uint)Pick(a, 2), 1, 0, true), payload)); break;
                        case 1: frames.Add(Frame(DdpRdmapHeader.ForUntagged(RdmapOpcode.RdmaReadRequest, DdpQueue.Send, 1, 0, true), ReadRequestBody(new(1, 0, 8, _rw.RKey, _rw.Address)))); break;
                        case 2:
                            {
                                // A Send opcode under the tagged buffer model.
                                var u0 = Ulpdu(Write(_rw.RKey, _rw.Address + inRw), payload);
                                u0[1] = DdpRdmapHeader.MakeRdmapControl(RdmapOpcode.Send);
                                frames.Add(Frame(u0));
                                break;
                            }
                        default:
                            {
                                // An RDMA Write opcode under the untagged buffer model.
                                var u0 = Ulpdu(SendHeader(1, 0, true), payload);
                                u0[1] = DdpRdmapHeader.MakeRdmapControl(RdmapOpcode.RdmaWrite);
                                frames.Add(Frame(u0));
                                break;
                            }
                    }
                    expected = TerminateCode.Rdmap(RdmapErrorType.RemoteOperation, RdmapErrorCode.UnexpectedOpcode);
                    break;
                }
            case Attack.Oversized:
                {
                    // Any ULPDU_Length up to 65535 is valid (the sender picks its MULPDU, RFC 5044 §5.1): a length
                    // past our own FPDU size is waited for, and a stream that ends inside it is a lost connection.
                    int len = _receiveLimit + 1 + Pick(a, ushort.MaxValue - _receiveLimit);
                    var f = new byte[2 + Math.Min(payload.Length, 64)];
                    BinaryPrimitives.WriteUInt16BigEndian(f, (ushort)len);
                    payload.AsSpan(0, f.Length - 2).CopyTo(f.AsSpan(2));
                    frames.Add(f);
                    halfClose = true;
                    expected = TerminateCode.Mpa(MpaErrorCode.TcpConnectionLost);
                    break;
                }
            case Attack.Truncated:
                {
                    var f = Frame(Write(_rw.RKey, _rw.Address + inRw), payload);
                    frames.Add(f[..(1 + Pick(b, f.Length - 1))]);
                    halfClose = true;
                    expected = TerminateCode.Mpa(MpaErrorCode.TcpConnectionLost);
                    break;
                }
            case Attack.UlpduTooShort:
                {
                    // A DDP segment shorter than its own header (tagged: 14, untagged: 18 bytes), with a valid CRC.
                    var u0 = (b & 1) != 0 ? Ulpdu(Write(_rw.RKey, _rw.Address + inRw), default) : Ulpdu(SendHeader(1, 0, true), default);
                    frames.Add(Frame(u0.AsSpan(0, Pick(a, u0.Length))));
                    expected = TerminateCode.Ddp(DdpErrorType.LocalCatastrophic, DdpErrorCode.Catastrophic);
                    break;
                }
            case Attack.WriteBadStag:
                {
                    var h = Write(BogusStag(u), l);
                    frames.Add(Frame(h, payload));
                    offending = h;
                    expected = TerminateCode.Ddp(DdpErrorType.TaggedBuffer, DdpErrorCode.TaggedInvalidStag);
                    break;
                }
            case Attack.WriteOutOfBounds:
                {
                    ulong to = Pick(b, 3) switch
                    {
                        0 => _rw.Address - 1 - (ulong)Pick(a, (int)_rw.Address),                                // starts before the region
                        1 => _rw.Address + (ulong)RwLength - (ulong)payload.Length + 1 + (ulong)Pick(a, 1 << 20), // runs past its end
                        _ => ulong.MaxValue - (ulong)Pick(a, payload.Length),                                     // wraps around
                    };
                    var h = Write(_rw.RKey, to);
                    frames.Add(Frame(h, payload));
                    offending = h;
                    expected = TerminateCode.Ddp(DdpErrorType.TaggedBuffer, DdpErrorCode.TaggedBaseOrBounds);
                    break;
                }
            case Attack.WriteForeignPd:
                {
                    var h = Write(_foreign.RKey, _foreign.Address + (ulong)Pick(a, (int)ForeignLength - payload.Length + 1));
                    frames.Add(Frame(h, payload));
                    offending = h;
                    expected = TerminateCode.Ddp(DdpErrorType.TaggedBuffer, DdpErrorCode.TaggedStagNotAssociated);
                    break;
                }
            case Attack.WriteWithoutRemoteWrite:
                {
                    var target = (b & 1) != 0 ? _ro : _bystander;
                    var h = Write(target.RKey, target.Address + (ulong)Pick(a, (int)target.Length - payload.Length + 1));
                    frames.Add(Frame(h, payload));
                    offending = h;
                    expected = TerminateCode.Rdmap(RdmapErrorType.RemoteProtection, RdmapErrorCode.AccessRightsViolation);
                    break;
                }
            case Attack.ReadBadSource:
                {
                    uint size = 1 + (uint)Pick(a, 4096);
                    (uint stag, ulong to, byte code) = Pick(b, 4) switch
                    {
                        0 => (BogusStag(u), l, RdmapErrorCode.InvalidStag),
                        1 => (_foreign.RKey, _foreign.Address, RdmapErrorCode.StagNotAssociated),
                        2 => (_bystander.RKey, _bystander.Address, RdmapErrorCode.AccessRightsViolation),
                        _ => (_rw.RKey, _rw.Address + (ulong)RwLength - size + 1 + (ulong)Pick((int)u, 1 << 20), RdmapErrorCode.BaseOrBoundsViolation),
                    };
                    var h = ReadHeader(1);
                    frames.Add(Frame(h, ReadRequestBody(new(u, l, size, stag, to))));
                    offending = h;
                    expected = TerminateCode.Rdmap(RdmapErrorType.RemoteProtection, code);
                    break;
                }
            case Attack.ReadWrongMsn:
                {
                    var h = ReadHeader(u == 1 ? 2 : u);
                    frames.Add(Frame(h, ReadRequestBody(new(1, 0, 8, _rw.RKey, _rw.Address))));
                    offending = h;
                    expected = TerminateCode.Ddp(DdpErrorType.UntaggedBuffer, DdpErrorCode.UntaggedInvalidMsnRange);
                    break;
                }
            case Attack.ReadMalformedBody:
                {
                    int len = Pick(a, 57);
                    if (len == RdmaReadRequest.Size) len++;
                    var body = new byte[len];
                    payload.AsSpan(0, Math.Min(len, payload.Length)).CopyTo(body);
                    frames.Add(Frame(ReadHeader(1), body));
                    expected = TerminateCode.Rdmap(RdmapErrorType.RemoteOperation, RdmapErrorCode.Unspecified);
                    break;
                }
            case Attack.SendNoReceive:
                {
                    postRecv = false;
                    var h = SendHeader(1, 0, (b & 1) != 0);
                    frames.Add(Frame(h, payload[..Math.Min(payload.Length, RecvLength)]));
                    offending = h;
                    expected = TerminateCode.Ddp(DdpErrorType.UntaggedBuffer, DdpErrorCode.UntaggedInvalidMsnNoBuffer);
                    break;
                }
            case Attack.SendTooLong:
                {
                    var big = Pattern(RecvLength + 1 + Pick(a, 3000), 3 + Pick(b, 50));
                    if ((b & 1) != 0)
                    {
                        var h = SendHeader(1, 0, true);
                        frames.Add(Frame(h, big));
                        offending = h;
                    }
                    else
                    {
                        int first = 1 + Pick(u == 0 ? a : (int)u, RecvLength);
                        frames.Add(Frame(SendHeader(1, 0, false), big.AsSpan(0, first)));
                        var h = SendHeader(1, (uint)first, true);
                        frames.Add(Frame(h, big.AsSpan(first)));
                        offending = h;
                        recvMayChange = RecvLength;
                    }
                    expected = TerminateCode.Ddp(DdpErrorType.UntaggedBuffer, DdpErrorCode.UntaggedMessageTooLong);
                    break;
                }
            case Attack.SendWrongMsn:
                {
                    var h = SendHeader(u == 1 ? 0 : u, 0, true);
                    frames.Add(Frame(h, payload[..Math.Min(payload.Length, RecvLength)]));
                    offending = h;
                    expected = TerminateCode.Ddp(DdpErrorType.UntaggedBuffer, DdpErrorCode.UntaggedInvalidMsnRange);
                    break;
                }
            case Attack.SendWrongMo:
                {
                    var part = payload[..Math.Min(payload.Length, RecvLength / 2)];
                    DdpRdmapHeader h;
                    if ((b & 1) != 0)
                    {
                        h = SendHeader(1, Math.Max(u, 1u), true); // a middle segment of a message that never started
                    }
                    else
                    {
                        frames.Add(Frame(SendHeader(1, 0, false), part));
                        uint mo = (uint)part.Length + 1 + (uint)Pick(a, 1 << 16);
                        h = SendHeader(1, (b & 2) != 0 ? mo : 0, true); // a gap, or a restart at offset 0
                        recvMayChange = RecvLength;
                    }
                    frames.Add(Frame(h, part));
                    offending = h;
                    expected = TerminateCode.Ddp(DdpErrorType.UntaggedBuffer, DdpErrorCode.UntaggedInvalidMo);
                    break;
                }
            case Attack.SendInvalidateForeign:
                {
                    uint victim = (b & 1) != 0 ? _foreign.RKey : BogusStag(u);
                    var h = SendHeader(1, 0, true, RdmapOpcode.SendWithInvalidate, victim);
                    frames.Add(Frame(h, payload[..Math.Min(payload.Length, RecvLength)]));
                    offending = h;
                    recvMayChange = RecvLength;
                    expected = TerminateCode.Rdmap(RdmapErrorType.RemoteOperation, RdmapErrorCode.StagCannotBeInvalidated);
                    break;
                }
            case Attack.UnsolicitedReadResponse:
                {
                    var h = DdpRdmapHeader.ForTagged(RdmapOpcode.RdmaReadResponse, (b & 1) != 0 ? _rw.RKey : u, (b & 1) != 0 ? _rw.Address + inRw : l, true);
                    frames.Add(Frame(h, payload));
                    offending = h;
                    expected = TerminateCode.Ddp(DdpErrorType.TaggedBuffer, DdpErrorCode.TaggedBaseOrBounds);
                    break;
                }
            default:
                throw new ArgumentOutOfRangeException(nameof(attack));
        }
        return new Plan(frames, expected, postRecv, halfClose, offending, recvMayChange);
    }

    [Trait("Category", "Slow")]
    [Property(MaxTest = 150)]
    public void Malformed_frames_get_the_rfc_terminate_and_touch_nothing_outside_the_region(
        int kind, int a, int b, uint u, ulong l, byte[]? data, bool validWriteFirst, int writeAt, byte[]? writeData)
    {
        var attack = (Attack)Pick(kind, Enum.GetValues<Attack>().Length);
        var plan = Build(attack, a, b, u, l, data ?? Array.Empty<byte>());
        var expected = Take();
        using var s = Connect(plan.PostRecv);
        if (validWriteFirst)
        {
            // A valid RDMA Write inside the region, immediately before the attack: it must land.
            byte[] good = writeData is { Length: > 0 } ? writeData[..Math.Min(writeData.Length, 2048)] : new byte[] { 0xA5 };
            long off = Pick(writeAt, (int)RwLength - good.Length + 1);
            s.Send(Frame(Write(_rw.RKey, _rw.Address + (ulong)off), good));
            ApplyToImage(expected.Device, _rw, off, good);
        }
        foreach (var f in plan.Frames) s.Send(f);
        if (plan.HalfClose) s.Socket.Shutdown(SocketShutdown.Send);
        var term = s.ReadTerminateThenEof();
        Assert.Empty(s.Received);
        AssertEnded(s, plan.Expected, term, plan.PostRecv);
        if (plan.Offending is { } h)
        {
            Assert.True(term.TerminatedDdpHeader.HasValue, $"{attack}: Terminate without the offending DDP header");
            Assert.Equal(h, term.TerminatedDdpHeader!.Value);
        }
        AssertOnlyAllowedChanges(expected, plan.RecvMayChange);
    }

    public static TheoryData<int> EveryAttack()
    {
        var d = new TheoryData<int>();
        foreach (var a in Enum.GetValues<Attack>()) d.Add((int)a);
        return d;
    }

    [Theory]
    [MemberData(nameof(EveryAttack))]
    public void Every_attack_kind_is_answered(int kind)
    {
        // Deterministic coverage of each kind (both variants of the b bit), on top of the generated mix.
        for (int b = 0; b < 4; b++)
            Malformed_frames_get_the_rfc_terminate_and_touch_nothing_outside_the_region(kind, 12345 + b, b, 9u + (uint)b, 0x1234_5678_9ABCul, Pattern(40 + b * 300, 3), (b & 1) != 0, 777, Pattern(64, 9));
    }

    [Fact]
    public void A_raw_peer_that_speaks_the_protocol_writes_reads_and_sends()
    {
        // Proves the hostile harness really reaches placement: valid traffic lands, and a Terminate then a close work.
        var expected = Take();
        using var s = Connect(postRecv: true);
        var w = Pattern(3000, 11);
        s.Send(Frame(Write(_rw.RKey, _rw.Address + 100), w));
        ApplyToImage(expected.Device, _rw, 100, w);
        s.Send(Frame(ReadHeader(1), ReadRequestBody(new(0x1234, 0x40, 3000, _rw.RKey, _rw.Address + 100))));
        var msg = Pattern(700, 13);
        s.Send(Frame(SendHeader(1, 0, false), msg.AsSpan(0, 300)));
        s.Send(Frame(SendHeader(1, 300, true), msg.AsSpan(300)));
        // Then an RDMA Write with a bad STag ends it.
        var bad = Write(BogusStag(7), 0);
        s.Send(Frame(bad, msg));
        var term = s.ReadTerminateThenEof();
        var resp = s.Received.Where(r => r.Header.Opcode == RdmapOpcode.RdmaReadResponse).ToList();
        Assert.NotEmpty(resp);
        Assert.Equal(w, resp.SelectMany(r => r.Payload).ToArray());
        Assert.Equal(0x1234u, resp[0].Header.STag);
        Assert.Equal(0x40ul, resp[0].Header.TaggedOffset);
        Assert.True(resp[^1].Header.Last);
        Assert.Equal(TerminateCode.Ddp(DdpErrorType.TaggedBuffer, DdpErrorCode.TaggedInvalidStag), term.Code);
        Assert.True(WaitBounded(s.Qp.Connection!.Completion), "the receive loop did not end");
        var wcs = new WorkCompletion[8];
        int n = s.Cq.Poll(wcs);
        Assert.True(n == 1, $"expected one receive completion, got {n}");
        Assert.Equal(WcStatus.Success, wcs[0].Status);
        Assert.Equal(700u, wcs[0].ByteLength);
        Assert.True(_recv.GetBufferSpan()[..700].SequenceEqual(msg));
        Assert.Equal(QpState.Error, s.Qp.State);
        AssertOnlyAllowedChanges(expected, 700);
        var file = new byte[3000];
        Assert.Equal(3000, _vol.OpenFile("data").Read(RwOffset + 100, file));
        Assert.Equal(w, file);
    }

    // ------------------------------------------------------------ a hostile responder behind a real requester

    [Trait("Category", "Slow")]
    [Property(MaxTest = 40)]
    public void Bad_read_responses_to_a_real_requester_are_terminated_and_stay_in_the_sink(int kind, int a, uint u, byte[]? data) =>
        BadReadResponse(kind, a, u, data ?? Array.Empty<byte>());

    private void BadReadResponse(int kind, int a, uint u, byte[] data)
    {
        using var raw = new TcpListener(IPAddress.Loopback, 0);
        raw.Start();
        var cq = _dev.CreateCompletionQueue(16);
        using var qp = _pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = cq });
        using var cts = new CancellationTokenSource(Bound);
        var connect = IwarpConnector.ConnectAsync(qp, (IPEndPoint)raw.LocalEndpoint, cancellationToken: cts.Token);
        using var peer = raw.AcceptSocket();
        peer.ReceiveTimeout = (int)Bound.TotalMilliseconds;
        var request = IwarpTestUtil.ReadMpaFrame(peer, MpaFrameKind.Request);
        var decision = MpaNegotiation.Respond(request, new MpaLocalSettings { Revision = 1, WantCrc = true });
        peer.Send(decision.Reply.ToArray());
        Assert.True(WaitBounded(connect), "the connector did not finish MPA setup");
        var s = new Session(peer, qp, cq);

        // The real requester reads `size` bytes into the middle of the bystander-free receive buffer.
        uint size = 16 + (uint)Pick(a, 2000);
        ulong sinkAt = _recv.Address + 1024;
        var before = Take();
        qp.PostSend(new SendWorkRequest { WrId = 5, Opcode = WrOpcode.RdmaRead, Flags = SendFlags.Signaled, Local = new(sinkAt, size, _recv.LKey), RemoteAddress = 0x7000, RKey = 0x4242 });
        var dec = new FpduDecoder(new FpduOptions { Crc = true });
        var inBuf = new byte[4096];
        int have = 0;
        Fpdu rr = default;
        for (int i = 0; i < 100; i++)
        {
            var seq = new ReadOnlySequence<byte>(inBuf, 0, have);
            var st = dec.TryParse(ref seq, out rr, out var err);
            Assert.True(st != ParseStatus.Error, err.ToString());
            if (st == ParseStatus.Frame) { have -= rr.WireLength; break; }
            int n = peer.Receive(inBuf, have, inBuf.Length - have, SocketFlags.None);
            Assert.True(n > 0, "no Read Request");
            have += n;
        }
        Assert.Equal(RdmapOpcode.RdmaReadRequest, rr.Header.Opcode);
        var q = rr.ReadRequest;
        Assert.Equal(size, q.MessageSize);
        var body = data.Length >= size + 64 ? data : Pattern((int)size + 64, 7 + Pick(a, 20));
        bool completesFirst = false;
        DdpRdmapHeader bad;
        switch (Pick(kind, 5))
        {
            case 0: // the wrong sink STag
                bad = DdpRdmapHeader.ForTagged(RdmapOpcode.RdmaReadResponse, q.SinkSTag ^ Math.Max(u, 1u), q.SinkTaggedOffset, true);
                s.Send(Frame(bad, body.AsSpan(0, (int)size)));
                break;
            case 1: // the wrong tagged offset (before, inside or past the sink)
                bad = DdpRdmapHeader.ForTagged(RdmapOpcode.RdmaReadResponse, q.SinkSTag, q.SinkTaggedOffset + (ulong)(long)(Pick((int)u, 4096) - 2048 | 1), true);
                s.Send(Frame(bad, body.AsSpan(0, (int)size)));
                break;
            case 2: // more bytes than were asked for
                bad = DdpRdmapHeader.ForTagged(RdmapOpcode.RdmaReadResponse, q.SinkSTag, q.SinkTaggedOffset, true);
                s.Send(Frame(bad, body.AsSpan(0, (int)size + 1 + Pick((int)u, 63))));
                break;
            case 3: // fewer bytes, marked last
                bad = DdpRdmapHeader.ForTagged(RdmapOpcode.RdmaReadResponse, q.SinkSTag, q.SinkTaggedOffset, true);
                s.Send(Frame(bad, body.AsSpan(0, Pick((int)u, (int)size))));
                break;
            default: // a correct response, then one more nobody asked for
                completesFirst = true;
                s.Send(Frame(DdpRdmapHeader.ForTagged(RdmapOpcode.RdmaReadResponse, q.SinkSTag, q.SinkTaggedOffset, true), body.AsSpan(0, (int)size)));
                bad = DdpRdmapHeader.ForTagged(RdmapOpcode.RdmaReadResponse, q.SinkSTag, q.SinkTaggedOffset, true);
                s.Send(Frame(bad, body.AsSpan(0, 8)));
                break;
        }
        var term = s.ReadTerminateThenEof();
        var conn = qp.Connection!;
        Assert.True(WaitBounded(conn.Completion), "the receive loop did not end");
        Assert.Equal(TerminateCode.Ddp(DdpErrorType.TaggedBuffer, DdpErrorCode.TaggedBaseOrBounds), term.Code);
        Assert.Equal(bad, term.TerminatedDdpHeader);
        Assert.Equal(QpState.Error, qp.State);
        var wcs = new WorkCompletion[8];
        int got2 = cq.Poll(wcs, Bound);
        Assert.True(got2 >= 1, "the RDMA Read never completed");
        Assert.Equal(5ul, wcs[0].WrId);
        Assert.Equal(completesFirst ? WcStatus.Success : WcStatus.RetryExcErr, wcs[0].Status);
        // Nothing outside the sink changed; a correct response filled it.
        var now = Take();
        Assert.True(FirstDifference(before.Device, now.Device) < 0, "device bytes changed");
        Assert.True(FirstDifference(before.Recv.AsSpan(0, 1024), now.Recv.AsSpan(0, 1024)) < 0, "bytes before the sink changed");
        Assert.True(FirstDifference(before.Recv.AsSpan(1024 + (int)size), now.Recv.AsSpan(1024 + (int)size)) < 0, "bytes after the sink changed");
        if (completesFirst) Assert.True(now.Recv.AsSpan(1024, (int)size).SequenceEqual(body.AsSpan(0, (int)size)));
    }

    // ------------------------------------------------------------ garbage MPA requests to a listener

    [Trait("Category", "Slow")]
    [Property(MaxTest = 25)]
    public void Listener_answers_garbage_requests_and_keeps_accepting_good_clients(int kind, byte[]? garbage, int cut) =>
        GarbageThenGoodClient(kind, garbage, cut);

    private void GarbageThenGoodClient(int kind, byte[]? garbage, int cut)
    {
        using var listener = new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0), new IwarpOptions { SetupTimeout = TimeSpan.FromSeconds(1) });
        using var cts = new CancellationTokenSource(Bound);
        var good = MpaNegotiation.BuildRequest(new MpaLocalSettings { Revision = 1, WantCrc = true, PrivateData = "good"u8.ToArray() }).ToArray();
        byte[] bad;
        bool? expectReject = true;
        switch (Pick(kind, 6))
        {
            case 0: // random bytes that do not start with the key
                bad = garbage is { Length: > 0 } ? garbage : new byte[] { 0 };
                if (bad[0] == (byte)'M') bad[0] = (byte)'X';
                break;
            case 1: // the reply key instead of the request key
                bad = MpaNegotiation.BuildRequest(new MpaLocalSettings()).ToArray();
                "MPA ID Rep Frame"u8.CopyTo(bad);
                break;
            case 2: // an unsupported revision
                bad = (byte[])good.Clone();
                bad[17] = (byte)(3 + Pick(cut, 250));
                break;
            case 3: // PD_Length over 512
                bad = (byte[])good.Clone();
                BinaryPrimitives.WriteUInt16BigEndian(bad.AsSpan(18), (ushort)(513 + Pick(cut, 65000)));
                break;
            case 4: // a valid prefix and then the client goes away (truncated request)
                bad = good[..(1 + Pick(cut, good.Length - 1))];
                expectReject = null; // a reject reply or a plain close are both fine
                break;
            default: // a valid prefix and then silence: the setup timeout drops it
                bad = good[..Pick(cut, good.Length)];
                expectReject = false;
                break;
        }
        var accept = Task.Run(async () => await listener.AcceptAsync(cts.Token), cts.Token);
        using (var raw = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { ReceiveTimeout = (int)Bound.TotalMilliseconds })
        {
            raw.Connect(listener.LocalEndPoint);
            raw.Send(bad);
            if (Pick(kind, 6) == 4) raw.Shutdown(SocketShutdown.Send);
            // The listener answers (a reject reply, when the frame was malformed) and closes: read to the end, bounded.
            var got = new List<byte>();
            var buf = new byte[1024];
            var sw = Stopwatch.StartNew();
            while (sw.Elapsed < Bound)
            {
                int n;
                try { n = raw.Receive(buf); }
                catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionReset) { break; }
                if (n == 0) break;
                got.AddRange(buf.AsSpan(0, n).ToArray());
            }
            Assert.True(sw.Elapsed < Bound, "the listener kept a garbage connection open");
            if (expectReject == true)
            {
                var seq = new ReadOnlySequence<byte>(got.ToArray());
                Assert.True(MpaFrame.TryParse(ref seq, MpaFrameKind.Reply, out var reply, out var e) == ParseStatus.Frame, $"no MPA reply to garbage: {e}");
                Assert.True(reply!.Reject, "the reply to a malformed request is not a reject");
            }
            else if (expectReject == false)
            {
                Assert.Empty(got);
            }
        }
        Assert.False(accept.IsCompleted, "AcceptAsync returned for a garbage request");
        // A good client is still accepted and connected.
        var pd = _dev.AllocatePd();
        var cq = _dev.CreateCompletionQueue(8);
        using var sqp = pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = cq });
        using var cqp = pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = cq });
        var connect = IwarpConnector.ConnectAsync(cqp, listener.LocalEndPoint, "good"u8.ToArray(), cancellationToken: cts.Token);
        Assert.True(accept.Wait(Bound), "the listener stopped accepting after garbage");
        Assert.Equal("good"u8.ToArray(), accept.Result.PrivateData.ToArray());
        accept.Result.Accept(sqp);
        Assert.True(connect.Wait(Bound));
        Assert.Equal(QpState.Rts, cqp.State);
        Assert.Equal(QpState.Rts, sqp.State);
    }
}
