using System.Buffers.Binary;
using System.Net;
using PinnedDma.Tests.Iwarp;
using PinnedDma.Verbs;
using PinnedDma.Verbs.Iwarp;
using Xunit;

namespace PinnedDma.Tests.Lifetimes;

/// <summary>The responder accepts no more outstanding RDMA Read Requests than the IRD it advertised.</summary>
public sealed class IrdLimitTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(20);

    [Fact]
    public async Task ReadRequestsBeyondTheAdvertisedIrdEndTheStreamWithATerminate()
    {
        const int regionLength = 8 << 20;
        using var dev = new RdmaDevice("ird");
        var pd = dev.AllocatePd();
        var cq = dev.CreateCompletionQueue(16);
        var qp = pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = cq });
        qp.Modify(new QpAttributes { State = QpState.Init, AccessFlags = AccessFlags.RemoteRead | AccessFlags.RemoteWrite });
        var big = pd.RegisterBuffer(regionLength, AccessFlags.RemoteRead);
        // IRD 16 (the default); the send stall timeout ends the blocked response soon after.
        using var listener = new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0), new IwarpOptions { Crc = false, Ird = 16, SendStallTimeout = TimeSpan.FromMilliseconds(500) });
        var accept = Task.Run(async () => (await listener.AcceptAsync()).Accept(qp));
        var (s, _) = IwarpTestUtil.ConnectRawMpa(listener.LocalEndPoint, wantCrc: false, Bound, receiveBufferSize: 4096);
        using var peer = s;
        await accept.WaitAsync(Bound);
        // The peer never reads: the first response blocks, so the requests after it stay outstanding. 24 > 1 + 16.
        for (uint msn = 1; msn <= 24; msn++)
        {
            var body = new byte[RdmaReadRequest.Size];
            new RdmaReadRequest(0x77, 0, regionLength, big.RKey, big.Address).WriteTo(body);
            var h = DdpRdmapHeader.ForUntagged(RdmapOpcode.RdmaReadRequest, DdpQueue.RdmaReadRequest, msn, 0, true);
            var frame = new byte[2 + h.Length + body.Length + Fpdu.PadLength(h.Length + body.Length)];
            BinaryPrimitives.WriteUInt16BigEndian(frame, (ushort)(h.Length + body.Length));
            h.WriteTo(frame.AsSpan(2));
            body.CopyTo(frame.AsSpan(2 + h.Length));
            peer.Send(frame);
        }
        var connection = qp.Connection!;
        await connection.Completion.WaitAsync(Bound);
        Assert.Equal(QpState.Error, qp.State);
        Assert.Equal(TerminateCode.Rdmap(RdmapErrorType.RemoteOperation, RdmapErrorCode.Unspecified), connection.LastTerminateSent);
    }
}
