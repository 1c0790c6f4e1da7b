using PinnedDma.Storage;
using PinnedDma.Verbs;
using Xunit;

namespace PinnedDma.Tests.Verbs;

/// <summary>
/// Every public verbs type (the iWARP ones aside) tried the way a careless caller would: null, negative and huge
/// arguments, use after dispose, double dispose, dispose from a completion continuation while another thread posts.
/// Each gets a typed error at once and nothing is lost or left running.
/// </summary>
public sealed class CarelessCallerTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);

    [Fact]
    public void ADeviceNeedsAName()
    {
        Assert.Throws<ArgumentNullException>(() => new RdmaDevice(null!));
        Assert.Throws<ArgumentException>(() => new RdmaDevice(""));
        Assert.Throws<ArgumentException>(() => new RdmaDevice("  "));
    }

    [Fact]
    public void ADisposedDeviceRefusesEveryChildAndDisposesTwice()
    {
        var nic = new RdmaDevice("careless");
        nic.Dispose();
        nic.Dispose();
        Assert.Throws<ObjectDisposedException>(() => nic.AllocatePd());
        Assert.Throws<ObjectDisposedException>(() => nic.CreateCompletionQueue(16));
        // Disposed first, whatever the other argument: a disposed device says so.
        Assert.Throws<ObjectDisposedException>(() => nic.CreateCompletionQueue(0));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-1)]
    [InlineData(int.MinValue)]
    [InlineData((1 << 22) + 1)]
    [InlineData(int.MaxValue)]
    public void CompletionQueueCapacityIsChecked(int capacity)
    {
        using var nic = new RdmaDevice("careless");
        Assert.Throws<ArgumentOutOfRangeException>(() => nic.CreateCompletionQueue(capacity));
    }

    [Fact]
    public void ADisposedCompletionQueueThrowsOnEveryCall()
    {
        using var nic = new RdmaDevice("careless");
        var cq = nic.CreateCompletionQueue(4);
        cq.Dispose();
        cq.Dispose();
        Assert.Throws<ObjectDisposedException>(() => cq.Poll(new WorkCompletion[1]));
        Assert.Throws<ObjectDisposedException>(() => cq.Poll(new WorkCompletion[1], TimeSpan.FromSeconds(1)));
        Assert.Throws<ObjectDisposedException>(() => cq.Poll(new WorkCompletion[1], Timeout.InfiniteTimeSpan));
        Assert.True(cq.WaitAsync().IsFaulted);
        var pd = nic.AllocatePd();
        Assert.Throws<ObjectDisposedException>(() => pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = cq }));
    }

    [Fact]
    public void QueuePairOptionsAreChecked()
    {
        using var nic = new RdmaDevice("careless");
        var pd = nic.AllocatePd();
        var cq = nic.CreateCompletionQueue(16);
        Assert.Throws<ArgumentNullException>(() => pd.CreateQueuePair(null!));
        Assert.Throws<ArgumentNullException>(() => pd.CreateQueuePair(new QueuePairOptions { SendCq = null!, RecvCq = cq }));
        Assert.Throws<ArgumentNullException>(() => pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = null! }));
        foreach (int depth in new[] { 0, -1, int.MinValue, 65537, int.MaxValue })
        {
            Assert.Throws<ArgumentOutOfRangeException>(() => pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = cq, MaxSendWr = depth }));
            Assert.Throws<ArgumentOutOfRangeException>(() => pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = cq, MaxRecvWr = depth }));
        }
        using var qp = pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = cq, MaxSendWr = 65536, MaxRecvWr = 1 });
        Assert.Equal(QpState.Reset, qp.State);
    }

    /// <summary>
    /// ibv_create_qp refuses a CQ of another context. The old code accepted it: the queue pair then completed into a
    /// CQ that the other device's dispose destroys, and its completions vanished.
    /// </summary>
    [Fact]
    public void AQueuePairRefusesAnotherDevicesCompletionQueue()
    {
        using var nic = new RdmaDevice("careless");
        using var other = new RdmaDevice("other");
        var pd = nic.AllocatePd();
        var mine = nic.CreateCompletionQueue(16);
        var theirs = other.CreateCompletionQueue(16);
        Assert.Throws<ArgumentException>(() => pd.CreateQueuePair(new QueuePairOptions { SendCq = theirs, RecvCq = mine }));
        Assert.Throws<ArgumentException>(() => pd.CreateQueuePair(new QueuePairOptions { SendCq = mine, RecvCq = theirs }));
    }

    [Fact]
    public void RegistrationArgumentsAreChecked()
    {
        using var volume = Volume.CreateInMemory(new VolumeOptions { BlockCount = 256 });
        using var owner = new PinOwner(volume, 1 << 20);
        var file = volume.CreateFile("f");
        file.Write(0, new byte[8192]);
        using var nic = new RdmaDevice("careless");
        var pd = nic.AllocatePd();
        const AccessFlags rw = AccessFlags.LocalWrite | AccessFlags.RemoteWrite;
        Assert.Throws<ArgumentNullException>(() => pd.RegisterFile(null!, file, 0, 4096, rw));
        Assert.Throws<ArgumentNullException>(() => pd.RegisterFile(owner, null!, 0, 4096, rw));
        Assert.Throws<ArgumentOutOfRangeException>(() => pd.RegisterFile(owner, file, -1, 4096, rw));
        Assert.Throws<ArgumentOutOfRangeException>(() => pd.RegisterFile(owner, file, 0, -1, rw));
        Assert.Throws<ArgumentOutOfRangeException>(() => pd.RegisterFile(owner, file, 0, 0, rw));
        Assert.Throws<ArgumentOutOfRangeException>(() => pd.RegisterFile(owner, file, long.MaxValue, 4096, rw));
        Assert.Throws<ArgumentOutOfRangeException>(() => pd.RegisterFile(owner, file, 0, 1L << 40, rw));
        Assert.Throws<ArgumentOutOfRangeException>(() => pd.RegisterFile(owner, file, 0, 4096, (AccessFlags)0x4000));
        Assert.Throws<ArgumentOutOfRangeException>(() => pd.RegisterBuffer(0, rw));
        Assert.Throws<ArgumentOutOfRangeException>(() => pd.RegisterBuffer(-4096, rw));
        // The old code allocated and zeroed whatever it was asked for: 2 GiB of committed memory here.
        Assert.Throws<ArgumentOutOfRangeException>(() => pd.RegisterBuffer(int.MaxValue, rw));
        Assert.Throws<ArgumentOutOfRangeException>(() => pd.RegisterBuffer((1 << 30) + 1, rw));
        Assert.Equal(PinnedDmaError.InvalidArgument, Assert.Throws<PinnedDmaException>(() => pd.RegisterBuffer(4096, AccessFlags.RemoteWrite)).Error);
        Assert.Equal(0, owner.LockedBytes);
    }

    /// <summary>The old ReRegister had no disposed check: a deregistered region silently changed its access.</summary>
    [Fact]
    public void ReRegisteringADeregisteredRegionThrowsObjectDisposed()
    {
        using var volume = Volume.CreateInMemory(new VolumeOptions { BlockCount = 256 });
        using var owner = new PinOwner(volume, 1 << 20);
        var file = volume.CreateFile("f");
        file.Write(0, new byte[8192]);
        using var nic = new RdmaDevice("careless");
        var pd = nic.AllocatePd();
        var buffer = pd.RegisterBuffer(4096, AccessFlags.LocalWrite);
        var pinned = pd.RegisterFile(owner, file, 0, 4096, AccessFlags.RemoteRead);
        var odp = pd.RegisterFile(owner, file, 0, 4096, AccessFlags.OnDemand | AccessFlags.RemoteRead);
        foreach (var mr in new[] { buffer, pinned, odp })
        {
            var access = mr.Access;
            mr.Dispose();
            mr.Dispose();
            Assert.Throws<ObjectDisposedException>(() => mr.ReRegister(AccessFlags.LocalWrite | AccessFlags.RemoteWrite | (access & AccessFlags.OnDemand)));
            Assert.Throws<ObjectDisposedException>(() => mr.ReRegister(access));
            Assert.Equal(access, mr.Access);
            Assert.False(mr.IsValid);
        }
        Assert.Throws<ObjectDisposedException>(() => buffer.GetBufferSpan());
    }

    [Fact]
    public void ADisposedProtectionDomainRefusesEveryChild()
    {
        using var volume = Volume.CreateInMemory(new VolumeOptions { BlockCount = 256 });
        using var owner = new PinOwner(volume, 1 << 20);
        var file = volume.CreateFile("f");
        file.Write(0, new byte[8192]);
        using var nic = new RdmaDevice("careless");
        var pd = nic.AllocatePd();
        var cq = nic.CreateCompletionQueue(16);
        pd.Dispose();
        pd.Dispose();
        Assert.Throws<ObjectDisposedException>(() => pd.RegisterBuffer(4096, AccessFlags.LocalWrite));
        Assert.Throws<ObjectDisposedException>(() => pd.RegisterFile(owner, file, 0, 4096, AccessFlags.RemoteRead));
        Assert.Throws<ObjectDisposedException>(() => pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = cq }));
        Assert.Equal(0, owner.LockedBytes);
    }

    /// <summary>
    /// The device is disposed from a WaitAsync continuation while another thread keeps posting: the poster only ever
    /// sees ObjectDisposedException (or a full send queue) and stops, the continuation's dispose returns, no thread
    /// hangs, and the wait after it faults at once.
    /// </summary>
    [Fact]
    public async Task DisposingTheDeviceFromACompletionContinuationWhilePosting()
    {
        for (int round = 0; round < 20; round++)
        {
            var rig = new VerbsRig(maxSendWr: 64, cqCapacity: 4096, name: "careless");
            var src = rig.Pd.RegisterBuffer(4096, AccessFlags.LocalWrite);
            var dst = rig.Pd.RegisterBuffer(4096, VerbsRig.All);
            using var started = new ManualResetEventSlim();
            var wr = new SendWorkRequest { Opcode = WrOpcode.RdmaWrite, Flags = SendFlags.Signaled, Local = new(src.Address, 64, src.LKey), RemoteAddress = dst.Address, RKey = dst.RKey };
            var poster = new PosterUntilDisposed(i =>
            {
                wr.WrId = i;
                rig.A.PostSend(in wr);
            }, started);
            Assert.True(started.Wait(Bound));
            await rig.CqA.WaitAsync().AsTask().WaitAsync(Bound);
            rig.Device.Dispose(); // on the continuation's thread, the poster still posting
            Assert.True(poster.Thread.Join(Bound), "the poster hangs");
            Assert.Null(poster.Unexpected);
            Assert.True(rig.CqA.WaitAsync().IsFaulted);
            Assert.False(dst.IsValid);
            rig.Dispose();
        }
    }

    /// <summary>
    /// A LeaseBreaking handler (the one callback verbs raise) that disposes the whole device, pinned and ODP regions
    /// both in use by a thread posting RDMA writes: the truncate that asked finishes, the poster stops on
    /// ObjectDisposedException, nothing hangs, and the volume's seals are consistent.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task DisposingTheDeviceFromALeaseBreakHandlerWhilePosting(bool odpToo)
    {
        var rig = new VerbsRig(maxSendWr: 64, cqCapacity: 4096, name: "careless");
        try
        {
            var src = rig.Pd.RegisterBuffer(4096, AccessFlags.LocalWrite);
            var f = rig.NewFile("target", 64 * 1024);
            var pinned = rig.Pd.RegisterFile(rig.Owner, f, 0, 64 * 1024, VerbsRig.All);
            var odp = odpToo ? rig.Pd.RegisterFile(rig.Owner, f, 0, 64 * 1024, VerbsRig.All | AccessFlags.OnDemand) : null;
            pinned.LeaseBreaking += (_, _) => rig.Device.Dispose();
            using var started = new ManualResetEventSlim();
            var wr = new SendWorkRequest { Opcode = WrOpcode.RdmaWrite, Flags = SendFlags.Signaled, Local = new(src.Address, 64, src.LKey) };
            var wcs = new WorkCompletion[64];
            var poster = new PosterUntilDisposed(i =>
            {
                var target = odp is not null && i % 2 == 1 ? odp : pinned;
                wr.WrId = i;
                wr.RKey = target.RKey;
                wr.RemoteAddress = target.Address + (i % 512) * 64;
                rig.A.PostSend(in wr);
                rig.CqA.Poll(wcs);
                rig.CqB.Poll(wcs);
            }, started);
            Assert.True(started.Wait(Bound));
            await Task.Run(() => f.Truncate(4096, ConflictPolicy.Break(TimeSpan.FromSeconds(5)))).WaitAsync(Bound);
            Assert.True(poster.Thread.Join(Bound), "the poster hangs");
            Assert.Null(poster.Unexpected);
            Assert.False(pinned.IsValid);
            Assert.Equal(4096, f.Length);
            Assert.Empty(rig.Volume.CheckSealInvariants());
        }
        finally
        {
            rig.Dispose();
        }
    }

    /// <summary>
    /// A thread that posts (<c>post(i)</c> for i = 0, 1, ...) until the device's dispose shows as
    /// ObjectDisposedException, yielding while the send queue is full; it sets <c>started</c> after each post. Any other
    /// exception, or no dispose within the bound, is kept in <see cref="Unexpected"/>.
    /// </summary>
    private sealed class PosterUntilDisposed
    {
        public PosterUntilDisposed(Action<ulong> post, ManualResetEventSlim started)
        {
            Thread = new Thread(() =>
            {
                long deadline = Environment.TickCount64 + (long)Bound.TotalMilliseconds;
                for (ulong i = 0; Environment.TickCount64 < deadline; i++)
                {
                    try
                    {
                        post(i);
                        started.Set();
                    }
                    catch (ObjectDisposedException)
                    {
                        return;
                    }
                    catch (PinnedDmaException e) when (e.Error == PinnedDmaError.NoSpace)
                    {
                        Thread.Yield();
                    }
                    catch (Exception e)
                    {
                        Unexpected = e;
                        return;
                    }
                }
                Unexpected = new TimeoutException("the poster never saw the dispose");
            }) { IsBackground = true };
            Thread.Start();
        }

        public Thread Thread { get; }

        public Exception? Unexpected { get; private set; }
    }
}
