using System.Diagnostics;
using System.Net;
using PinnedDma.Transports.Iwarp;
using PinnedDma.Transports.Iwarp.Internal;
using PinnedDma.Verbs;
using Xunit;

namespace PinnedDma.Tests.Iwarp;

/// <summary>
/// The iWARP transport on its I/O loops: sends never block a loop, so a message the socket cannot take whole parks
/// and goes on later, whoever frees the socket; small requests of an idle queue pair go out from the posting thread;
/// every request completes once, in order, with its bytes where they belong.
/// </summary>
public sealed class IoLoopTests : IDisposable
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);
    private readonly RdmaDevice _serverDev = new("loop-srv"), _clientDev = new("loop-cli");

    public void Dispose()
    {
        _serverDev.Dispose();
        _clientDev.Dispose();
    }

    private sealed record Pair(IwarpListener Listener, QueuePair Server, QueuePair Client, CompletionQueue ClientCq, MemoryRegion Remote, MemoryRegion Local) : IDisposable
    {
        public void Dispose()
        {
            Client.Dispose();
            Server.Dispose();
            Listener.Dispose();
        }
    }

    private Pair Connect(IwarpOptions options, int remoteLength, int localLength)
    {
        var spd = _serverDev.AllocatePd();
        var cpd = _clientDev.AllocatePd();
        var scq = _serverDev.CreateCompletionQueue(1024);
        var ccq = _clientDev.CreateCompletionQueue(1024);
        var server = spd.CreateQueuePair(new QueuePairOptions { SendCq = scq, RecvCq = scq });
        var client = cpd.CreateQueuePair(new QueuePairOptions { SendCq = ccq, RecvCq = ccq, MaxSendWr = 512 });
        var remote = spd.RegisterBuffer(remoteLength, AccessFlags.LocalWrite | AccessFlags.RemoteRead | AccessFlags.RemoteWrite);
        var local = cpd.RegisterBuffer(localLength, AccessFlags.LocalWrite);
        var listener = new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0), options);
        var accept = Task.Run(async () =>
        {
            var req = await listener.AcceptAsync();
            server.Modify(new QpAttributes { State = QpState.Init, AccessFlags = AccessFlags.RemoteRead | AccessFlags.RemoteWrite });
            req.Accept(server);
        });
        IwarpConnector.ConnectAsync(client, listener.LocalEndPoint, default, options).Wait(Bound);
        Assert.True(accept.Wait(Bound));
        return new Pair(listener, server, client, ccq, remote, local);
    }

    private static List<WorkCompletion> Drain(CompletionQueue cq, int count)
    {
        var all = new List<WorkCompletion>();
        var wc = new WorkCompletion[64];
        var sw = Stopwatch.StartNew();
        while (all.Count < count && sw.Elapsed < Bound)
        {
            int n = cq.Poll(wc, TimeSpan.FromMilliseconds(200));
            all.AddRange(wc.AsSpan(0, n).ToArray());
        }
        return all;
    }

    /// <summary>
    /// Many 1 MiB RDMA Reads, more than the ORD allows at once: every Read Response is larger than a send batch, so
    /// the responder's message parks on a full socket again and again and must go on whoever frees the socket (the
    /// loop on EPOLLOUT, or the end of a turn that flushed). A response left parked short of its end hangs the reads.
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Large_reads_beyond_the_ord_all_complete_with_their_bytes(bool crc)
    {
        const int Size = 1 << 20, Reads = 48, Slots = 4;
        using var p = Connect(new IwarpOptions { Crc = crc, Ord = 16, Ird = 16 }, Slots * Size, Slots * Size);
        var remote = p.Remote.GetBufferSpan();
        for (int i = 0; i < remote.Length; i++) remote[i] = (byte)(i * 31 + i / Size);
        for (int i = 0; i < Reads; i++)
        {
            int slot = i % Slots;
            p.Client.PostSend(new SendWorkRequest
            {
                WrId = (ulong)i + 1, Opcode = WrOpcode.RdmaRead, Flags = SendFlags.Signaled,
                Local = new ScatterGatherElement(p.Local.Address + (ulong)(slot * Size), Size, p.Local.LKey),
                RemoteAddress = p.Remote.Address + (ulong)(slot * Size), RKey = p.Remote.RKey,
            });
        }
        var done = Drain(p.ClientCq, Reads);
        Assert.True(done.Count == Reads, $"{done.Count} of {Reads} reads completed (close: {p.Client.ConnectionCloseReason} / {p.Server.ConnectionCloseReason})");
        Assert.All(done, w => Assert.Equal(WcStatus.Success, w.Status));
        Assert.Equal(Enumerable.Range(1, Reads).Select(i => (ulong)i), done.Select(w => w.WrId));
        Assert.True(p.Local.GetBufferSpan().SequenceEqual(p.Remote.GetBufferSpan()));
    }

    /// <summary>
    /// A small RDMA Write on an idle queue pair is executed by the posting thread itself (no hand-off to the loop), and
    /// a large one is not; both land, and completions stay in posting order.
    /// </summary>
    [Fact]
    public void Small_writes_on_an_idle_queue_pair_go_out_from_the_posting_thread()
    {
        using var p = Connect(new IwarpOptions(), 1 << 20, 1 << 20);
        var engine = p.Client.Connection!.Engine;
        var local = p.Local.GetBufferSpan();
        for (int i = 0; i < local.Length; i++) local[i] = (byte)(i * 13 + 5);
        long inlineBefore = Interlocked.Read(ref engine.ExecutedInline);
        int small = 0;
        for (int i = 0; i < 20; i++)
        {
            // Alternate small and large; wait for each so the queue pair is idle again at the next post.
            uint length = i % 2 == 0 ? 512u : 256u * 1024;
            if (length <= IwarpConnection.InlineBytes) small++;
            ulong at = (ulong)(i * 4096 % (1 << 19));
            p.Client.PostSend(new SendWorkRequest
            {
                WrId = (ulong)i, Opcode = WrOpcode.RdmaWrite, Flags = SendFlags.Signaled,
                Local = new ScatterGatherElement(p.Local.Address + at, length, p.Local.LKey),
                RemoteAddress = p.Remote.Address + at, RKey = p.Remote.RKey,
            });
            var wc = Drain(p.ClientCq, 1);
            Assert.Single(wc);
            Assert.Equal(WcStatus.Success, wc[0].Status);
            Assert.Equal((ulong)i, wc[0].WrId);
            // The completion may come before the loop's turn for the queue pair ends: wait (bounded) until it is idle.
            var idle = Stopwatch.StartNew();
            while ((Volatile.Read(ref p.Client.Turn) != 0 || p.Client.InDoorbell) && idle.Elapsed < Bound) Thread.Yield();
        }
        // A write's completion frees its source; an RDMA Read behind the writes completes after they landed (RC order).
        p.Client.PostSend(new SendWorkRequest
        {
            WrId = 99, Opcode = WrOpcode.RdmaRead, Flags = SendFlags.Signaled,
            Local = new ScatterGatherElement(p.Local.Address + (1 << 19), 8, p.Local.LKey),
            RemoteAddress = p.Remote.Address, RKey = p.Remote.RKey,
        });
        Assert.Equal(WcStatus.Success, Assert.Single(Drain(p.ClientCq, 1)).Status);
        for (int i = 0; i < 20; i++)
        {
            // Ranges overlap, but every write copies the same offsets of the same pattern.
            int length = i % 2 == 0 ? 512 : 256 * 1024, at = i * 4096 % (1 << 19);
            Assert.True(p.Remote.GetBufferSpan().Slice(at, length).SequenceEqual(local.Slice(at, length)), $"write {i} did not land");
        }
        // Every small write went out from this thread (the queue pair was idle each time); the large ones did not.
        long inlined = Interlocked.Read(ref engine.ExecutedInline) - inlineBefore;
        Assert.True(inlined >= small && inlined < 20, $"{inlined} of 20 writes ran inline ({small} small)");
    }

    /// <summary>
    /// Connections chosen at the same moment (the two ends of one stream in one process, before either registered with
    /// its loop) go to different loops: one loop doing both ends halves what a stream can move.
    /// </summary>
    [Fact]
    public void Connections_made_at_once_spread_over_the_loops()
    {
        // A group size no other test uses, so nothing else is assigned to these loops meanwhile.
        var loops = Enumerable.Range(0, 3).Select(_ => IoLoopGroup.Next(3)).ToArray();
        try
        {
            Assert.Equal(3, loops.Distinct().Count());
            Assert.All(loops, l => Assert.Equal(1, l.Assigned));
        }
        finally
        {
            foreach (var l in loops) l.Release();
        }
        Assert.All(loops, l => Assert.Equal(0, l.Assigned));
    }
}
