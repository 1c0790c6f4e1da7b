using System.Buffers;
using System.Diagnostics;
using PinnedDma.Tests.Iwarp;
using PinnedDma.Transports.Iwarp;
using PinnedDma.Transports.Iwarp.Internal;
using PinnedDma.Verbs;
using Xunit;

namespace PinnedDma.Tests.Lifetimes;

/// <summary>
/// Every posted work request completes, whatever the peer does: a raw peer takes some RDMA Read Requests, answers none
/// and Terminates while several threads keep posting Reads (and a few Writes and Sends) on the real queue pair.
/// </summary>
public sealed class TerminateUnderPostingTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(20);
    private const int Posters = 4;
    private const int PerPoster = 300;

    [Theory]
    [InlineData(1)]
    [InlineData(10)]
    [InlineData(16)] // the negotiated ORD: the Reads after these are parked in the send queue when the Terminate comes
    public async Task EveryRequestPostedAroundAPeerTerminateCompletes(int readsBeforeTerminate)
    {
        for (int round = 0; round < 3; round++) await OneRoundAsync(readsBeforeTerminate, round);
    }

    /// <summary>
    /// The exact window: the engine has taken a Read off the send queue and checked the connection is open when the
    /// peer's Terminate closes it (Close completes the reads queued so far, once). The Read must still complete.
    /// </summary>
    [Fact]
    public async Task AReadTakenJustBeforeTheCloseStillCompletes()
    {
        using var dev = new RdmaDevice("term-window");
        var pd = dev.AllocatePd();
        var cq = dev.CreateCompletionQueue(16);
        using var qp = pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = cq });
        var sink = pd.RegisterBuffer(4096, AccessFlags.LocalWrite);
        using var l = RawIwarpPeer.Listen();
        var connect = IwarpConnector.ConnectAsync(qp, (System.Net.IPEndPoint)l.LocalEndPoint!);
        using var peer = RawIwarpPeer.Accept(l);
        peer.ReadMpa(request: true);
        peer.Send(RawIwarpPeer.MpaFrame(request: false, flags: 0x50, revision: 2, RawIwarpPeer.Enhanced(16, 16, false, false, false, false)));
        peer.Crc = true;
        await connect.WaitAsync(Bound);
        int calls = 0;
        qp.Connection!.BeforeReadQueued = () =>
        {
            if (Interlocked.Increment(ref calls) != 1) return;
            // The peer Terminates now; hold the engine here until the connection has closed and drained its reads.
            var bytes = new ArrayBufferWriter<byte>(64);
            new FpduEncoder(new FpduOptions { Crc = true }).WriteTerminate(bytes, 1, new TerminateMessage { Code = TerminateCode.Rdmap(2, 0xFF) });
            peer.Send(bytes.WrittenSpan);
            var sw = Stopwatch.StartNew();
            while (qp.State != QpState.Error && sw.Elapsed < Bound) Thread.Sleep(1);
        };
        qp.PostSend(new SendWorkRequest { WrId = 7, Opcode = WrOpcode.RdmaRead, Flags = SendFlags.Signaled, Local = new(sink.Address, 64, sink.LKey), RemoteAddress = 0x1000, RKey = 0x0100_0042 });
        var wcs = new WorkCompletion[4];
        int n = cq.Poll(wcs, Bound);
        Assert.True(n == 1, "the RDMA Read taken just before the close never completed");
        Assert.Equal(7ul, wcs[0].WrId);
        Assert.NotEqual(WcStatus.Success, wcs[0].Status);
        Assert.Equal(1, calls);
        Assert.Equal(QpState.Error, qp.State);
    }

    private static async Task OneRoundAsync(int readsBeforeTerminate, int round)
    {
        using var dev = new RdmaDevice("term-posting");
        var pd = dev.AllocatePd();
        var cq = dev.CreateCompletionQueue(Posters * PerPoster + 64);
        using var qp = pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = cq, MaxSendWr = 64 });
        var sink = pd.RegisterBuffer(64 * 1024, AccessFlags.LocalWrite);
        using var l = RawIwarpPeer.Listen();
        var connect = IwarpConnector.ConnectAsync(qp, (System.Net.IPEndPoint)l.LocalEndPoint!);
        using var peer = RawIwarpPeer.Accept(l);
        var request = peer.ReadMpa(request: true);
        // CRC on, revision 2 with IRD/ORD 64: the client may have 16 reads outstanding (its own ORD).
        peer.Send(RawIwarpPeer.MpaFrame(request: false, flags: 0x50, revision: 2, RawIwarpPeer.Enhanced(64, 64, false, false, false, false)));
        peer.Crc = true;
        await connect.WaitAsync(Bound);

        // The peer: takes Read Requests (answers none), then Terminates and closes.
        var peerTask = Task.Run(() =>
        {
            int reads = 0;
            var sw = Stopwatch.StartNew();
            while (reads < readsBeforeTerminate && sw.Elapsed < Bound)
            {
                var f = peer.ReceiveFpdu();
                if (f is null) break;
                if (f.Opcode == (int)RdmapOpcode.RdmaReadRequest) reads++;
            }
            var bytes = new ArrayBufferWriter<byte>(64);
            new FpduEncoder(new FpduOptions { Crc = true }).WriteTerminate(bytes, 1, new TerminateMessage { Code = TerminateCode.Rdmap(2, 0xFF) });
            peer.Send(bytes.WrittenSpan);
            peer.Socket.Shutdown(System.Net.Sockets.SocketShutdown.Both);
        });

        // The posters: Reads mostly, a Write or a Send now and then; a full send queue is retried, bounded.
        long posted = 0;
        var ids = new System.Collections.Concurrent.ConcurrentDictionary<ulong, WrOpcode>();
        var posters = Enumerable.Range(0, Posters).Select(t => Task.Factory.StartNew(() =>
        {
            var sw = Stopwatch.StartNew();
            for (int i = 0; i < PerPoster && sw.Elapsed < Bound; i++)
            {
                ulong id = (ulong)(t * PerPoster + i + 1);
                var op = (i % 17) switch { 5 => WrOpcode.RdmaWrite, 11 => WrOpcode.Send, _ => WrOpcode.RdmaRead };
                var wr = new SendWorkRequest
                {
                    WrId = id,
                    Opcode = op,
                    Flags = SendFlags.Signaled,
                    Local = new(sink.Address + (ulong)((t * PerPoster + i) % 1024 * 64), 64, sink.LKey),
                    RemoteAddress = 0x1000,
                    RKey = 0x0100_0042,
                };
                while (true)
                {
                    try
                    {
                        qp.PostSend(wr);
                        ids[id] = op;
                        Interlocked.Increment(ref posted);
                        break;
                    }
                    catch (PinnedDmaException e) when (e.Error == PinnedDmaError.NoSpace && sw.Elapsed < Bound)
                    {
                        Thread.Yield();
                    }
                }
            }
        }, TaskCreationOptions.LongRunning)).ToArray();
        await Task.WhenAll(posters).WaitAsync(Bound);
        await peerTask.WaitAsync(Bound);
        Assert.Equal(Posters * PerPoster, Interlocked.Read(ref posted));

        // Every posted request has exactly one completion.
        var seen = new HashSet<ulong>();
        var wcs = new WorkCompletion[256];
        var clock = Stopwatch.StartNew();
        while (seen.Count < ids.Count && clock.Elapsed < Bound)
        {
            int n = cq.Poll(wcs, TimeSpan.FromMilliseconds(200));
            for (int i = 0; i < n; i++) Assert.True(seen.Add(wcs[i].WrId), $"round {round}: work request {wcs[i].WrId} completed twice");
        }
        var missing = ids.Keys.Where(id => !seen.Contains(id)).OrderBy(id => id).Take(10).ToList();
        Assert.True(missing.Count == 0, $"round {round}: {ids.Count - seen.Count} of {ids.Count} posted work requests never completed, e.g. {string.Join(", ", missing.Select(m => $"{m} ({ids[m]})"))}; QP {qp.State}");
        Assert.Equal(QpState.Error, qp.State);
        Assert.Equal(0, qp.SendQueueDepth);
        Assert.Equal(0, cq.Poll(wcs)); // and nothing more
    }
}
