using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using PinnedDma.Tests.Verbs;
using PinnedDma.Transports.Iwarp;
using PinnedDma.Verbs;
using Xunit;

namespace PinnedDma.Tests.Lifetimes;

/// <summary>
/// Silent and half-handshake connections against a listener: pending MPA handshakes are bounded per source address and
/// overall, so a well-behaved client still connects. Every loopback address works on Linux, so the flood comes from
/// 127.0.0.2 and up while the good client connects from 127.0.0.1.
/// </summary>
public sealed class HandshakeFloodTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(20);

    /// <summary>Longer than the good client allows itself: a client stuck behind the flood fails by its own timeout.</summary>
    private static readonly TimeSpan ServerSetupTimeout = TimeSpan.FromSeconds(30);

    private static readonly TimeSpan ClientSetupTimeout = TimeSpan.FromSeconds(4);

    private static Socket Silent(string source, EndPoint server)
    {
        var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        s.Bind(new IPEndPoint(IPAddress.Parse(source), 0));
        return s;
    }

    /// <summary>Connects <paramref name="count"/> sockets from <paramref name="source"/> at once; those whose connect failed or timed out are left out.</summary>
    private static async Task<List<Socket>> FloodAsync(string source, EndPoint server, int count, bool halfRequest)
    {
        var sockets = Enumerable.Range(0, count).Select(_ => Silent(source, server)).ToList();
        await Task.WhenAll(sockets.Select(async s =>
        {
            try
            {
                await s.ConnectAsync(server).WaitAsync(TimeSpan.FromSeconds(3));
                if (halfRequest) s.Send("MPA ID Req"u8); // half of the 16-byte key, then nothing
            }
            catch (Exception e) when (e is SocketException or TimeoutException or ObjectDisposedException)
            {
            }
        }));
        return sockets;
    }

    /// <summary>Connects one socket from <paramref name="source"/> and returns once the TCP connection is up.</summary>
    private static Socket ConnectOne(string source, EndPoint server)
    {
        var s = Silent(source, server);
        s.Connect(server);
        return s;
    }

    /// <summary>True once the server ended the connection (end of stream or reset), false if it was still open at the bound.</summary>
    private static bool EndedByServer(Socket s, TimeSpan within)
    {
        if (!s.Poll(within, SelectMode.SelectRead)) return false;
        try
        {
            var one = new byte[16];
            return s.Receive(one) == 0;
        }
        catch (SocketException e) when (e.SocketErrorCode is SocketError.ConnectionReset or SocketError.ConnectionAborted)
        {
            return true;
        }
    }

    /// <summary>A good client connects (with its own short setup timeout), is accepted, and a Send lands in a posted Recv.</summary>
    private static async Task GoodClientConnectsAndTalksAsync(IwarpListener listener)
    {
        using var server = new RdmaDevice("flood-srv");
        using var client = new RdmaDevice("flood-cli");
        var spd = server.AllocatePd();
        var scq = server.CreateCompletionQueue(8);
        using var sqp = spd.CreateQueuePair(new QueuePairOptions { SendCq = scq, RecvCq = scq });
        var cpd = client.AllocatePd();
        var ccq = client.CreateCompletionQueue(8);
        using var cqp = cpd.CreateQueuePair(new QueuePairOptions { SendCq = ccq, RecvCq = ccq });
        var dst = spd.RegisterBuffer(64, AccessFlags.LocalWrite);
        var src = cpd.RegisterBuffer(64, AccessFlags.LocalWrite);
        "hello through the flood"u8.CopyTo(src.GetBufferSpan());
        using var giveUp = new CancellationTokenSource(Bound);
        var accept = Task.Run(async () =>
        {
            var request = await listener.AcceptAsync(giveUp.Token);
            request.Accept(sqp);
            sqp.PostRecv(VerbsRig.Recv(1, dst, 0, 64)); // before the client sends: it waits for this task
        });
        await IwarpConnector.ConnectAsync(cqp, listener.LocalEndPoint, options: new IwarpOptions { SetupTimeout = ClientSetupTimeout });
        await accept.WaitAsync(Bound);
        cqp.PostSend(VerbsRig.Send(2, src, 0, 23));
        var sent = VerbsRig.WaitOne(ccq);
        Assert.Equal(WcStatus.Success, sent.Status);
        var received = VerbsRig.WaitOne(scq);
        Assert.Equal(WcStatus.Success, received.Status);
        Assert.Equal(23u, received.ByteLength);
        Assert.True(dst.GetBufferSpan()[..23].SequenceEqual("hello through the flood"u8));
    }

    [Fact]
    public async Task FourHundredSilentConnectionsDoNotHoldUpAWellBehavedClient()
    {
        using var listener = new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0), new IwarpOptions { SetupTimeout = ServerSetupTimeout });
        var flood = new List<Socket>();
        try
        {
            flood.AddRange(await FloodAsync("127.0.0.2", listener.LocalEndPoint, 150, halfRequest: false));
            flood.AddRange(await FloodAsync("127.0.0.3", listener.LocalEndPoint, 150, halfRequest: false));
            flood.AddRange(await FloodAsync("127.0.0.3", listener.LocalEndPoint, 50, halfRequest: true));
            flood.AddRange(await FloodAsync("127.0.0.4", listener.LocalEndPoint, 50, halfRequest: true));
            // Before: 64 handshake threads waited out the server's setup timeout and this client sat in the backlog.
            await GoodClientConnectsAndTalksAsync(listener);
        }
        finally
        {
            foreach (var s in flood) s.Dispose();
        }
    }

    [Fact]
    public async Task OneSourceAtItsLimitCannotBlockAnother()
    {
        using var listener = new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0), new IwarpOptions { SetupTimeout = ServerSetupTimeout });
        int limit = new IwarpOptions().MaxPendingHandshakesPerSource;
        var first = new List<Socket>();
        var flood = new List<Socket>();
        try
        {
            // The default share of one address, connected one by one so they are the oldest.
            for (int i = 0; i < limit; i++) first.Add(ConnectOne("127.0.0.2", listener.LocalEndPoint));
            flood.AddRange(await FloodAsync("127.0.0.2", listener.LocalEndPoint, 100, halfRequest: false));
            var connected = flood.Where(s => s.Connected).ToList();
            Assert.NotEmpty(connected);
            // Every connection over the address's share is closed at once (not after the setup timeout) ...
            var sw = Stopwatch.StartNew();
            foreach (var s in connected)
                Assert.True(EndedByServer(s, Bound - sw.Elapsed > TimeSpan.Zero ? Bound - sw.Elapsed : TimeSpan.Zero), "a connection over the per-source limit was kept");
            // ... while the first ones keep their handshake slot,
            foreach (var s in first) Assert.False(EndedByServer(s, TimeSpan.Zero), "a handshake within the limit was dropped");
            // and another address connects.
            await GoodClientConnectsAndTalksAsync(listener);
            // The ones within the limit still complete their handshake: one of them sends a real request.
            first[0].Send(PinnedDma.Transports.Iwarp.Internal.MpaNegotiation.BuildRequest(new PinnedDma.Transports.Iwarp.Internal.MpaLocalSettings()).ToArray());
            using var giveUp = new CancellationTokenSource(Bound);
            var request = await listener.AcceptAsync(giveUp.Token);
            Assert.Equal(IPAddress.Parse("127.0.0.2"), request.RemoteEndPoint.Address);
            request.Reject();
        }
        finally
        {
            foreach (var s in first.Concat(flood)) s.Dispose();
        }
    }

    [Fact]
    public async Task AFullTableEvictsTheOldestHandshakeOfTheBusiestSource()
    {
        using var listener = new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0),
            new IwarpOptions { SetupTimeout = ServerSetupTimeout, MaxPendingHandshakes = 12, MaxPendingHandshakesPerSource = 6 });
        var busiest = new List<Socket>();
        var others = new List<Socket>();
        try
        {
            for (int i = 0; i < 6; i++) busiest.Add(ConnectOne("127.0.0.2", listener.LocalEndPoint));
            for (int i = 0; i < 3; i++) others.Add(ConnectOne("127.0.0.3", listener.LocalEndPoint));
            for (int i = 0; i < 3; i++) others.Add(ConnectOne("127.0.0.4", listener.LocalEndPoint));
            // The table is full; a new peer still gets in, and the busiest address loses its oldest handshake.
            await GoodClientConnectsAndTalksAsync(listener);
            Assert.True(EndedByServer(busiest[0], Bound), "the oldest handshake of the busiest source was not evicted");
            // The good client's request left the table (11 pending): one more fills it, and the next one, from a quiet
            // address again, makes room where the most are held: 127.0.0.2 (5) loses its next oldest.
            others.Add(ConnectOne("127.0.0.5", listener.LocalEndPoint));
            others.Add(ConnectOne("127.0.0.5", listener.LocalEndPoint));
            Assert.True(EndedByServer(busiest[1], Bound), "the next oldest handshake of the busiest source was not evicted");
            foreach (var s in busiest.Skip(2).Concat(others)) Assert.False(EndedByServer(s, TimeSpan.Zero), "a handshake of a quieter source was dropped");
        }
        finally
        {
            foreach (var s in busiest.Concat(others)) s.Dispose();
        }
    }

    [Theory]
    [InlineData(0, 8)]
    [InlineData(-1, 8)]
    [InlineData(65537, 8)]
    [InlineData(256, 0)]
    [InlineData(256, -3)]
    public void HandshakeLimitsAreValidated(int overall, int perSource)
    {
        var options = new IwarpOptions { MaxPendingHandshakes = overall, MaxPendingHandshakesPerSource = perSource };
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0), options));
        Assert.Equal(overall is < 1 or > 65536 ? nameof(IwarpOptions.MaxPendingHandshakes) : nameof(IwarpOptions.MaxPendingHandshakesPerSource), e.ParamName);
    }
}
