using System.Net;
using PinnedDma.Tests.Iwarp;
using PinnedDma.Tests.Verbs;
using PinnedDma.Transports.Iwarp;
using PinnedDma.Verbs;
using Xunit;

namespace PinnedDma.Tests.Lifetimes;

/// <summary>The listener option that refuses a peer address whose connections keep naming invalid STags (key guessing).</summary>
public sealed class InvalidStagThrottleTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(20);

    /// <summary>Connects a fresh client QP, RDMA-writes with a key that names nothing; true when the connection was made.</summary>
    private static async Task<bool> GuessOnceAsync(IwarpListener listener, RdmaDevice server, RdmaDevice client, uint guessedKey)
    {
        var spd = server.AllocatePd();
        var scq = server.CreateCompletionQueue(16);
        var sqp = spd.CreateQueuePair(new QueuePairOptions { SendCq = scq, RecvCq = scq });
        var cpd = client.AllocatePd();
        var ccq = client.CreateCompletionQueue(16);
        var cqp = cpd.CreateQueuePair(new QueuePairOptions { SendCq = ccq, RecvCq = ccq });
        var src = cpd.RegisterBuffer(64, AccessFlags.LocalWrite);
        using var giveUp = new CancellationTokenSource(TimeSpan.FromSeconds(3));
        var accept = Task.Run(async () =>
        {
            try
            {
                (await listener.AcceptAsync(giveUp.Token)).Accept(sqp);
            }
            catch (OperationCanceledException)
            {
            }
        });
        try
        {
            await IwarpConnector.ConnectAsync(cqp, listener.LocalEndPoint, options: new IwarpOptions { SetupTimeout = TimeSpan.FromSeconds(3) });
        }
        catch (Exception e) when (e is PinnedDmaException or IOException or System.Net.Sockets.SocketException or TimeoutException)
        {
            await accept.WaitAsync(Bound);
            return false;
        }
        await accept.WaitAsync(Bound);
        cqp.PostSend(new SendWorkRequest { WrId = 1, Opcode = WrOpcode.RdmaWrite, Flags = SendFlags.Signaled, Local = new(src.Address, 64, src.LKey), RemoteAddress = 0, RKey = guessedKey });
        VerbsRig.WaitOne(ccq);
        // The server terminates the stream; wait until the client saw it end.
        await cqp.Connection!.Completion.WaitAsync(Bound);
        Assert.Equal(QpState.Error, cqp.State);
        return true;
    }

    [Trait("Category", "Slow")]
    [Fact]
    public async Task PeerThatKeepsNamingInvalidStagsIsRefusedAfterTheLimit()
    {
        using var server = new RdmaDevice("stag-srv");
        using var client = new RdmaDevice("stag-cli");
        using var listener = new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0), new IwarpOptions { MaxInvalidStagConnections = 2 });
        Assert.True(await GuessOnceAsync(listener, server, client, 0x12345601));
        Assert.True(await GuessOnceAsync(listener, server, client, 0x12345602));
        // Two strikes: the address is refused before the MPA exchange from now on.
        Assert.False(await GuessOnceAsync(listener, server, client, 0x12345603));
        Assert.False(await GuessOnceAsync(listener, server, client, 0x12345604));
    }

    [Fact]
    public async Task WithoutTheOptionGuessersAreNotRefused()
    {
        using var server = new RdmaDevice("stag-srv2");
        using var client = new RdmaDevice("stag-cli2");
        using var listener = new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0));
        for (uint i = 0; i < 3; i++) Assert.True(await GuessOnceAsync(listener, server, client, 0x22345601 + i));
    }
}
