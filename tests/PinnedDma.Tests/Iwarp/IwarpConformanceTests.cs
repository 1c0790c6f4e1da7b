using System.Net;
using System.Text;
using PinnedDma.Transports.Iwarp;
using PinnedDma.Transports.Iwarp.Internal;
using PinnedDma.Verbs;
using Xunit;

namespace PinnedDma.Tests.Iwarp;

/// <summary>
/// The transport against a peer written from the RFC texts (<see cref="RawIwarpPeer"/>, which shares no code with the
/// library's codec): FPDU layout without CRC, MPA revision negotiation, RFC 6581 peer-to-peer mode with each RTR type,
/// the responder's silence until the initiator's first FPDU, ULPDU lengths up to 65535, FPDUs sized to the TCP MSS,
/// and Terminate contents.
/// </summary>
public sealed class IwarpConformanceTests : IDisposable
{
    private static readonly TimeSpan Bound = RawIwarpPeer.Bound;
    private const int BufferLength = 256 * 1024;

    private readonly RdmaDevice _dev = new("conformance");
    private readonly ProtectionDomain _pd;
    private readonly List<IDisposable> _owned = new();

    public IwarpConformanceTests() => _pd = _dev.AllocatePd();

    public void Dispose()
    {
        for (int i = _owned.Count - 1; i >= 0; i--) _owned[i].Dispose();
        _dev.Dispose();
    }

    private T Own<T>(T d) where T : IDisposable
    {
        _owned.Add(d);
        return d;
    }

    /// <summary>A queue pair in Init with remote read/write and a registered buffer allowing both.</summary>
    private sealed record Side(QueuePair Qp, CompletionQueue Cq, MemoryRegion Mr);

    private Side NewSide()
    {
        var cq = Own(_dev.CreateCompletionQueue(64));
        var qp = Own(_pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = cq }));
        qp.Modify(new QpAttributes { State = QpState.Init, AccessFlags = AccessFlags.RemoteRead | AccessFlags.RemoteWrite });
        var mr = Own(_pd.RegisterBuffer(BufferLength, AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteRead));
        return mr.GetBufferSpan().Length == BufferLength ? new Side(qp, cq, mr) : throw new InvalidOperationException();
    }

    private static bool WaitBounded(Task t) => t.Wait(Bound);

    private static WorkCompletion Next(CompletionQueue cq)
    {
        var wc = new WorkCompletion[1];
        Assert.True(cq.Poll(wc, Bound) == 1, "no completion within the bound");
        return wc[0];
    }

    private static bool NoCompletion(CompletionQueue cq, TimeSpan wait)
    {
        var wc = new WorkCompletion[1];
        return cq.Poll(wc, wait) == 0;
    }

    private static void Post(Side s, ulong wrId, WrOpcode op, long offset, uint length, ulong remote = 0, uint rkey = 0) =>
        s.Qp.PostSend(new SendWorkRequest { WrId = wrId, Opcode = op, Flags = SendFlags.Signaled, Local = new(s.Mr.Address + (ulong)offset, length, s.Mr.LKey), RemoteAddress = remote, RKey = rkey });

    private static void PostRecv(Side s, ulong wrId, long offset, uint length) =>
        s.Qp.PostRecv(new RecvWorkRequest(wrId, new(s.Mr.Address + (ulong)offset, length, s.Mr.LKey)));

    /// <summary>A listener with <paramref name="options"/> that accepts one request onto <paramref name="side"/>.</summary>
    private (IwarpListener Listener, Task<IwarpConnectionRequest> Accepted) Listen(Side side, IwarpOptions options)
    {
        var listener = Own(new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0), options));
        var accepted = Task.Run(async () =>
        {
            using var cts = new CancellationTokenSource(Bound);
            var req = await listener.AcceptAsync(cts.Token);
            req.Accept(side.Qp);
            return req;
        });
        return (listener, accepted);
    }

    private static readonly byte[] Rev1NoCrcRequest = RawIwarpPeer.MpaFrame(request: true, flags: 0x00, revision: 1, default);

    // ------------------------------------------------------------ 1. the CRC field is always there (RFC 5044 §4.1, §4.4)

    [Fact]
    public void Without_crc_fpdus_carry_a_zero_crc_field_both_ways()
    {
        var side = NewSide();
        PostRecv(side, 50, 0x1000, 64);
        var (listener, accepted) = Listen(side, new IwarpOptions { MpaRevision = 1, Crc = false });
        using var peer = Own(RawIwarpPeer.Connect(listener.LocalEndPoint, Rev1NoCrcRequest));
        var reply = peer.ReadMpa(request: false);
        Assert.True(WaitBounded(accepted), "the listener did not accept");
        Assert.False(reply.Crc);
        Assert.False(reply.Reject);
        Assert.Equal(1, reply.Revision);

        // The peer's FPDUs: RDMA Write "conformant" (ULPDU 24, pad 2, CRC field 0) and Send "hello".
        byte[] write = RawIwarpPeer.Fpdu(RawIwarpPeer.Tagged(0, true, side.Mr.RKey, side.Mr.Address + 0x2000, "conformant"u8), crc: false);
        Assert.Equal(2 + 24 + 2 + 4, write.Length);
        peer.Send(write);
        peer.SendFpdu(RawIwarpPeer.Untagged(3, true, 0, 1, 0, "hello"u8));
        var recv = Next(side.Cq);
        Assert.Equal(WcStatus.Success, recv.Status);
        Assert.Equal(50ul, recv.WrId);
        Assert.Equal(5u, recv.ByteLength);
        Assert.Equal("hello", Encoding.ASCII.GetString(side.Mr.GetBufferSpan().Slice(0x1000, 5)));
        Assert.Equal("conformant", Encoding.ASCII.GetString(side.Mr.GetBufferSpan().Slice(0x2000, 10)));

        // Ours, byte for byte (the gather send path: payload straight from the registered region).
        "answer!"u8.CopyTo(side.Mr.GetBufferSpan()[0x3000..]);
        "xyz"u8.CopyTo(side.Mr.GetBufferSpan()[0x3100..]);
        Post(side, 1, WrOpcode.Send, 0x3000, 7);
        Post(side, 2, WrOpcode.RdmaWrite, 0x3100, 3, remote: 0x10, rkey: 0x1234);
        Assert.Equal(WcStatus.Success, Next(side.Cq).Status);
        Assert.Equal(WcStatus.Success, Next(side.Cq).Status);
        byte[] send = Convert.FromHexString(
            "0019" +                                    // ULPDU_Length 25 = 18 + 7
            "4143" + "00000000" + "00000000" + "00000001" + "00000000" + // L, DV 1 | RV 1, Send; QN 0, MSN 1, MO 0
            Convert.ToHexString("answer!"u8) +
            "00" +                                      // pad: 2 + 25 = 27 -> 28
            "00000000");                                // the CRC field, zero
        Assert.Equal(send, peer.ReadExactly(send.Length));
        byte[] rdmaWrite = Convert.FromHexString(
            "0011" +                                    // 17 = 14 + 3
            "c140" + "00001234" + "0000000000000010" +  // T, L, DV 1 | RV 1, Write; STag; TO
            Convert.ToHexString("xyz"u8) +
            "00" +                                      // pad: 19 -> 20
            "00000000");
        Assert.Equal(rdmaWrite, peer.ReadExactly(rdmaWrite.Length));
        Assert.Equal(QpState.Rts, side.Qp.State);
    }

    [Fact]
    public void Without_crc_a_large_write_placed_directly_consumes_its_crc_field()
    {
        // Payloads of 12 KiB and more go from the socket straight into the region; the CRC field after the pad must
        // be skipped there too, or the next FPDU is misframed.
        var side = NewSide();
        PostRecv(side, 51, 0, 64);
        var (listener, accepted) = Listen(side, new IwarpOptions { MpaRevision = 1, Crc = false, MaxFpduSize = 65_541 });
        using var peer = Own(RawIwarpPeer.Connect(listener.LocalEndPoint, Rev1NoCrcRequest));
        Assert.False(peer.ReadMpa(request: false).Reject);
        Assert.True(WaitBounded(accepted), "the listener did not accept");
        var payload = new byte[30_001];
        for (int i = 0; i < payload.Length; i++) payload[i] = (byte)(i * 31 + 7);
        peer.SendFpdu(RawIwarpPeer.Tagged(0, true, side.Mr.RKey, side.Mr.Address + 0x1000, payload));
        peer.SendFpdu(RawIwarpPeer.Untagged(3, true, 0, 1, 0, "after"u8));
        var recv = Next(side.Cq);
        Assert.True(recv.Status == WcStatus.Success, $"{recv.Status}: {side.Qp.ConnectionCloseReason}");
        Assert.Equal("after", Encoding.ASCII.GetString(side.Mr.GetBufferSpan()[..5]));
        Assert.True(side.Mr.GetBufferSpan().Slice(0x1000, payload.Length).SequenceEqual(payload));
        Assert.Equal(QpState.Rts, side.Qp.State);
    }

    // ------------------------------------------------------------ 2. MPA revision (RFC 5044 §7.1, RFC 6581 §5)

    [Fact]
    public void By_default_the_listener_answers_a_revision_2_request_with_a_revision_2_reply()
    {
        var side = NewSide();
        PostRecv(side, 60, 0, 64);
        var (listener, accepted) = Listen(side, new IwarpOptions());
        // "MPA ID Req Frame", flags C|S (0x50), rev 2, PD_Length 4, IRD 16 / ORD 16, no P2P: what siw sends.
        byte[] request = Convert.FromHexString("4d504120494420526571204672616d65" + "50" + "02" + "0004" + "0010" + "0010");
        using var peer = Own(RawIwarpPeer.Connect(listener.LocalEndPoint, request));
        var reply = peer.ReadMpa(request: false);
        Assert.True(WaitBounded(accepted), "the listener did not accept");
        Assert.False(reply.Reject);
        Assert.Equal(2, reply.Revision);
        Assert.True(reply.Enhanced, "a revision 2 reply to an enhanced request carries the RFC 6581 setup data");
        Assert.True(reply.Crc);
        Assert.Equal(4, reply.PdLength);
        Assert.False(reply.P2p);
        Assert.True(reply.Ird > 0 && reply.Ord > 0, "the reply advertises non-zero IRD and ORD");
        Assert.Equal(2, side.Qp.Connection!.Negotiated.Revision);
        peer.Crc = true;
        peer.SendFpdu(RawIwarpPeer.Untagged(3, true, 0, 1, 0, "rev2"u8));
        var recv = Next(side.Cq);
        Assert.True(recv.Status == WcStatus.Success, $"{recv.Status}: {side.Qp.ConnectionCloseReason}");
        Assert.Equal("rev2", Encoding.ASCII.GetString(side.Mr.GetBufferSpan()[..4]));
    }

    [Fact]
    public void By_default_the_listener_answers_a_revision_1_request_with_a_revision_1_reply()
    {
        var side = NewSide();
        PostRecv(side, 61, 0, 64);
        var (listener, accepted) = Listen(side, new IwarpOptions { Crc = false });
        // "MPA ID Req Frame", no flags, rev 1, PD_Length 0.
        byte[] request = Convert.FromHexString("4d504120494420526571204672616d65" + "00" + "01" + "0000");
        Assert.Equal(Rev1NoCrcRequest, request);
        using var peer = Own(RawIwarpPeer.Connect(listener.LocalEndPoint, request));
        var reply = peer.ReadMpa(request: false);
        Assert.True(WaitBounded(accepted), "the listener did not accept");
        Assert.Equal(Convert.FromHexString("4d504120494420526570204672616d65" + "00" + "01" + "0000"), reply.Bytes);
        Assert.Equal(1, side.Qp.Connection!.Negotiated.Revision);
        peer.SendFpdu(RawIwarpPeer.Untagged(3, true, 0, 1, 0, "rev1"u8));
        var recv = Next(side.Cq);
        Assert.True(recv.Status == WcStatus.Success, $"{recv.Status}: {side.Qp.ConnectionCloseReason}");
        Assert.Equal("rev1", Encoding.ASCII.GetString(side.Mr.GetBufferSpan()[..4]));
    }

    [Fact]
    public void A_reject_of_a_revision_2_request_is_a_revision_2_reply()
    {
        var listener = Own(new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0)));
        var rejected = Task.Run(async () =>
        {
            using var cts = new CancellationTokenSource(Bound);
            (await listener.AcceptAsync(cts.Token)).Reject("no"u8);
        });
        byte[] request = Convert.FromHexString("4d504120494420526571204672616d65" + "50" + "02" + "0004" + "0010" + "0010");
        using var peer = Own(RawIwarpPeer.Connect(listener.LocalEndPoint, request));
        var reply = peer.ReadMpa(request: false);
        Assert.True(WaitBounded(rejected));
        Assert.True(reply.Reject);
        Assert.Equal(2, reply.Revision);
        Assert.True(reply.Enhanced);
        Assert.Equal("no", Encoding.ASCII.GetString(reply.PrivateData[4..]));
    }

    [Fact]
    public async Task By_default_the_connector_offers_revision_2_with_the_enhanced_setup_data()
    {
        var side = NewSide();
        using var l = RawIwarpPeer.Listen();
        var connect = IwarpConnector.ConnectAsync(side.Qp, (IPEndPoint)l.LocalEndPoint!, "pd"u8.ToArray());
        using var peer = Own(RawIwarpPeer.Accept(l));
        var request = peer.ReadMpa(request: true);
        Assert.Equal(2, request.Revision);
        Assert.True(request.Enhanced);
        Assert.True(request.Crc);
        Assert.False(request.P2p, "peer-to-peer mode is asked for only when configured");
        Assert.Equal(6, request.PdLength);
        Assert.Equal("pd", Encoding.ASCII.GetString(request.PrivateData[4..]));
        peer.Send(RawIwarpPeer.MpaFrame(request: false, flags: 0x50, revision: 2, RawIwarpPeer.Enhanced(8, 8, false, false, false, false)));
        await connect.WaitAsync(Bound);
        Assert.Equal(2, side.Qp.Connection!.Negotiated.Revision);
        Assert.Equal(QpState.Rts, side.Qp.State);
    }

    // ------------------------------------------------------------ 7. Terminate's DDP Segment Length (RFC 5040 §4.8)

    [Fact]
    public void A_terminate_reports_the_ddp_segment_length_not_the_fpdu_length()
    {
        var side = NewSide();
        var (listener, accepted) = Listen(side, new IwarpOptions { MpaRevision = 1 });
        using var peer = Own(RawIwarpPeer.Connect(listener.LocalEndPoint, RawIwarpPeer.MpaFrame(true, 0x40, 1, default)));
        Assert.False(peer.ReadMpa(request: false).Reject);
        Assert.True(WaitBounded(accepted), "the listener did not accept");
        peer.Crc = true;
        // An RDMA Read Request (QN 1, MSN 1) of an STag nobody registered: DDP segment 18 + 28 = 46 bytes, FPDU 52.
        uint bogus = 0x0100_0000u | 0x77;
        Assert.Null(_dev.Keys.Lookup(bogus));
        byte[] ddpSegment = RawIwarpPeer.Untagged(1, true, 1, 1, 0, RawIwarpPeer.ReadRequestBody(0x4444, 0, 64, bogus, 0));
        Assert.Equal(46, ddpSegment.Length);
        Assert.Equal(52, RawIwarpPeer.Fpdu(ddpSegment, crc: true).Length);
        peer.SendFpdu(ddpSegment);
        var term = peer.ReceiveUntil(7);
        var all = peer.ReadToEnd();
        Assert.Empty(all);
        // Terminate: QN 2, MSN 1; RDMAP layer (0), Remote Protection (1), Invalid STag (0); M and D set.
        Assert.Equal(2u, term.Qn);
        Assert.Equal(1u, term.Msn);
        var c = term.TerminateControl;
        Assert.Equal((0, 1, 0x00, true, true), (c.Layer, c.EType, c.Code, c.M, c.D));
        Assert.Equal(46, term.TerminateSegmentLength);
        // The terminated DDP header follows: the Read Request's own 18 bytes.
        Assert.True(term.Payload.Slice(6, 18).SequenceEqual(ddpSegment.AsSpan(0, 18)));
    }

    // ------------------------------------------------------------ 5. any ULPDU up to 65535 (RFC 5044 §5.1)

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void A_ulpdu_larger_than_our_own_fpdu_size_is_accepted(bool crc)
    {
        const int size = 60_000;
        var side = NewSide();
        PostRecv(side, 70, 0, size);
        var options = new IwarpOptions { MpaRevision = 1, Crc = crc, MaxFpduSize = 16 * 1024 };
        var (listener, accepted) = Listen(side, options);
        using var peer = Own(RawIwarpPeer.Connect(listener.LocalEndPoint, RawIwarpPeer.MpaFrame(true, crc ? (byte)0x40 : (byte)0, 1, default)));
        Assert.False(peer.ReadMpa(request: false).Reject);
        Assert.True(WaitBounded(accepted), "the listener did not accept");
        peer.Crc = crc;
        var send = new byte[size];
        var write = new byte[size];
        for (int i = 0; i < size; i++)
        {
            send[i] = (byte)(i * 7 + 1);
            write[i] = (byte)(i * 13 + 5);
        }
        // One 60,000-byte RDMA Write segment (ULPDU 60,014) and one 60,000-byte Send segment (ULPDU 60,018).
        peer.SendFpdu(RawIwarpPeer.Tagged(0, true, side.Mr.RKey, side.Mr.Address + 0x10000, write));
        peer.SendFpdu(RawIwarpPeer.Untagged(3, true, 0, 1, 0, send));
        var recv = Next(side.Cq);
        Assert.True(recv.Status == WcStatus.Success, $"{recv.Status}: {side.Qp.ConnectionCloseReason}");
        Assert.Equal((uint)size, recv.ByteLength);
        Assert.True(side.Mr.GetBufferSpan()[..size].SequenceEqual(send));
        Assert.True(side.Mr.GetBufferSpan().Slice(0x10000, size).SequenceEqual(write));
        Assert.Equal(QpState.Rts, side.Qp.State);
        Assert.Null(side.Qp.Connection!.LastTerminateSent);
        Assert.True(peer.NothingArrives(TimeSpan.FromMilliseconds(200)), "the real side sent something (a Terminate?)");
    }

    // ------------------------------------------------------------ 4. the responder speaks second (RFC 5044 §7.1.2)

    private static byte[] Rev2Request(bool p2p = false, bool send = false, bool write = false, bool read = false) =>
        RawIwarpPeer.MpaFrame(request: true, flags: 0x50, revision: 2, RawIwarpPeer.Enhanced(16, 16, p2p, send, write, read));

    [Fact]
    public void The_responder_sends_nothing_before_the_initiators_first_fpdu_and_holds_what_was_posted()
    {
        var side = NewSide();
        var listener = Own(new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0)));
        "early"u8.CopyTo(side.Mr.GetBufferSpan()[0x100..]);
        var accepted = Task.Run(async () =>
        {
            using var cts = new CancellationTokenSource(Bound);
            (await listener.AcceptAsync(cts.Token)).Accept(side.Qp);
            // Posted the moment the connection exists: held, not sent and not lost.
            Post(side, 80, WrOpcode.Send, 0x100, 5);
        });
        using var peer = Own(RawIwarpPeer.Connect(listener.LocalEndPoint, Rev2Request()));
        var reply = peer.ReadMpa(request: false);
        Assert.False(reply.Reject);
        Assert.True(WaitBounded(accepted), "the listener did not accept");
        peer.Crc = true;
        Assert.True(peer.NothingArrives(TimeSpan.FromMilliseconds(500)), "the responder sent before the initiator's first FPDU");
        Assert.True(NoCompletion(side.Cq, TimeSpan.Zero), "the held Send completed before it could be sent");

        peer.SendFpdu(RawIwarpPeer.Tagged(0, true, side.Mr.RKey, side.Mr.Address + 0x200, "first"u8));
        var send = peer.ReceiveFpdu();
        Assert.NotNull(send);
        Assert.Equal(3, send!.Opcode);
        Assert.Equal(1u, send.Msn);
        Assert.Equal("early", Encoding.ASCII.GetString(send.Payload));
        var wc = Next(side.Cq);
        Assert.Equal((80ul, WcStatus.Success), (wc.WrId, wc.Status));
        Assert.Equal("first", Encoding.ASCII.GetString(side.Mr.GetBufferSpan().Slice(0x200, 5)));
    }

    [Fact]
    public void A_responder_whose_first_fpdu_never_comes_closes_with_the_held_send_flushed()
    {
        var side = NewSide();
        var listener = Own(new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0)));
        var accepted = Task.Run(async () =>
        {
            using var cts = new CancellationTokenSource(Bound);
            (await listener.AcceptAsync(cts.Token)).Accept(side.Qp);
            Post(side, 81, WrOpcode.Send, 0, 5);
        });
        using var peer = Own(RawIwarpPeer.Connect(listener.LocalEndPoint, Rev2Request()));
        Assert.False(peer.ReadMpa(request: false).Reject);
        Assert.True(WaitBounded(accepted), "the listener did not accept");
        peer.Socket.Shutdown(System.Net.Sockets.SocketShutdown.Both);
        var wc = Next(side.Cq);
        Assert.Equal(81ul, wc.WrId);
        Assert.NotEqual(WcStatus.Success, wc.Status);
        Assert.Equal(QpState.Error, side.Qp.State);
    }

    // ------------------------------------------------------------ 3. RFC 6581 peer-to-peer mode

    public static TheoryData<int> RtrKinds => new() { 1, 2, 4 };

    private static IwarpRtrTypes Rtr(int kind) => (IwarpRtrTypes)kind;

    /// <summary>The RTR FPDU of RFC 6581 §7 a raw initiator sends for <paramref name="kind"/>.</summary>
    private static byte[] RtrUlpdu(int kind) => kind switch
    {
        1 => RawIwarpPeer.Untagged(3, true, 0, 1, 0, default),
        2 => RawIwarpPeer.Tagged(0, true, 1, 0, default),
        _ => RawIwarpPeer.Untagged(1, true, 1, 1, 0, RawIwarpPeer.ReadRequestBody(0x5151, 0x99, 0, 1, 0)),
    };

    [Theory]
    [MemberData(nameof(RtrKinds))]
    public void As_responder_each_rtr_type_is_negotiated_consumed_silently_and_opens_the_connection(int kind)
    {
        var side = NewSide();
        PostRecv(side, 90, 0, 64);
        var listener = Own(new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0)));
        "server first"u8.CopyTo(side.Mr.GetBufferSpan()[0x100..]);
        var accepted = Task.Run(async () =>
        {
            using var cts = new CancellationTokenSource(Bound);
            (await listener.AcceptAsync(cts.Token)).Accept(side.Qp);
            Post(side, 91, WrOpcode.Send, 0x100, 12);
        });
        using var peer = Own(RawIwarpPeer.Connect(listener.LocalEndPoint, Rev2Request(true, kind == 1, kind == 2, kind == 4)));
        var reply = peer.ReadMpa(request: false);
        Assert.True(WaitBounded(accepted), "the listener did not accept");
        Assert.False(reply.Reject);
        Assert.True(reply.P2p, "the reply must confirm peer-to-peer mode");
        Assert.Equal((kind == 1, kind == 2, kind == 4), (reply.RtrSend, reply.RtrWrite, reply.RtrRead));
        peer.Crc = true;
        Assert.True(peer.NothingArrives(TimeSpan.FromMilliseconds(300)), "the responder sent before the RTR");

        peer.SendFpdu(RtrUlpdu(kind));
        if (kind == 4)
        {
            // The zero-length RDMA Read gets its zero-length Read Response, to the sink the request named.
            var rresp = peer.ReceiveFpdu()!;
            Assert.Equal((2, true, 0x5151u, 0x99ul, 0), (rresp.Opcode, rresp.Last, rresp.STag, rresp.TaggedOffset, rresp.Payload.Length));
        }
        var send = peer.ReceiveFpdu()!;
        Assert.Equal((3, 1u), (send.Opcode, send.Msn));
        Assert.Equal("server first", Encoding.ASCII.GetString(send.Payload));
        Assert.Equal((91ul, WcStatus.Success), (Next(side.Cq) is var wc ? (wc.WrId, wc.Status) : default));

        // The RTR took no receive: the posted one gets the peer's first real Send (MSN 2 after a Send RTR, else 1).
        peer.SendFpdu(RawIwarpPeer.Untagged(3, true, 0, kind == 1 ? 2u : 1u, 0, "data"u8));
        var recv = Next(side.Cq);
        Assert.True(recv.Status == WcStatus.Success, $"{recv.Status}: {side.Qp.ConnectionCloseReason}");
        Assert.Equal((90ul, 4u), (recv.WrId, recv.ByteLength));
        Assert.Equal("data", Encoding.ASCII.GetString(side.Mr.GetBufferSpan()[..4]));
        Assert.True(NoCompletion(side.Cq, TimeSpan.FromMilliseconds(100)), "the RTR surfaced as a completion");
        Assert.Equal(QpState.Rts, side.Qp.State);
    }

    [Theory]
    [MemberData(nameof(RtrKinds))]
    public async Task As_initiator_the_rtr_the_responder_picked_is_the_first_fpdu_and_completes_nothing(int kind)
    {
        var side = NewSide();
        using var l = RawIwarpPeer.Listen();
        var options = new IwarpOptions { PeerToPeer = true };
        var connect = IwarpConnector.ConnectAsync(side.Qp, (IPEndPoint)l.LocalEndPoint!, default, options);
        using var peer = Own(RawIwarpPeer.Accept(l));
        var request = peer.ReadMpa(request: true);
        Assert.True(request.P2p);
        Assert.True(request.RtrSend && request.RtrWrite && request.RtrRead, "all three RTR types are offered by default");
        peer.Send(RawIwarpPeer.MpaFrame(false, 0x50, 2, RawIwarpPeer.Enhanced(16, 16, true, kind == 1, kind == 2, kind == 4)));
        await connect.WaitAsync(Bound);
        Assert.Equal(Rtr(kind), (IwarpRtrTypes)side.Qp.Connection!.Negotiated.Rtr);
        peer.Crc = true;

        var rtr = peer.ReceiveFpdu()!;
        Assert.True(rtr.Last);
        switch (kind)
        {
            case 1:
                Assert.Equal((3, 0u, 1u, 0u, 0), (rtr.Opcode, rtr.Qn, rtr.Msn, rtr.Mo, rtr.Payload.Length));
                break;
            case 2:
                Assert.Equal((0, true, 0), (rtr.Opcode, rtr.Tagged, rtr.Payload.Length));
                break;
            default:
                Assert.Equal((1, 1u, 1u), (rtr.Opcode, rtr.Qn, rtr.Msn));
                var body = rtr.Payload;
                Assert.Equal(28, body.Length);
                Assert.Equal(0u, System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(body[12..])); // RDMA Read Message Size
                // The peer answers with the zero-length Read Response: consumed, no completion.
                peer.SendFpdu(RawIwarpPeer.Tagged(2, true, System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(body),
                    System.Buffers.Binary.BinaryPrimitives.ReadUInt64BigEndian(body[4..]), default));
                break;
        }
        "after rtr"u8.CopyTo(side.Mr.GetBufferSpan());
        Post(side, 92, WrOpcode.Send, 0, 9);
        var send = peer.ReceiveFpdu()!;
        Assert.Equal((3, kind == 1 ? 2u : 1u), (send.Opcode, send.Msn));
        var wc = Next(side.Cq);
        Assert.Equal((92ul, WcStatus.Success), (wc.WrId, wc.Status));
        if (kind == 4)
        {
            // A Read the application posts takes MSN 2 on QN 1 and completes as usual.
            Post(side, 93, WrOpcode.RdmaRead, 0x1000, 3, remote: 0x40, rkey: 0x7777);
            var rr = peer.ReceiveFpdu()!;
            Assert.Equal((1, 2u), (rr.Opcode, rr.Msn));
            var b = rr.Payload;
            peer.SendFpdu(RawIwarpPeer.Tagged(2, true, System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(b),
                System.Buffers.Binary.BinaryPrimitives.ReadUInt64BigEndian(b[4..]), "abc"u8));
            var rd = Next(side.Cq);
            Assert.Equal((93ul, WcStatus.Success, WcOpcode.RdmaRead), (rd.WrId, rd.Status, rd.Opcode));
            Assert.Equal("abc", Encoding.ASCII.GetString(side.Mr.GetBufferSpan().Slice(0x1000, 3)));
        }
        Assert.True(NoCompletion(side.Cq, TimeSpan.FromMilliseconds(100)), "the RTR surfaced as a completion");
        Assert.Equal(QpState.Rts, side.Qp.State);
    }

    [Theory]
    [MemberData(nameof(RtrKinds))]
    public async Task Between_our_own_ends_each_rtr_type_lets_the_responder_send_first(int kind)
    {
        var server = NewSide();
        var client = NewSide();
        PostRecv(client, 100, 0, 64);
        PostRecv(server, 101, 0, 64);
        "from server"u8.CopyTo(server.Mr.GetBufferSpan()[0x100..]);
        "from client"u8.CopyTo(client.Mr.GetBufferSpan()[0x100..]);
        var listener = Own(new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0), new IwarpOptions { RtrTypes = Rtr(kind) }));
        var accepted = Task.Run(async () =>
        {
            using var cts = new CancellationTokenSource(Bound);
            (await listener.AcceptAsync(cts.Token)).Accept(server.Qp);
            Post(server, 102, WrOpcode.Send, 0x100, 11);
        });
        await IwarpConnector.ConnectAsync(client.Qp, listener.LocalEndPoint, default, new IwarpOptions { PeerToPeer = true }).WaitAsync(Bound);
        await accepted.WaitAsync(Bound);
        Assert.Equal(Rtr(kind), (IwarpRtrTypes)client.Qp.Connection!.Negotiated.Rtr);
        Assert.True(server.Qp.Connection!.Negotiated.PeerToPeer);
        // The server spoke first (it only waited for the RTR); the client answers.
        var got = Next(client.Cq);
        Assert.True(got.Status == WcStatus.Success, $"{got.Status}: {client.Qp.ConnectionCloseReason}");
        Assert.Equal((100ul, 11u), (got.WrId, got.ByteLength));
        Assert.Equal("from server", Encoding.ASCII.GetString(client.Mr.GetBufferSpan()[..11]));
        Assert.Equal(102ul, Next(server.Cq).WrId);
        Post(client, 103, WrOpcode.Send, 0x100, 11);
        Assert.Equal(103ul, Next(client.Cq).WrId);
        var got2 = Next(server.Cq);
        Assert.Equal((101ul, WcStatus.Success, 11u), (got2.WrId, got2.Status, got2.ByteLength));
        Assert.True(NoCompletion(client.Cq, TimeSpan.FromMilliseconds(100)) && NoCompletion(server.Cq, TimeSpan.Zero), "an RTR surfaced as a completion");
    }

    [Fact]
    public async Task Without_a_common_rtr_type_the_request_is_rejected_with_no_matching_rtr()
    {
        var side = NewSide();
        var listener = Own(new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0), new IwarpOptions { RtrTypes = IwarpRtrTypes.ZeroLengthRdmaWrite | IwarpRtrTypes.ZeroLengthRdmaRead }));
        var refused = Task.Run(async () =>
        {
            using var cts = new CancellationTokenSource(Bound);
            var req = await listener.AcceptAsync(cts.Token);
            return Assert.Throws<PinnedDmaException>(() => req.Accept(side.Qp));
        });
        using var peer = Own(RawIwarpPeer.Connect(listener.LocalEndPoint, Rev2Request(p2p: true, send: true)));
        var reply = peer.ReadMpa(request: false);
        var ex = await refused.WaitAsync(Bound);
        Assert.Equal(PinnedDmaError.ConnectionRejected, ex.Error);
        Assert.Contains("NoMatchingRtr", ex.Message, StringComparison.Ordinal);
        Assert.True(reply.Reject);
        Assert.Equal(2, reply.Revision);
        Assert.False(reply.P2p);
    }

    // ------------------------------------------------------------ 6. FPDUs sized to the TCP segment (RFC 5044 §5.1)

    /// <summary>Sends an RDMA Write of <paramref name="length"/> bytes and a Send of 3000 from <paramref name="side"/>.</summary>
    private static void SendBulk(Side side, int length)
    {
        var span = side.Mr.GetBufferSpan();
        for (int i = 0; i < length; i++) span[i] = (byte)(i * 11 + 3);
        Post(side, 110, WrOpcode.RdmaWrite, 0, (uint)length, remote: 0x1000, rkey: 0x4242);
        Post(side, 111, WrOpcode.Send, 0, 3000);
        Assert.Equal(WcStatus.Success, Next(side.Cq).Status);
        Assert.Equal(WcStatus.Success, Next(side.Cq).Status);
    }

    /// <summary>Reads the Write's segments and the Send; returns the largest FPDU seen and checks the data.</summary>
    private static int ReceiveBulk(RawIwarpPeer peer, int length, int mss)
    {
        int placed = 0, largest = 0;
        while (true)
        {
            var f = peer.ReceiveFpdu()!;
            Assert.True(f.WireLength <= mss, $"an FPDU of {f.WireLength} bytes does not fit the {mss}-byte TCP segment");
            largest = Math.Max(largest, f.WireLength);
            if (f.Opcode == 3)
            {
                if (f.Last) break;
                continue;
            }
            Assert.Equal(0, f.Opcode);
            Assert.Equal(0x1000ul + (ulong)placed, f.TaggedOffset);
            for (int i = 0; i < f.Payload.Length; i++) Assert.Equal((byte)((placed + i) * 11 + 3), f.Payload[i]);
            placed += f.Payload.Length;
        }
        Assert.Equal(length, placed);
        return largest;
    }

    [Theory]
    [InlineData(536)]
    [InlineData(1460)]
    public async Task As_initiator_fpdus_fit_the_tcp_segment_the_peer_announced(int announced)
    {
        var side = NewSide();
        using var l = RawIwarpPeer.Listen(mss: announced);
        var connect = IwarpConnector.ConnectAsync(side.Qp, (IPEndPoint)l.LocalEndPoint!);
        using var peer = Own(RawIwarpPeer.Accept(l));
        var request = peer.ReadMpa(request: true);
        peer.Send(RawIwarpPeer.MpaFrame(false, 0x50, 2, RawIwarpPeer.Enhanced(16, 16, false, false, false, false)));
        await connect.WaitAsync(Bound);
        Assert.True(request.Crc);
        peer.Crc = true;
        int ours = side.Qp.Connection!.Emss;
        Assert.True(ours > 0 && ours <= announced, $"our EMSS {ours} vs the {announced} announced");
        // MULPDU = EMSS - 6, kept 4-byte aligned: an FPDU of exactly the segment size, or up to 3 bytes less.
        Assert.Equal(ours - 6 - ((ours - 4) & 3), side.Qp.Connection!.MaxUlpduLength);
        SendBulk(side, 20_000);
        int largest = ReceiveBulk(peer, 20_000, ours);
        Assert.True(largest > ours - 4, $"FPDUs of at most {largest} bytes do not fill the {ours}-byte segment");
    }

    [Fact]
    public void As_responder_fpdus_fit_the_tcp_segment_the_initiator_announced()
    {
        const int announced = 1460;
        var side = NewSide();
        var (listener, accepted) = Listen(side, new IwarpOptions());
        using var peer = Own(RawIwarpPeer.Connect(listener.LocalEndPoint, Rev2Request(), mss: announced));
        Assert.False(peer.ReadMpa(request: false).Reject);
        Assert.True(WaitBounded(accepted), "the listener did not accept");
        peer.Crc = true;
        peer.SendFpdu(RawIwarpPeer.Tagged(0, true, side.Mr.RKey, side.Mr.Address, default)); // the initiator's first FPDU
        int ours = side.Qp.Connection!.Emss;
        Assert.True(ours > 0 && ours <= announced, $"our EMSS {ours} vs the {announced} announced");
        SendBulk(side, 30_000);
        int largest = ReceiveBulk(peer, 30_000, ours);
        Assert.True(largest > ours - 4);
    }

    [Fact]
    public async Task On_loopback_the_large_mss_keeps_large_fpdus_and_max_fpdu_size_overrides_it()
    {
        var a = NewSide();
        var b = NewSide();
        var (listener, accepted) = Listen(a, new IwarpOptions());
        await IwarpConnector.ConnectAsync(b.Qp, listener.LocalEndPoint).WaitAsync(Bound);
        await accepted.WaitAsync(Bound);
        int emss = b.Qp.Connection!.Emss;
        Assert.True(emss > 16 * 1024, $"loopback EMSS {emss}");
        Assert.True(b.Qp.Connection!.MaxUlpduLength > 16 * 1024 && b.Qp.Connection!.MaxUlpduLength <= emss - 6);
        Assert.True(a.Qp.Connection!.MaxUlpduLength > 16 * 1024);

        var c = NewSide();
        var d = NewSide();
        var (l2, accepted2) = Listen(c, new IwarpOptions { MaxFpduSize = 4096 });
        await IwarpConnector.ConnectAsync(d.Qp, l2.LocalEndPoint, default, new IwarpOptions { MaxFpduSize = 2048 }).WaitAsync(Bound);
        await accepted2.WaitAsync(Bound);
        Assert.Equal(4096 - 6, c.Qp.Connection!.MaxUlpduLength);
        Assert.Equal(2048 - 6, d.Qp.Connection!.MaxUlpduLength);
    }

    [Fact]
    public async Task An_initiator_whose_offer_the_reply_does_not_match_sends_no_matching_rtr_and_closes()
    {
        var side = NewSide();
        using var l = RawIwarpPeer.Listen();
        var connect = IwarpConnector.ConnectAsync(side.Qp, (IPEndPoint)l.LocalEndPoint!, default,
            new IwarpOptions { PeerToPeer = true, RtrTypes = IwarpRtrTypes.ZeroLengthRdmaWrite });
        using var peer = Own(RawIwarpPeer.Accept(l));
        var request = peer.ReadMpa(request: true);
        Assert.Equal((true, false, true, false), (request.P2p, request.RtrSend, request.RtrWrite, request.RtrRead));
        // An accepting reply that picks a type that was not offered.
        peer.Send(RawIwarpPeer.MpaFrame(false, 0x50, 2, RawIwarpPeer.Enhanced(16, 16, true, false, false, true)));
        var ex = await Assert.ThrowsAsync<PinnedDmaException>(() => connect.WaitAsync(Bound));
        Assert.Contains("NoMatchingRtr", ex.Message, StringComparison.Ordinal);
        peer.Crc = true;
        var term = peer.ReceiveFpdu()!;
        Assert.Equal((7, 2u, 1u), (term.Opcode, term.Qn, term.Msn));
        var c = term.TerminateControl;
        Assert.Equal((2, 0, 0x07), (c.Layer, c.EType, c.Code)); // LLP layer, MPA error type, no matching RTR option
        Assert.Empty(peer.ReadToEnd());
    }

    // ------------------------------------------------------------ errors from the peer: Terminate, then a clean close

    [Fact]
    public void A_bad_crc_gets_an_mpa_crc_terminate_and_a_clean_close()
    {
        var side = NewSide();
        var (listener, accepted) = Listen(side, new IwarpOptions());
        using var peer = Own(RawIwarpPeer.Connect(listener.LocalEndPoint, Rev2Request()));
        Assert.True(peer.ReadMpa(request: false).Crc);
        Assert.True(WaitBounded(accepted), "the listener did not accept");
        peer.Crc = true;
        byte[] f = RawIwarpPeer.Fpdu(RawIwarpPeer.Tagged(0, true, side.Mr.RKey, side.Mr.Address, "abcd"u8), crc: true);
        f[^1] ^= 0x20;
        peer.Send(f);
        var term = peer.ReceiveUntil(7);
        var c = term.TerminateControl;
        Assert.Equal((2, 0, 0x02), (c.Layer, c.EType, c.Code)); // LLP, MPA, CRC error (RFC 5044 §8)
        Assert.Empty(peer.ReadToEnd());
        Assert.True(WaitBounded(side.Qp.Connection!.Completion));
        Assert.Equal(QpState.Error, side.Qp.State);
        Assert.False(side.Mr.GetBufferSpan()[..4].SequenceEqual("abcd"u8), "a segment with a bad CRC was placed");
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void An_invalid_stag_gets_a_ddp_tagged_terminate_and_a_clean_close(bool crc)
    {
        var side = NewSide();
        var (listener, accepted) = Listen(side, new IwarpOptions { Crc = crc });
        using var peer = Own(RawIwarpPeer.Connect(listener.LocalEndPoint, RawIwarpPeer.MpaFrame(true, crc ? (byte)0x50 : (byte)0x10, 2, RawIwarpPeer.Enhanced(16, 16, false, false, false, false))));
        Assert.Equal(crc, peer.ReadMpa(request: false).Crc);
        Assert.True(WaitBounded(accepted), "the listener did not accept");
        peer.Crc = crc;
        uint bogus = 0x0100_0000u | 0x55;
        Assert.Null(_dev.Keys.Lookup(bogus));
        byte[] segment = RawIwarpPeer.Tagged(0, true, bogus, 0x10, "nope"u8);
        peer.SendFpdu(segment);
        var term = peer.ReceiveUntil(7);
        var c = term.TerminateControl;
        Assert.Equal((1, 1, 0x00, true, true), (c.Layer, c.EType, c.Code, c.M, c.D)); // DDP, tagged buffer, invalid STag (RFC 5041 §7)
        Assert.Equal(segment.Length, term.TerminateSegmentLength);
        Assert.True(term.Payload.Slice(6, 14).SequenceEqual(segment.AsSpan(0, 14)), "the terminated DDP header");
        Assert.Empty(peer.ReadToEnd());
        Assert.True(WaitBounded(side.Qp.Connection!.Completion));
        Assert.Equal(QpState.Error, side.Qp.State);
    }
}
