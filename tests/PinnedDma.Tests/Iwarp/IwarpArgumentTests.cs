using System.Net;
using System.Net.Sockets;
using PinnedDma.Transports.Iwarp;
using PinnedDma.Verbs;
using Xunit;

namespace PinnedDma.Tests.Iwarp;

/// <summary>Options and arguments that could never make a valid MPA frame are refused before anything connects.</summary>
public sealed class IwarpArgumentTests : IDisposable
{
    private readonly RdmaDevice _device = new("iwarp-args");
    private readonly QueuePair _qp;

    public IwarpArgumentTests()
    {
        var cq = _device.CreateCompletionQueue(8);
        _qp = _device.AllocatePd().CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = cq });
    }

    public void Dispose() => _device.Dispose();

    public static TheoryData<string, ushort, ushort> OverFourteenBits => new()
    {
        { "Ird", 16384, 16 },
        { "Ord", 16, 16384 },
        { "Ird", ushort.MaxValue, 16 },
    };

    [Theory]
    [MemberData(nameof(OverFourteenBits))]
    public void A_listener_refuses_an_ird_or_ord_revision_2_cannot_advertise(string name, ushort ird, ushort ord)
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0), new IwarpOptions { Ird = ird, Ord = ord }));
        Assert.Equal(name, e.ParamName);
    }

    [Theory]
    [MemberData(nameof(OverFourteenBits))]
    public void A_connector_refuses_an_ird_or_ord_revision_2_cannot_advertise_before_connecting(string name, ushort ird, ushort ord)
    {
        using var raw = RawListener();
        // Thrown at once, by the call (not by the task it would return).
        var e = Assert.Throws<ArgumentOutOfRangeException>(() =>
        {
            _ = IwarpConnector.ConnectAsync(_qp, (IPEndPoint)raw.LocalEndPoint!, default, new IwarpOptions { Ird = ird, Ord = ord });
        });
        Assert.Equal(name, e.ParamName);
        Assert.False(raw.Poll(0, SelectMode.SelectRead), "a TCP connection was made");
        Assert.Equal(QpState.Reset, _qp.State);
    }

    [Fact]
    public void Revision_1_does_not_advertise_ird_or_ord_so_any_value_is_taken()
    {
        using var listener = new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0), new IwarpOptions { MpaRevision = 1, Ird = 20000, Ord = 20000 });
        Assert.NotNull(listener.LocalEndPoint);
    }

    [Theory]
    [InlineData(2, 509)]
    [InlineData(1, 513)]
    public void Private_data_too_long_is_refused_before_anything_connects(int revision, int length)
    {
        using var raw = RawListener();
        // Thrown at once, by the call (not by the task it would return).
        Assert.Throws<ArgumentException>(() =>
        {
            _ = IwarpConnector.ConnectAsync(_qp, (IPEndPoint)raw.LocalEndPoint!, new byte[length], new IwarpOptions { MpaRevision = (byte)revision });
        });
        Assert.False(raw.Poll(0, SelectMode.SelectRead), "a TCP connection was made before the private data was checked");
        Assert.Equal(QpState.Reset, _qp.State);
    }

    [Theory]
    [InlineData(2, 508)]
    [InlineData(1, 512)]
    public async Task The_longest_private_data_still_goes_out(int revision, int length)
    {
        using var raw = RawListener();
        var connect = IwarpConnector.ConnectAsync(_qp, (IPEndPoint)raw.LocalEndPoint!, new byte[length],
            new IwarpOptions { MpaRevision = (byte)revision, SetupTimeout = TimeSpan.FromSeconds(20) });
        using var peer = await raw.AcceptAsync().WaitAsync(TimeSpan.FromSeconds(20));
        // The request arrives whole: 20 bytes of header, the private data (and 4 bytes of enhanced data with revision 2).
        int expected = 20 + length + (revision == 2 ? 4 : 0);
        var buffer = new byte[expected];
        int got = 0;
        peer.ReceiveTimeout = 20_000;
        while (got < expected)
        {
            int n = peer.Receive(buffer, got, expected - got, SocketFlags.None);
            Assert.True(n > 0, "the request ended early");
            got += n;
        }
        Assert.Equal("MPA ID Req Frame"u8.ToArray(), buffer[..16]);
        peer.Close(); // no reply: the connect fails
        await Assert.ThrowsAnyAsync<Exception>(() => connect.WaitAsync(TimeSpan.FromSeconds(20)));
    }

    private static Socket RawListener()
    {
        var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        s.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        s.Listen(4);
        return s;
    }
}
