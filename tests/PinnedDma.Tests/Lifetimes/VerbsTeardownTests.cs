using System.Buffers.Binary;
using System.Net;
using PinnedDma.Storage;
using PinnedDma.Tests.Verbs;
using PinnedDma.Transports.Iwarp;
using PinnedDma.Transports.Loopback;
using PinnedDma.Verbs;
using Xunit;

namespace PinnedDma.Tests.Lifetimes;

/// <summary>
/// Teardown of verbs objects: once a queue pair leaves RTS for Error, or a QP, PD or device is disposed, no incoming
/// request lands or is served, every posted work request completes, waiters wake, and the disposed objects refuse use.
/// </summary>
public sealed class VerbsTeardownTests : IDisposable
{
    private const ulong Magic = 0xD15B_05ED_0000_0000;
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);
    private readonly Volume _volume = Volume.CreateInMemory(new VolumeOptions { BlockCount = 2048 });
    private readonly PinOwner _owner;

    public VerbsTeardownTests() => _owner = new PinOwner(_volume, 1L << 30);

    public void Dispose()
    {
        _owner.Dispose();
        _volume.Dispose();
    }

    /// <summary>A server and a client device connected over iWARP on 127.0.0.1; the server exposes a file region.</summary>
    private sealed class IwarpPair : IDisposable
    {
        public required RdmaDevice ServerDevice;
        public required RdmaDevice ClientDevice;
        public required QueuePair Server;
        public required QueuePair Client;
        public required CompletionQueue ClientCq;
        public required MemoryRegion Target;
        public required MemoryRegion Source;
        public required VolumeFile File;

        public void Dispose()
        {
            ClientDevice.Dispose();
            ServerDevice.Dispose();
        }
    }

    private async Task<IwarpPair> ConnectAsync(string name, int length)
    {
        var file = _volume.CreateFile(name);
        file.Write(0, new byte[length]);
        var sdev = new RdmaDevice("srv-" + name);
        var cdev = new RdmaDevice("cli-" + name);
        var spd = sdev.AllocatePd();
        var scq = sdev.CreateCompletionQueue(4096);
        var sqp = spd.CreateQueuePair(new QueuePairOptions { SendCq = scq, RecvCq = scq, MaxSendWr = 256 });
        var target = spd.RegisterFile(_owner, file, 0, length, VerbsRig.All);
        var cpd = cdev.AllocatePd();
        var ccq = cdev.CreateCompletionQueue(1 << 16);
        var cqp = cpd.CreateQueuePair(new QueuePairOptions { SendCq = ccq, RecvCq = ccq, MaxSendWr = 1024 });
        var source = cpd.RegisterBuffer(length, AccessFlags.LocalWrite);
        using var listener = new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0));
        var accept = Task.Run(async () => (await listener.AcceptAsync()).Accept(sqp));
        await IwarpConnector.ConnectAsync(cqp, listener.LocalEndPoint);
        await accept.WaitAsync(Bound);
        return new IwarpPair { ServerDevice = sdev, ClientDevice = cdev, Server = sqp, Client = cqp, ClientCq = ccq, Target = target, Source = source, File = file };
    }

    private static void Stamp(Span<byte> s, ulong seq)
    {
        for (int i = 0; i + 8 <= s.Length; i += 8) BinaryPrimitives.WriteUInt64LittleEndian(s[i..], Magic | seq);
    }

    /// <summary>Every stamp found on the whole device.</summary>
    private HashSet<ulong> ScanDevice()
    {
        var found = new HashSet<ulong>();
        var dev = _volume.Device;
        for (long off = 0; off < dev.Length; off += 4096)
        {
            var span = dev.GetSpan(off, 4096);
            for (int i = 0; i < 4096; i += 8)
            {
                ulong w = BinaryPrimitives.ReadUInt64LittleEndian(span[i..]);
                if ((w & 0xFFFF_FFFF_0000_0000) == Magic) found.Add(w & 0xFFFF_FFFF);
            }
        }
        return found;
    }

    /// <summary>Posts RDMA Writes of stamped chunks (sequence numbers from <paramref name="firstSeq"/>) as fast as the QP takes them.</summary>
    private static int Blast(IwarpPair p, ulong firstSeq, int count, int chunk)
    {
        int posted = 0;
        for (int i = 0; i < count; i++)
        {
            ulong seq = firstSeq + (ulong)i;
            int slot = (int)(seq % (ulong)(p.Source.Length / chunk));
            Stamp(p.Source.GetBufferSpan().Slice(slot * chunk, chunk), seq);
            try
            {
                p.Client.PostSend(VerbsRig.Write(seq, p.Source, slot * chunk, (uint)chunk, p.Target, slot * chunk, signaled: false));
                posted++;
            }
            catch (PinnedDmaException e) when (e.Error == PinnedDmaError.NoSpace)
            {
                Thread.Sleep(1); // send queue full: the client is faster than the wire
            }
            if (p.Client.State == QpState.Error) break;
        }
        return posted;
    }

    [Fact]
    public async Task NoIncomingWriteLandsAfterTheResponderMovedToError()
    {
        using var p = await ConnectAsync("err", 64 * 1024);
        Blast(p, 0, 200, 512);
        p.Server.Modify(new QpAttributes { State = QpState.Error });
        var before = ScanDevice();
        // Everything the client sends from here on must be refused: nothing of it may reach the region.
        Blast(p, 1_000_000, 2000, 512);
        Thread.Sleep(200); // give stray frames the chance to land; the assertion does not depend on the time
        var after = ScanDevice();
        Assert.DoesNotContain(after, s => s >= 1_000_000);
        Assert.Subset(before, after.Where(s => s < 1_000_000).ToHashSet());
    }

    [Fact]
    public async Task DisposedServerDeviceServesNoReadAndTakesNoWrite()
    {
        using var p = await ConnectAsync("dev", 64 * 1024);
        p.Target.Pin!.Write(0, Enumerable.Repeat((byte)0x5A, 4096).ToArray());
        p.ServerDevice.Dispose();
        Assert.False(p.Target.IsValid);
        Assert.Equal(PinStatus.Released, p.Target.Pin!.Status);
        Assert.Equal(QpState.Error, p.Server.State);
        // A READ of the disposed server's region must not succeed, and a WRITE must not land.
        var read = p.Client.State == QpState.Error ? null : (ulong?)1;
        if (read is not null)
        {
            p.Client.PostSend(VerbsRig.Read(1, p.Source, 0, 4096, p.Target, 0));
            var wc = VerbsRig.WaitOne(p.ClientCq);
            Assert.NotEqual(WcStatus.Success, wc.Status);
        }
        Assert.All(p.Source.GetBufferSpan()[..4096].ToArray(), b => Assert.Equal(0, b));
        Stamp(p.Source.GetBufferSpan()[..4096], 7);
        if (p.Client.State != QpState.Error) p.Client.PostSend(VerbsRig.Write(2, p.Source, 0, 4096, p.Target, 0));
        Thread.Sleep(100); // stray bytes would land by now; the assertion does not depend on it
        Assert.DoesNotContain(7ul, ScanDevice());
    }

    [Fact]
    public void LoopbackPostSendAfterDeviceDisposeThrowsAndEveryPostedRequestCompleted()
    {
        var rig = new VerbsRig(name: "td-dev");
        var src = rig.Pd.RegisterBuffer(4096, AccessFlags.LocalWrite);
        var dst = rig.Pd.RegisterBuffer(4096, VerbsRig.All);
        rig.A.Modify(new QpAttributes { State = QpState.Sqd }); // requests stay queued
        for (ulong i = 0; i < 8; i++) rig.A.PostSend(VerbsRig.Write(i, src, 0, 64, dst, 0));
        var flushed = new List<WorkCompletion>();
        // The CQ is disposed with the device: collect what the QP flushes by destroying the QP first.
        rig.A.Dispose();
        Span<WorkCompletion> wcs = stackalloc WorkCompletion[16];
        int n = rig.CqA.Poll(wcs);
        for (int i = 0; i < n; i++) flushed.Add(wcs[i]);
        Assert.Equal(8, flushed.Count);
        Assert.All(flushed, wc => Assert.Equal(WcStatus.WrFlushErr, wc.Status));
        rig.Device.Dispose();
        Assert.Throws<ObjectDisposedException>(() => rig.B.PostSend(VerbsRig.Write(9, src, 0, 64, dst, 0)));
        Assert.Throws<ObjectDisposedException>(() => rig.A.PostRecv(VerbsRig.Recv(9, dst, 0, 64)));
        Assert.Throws<ObjectDisposedException>(() => rig.Pd.RegisterBuffer(64, AccessFlags.LocalWrite));
        Assert.Throws<ObjectDisposedException>(() => rig.Pd.CreateQueuePair(new QueuePairOptions { SendCq = rig.CqA, RecvCq = rig.CqA }));
        Assert.Throws<ObjectDisposedException>(() => rig.Device.AllocatePd());
        Assert.Throws<ObjectDisposedException>(() => rig.Device.CreateCompletionQueue(4));
        Assert.Throws<ObjectDisposedException>(() => rig.CqA.Poll(new WorkCompletion[4]));
        Assert.False(src.IsValid);
        rig.Dispose();
    }

    [Fact]
    public async Task WaitAsyncFaultsWhenTheQueueOrItsDeviceIsDisposedAndHonoursCancellation()
    {
        using var dev = new RdmaDevice("td-wait");
        var cq = dev.CreateCompletionQueue(8);
        var wait = cq.WaitAsync().AsTask();
        cq.Dispose();
        await Assert.ThrowsAsync<ObjectDisposedException>(() => wait.WaitAsync(Bound));

        var cq2 = dev.CreateCompletionQueue(8);
        var wait2 = cq2.WaitAsync().AsTask();
        dev.Dispose();
        await Assert.ThrowsAsync<ObjectDisposedException>(() => wait2.WaitAsync(Bound));
        await Assert.ThrowsAsync<ObjectDisposedException>(() => cq2.WaitAsync().AsTask());

        using var dev3 = new RdmaDevice("td-cancel");
        var cq3 = dev3.CreateCompletionQueue(8);
        using var cts = new CancellationTokenSource();
        var wait3 = cq3.WaitAsync(cts.Token).AsTask();
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => wait3.WaitAsync(Bound));
        // The queue is usable again after a canceled wait.
        var wait4 = cq3.WaitAsync().AsTask();
        Assert.False(wait4.IsCompleted);
    }

    [Fact]
    public void CreateQueuePairWithoutCompletionQueuesIsRefusedAtTheCall()
    {
        using var dev = new RdmaDevice("td-null");
        var pd = dev.AllocatePd();
        var cq = dev.CreateCompletionQueue(8);
        Assert.Throws<ArgumentNullException>(() => pd.CreateQueuePair(new QueuePairOptions { SendCq = null!, RecvCq = cq }));
        Assert.Throws<ArgumentNullException>(() => pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = null! }));
        cq.Dispose();
        Assert.Throws<ObjectDisposedException>(() => pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = cq }));
    }

    [Fact]
    public void AFaultInsideTheEngineMovesThatQueuePairToErrorWithACompletion()
    {
        // An on-demand region over a volume that is then disposed: the engine's access throws inside its thread.
        var vol = Volume.CreateInMemory(new VolumeOptions { BlockCount = 256 });
        var f = vol.CreateFile("odp");
        f.Write(0, new byte[8192]);
        using var rig = new VerbsRig(name: "td-fault");
        var odp = rig.Pd.RegisterFile(new PinOwner(vol, 1 << 20), f, 0, 8192, VerbsRig.All | AccessFlags.OnDemand);
        var local = rig.Pd.RegisterBuffer(8192, AccessFlags.LocalWrite);
        vol.Dispose();
        rig.A.PostSend(VerbsRig.Read(1, local, 0, 4096, odp, 0));
        rig.A.PostSend(VerbsRig.Read(2, local, 0, 4096, odp, 0));
        var first = VerbsRig.WaitOne(rig.CqA);
        var second = VerbsRig.WaitOne(rig.CqA);
        Assert.Equal(1ul, first.WrId);
        Assert.NotEqual(WcStatus.Success, first.Status);
        Assert.Equal(WcStatus.WrFlushErr, second.Status);
        Assert.Equal(QpState.Error, rig.A.State);
        // The engine lives on: another pair on the same device still works.
        var cq = rig.Device.CreateCompletionQueue(8);
        var x = rig.Pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = cq });
        var y = rig.Pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = cq });
        LoopbackFabric.Connect(x, y);
        var dst = rig.Pd.RegisterBuffer(64, VerbsRig.All);
        x.PostSend(VerbsRig.Write(3, local, 0, 64, dst, 0));
        Assert.Equal(WcStatus.Success, VerbsRig.WaitOne(cq).Status);
    }

    [Fact]
    public async Task ConnectingAWorkingQueuePairIsRefusedBeforeItIsTouched()
    {
        using var rig = new VerbsRig(name: "td-conn");
        using var listener = new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0));
        using var sdev = new RdmaDevice("td-conn-srv");
        var spd = sdev.AllocatePd();
        var scq = sdev.CreateCompletionQueue(8);
        var sqp = spd.CreateQueuePair(new QueuePairOptions { SendCq = scq, RecvCq = scq });
        var accept = Task.Run(async () =>
        {
            try
            {
                (await listener.AcceptAsync(new CancellationTokenSource(TimeSpan.FromSeconds(5)).Token)).Accept(sqp);
            }
            catch (OperationCanceledException)
            {
            }
        });
        // rig.A is connected (RTS) and working: connecting it again must fail at once and leave it working.
        var ex = await Assert.ThrowsAsync<PinnedDmaException>(() => IwarpConnector.ConnectAsync(rig.A, listener.LocalEndPoint));
        Assert.Equal(PinnedDmaError.InvalidArgument, ex.Error);
        Assert.Equal(QpState.Rts, rig.A.State);
        var src = rig.Pd.RegisterBuffer(64, AccessFlags.LocalWrite);
        var dst = rig.Pd.RegisterBuffer(64, VerbsRig.All);
        rig.A.PostSend(VerbsRig.Write(1, src, 0, 64, dst, 0));
        Assert.Equal(WcStatus.Success, VerbsRig.WaitOne(rig.CqA).Status);
        await accept.WaitAsync(Bound);
    }

    [Fact]
    public void DisposingAProtectionDomainCascadesToItsQueuePairsAndRegions()
    {
        using var rig = new VerbsRig(name: "td-pd");
        var f = rig.NewFile("pd", 8192);
        var mr = rig.Pd.RegisterFile(rig.Owner, f, 0, 8192, VerbsRig.All);
        Assert.Equal(1, rig.Owner.PinCount);
        rig.B.PostRecv(VerbsRig.Recv(5, mr, 0, 64));
        rig.Pd.Dispose();
        Assert.False(mr.IsValid);
        Assert.Equal(0, rig.Owner.PinCount);
        Assert.Throws<ObjectDisposedException>(() => rig.A.PostSend(VerbsRig.Send(1, mr, 0, 8)));
        var wc = VerbsRig.WaitOne(rig.CqB);
        Assert.Equal(5ul, wc.WrId);
        Assert.Equal(WcStatus.WrFlushErr, wc.Status);
    }
}
