using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using PinnedDma.Storage;
using PinnedDma.Tests.Iwarp;
using PinnedDma.Transports.Iwarp;
using PinnedDma.Transports.Iwarp.Internal;
using PinnedDma.Verbs;
using Xunit;

namespace PinnedDma.Tests.Lifetimes;

/// <summary>
/// A Break(timeout) revoke finishes within its timeout plus a small bound whatever a peer does: here the peer asks for
/// large RDMA Reads of a file region and then never reads its socket, so the connection's send blocks while it holds
/// the region's drain. The revoke must cut that connection off instead of waiting for the send-stall timeout (set to a
/// minute here, so that waiting for it fails the test).
/// </summary>
public sealed class RevocationBoundTests : IDisposable
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(20); // about hanging, not speed
    private readonly Volume _volume = Volume.CreateInMemory(new VolumeOptions { BlockCount = 4096 });
    private readonly RdmaDevice _device = new("revoke");

    public void Dispose()
    {
        _device.Dispose();
        _volume.Dispose();
    }

    [Fact]
    public async Task BreakFinishesWithinItsTimeoutWhileAPeerThatNeverReadsHoldsTheRegionsDrain()
    {
        const int regionLength = 8 << 20;
        var f = _volume.CreateFile("served");
        f.Write(0, new byte[regionLength]);
        using var owner = new PinOwner(_volume, 1L << 30);
        var pd = _device.AllocatePd();
        var cq = _device.CreateCompletionQueue(16);
        var qp = pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = cq });
        qp.Modify(new QpAttributes { State = QpState.Init, AccessFlags = AccessFlags.RemoteRead | AccessFlags.RemoteWrite });
        var mr = pd.RegisterFile(owner, f, 0, regionLength, AccessFlags.LocalWrite | AccessFlags.RemoteRead);
        using var listener = new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0), new IwarpOptions { Crc = false, SendStallTimeout = TimeSpan.FromSeconds(60) });
        var accept = Task.Run(async () => (await listener.AcceptAsync()).Accept(qp));
        var (s, _) = IwarpTestUtil.ConnectRawMpa(listener.LocalEndPoint, wantCrc: false, Bound, receiveBufferSize: 4096);
        using var peer = s;
        await accept.WaitAsync(Bound);
        for (uint msn = 1; msn <= 4; msn++)
        {
            var body = new byte[RdmaReadRequest.Size];
            new RdmaReadRequest(0x77, 0, regionLength, mr.RKey, mr.Address).WriteTo(body);
            var h = DdpRdmapHeader.ForUntagged(RdmapOpcode.RdmaReadRequest, DdpQueue.RdmaReadRequest, msn, 0, true);
            var frame = new byte[2 + h.Length + body.Length + Fpdu.PadLength(h.Length + body.Length)];
            BinaryPrimitives.WriteUInt16BigEndian(frame, (ushort)(h.Length + body.Length));
            h.WriteTo(frame.AsSpan(2));
            body.CopyTo(frame.AsSpan(2 + h.Length));
            peer.Send(frame);
        }
        // TCP's buffers fill within milliseconds; from then on the response's send is blocked inside the region.
        for (int i = 0; i < 100 && mr.Pin!.Drain.InFlight == 0; i++) await Task.Delay(10);

        var truncate = Task.Run(() => f.Truncate(0, ConflictPolicy.Break(TimeSpan.FromMilliseconds(100))));
        var done = await Task.WhenAny(truncate, Task.Delay(Bound));
        Assert.True(done == truncate, $"Break(100 ms) did not finish within {Bound} against a peer that never reads");
        await truncate;
        Assert.Equal(PinStatus.Revoked, mr.Pin!.Status);
        Assert.Equal(0, f.Length);
        Assert.Equal(QpState.Error, qp.State);
        Assert.Contains("revoked", qp.ConnectionCloseReason);
    }
}
