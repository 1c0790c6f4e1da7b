using System.Net;
using PinnedDma.Transports.Iwarp;
using PinnedDma.Verbs;
using Xunit;

namespace PinnedDma.Tests.Lifetimes;

/// <summary>
/// A connection request stays undecided when the answer cannot be built: private data too long for the MPA reply is
/// refused at the call, and the caller can still reject the request (the client hears at once, no socket is left).
/// </summary>
public sealed class RequestDecisionTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(20);

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Private_data_too_long_for_the_reply_leaves_the_request_open(bool accept)
    {
        using var sdev = new RdmaDevice("decision-server");
        using var cdev = new RdmaDevice("decision-client");
        var scq = sdev.CreateCompletionQueue(8);
        var ccq = cdev.CreateCompletionQueue(8);
        var sqp = sdev.AllocatePd().CreateQueuePair(new QueuePairOptions { SendCq = scq, RecvCq = scq });
        var cqp = cdev.AllocatePd().CreateQueuePair(new QueuePairOptions { SendCq = ccq, RecvCq = ccq });
        using var listener = new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0));
        var connect = IwarpConnector.ConnectAsync(cqp, listener.LocalEndPoint, default, new IwarpOptions { SetupTimeout = TimeSpan.FromSeconds(15) });
        var request = await listener.AcceptAsync().WaitAsync(Bound);
        var tooLong = new byte[600];
        if (accept) Assert.Throws<ArgumentException>(() => request.Accept(sqp, tooLong));
        else Assert.Throws<ArgumentException>(() => request.Reject(tooLong));
        Assert.Equal(QpState.Reset, sqp.State); // nothing happened to the queue pair
        request.Reject(); // still undecided: a plain reject goes out
        var e = await Assert.ThrowsAsync<PinnedDmaException>(() => connect.WaitAsync(Bound));
        Assert.Equal(PinnedDmaError.ConnectionRejected, e.Error);
    }
}
