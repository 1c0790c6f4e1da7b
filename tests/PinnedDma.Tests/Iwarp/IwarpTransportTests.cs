using System.Net;
using PinnedDma.Storage;
using PinnedDma.Transports.Iwarp;
using PinnedDma.Verbs;
using Xunit;

namespace PinnedDma.Tests.Iwarp;

public sealed class IwarpTransportTests : IDisposable
{
    private readonly Volume _vol = Volume.CreateInMemory(new VolumeOptions { BlockCount = 2048 });
    private readonly RdmaDevice _serverDev = new("srv"), _clientDev = new("cli");
    private readonly PinOwner _owner;

    public IwarpTransportTests() => _owner = new PinOwner(_vol, 64 << 20);

    public void Dispose()
    {
        _owner.Dispose();
        _serverDev.Dispose();
        _clientDev.Dispose();
        _vol.Dispose();
    }

    private static WorkCompletion Next(CompletionQueue cq)
    {
        var wc = new WorkCompletion[1];
        Assert.Equal(1, cq.Poll(wc, TimeSpan.FromSeconds(10)));
        return wc[0];
    }

    [Theory]
    [InlineData(1, true)]
    [InlineData(2, true)]
    [InlineData(1, false)]
    public async Task WriteReadSendOverTcpIntoPinnedFile(byte revision, bool crc)
    {
        var options = new IwarpOptions { MpaRevision = revision, Crc = crc };
        var f = _vol.CreateFile("f");
        f.Write(0, new byte[256 * 1024]);
        var spd = _serverDev.AllocatePd();
        var scq = _serverDev.CreateCompletionQueue(64);
        var sqp = spd.CreateQueuePair(new QueuePairOptions { SendCq = scq, RecvCq = scq });
        var smr = spd.RegisterFile(_owner, f, 0, 256 * 1024, AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteRead);
        var srecv = spd.RegisterBuffer(4096, AccessFlags.LocalWrite);

        using var listener = new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0), options);
        var acceptTask = Task.Run(async () =>
        {
            var req = await listener.AcceptAsync();
            Assert.Equal("hello", System.Text.Encoding.ASCII.GetString(req.PrivateData.Span));
            sqp.Modify(new QpAttributes { State = QpState.Init, AccessFlags = AccessFlags.RemoteRead | AccessFlags.RemoteWrite });
            sqp.PostRecv(new RecvWorkRequest(7, new(srecv.Address, 4096, srecv.LKey)));
            req.Accept(sqp, BitConverter.GetBytes(smr.RKey));
        });
        var cpd = _clientDev.AllocatePd();
        var ccq = _clientDev.CreateCompletionQueue(64);
        var cqp = cpd.CreateQueuePair(new QueuePairOptions { SendCq = ccq, RecvCq = ccq });
        var connectTask = IwarpConnector.ConnectAsync(cqp, listener.LocalEndPoint, "hello"u8.ToArray(), options);
        await acceptTask;
        var reply = await connectTask;
        uint rkey = BitConverter.ToUInt32(reply.Span);
        Assert.Equal(QpState.Rts, cqp.State);

        var buf = cpd.RegisterBuffer(200 * 1024, AccessFlags.LocalWrite);
        var pattern = buf.GetBufferSpan();
        for (int i = 0; i < pattern.Length; i++) pattern[i] = (byte)(i * 7 + 3);
        cqp.PostSend(new SendWorkRequest { WrId = 1, Opcode = WrOpcode.RdmaWrite, Flags = SendFlags.Signaled, Local = new(buf.Address, 100 * 1024, buf.LKey), RemoteAddress = 4096, RKey = rkey });
        Assert.Equal(WcStatus.Success, Next(ccq).Status);
        // RDMA READ it back into the second half; completion means the write landed before it (RC ordering).
        cqp.PostSend(new SendWorkRequest { WrId = 2, Opcode = WrOpcode.RdmaRead, Flags = SendFlags.Signaled, Local = new(buf.Address + 100 * 1024, 100 * 1024, buf.LKey), RemoteAddress = 4096, RKey = rkey });
        var rd = Next(ccq);
        Assert.Equal(WcStatus.Success, rd.Status);
        Assert.Equal(WcOpcode.RdmaRead, rd.Opcode);
        Assert.True(pattern[..(100 * 1024)].SequenceEqual(pattern[(100 * 1024)..]));
        var fileBytes = new byte[100 * 1024];
        f.Read(4096, fileBytes);
        Assert.True(fileBytes.AsSpan().SequenceEqual(pattern[..(100 * 1024)]));

        cqp.PostSend(new SendWorkRequest { WrId = 3, Opcode = WrOpcode.Send, Flags = SendFlags.Signaled, Local = new(buf.Address, 3000, buf.LKey) });
        Assert.Equal(WcStatus.Success, Next(ccq).Status);
        var recv = Next(scq);
        Assert.Equal(WcStatus.Success, recv.Status);
        Assert.Equal(3000u, recv.ByteLength);
        Assert.True(srecv.GetBufferSpan()[..3000].SequenceEqual(pattern[..3000]));

        // Lease break revokes the server's region: the next RDMA READ fails with a remote access error.
        f.Truncate(0, ConflictPolicy.Break(TimeSpan.FromMilliseconds(10)));
        Assert.False(smr.IsValid);
        cqp.PostSend(new SendWorkRequest { WrId = 4, Opcode = WrOpcode.RdmaRead, Flags = SendFlags.Signaled, Local = new(buf.Address, 4096, buf.LKey), RemoteAddress = 4096, RKey = rkey });
        var bad = Next(ccq);
        Assert.Equal(WcStatus.RemAccessErr, bad.Status);
        Assert.Equal(QpState.Error, cqp.State);
        Assert.True(_vol.Fsck().IsClean);
    }

    [Fact]
    public async Task RejectCarriesPrivateDataAndFails()
    {
        using var listener = new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0));
        var t = Task.Run(async () => (await listener.AcceptAsync()).Reject("no"u8));
        var pd = _clientDev.AllocatePd();
        var cq = _clientDev.CreateCompletionQueue(8);
        var qp = pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = cq });
        var ex = await Assert.ThrowsAsync<PinnedDmaException>(() => IwarpConnector.ConnectAsync(qp, listener.LocalEndPoint));
        Assert.Equal(PinnedDmaError.ConnectionRejected, ex.Error);
        await t;
    }

    [Fact]
    public async Task Accepting_onto_a_queue_pair_in_the_wrong_state_fails_before_any_side_effect()
    {
        using var listener = new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0));
        var spd = _serverDev.AllocatePd();
        var scq = _serverDev.CreateCompletionQueue(8);
        using var sqp = spd.CreateQueuePair(new QueuePairOptions { SendCq = scq, RecvCq = scq });
        sqp.Modify(new QpAttributes { State = QpState.Error });
        var cpd = _clientDev.AllocatePd();
        var ccq = _clientDev.CreateCompletionQueue(8);
        using var cqp = cpd.CreateQueuePair(new QueuePairOptions { SendCq = ccq, RecvCq = ccq });
        var accept = Task.Run(async () =>
        {
            var request = await listener.AcceptAsync();
            // Refused before anything is sent or changed: the request is still undecided, so the application can
            // answer it properly (here with a reject; accepting on another QP would work as well).
            var ex = Assert.Throws<PinnedDmaException>(() => request.Accept(sqp));
            Assert.Equal(PinnedDmaError.InvalidArgument, ex.Error);
            request.Reject();
        });
        var refused = await Assert.ThrowsAsync<PinnedDmaException>(() => IwarpConnector.ConnectAsync(cqp, listener.LocalEndPoint));
        Assert.Equal(PinnedDmaError.ConnectionRejected, refused.Error);
        await accept.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal(QpState.Error, sqp.State);
        Assert.Null(sqp.Connection);
    }
}
