using System.Buffers.Binary;
using PinnedDma.Storage;
using PinnedDma.Verbs;
using Xunit;

namespace PinnedDma.Tests.Verbs;

public sealed class LeaseBreakUnderTrafficTests : IDisposable
{
    private const int Block = 4096;
    private const int Blocks = 16;
    private const int Chunk = 512;
    private const ulong Magic = 0x5EA7_1E55_0000_0000;
    private readonly VerbsRig _rig = new(blockCount: 1024, name: "lease");

    public void Dispose() => _rig.Dispose();

    /// <summary>A payload: 64 copies of (Magic | seq); a scan finds it by any 8-aligned word.</summary>
    private static void Stamp(Span<byte> chunk, ulong seq)
    {
        for (int i = 0; i < chunk.Length; i += 8) BinaryPrimitives.WriteUInt64LittleEndian(chunk[i..], Magic | seq);
    }

    /// <summary>Every sequence number found stamped on the device.</summary>
    private HashSet<ulong> ScanDevice()
    {
        var dev = _rig.Volume.Device;
        var found = new HashSet<ulong>();
        for (long off = 0; off < dev.Length; off += Block)
        {
            var span = dev.GetSpan(off, Block);
            for (int i = 0; i < Block; i += 8)
            {
                ulong w = BinaryPrimitives.ReadUInt64LittleEndian(span[i..]);
                if ((w & 0xFFFF_FFFF_0000_0000) == Magic) found.Add(w & 0xFFFF_FFFF);
            }
        }
        return found;
    }

    [Fact]
    public void HolderThatReregistersAfterEachBreakKeepsStreaming()
    {
        var f = _rig.NewFile("stream", Blocks * Block);
        var src = _rig.Pd.RegisterBuffer(Chunk, AccessFlags.LocalWrite);
        var gate = new object();
        MemoryRegion? current = null;
        var keys = new List<uint>();
        var lastInSlot = new Dictionary<int, ulong>();
        int errors = 0;
        long successesSinceRegister = 0;
        var successesPerRegistration = new List<long>();

        MemoryRegion Register()
        {
            var mr = _rig.Pd.RegisterFile(_rig.Owner, f, 0, Blocks * Block, VerbsRig.All);
            // The application's handler: quiesce its traffic, deregister, let the operation go on.
            mr.LeaseBreaking += (_, _) =>
            {
                lock (gate)
                {
                    if (current == mr) current = null;
                    mr.Dispose();
                }
            };
            keys.Add(mr.RKey);
            return mr;
        }

        lock (gate) current = Register();
        using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        bool done = false;
        var sender = new Thread(() =>
        {
            ulong seq = 0;
            while (!Volatile.Read(ref done) && !stop.IsCancellationRequested)
            {
                lock (gate)
                {
                    var mr = current;
                    if (mr is null) { Monitor.Wait(gate, 5); continue; }
                    int slot = (int)(seq % (Blocks * Block / Chunk));
                    Stamp(src.GetBufferSpan(), seq);
                    _rig.A.PostSend(VerbsRig.Write(seq, src, 0, Chunk, mr, slot * Chunk));
                    var wc = VerbsRig.WaitOne(_rig.CqA);
                    if (wc.Status == WcStatus.Success) { lastInSlot[slot] = seq; successesSinceRegister++; }
                    else errors++;
                    seq++;
                }
            }
        }) { Name = "stream sender" };
        sender.Start();
        try
        {
            var breakPolicy = ConflictPolicy.Break(TimeSpan.FromSeconds(10));
            for (int op = 0; op < 8 && !stop.IsCancellationRequested; op++)
            {
                // Let some traffic through under this registration.
                long deadline = Environment.TickCount64 + 5000;
                while (Interlocked.Read(ref successesSinceRegister) < 20 && Environment.TickCount64 < deadline) Thread.Sleep(1);
                if (op % 2 == 0)
                {
                    f.PunchHole((op % 4) * Block, 2 * Block, breakPolicy);
                }
                else
                {
                    f.Truncate(Blocks * Block / 2, breakPolicy);
                    f.Write(Blocks * Block / 2, new byte[Blocks * Block / 2]);
                }
                Assert.Empty(_rig.Volume.CheckSealInvariants());
                lock (gate)
                {
                    Assert.Null(current); // the handler ran and deregistered
                    successesPerRegistration.Add(successesSinceRegister);
                    successesSinceRegister = 0;
                    // The operation cleared data; forget what it removed.
                    lastInSlot.Clear();
                    current = Register();
                    Monitor.PulseAll(gate);
                }
            }
            long end = Environment.TickCount64 + 5000;
            while (Interlocked.Read(ref successesSinceRegister) < 20 && Environment.TickCount64 < end) Thread.Sleep(1);
        }
        finally
        {
            Volatile.Write(ref done, true);
            Assert.True(sender.Join(TimeSpan.FromSeconds(20)), "sender did not stop");
        }
        Assert.False(stop.IsCancellationRequested, "the stream did not finish in time");
        Assert.Equal(0, errors);
        Assert.True(keys.Count == 9, $"{keys.Count} registrations; per registration: {string.Join(",", successesPerRegistration)}");
        Assert.Equal(keys.Count, keys.Distinct().Count());
        Assert.All(successesPerRegistration, n => Assert.True(n >= 20, $"only {n} writes under one registration"));
        Assert.True(successesSinceRegister >= 20, "traffic did not resume on the last registration");
        Assert.Equal(QpState.Rts, _rig.A.State);
        // The file holds the last write to each slot since the last operation.
        foreach (var (slot, seq) in lastInSlot)
        {
            var b = VerbsRig.ReadFile(f, slot * Chunk, Chunk);
            Assert.Equal(Magic | seq, BinaryPrimitives.ReadUInt64LittleEndian(b));
            Assert.Equal(Magic | seq, BinaryPrimitives.ReadUInt64LittleEndian(b.AsSpan(Chunk - 8)));
        }
        lock (gate) current?.Dispose();
        Assert.True(_rig.Volume.Fsck().IsClean);
    }

    [Theory]
    [InlineData("truncate")]
    [InlineData("punch")]
    public void HolderThatIgnoresTheBreakIsRevokedAndNothingLandsAfterwards(string operation)
    {
        var f = _rig.NewFile("stream", Blocks * Block);
        var src = _rig.Pd.RegisterBuffer(Chunk * 32, AccessFlags.LocalWrite);
        var mr = _rig.Pd.RegisterFile(_rig.Owner, f, 0, Blocks * Block, VerbsRig.All);
        bool told = false;
        mr.LeaseBreaking += (_, _) => Volatile.Write(ref told, true); // and nothing else
        var pinnedDevice = mr.Pin!.ScatterGatherList.ToArray();
        var results = new Dictionary<ulong, WcStatus>();
        long started = 0;
        var sender = new Thread(() =>
        {
            Span<WorkCompletion> wcs = stackalloc WorkCompletion[16];
            ulong seq = 0;
            int inFlight = 0;
            long deadline = Environment.TickCount64 + 20_000;
            bool failed = false;
            while (Environment.TickCount64 < deadline && !(failed && inFlight == 0))
            {
                while (!failed && inFlight < 16)
                {
                    int slot = (int)(seq % 32);
                    Stamp(src.GetBufferSpan().Slice(slot * Chunk, Chunk), seq);
                    _rig.A.PostSend(VerbsRig.Write(seq, src, slot * Chunk, Chunk, mr, (long)(seq % (Blocks * Block / Chunk)) * Chunk));
                    seq++;
                    inFlight++;
                    Interlocked.Increment(ref started);
                }
                int n = _rig.CqA.Poll(wcs);
                for (int i = 0; i < n; i++)
                {
                    lock (results) results[wcs[i].WrId] = wcs[i].Status;
                    if (wcs[i].Status != WcStatus.Success) failed = true;
                }
                inFlight -= n;
            }
        }) { Name = "stream sender" };
        sender.Start();
        long wait = Environment.TickCount64 + 5000;
        while (Interlocked.Read(ref started) < 200 && Environment.TickCount64 < wait) Thread.Sleep(1);

        if (operation == "truncate") f.Truncate(0, ConflictPolicy.Break(TimeSpan.FromMilliseconds(50)));
        else f.PunchHole(0, Blocks * Block, ConflictPolicy.Break(TimeSpan.FromMilliseconds(50)));
        // The handler runs on the thread pool and the breaker does not wait for it: it may be told after the revoke.
        Assert.True(SpinWait.SpinUntil(() => Volatile.Read(ref told), TimeSpan.FromSeconds(30)));
        Assert.False(mr.IsValid);
        Assert.Equal(PinStatus.Revoked, mr.Pin!.Status);
        // The freed blocks go to another file at once: fill the whole free space with zeros.
        var other = _rig.Volume.CreateFile("other");
        long free = _rig.Volume.FreeBlocks;
        other.Write(0, new byte[(free - 8) * Block]);

        Assert.True(sender.Join(TimeSpan.FromSeconds(30)), "sender did not stop");
        Assert.Equal(QpState.Error, _rig.A.State);
        Dictionary<ulong, WcStatus> done;
        lock (results) done = new(results);
        var firstFailure = done.Where(kv => kv.Value != WcStatus.Success).Min(kv => kv.Key);
        Assert.Equal(WcStatus.RemAccessErr, done[firstFailure]);
        Assert.All(done.Where(kv => kv.Key > firstFailure), kv => Assert.Equal(WcStatus.WrFlushErr, kv.Value));
        Assert.All(done.Where(kv => kv.Key < firstFailure), kv => Assert.Equal(WcStatus.Success, kv.Value));

        // No stamped word of a request that did not succeed exists anywhere; none at all in the reallocated blocks.
        var found = ScanDevice();
        Assert.DoesNotContain(found, s => s >= firstFailure);
        Assert.All(VerbsRig.ReadFile(other, 0, (int)other.Length), b => Assert.Equal(0, b));
        Assert.Empty(_rig.Volume.CheckSealInvariants());
        Assert.True(_rig.Volume.Fsck().IsClean);
        _ = pinnedDevice;
    }
}
