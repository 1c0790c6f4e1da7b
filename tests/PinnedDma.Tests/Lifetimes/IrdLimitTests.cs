using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using PinnedDma.Tests.Iwarp;
using PinnedDma.Transports.Iwarp;
using PinnedDma.Transports.Iwarp.Internal;
using PinnedDma.Verbs;
using Xunit;

namespace PinnedDma.Tests.Lifetimes;

/// <summary>
/// RDMA Read depth (RFC 6581 §5 IRD/ORD): the responder accepts no more outstanding Read Requests than the IRD it
/// advertised, the requester issues no more than the negotiated ORD, MPA revision 1 (nothing negotiated) uses documented
/// depths instead of 0, and an ORD of 0 refuses Reads instead of parking them forever.
/// </summary>
public sealed class IrdLimitTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(20);
    private const int BigRead = 8 << 20;

    private static byte[] ReadRequestFpdu(uint msn, uint size, uint rkey, ulong address, uint sinkStag = 0x77, ulong sinkTo = 0)
    {
        var body = new byte[RdmaReadRequest.Size];
        new RdmaReadRequest(sinkStag, sinkTo, size, rkey, address).WriteTo(body);
        var h = DdpRdmapHeader.ForUntagged(RdmapOpcode.RdmaReadRequest, DdpQueue.RdmaReadRequest, msn, 0, true);
        var frame = new byte[2 + h.Length + body.Length + Fpdu.PadLength(h.Length + body.Length) + 4]; // CRC field zero
        BinaryPrimitives.WriteUInt16BigEndian(frame, (ushort)(h.Length + body.Length));
        h.WriteTo(frame.AsSpan(2));
        body.CopyTo(frame.AsSpan(2 + h.Length));
        return frame;
    }

    /// <summary>A server QP behind <paramref name="listener"/>, a raw client of MPA <paramref name="revision"/> that reads little.</summary>
    private static async Task<(QueuePair Qp, MemoryRegion Big, Socket Peer)> ServerWithRawClientAsync(RdmaDevice dev, IwarpListener listener, byte revision)
    {
        var pd = dev.AllocatePd();
        var cq = dev.CreateCompletionQueue(16);
        var qp = pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = cq });
        qp.Modify(new QpAttributes { State = QpState.Init, AccessFlags = AccessFlags.RemoteRead | AccessFlags.RemoteWrite });
        var big = pd.RegisterBuffer(BigRead, AccessFlags.RemoteRead);
        var accept = Task.Run(async () => (await listener.AcceptAsync()).Accept(qp));
        var (s, reply) = IwarpTestUtil.ConnectRawMpa(listener.LocalEndPoint, wantCrc: false, Bound, receiveBufferSize: 4096, revision: revision);
        Assert.Equal(revision, reply.Revision);
        await accept.WaitAsync(Bound);
        return (qp, big, s);
    }

    [Fact]
    public async Task ReadRequestsBeyondTheAdvertisedIrdEndTheStreamWithATerminate()
    {
        using var dev = new RdmaDevice("ird");
        // IRD 16 (the default); the send stall timeout ends the blocked response soon after.
        using var listener = new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0), new IwarpOptions { Crc = false, Ird = 16, SendStallTimeout = TimeSpan.FromMilliseconds(500) });
        var (qp, big, s) = await ServerWithRawClientAsync(dev, listener, revision: 2);
        using var peer = s;
        // The peer never reads: the first response blocks, so the requests after it stay outstanding. 24 > 1 + 16.
        for (uint msn = 1; msn <= 24; msn++) peer.Send(ReadRequestFpdu(msn, BigRead, big.RKey, big.Address));
        var connection = qp.Connection!;
        await connection.Completion.WaitAsync(Bound);
        Assert.Equal(QpState.Error, qp.State);
        Assert.Equal(TerminateCode.Rdmap(RdmapErrorType.RemoteOperation, RdmapErrorCode.Unspecified), connection.LastTerminateSent);
    }

    /// <summary>
    /// MPA revision 1 negotiates no IRD: a peer (a Linux siw initiator, say) may have up to its own ORD outstanding. The
    /// responder takes up to 128 (not its revision 2 IRD of 16, and never 0 or 1) and answers them all.
    /// </summary>
    [Fact]
    public async Task WithRevision1ARequesterMayHaveManyReadsOutstanding()
    {
        using var dev = new RdmaDevice("ird-rev1");
        using var listener = new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0), new IwarpOptions { Crc = false, Ird = 16 });
        var (qp, big, s) = await ServerWithRawClientAsync(dev, listener, revision: 1);
        using var peer = s;
        Assert.Equal(1, qp.Connection!.Negotiated.Revision);
        Assert.Equal(128, qp.Connection!.IrdLimit);
        big.GetBufferSpan()[..256].Fill(0x5A);
        // One big read blocks the responses (the peer is not reading yet), then 99 small ones queue behind it: 100 > 16.
        const int small = 100;
        peer.Send(ReadRequestFpdu(1, BigRead, big.RKey, big.Address, sinkTo: 0));
        for (uint msn = 2; msn <= small; msn++) peer.Send(ReadRequestFpdu(msn, 64, big.RKey, big.Address, sinkTo: msn * 64));
        // Now read everything: 100 last Read Response segments, no Terminate.
        using var raw = new RawIwarpPeer(peer) { Crc = false };
        int lastSegments = 0;
        var sw = System.Diagnostics.Stopwatch.StartNew();
        while (lastSegments < small && sw.Elapsed < Bound)
        {
            var f = raw.ReceiveFpdu();
            Assert.True(f is not null, $"the stream ended after {lastSegments} responses: {qp.Connection!.CloseReason}");
            Assert.True(f!.Opcode == (int)RdmapOpcode.RdmaReadResponse, $"opcode {f.Opcode} (a Terminate?) after {lastSegments} responses");
            if (f.Last) lastSegments++;
        }
        Assert.Equal(small, lastSegments);
        Assert.Equal(QpState.Rts, qp.State);
    }

    /// <summary>A real requester against a raw responder that advertised IRD 2: never more than 2 Reads on the wire.</summary>
    [Fact]
    public async Task TheRequesterParksReadsAtTheNegotiatedOrdAndNothingOvertakesThem()
    {
        using var dev = new RdmaDevice("ord");
        var pd = dev.AllocatePd();
        var cq = dev.CreateCompletionQueue(32);
        using var qp = pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = cq });
        var sink = pd.RegisterBuffer(4096, AccessFlags.LocalWrite);
        using var l = RawIwarpPeer.Listen();
        var connect = IwarpConnector.ConnectAsync(qp, (IPEndPoint)l.LocalEndPoint!);
        using var peer = RawIwarpPeer.Accept(l);
        peer.ReadMpa(request: true);
        peer.Send(RawIwarpPeer.MpaFrame(request: false, flags: 0x50, revision: 2, RawIwarpPeer.Enhanced(2, 2, false, false, false, false)));
        peer.Crc = true;
        await connect.WaitAsync(Bound);
        Assert.Equal(2, qp.Connection!.OrdLimit);
        const int reads = 5;
        for (int i = 0; i < reads; i++)
            qp.PostSend(new SendWorkRequest { WrId = (ulong)(i + 1), Opcode = WrOpcode.RdmaRead, Flags = SendFlags.Signaled, Local = new(sink.Address + (ulong)(i * 64), 64, sink.LKey), RemoteAddress = 0x1000, RKey = 0x0100_0042 });
        qp.PostSend(new SendWorkRequest { WrId = 99, Opcode = WrOpcode.RdmaWrite, Flags = SendFlags.Signaled, Local = new(sink.Address, 16, sink.LKey), RemoteAddress = 0x2000, RKey = 0x0100_0043 });

        var pending = new Queue<RawIwarpPeer.RawFpdu>();
        var seen = new List<int>();
        for (int i = 0; i < 2; i++) pending.Enqueue(ExpectReadRequest(peer, seen));
        // Two outstanding: the third Read (and the Write behind it) wait in the send queue.
        Assert.True(peer.NothingArrives(TimeSpan.FromMilliseconds(300)), "a third Read Request (or the Write) went out beyond ORD 2");
        for (int answered = 0; answered < reads; answered++)
        {
            Respond(peer, pending.Dequeue(), (byte)(0x30 + answered));
            if (answered + 2 < reads) pending.Enqueue(ExpectReadRequest(peer, seen));
        }
        // Only now the Write: it was posted after every Read and may not overtake them.
        var write = peer.ReceiveFpdu();
        Assert.NotNull(write);
        Assert.Equal((int)RdmapOpcode.RdmaWrite, write!.Opcode);
        Assert.Equal(new[] { 1, 2, 3, 4, 5 }, seen);
        var wcs = VerbsRigWait(cq, reads + 1);
        Assert.Equal(new ulong[] { 1, 2, 3, 4, 5, 99 }, wcs.Select(w => w.WrId));
        Assert.All(wcs, w => Assert.Equal(WcStatus.Success, w.Status));
        for (int i = 0; i < reads; i++) Assert.True(sink.GetBufferSpan().Slice(i * 64 + (i == 0 ? 16 : 0), i == 0 ? 48 : 64).IndexOfAnyExcept((byte)(0x30 + i)) < 0);
    }

    /// <summary>Reads the next FPDU, requires an RDMA Read Request, notes its MSN.</summary>
    private static RawIwarpPeer.RawFpdu ExpectReadRequest(RawIwarpPeer peer, List<int> seen)
    {
        var f = peer.ReceiveFpdu();
        Assert.NotNull(f);
        Assert.Equal((int)RdmapOpcode.RdmaReadRequest, f!.Opcode);
        seen.Add((int)f.Msn);
        return f;
    }

    /// <summary>Answers a Read Request with one last Read Response segment filled with <paramref name="fill"/>.</summary>
    private static void Respond(RawIwarpPeer peer, RawIwarpPeer.RawFpdu request, byte fill)
    {
        var body = request.Payload;
        uint sinkStag = BinaryPrimitives.ReadUInt32BigEndian(body);
        ulong sinkTo = BinaryPrimitives.ReadUInt64BigEndian(body[4..]);
        uint size = BinaryPrimitives.ReadUInt32BigEndian(body[12..]);
        var payload = new byte[size];
        Array.Fill(payload, fill);
        peer.SendFpdu(RawIwarpPeer.Tagged((byte)RdmapOpcode.RdmaReadResponse, true, sinkStag, sinkTo, payload));
    }

    private static List<WorkCompletion> VerbsRigWait(CompletionQueue cq, int count) => PinnedDma.Tests.Verbs.VerbsRig.WaitMany(cq, count);

    /// <summary>
    /// A peer that advertises IRD 0 takes no Reads: Writes and Sends flow as usual, a Read posted anyway fails at once
    /// (LocQpOpErr, the queue pair moves to Error) instead of parking the send queue forever or exceeding the peer's IRD.
    /// </summary>
    [Fact]
    public async Task WithAnOrdOf0AReadIsRefusedAndWritesStillFlow()
    {
        using var dev = new RdmaDevice("ord0");
        var pd = dev.AllocatePd();
        var cq = dev.CreateCompletionQueue(16);
        var rcq = dev.CreateCompletionQueue(16);
        using var qp = pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = rcq });
        var sink = pd.RegisterBuffer(4096, AccessFlags.LocalWrite);
        // The server side of the raw peer's request with IRD 0 / ORD 0 gets ORD min(16, 0) = 0.
        using var listener = new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0));
        qp.Modify(new QpAttributes { State = QpState.Init, AccessFlags = AccessFlags.RemoteWrite });
        var accept = Task.Run(async () => (await listener.AcceptAsync()).Accept(qp));
        var (s, _) = IwarpTestUtil.ConnectRawMpa(listener.LocalEndPoint, wantCrc: true, Bound, revision: 2, ird: 0, ord: 0);
        using var raw = new RawIwarpPeer(s) { Crc = true };
        await accept.WaitAsync(Bound);
        Assert.Equal(0, qp.Connection!.OrdLimit);
        // The initiator sends first (RFC 5044 §7.1.2): a Send from the raw peer lets this side transmit.
        qp.PostRecv(PinnedDma.Tests.Verbs.VerbsRig.Recv(10, sink, 1024, 64));
        raw.SendFpdu(RawIwarpPeer.Untagged((byte)RdmapOpcode.Send, true, 0, 1, 0, "first"u8));
        Assert.Equal(WcStatus.Success, PinnedDma.Tests.Verbs.VerbsRig.WaitOne(rcq).Status);
        qp.PostSend(new SendWorkRequest { WrId = 1, Opcode = WrOpcode.RdmaWrite, Flags = SendFlags.Signaled, Local = new(sink.Address, 32, sink.LKey), RemoteAddress = 0x2000, RKey = 0x0100_0043 });
        var w = raw.ReceiveFpdu();
        Assert.Equal((int)RdmapOpcode.RdmaWrite, w!.Opcode);
        var first = PinnedDma.Tests.Verbs.VerbsRig.WaitOne(cq);
        Assert.Equal((1ul, WcStatus.Success), (first.WrId, first.Status));
        qp.PostSend(new SendWorkRequest { WrId = 2, Opcode = WrOpcode.RdmaRead, Flags = SendFlags.Signaled, Local = new(sink.Address, 32, sink.LKey), RemoteAddress = 0x1000, RKey = 0x0100_0042 });
        var refused = PinnedDma.Tests.Verbs.VerbsRig.WaitOne(cq);
        Assert.Equal((2ul, WcStatus.LocQpOpErr), (refused.WrId, refused.Status));
        Assert.Equal(QpState.Error, qp.State);
    }
}
