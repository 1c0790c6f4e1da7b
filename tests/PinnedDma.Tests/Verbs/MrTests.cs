using PinnedDma.Storage;
using PinnedDma.Verbs;
using Xunit;

namespace PinnedDma.Tests.Verbs;

public sealed class MrTests : IDisposable
{
    private readonly VerbsRig _rig = new(name: "mr");

    public void Dispose() => _rig.Dispose();

    private static readonly AccessFlags[] Bits = [AccessFlags.LocalWrite, AccessFlags.RemoteWrite, AccessFlags.RemoteRead, AccessFlags.RemoteAtomic];

    private static IEnumerable<AccessFlags> AllCombinations()
    {
        for (int m = 0; m < 16; m++)
        {
            var a = AccessFlags.None;
            for (int i = 0; i < 4; i++)
                if ((m & (1 << i)) != 0) a |= Bits[i];
            yield return a;
        }
    }

    private static bool Legal(AccessFlags a) =>
        (a & (AccessFlags.RemoteWrite | AccessFlags.RemoteAtomic)) == 0 || (a & AccessFlags.LocalWrite) != 0;

    [Theory]
    [InlineData("file")]
    [InlineData("odp")]
    [InlineData("buffer")]
    public void RegistrationAcceptsExactlyTheLegalAccessCombinations(string kind)
    {
        var f = _rig.NewFile("f", 8192, 1);
        int legal = 0;
        foreach (var access in AllCombinations())
        {
            var a = kind == "odp" ? access | AccessFlags.OnDemand : access;
            Func<MemoryRegion> reg = kind switch
            {
                "buffer" => () => _rig.Pd.RegisterBuffer(4096, a),
                _ => () => _rig.Pd.RegisterFile(_rig.Owner, f, 0, 8192, a),
            };
            if (Legal(access))
            {
                legal++;
                using var mr = reg();
                Assert.Equal(a, mr.Access);
                Assert.NotEqual(0u, mr.LKey);
                Assert.Equal(mr.LKey, mr.RKey);
                Assert.True(mr.IsValid);
                Assert.Equal(kind == "odp", mr.IsOnDemand);
                if (kind == "file")
                {
                    Assert.NotNull(mr.Pin);
                    Assert.Equal((access & (AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteAtomic)) != 0 ? PinAccess.Write : PinAccess.Read, mr.Pin!.Access);
                }
                else
                {
                    Assert.Null(mr.Pin);
                }
            }
            else
            {
                var ex = Assert.Throws<PinnedDmaException>(() => reg());
                Assert.Equal(PinnedDmaError.InvalidArgument, ex.Error);
            }
        }
        Assert.Equal(10, legal); // without LocalWrite only None and RemoteRead; with it all 8
        Assert.Equal(0, _rig.Owner.PinCount);
        Assert.Equal(0, _rig.Owner.LockedBytes);
    }

    [Fact]
    public void OnDemandBufferAndUnknownFlagsAreRefused()
    {
        Assert.Equal(PinnedDmaError.InvalidArgument,
            Assert.Throws<PinnedDmaException>(() => _rig.Pd.RegisterBuffer(64, AccessFlags.OnDemand | AccessFlags.LocalWrite)).Error);
        Assert.Throws<ArgumentOutOfRangeException>(() => _rig.Pd.RegisterBuffer(64, (AccessFlags)16));
        var f = _rig.NewFile("f", 4096);
        Assert.Equal(PinnedDmaError.InvalidArgument,
            Assert.Throws<PinnedDmaException>(() => _rig.Pd.RegisterFile(_rig.Owner, f, 0, 8192, AccessFlags.OnDemand)).Error);
        Assert.Throws<ArgumentOutOfRangeException>(() => _rig.Pd.RegisterFile(_rig.Owner, f, 0, 0, AccessFlags.None));
    }

    [Fact]
    public void KeysAreDistinctAcrossLiveRegistrations()
    {
        var mrs = new List<MemoryRegion>();
        for (int i = 0; i < 300; i++) mrs.Add(_rig.Pd.RegisterBuffer(64, AccessFlags.LocalWrite));
        Assert.Equal(mrs.Count, mrs.Select(m => m.LKey).Distinct().Count());
        foreach (var m in mrs) m.Dispose();
    }

    [Fact]
    public void ReRegistrationInAFreedSlotNeverReusesTheStaleKey()
    {
        // The index of a deregistered region is reused at once; only the key byte tells the regions apart, so the
        // new key byte must differ from the stale one every time (not just with probability 255/256).
        uint last = 0;
        for (int i = 0; i < 3000; i++)
        {
            var mr = _rig.Pd.RegisterBuffer(64, AccessFlags.LocalWrite);
            Assert.NotEqual(last, mr.LKey);
            last = mr.LKey;
            mr.Dispose();
        }
    }

    [Fact]
    public void DeregisteredKeysFailRemotelyAndLocally()
    {
        var src = _rig.Pd.RegisterBuffer(4096, AccessFlags.LocalWrite);
        var f = _rig.NewFile("f", 8192, 0x11);
        var target = _rig.Pd.RegisterFile(_rig.Owner, f, 0, 8192, VerbsRig.All);
        uint staleR = target.RKey;
        ulong staleAddr = target.Address;
        target.Dispose();
        Assert.False(target.IsValid);
        Assert.Equal(0, _rig.Owner.PinCount);
        // Re-register the same range: a new key, and the stale one must not reach the new region.
        using var again = _rig.Pd.RegisterFile(_rig.Owner, f, 0, 8192, VerbsRig.All);
        Assert.NotEqual(staleR, again.RKey);
        src.GetBufferSpan().Fill(0xEE);
        _rig.A.PostSend(new SendWorkRequest { WrId = 1, Opcode = WrOpcode.RdmaWrite, Flags = SendFlags.Signaled, Local = new(src.Address, 4096, src.LKey), RemoteAddress = staleAddr, RKey = staleR });
        var wc = VerbsRig.WaitOne(_rig.CqA);
        Assert.Equal(1ul, wc.WrId);
        Assert.Equal(WcStatus.RemAccessErr, wc.Status);
        Assert.Equal(QpState.Error, _rig.A.State);
        Assert.All(VerbsRig.ReadFile(f, 0, 8192), b => Assert.Equal(0x11, b));

        // A deregistered local key: LocProtErr, nothing moves.
        _rig.Reconnect();
        uint staleL = src.LKey;
        ulong srcAddr = src.Address;
        src.Dispose();
        _rig.A.PostSend(new SendWorkRequest { WrId = 2, Opcode = WrOpcode.RdmaWrite, Flags = SendFlags.Signaled, Local = new(srcAddr, 64, staleL), RemoteAddress = again.Address, RKey = again.RKey });
        wc = VerbsRig.WaitOne(_rig.CqA);
        Assert.Equal(2ul, wc.WrId);
        Assert.Equal(WcStatus.LocProtErr, wc.Status);
        Assert.All(VerbsRig.ReadFile(f, 0, 8192), b => Assert.Equal(0x11, b));
    }

    [Fact]
    public void ReRegisterReadToWriteRepinsAndCloneGetsTheCopy()
    {
        var f = _rig.NewFile("f", 4 * 4096, 0x5A);
        using var mr = _rig.Pd.RegisterFile(_rig.Owner, f, 0, 4 * 4096, AccessFlags.RemoteRead);
        Assert.Equal(PinAccess.Read, mr.Pin!.Access);
        var sgl = mr.Pin.ScatterGatherList.ToArray();

        // A clone made after the READ registration shares the pinned blocks.
        var g = _rig.Volume.CreateFile("g");
        g.CloneRangeFrom(f, 0, 0, 4 * 4096);
        Assert.All(g.GetExtents(), e => Assert.True((e.Flags & FileExtentFlags.Shared) != 0, $"clone extent {e} not shared"));

        mr.ReRegister(AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteRead);
        Assert.Equal(PinAccess.Write, mr.Pin.Access);
        Assert.Equal(sgl, mr.Pin.ScatterGatherList.ToArray());
        Assert.Equal(PinStatus.Active, mr.Pin.Status);
        Assert.Empty(_rig.Volume.CheckSealInvariants());

        // The pinned file still maps the frozen blocks; the clone moved to copies.
        long fCovered = f.GetExtents().Where(e => sgl.Any(s => e.DeviceOffset >= s.DeviceOffset && e.DeviceOffset + e.Length <= s.DeviceOffset + s.Length)).Sum(e => e.Length);
        Assert.Equal(4 * 4096, fCovered);
        foreach (var e in g.GetExtents())
            Assert.DoesNotContain(sgl, s => e.DeviceOffset < s.DeviceOffset + s.Length && s.DeviceOffset < e.DeviceOffset + e.Length);

        // RDMA WRITE through the upgraded region lands in f only.
        var src = _rig.Pd.RegisterBuffer(4096, AccessFlags.LocalWrite);
        src.GetBufferSpan().Fill(0xC3);
        _rig.A.PostSend(VerbsRig.Write(7, src, 0, 4096, mr, 4096));
        Assert.Equal(WcStatus.Success, VerbsRig.WaitOne(_rig.CqA).Status);
        Assert.All(VerbsRig.ReadFile(f, 4096, 4096), b => Assert.Equal(0xC3, b));
        Assert.All(VerbsRig.ReadFile(g, 0, 4 * 4096), b => Assert.Equal(0x5A, b));
        Assert.True(_rig.Volume.Fsck().IsClean);
    }

    [Fact]
    public void ReRegisterValidatesAccess()
    {
        var f = _rig.NewFile("f", 4096);
        using var mr = _rig.Pd.RegisterFile(_rig.Owner, f, 0, 4096, AccessFlags.RemoteRead);
        Assert.Equal(PinnedDmaError.InvalidArgument, Assert.Throws<PinnedDmaException>(() => mr.ReRegister(AccessFlags.RemoteWrite)).Error);
        Assert.Throws<ArgumentException>(() => mr.ReRegister(AccessFlags.OnDemand | AccessFlags.RemoteRead));
        Assert.Equal(AccessFlags.RemoteRead, mr.Access);
        Assert.Equal(PinAccess.Read, mr.Pin!.Access);
    }
}
