using System.Buffers.Binary;
using PinnedDma.Storage;
using PinnedDma.Transports.Loopback;
using PinnedDma.Verbs;
using Xunit;

namespace PinnedDma.Tests.Verbs;

public sealed class OpcodeTests : IDisposable
{
    private readonly VerbsRig _rig = new(name: "op");
    private int _files;

    public void Dispose() => _rig.Dispose();

    /// <summary>A region of one kind ("buffer" or "file", the latter through a pin) with direct access to its bytes.</summary>
    private sealed class Region(MemoryRegion mr, VolumeFile? file)
    {
        public MemoryRegion Mr { get; } = mr;

        public void Fill(long offset, ReadOnlySpan<byte> data)
        {
            if (file is null) data.CopyTo(Mr.GetBufferSpan()[(int)offset..]);
            else file.Write(offset, data);
        }

        public byte[] Get(long offset, int length) =>
            file is null ? Mr.GetBufferSpan().Slice((int)offset, length).ToArray() : VerbsRig.ReadFile(file, offset, length);
    }

    private Region Make(string kind, int length, AccessFlags access, ProtectionDomain? pd = null)
    {
        pd ??= _rig.Pd;
        if (kind == "buffer") return new Region(pd.RegisterBuffer(length, access), null);
        var f = _rig.NewFile($"f{_files++}", length);
        return new Region(pd.RegisterFile(_rig.Owner, f, 0, length, access), f);
    }

    private static byte[] Pattern(int length, int seed)
    {
        var b = new byte[length];
        new Random(seed).NextBytes(b);
        return b;
    }

    private static SendWorkRequest Atomic(ulong id, WrOpcode op, Region local, long localOff, Region remote, long remoteOff, ulong compareAdd, ulong swap = 0, uint len = 8) => new()
    {
        WrId = id,
        Opcode = op,
        Flags = SendFlags.Signaled,
        Local = new(local.Mr.Address + (ulong)localOff, len, local.Mr.LKey),
        RemoteAddress = remote.Mr.Address + (ulong)remoteOff,
        RKey = remote.Mr.RKey,
        CompareAdd = compareAdd,
        Swap = swap,
    };

    public static TheoryData<string, bool> KindsAndSignaling => new()
    {
        { "buffer", true }, { "buffer", false }, { "file", true }, { "file", false },
    };

    /// <summary>Posts <paramref name="wr"/>; unsignaled ones are fenced by a signaled zero-byte write so that completion is observable.</summary>
    private WorkCompletion? PostAndComplete(SendWorkRequest wr, Region any)
    {
        _rig.A.PostSend(wr);
        if ((wr.Flags & SendFlags.Signaled) != 0) return VerbsRig.WaitOne(_rig.CqA);
        _rig.A.PostSend(new SendWorkRequest { WrId = 999, Opcode = WrOpcode.RdmaWrite, Flags = SendFlags.Signaled, Local = new(any.Mr.Address, 0, any.Mr.LKey), RemoteAddress = any.Mr.Address, RKey = any.Mr.RKey });
        var wc = VerbsRig.WaitOne(_rig.CqA);
        Assert.Equal(999ul, wc.WrId); // the unsignaled success produced no completion
        Assert.Equal(WcStatus.Success, wc.Status);
        return null;
    }

    [Theory]
    [MemberData(nameof(KindsAndSignaling))]
    public void RdmaWriteMovesTheBytes(string kind, bool signaled)
    {
        var local = Make(kind, 3 * 4096, VerbsRig.All);
        var remote = Make(kind, 3 * 4096, VerbsRig.All);
        var data = Pattern(5000, 1);
        local.Fill(100, data);
        var wc = PostAndComplete(VerbsRig.Write(1, local.Mr, 100, 5000, remote.Mr, 3000, signaled), remote);
        if (signaled)
        {
            Assert.Equal(WcStatus.Success, wc!.Value.Status);
            Assert.Equal(WcOpcode.RdmaWrite, wc.Value.Opcode);
            Assert.Equal(5000u, wc.Value.ByteLength);
            Assert.Equal(1ul, wc.Value.WrId);
        }
        Assert.Equal(data, remote.Get(3000, 5000));
        Assert.Equal(new byte[3000], remote.Get(0, 3000));
        Assert.Equal(new byte[3 * 4096 - 8000], remote.Get(8000, 3 * 4096 - 8000));
    }

    [Theory]
    [MemberData(nameof(KindsAndSignaling))]
    public void RdmaReadMovesTheBytes(string kind, bool signaled)
    {
        var local = Make(kind, 2 * 4096, VerbsRig.All);
        var remote = Make(kind, 2 * 4096, VerbsRig.All);
        var data = Pattern(4097, 2);
        remote.Fill(4095, data);
        var wc = PostAndComplete(VerbsRig.Read(2, local.Mr, 1, 4097, remote.Mr, 4095, signaled), remote);
        if (signaled)
        {
            Assert.Equal(WcStatus.Success, wc!.Value.Status);
            Assert.Equal(WcOpcode.RdmaRead, wc.Value.Opcode);
            Assert.Equal(4097u, wc.Value.ByteLength);
        }
        Assert.Equal(data, local.Get(1, 4097));
    }

    [Theory]
    [MemberData(nameof(KindsAndSignaling))]
    public void RdmaWriteWithImmConsumesAReceive(string kind, bool signaled)
    {
        var local = Make(kind, 4096, VerbsRig.All);
        var remote = Make(kind, 4096, VerbsRig.All);
        var data = Pattern(300, 3);
        local.Fill(0, data);
        _rig.B.PostRecv(VerbsRig.Recv(50, remote.Mr, 0, 0));
        var wr = VerbsRig.Write(3, local.Mr, 0, 300, remote.Mr, 10, signaled);
        wr.Opcode = WrOpcode.RdmaWriteWithImm;
        wr.ImmData = 0xC0FFEE;
        var wc = PostAndComplete(wr, remote);
        if (signaled) Assert.Equal(WcStatus.Success, wc!.Value.Status);
        var r = VerbsRig.WaitOne(_rig.CqB);
        Assert.Equal(50ul, r.WrId);
        Assert.Equal(WcStatus.Success, r.Status);
        Assert.Equal(WcOpcode.RecvRdmaWithImm, r.Opcode);
        Assert.Equal(WcFlags.WithImm, r.Flags);
        Assert.Equal(0xC0FFEEu, r.ImmData);
        Assert.Equal(300u, r.ByteLength);
        Assert.Equal(data, remote.Get(10, 300));
    }

    [Theory]
    [MemberData(nameof(KindsAndSignaling))]
    public void SendAndSendWithImmLandInTheReceiveBuffer(string kind, bool signaled)
    {
        var local = Make(kind, 4096, VerbsRig.All);
        var remote = Make(kind, 4096, AccessFlags.LocalWrite);
        var data = Pattern(700, 4);
        local.Fill(0, data);
        _rig.B.PostRecv(VerbsRig.Recv(60, remote.Mr, 100, 1000));
        _rig.B.PostRecv(VerbsRig.Recv(61, remote.Mr, 2000, 700));
        var wc = PostAndComplete(VerbsRig.Send(4, local.Mr, 0, 700, signaled), local);
        if (signaled) Assert.Equal((WcStatus.Success, WcOpcode.Send), (wc!.Value.Status, wc.Value.Opcode));
        var wr = VerbsRig.Send(5, local.Mr, 0, 700, signaled);
        wr.Opcode = WrOpcode.SendWithImm;
        wr.ImmData = 77;
        PostAndComplete(wr, local);
        var r = VerbsRig.WaitMany(_rig.CqB, 2);
        Assert.Equal((60ul, WcStatus.Success, WcOpcode.Recv, 700u, WcFlags.None), (r[0].WrId, r[0].Status, r[0].Opcode, r[0].ByteLength, r[0].Flags));
        Assert.Equal((61ul, WcStatus.Success, WcFlags.WithImm, 77u), (r[1].WrId, r[1].Status, r[1].Flags, r[1].ImmData));
        Assert.Equal(data, remote.Get(100, 700));
        Assert.Equal(data, remote.Get(2000, 700));
    }

    [Theory]
    [InlineData("buffer")]
    [InlineData("file")]
    public void SendWithInvalidateInvalidatesTheResponderRegion(string kind)
    {
        var local = Make(kind, 4096, VerbsRig.All);
        var rbuf = Make(kind, 4096, AccessFlags.LocalWrite);
        var victim = Make(kind, 4096, VerbsRig.All);
        _rig.B.PostRecv(VerbsRig.Recv(70, rbuf.Mr, 0, 64));
        var wr = VerbsRig.Send(6, local.Mr, 0, 16);
        wr.Opcode = WrOpcode.SendWithInvalidate;
        wr.InvalidateRKey = victim.Mr.RKey;
        _rig.A.PostSend(wr);
        Assert.Equal(WcStatus.Success, VerbsRig.WaitOne(_rig.CqA).Status);
        var r = VerbsRig.WaitOne(_rig.CqB);
        Assert.Equal(WcStatus.Success, r.Status);
        Assert.True((r.Flags & WcFlags.WithInv) != 0);
        Assert.Equal(victim.Mr.RKey, r.InvalidatedRKey);
        Assert.False(victim.Mr.IsValid);

        local.Fill(0, Pattern(64, 5));
        _rig.A.PostSend(VerbsRig.Write(7, local.Mr, 0, 64, victim.Mr, 0));
        var w = VerbsRig.WaitOne(_rig.CqA);
        Assert.Equal((7ul, WcStatus.RemAccessErr), (w.WrId, w.Status));
        Assert.Equal(QpState.Error, _rig.A.State);
        Assert.Equal(new byte[64], victim.Get(0, 64));
    }

    [Theory]
    [InlineData("buffer")]
    [InlineData("file")]
    public void LocalInvalidateStopsRemoteAccess(string kind)
    {
        var local = Make(kind, 4096, VerbsRig.All);
        var victim = Make(kind, 4096, VerbsRig.All);
        _rig.A.PostSend(new SendWorkRequest { WrId = 8, Opcode = WrOpcode.LocalInvalidate, Flags = SendFlags.Signaled, InvalidateRKey = victim.Mr.LKey });
        var wc = VerbsRig.WaitOne(_rig.CqA);
        Assert.Equal((8ul, WcStatus.Success, WcOpcode.LocalInv), (wc.WrId, wc.Status, wc.Opcode));
        Assert.False(victim.Mr.IsValid);
        _rig.A.PostSend(VerbsRig.Read(9, local.Mr, 0, 64, victim.Mr, 0));
        Assert.Equal(WcStatus.RemAccessErr, VerbsRig.WaitOne(_rig.CqA).Status);
        // And as a local key: LocProtErr.
        _rig.Reconnect();
        var other = Make(kind, 4096, VerbsRig.All);
        _rig.A.PostSend(VerbsRig.Write(10, victim.Mr, 0, 64, other.Mr, 0));
        Assert.Equal(WcStatus.LocProtErr, VerbsRig.WaitOne(_rig.CqA).Status);
    }

    [Theory]
    [InlineData("buffer")]
    [InlineData("file")]
    public void AtomicsCompareSwapHitMissAndFetchAdd(string kind)
    {
        var local = Make(kind, 4096, VerbsRig.All);
        var remote = Make(kind, 4096, VerbsRig.All);
        var v = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(v, 1000);
        remote.Fill(64, v);
        ulong At(Region r, long off) => BinaryPrimitives.ReadUInt64LittleEndian(r.Get(off, 8));

        _rig.A.PostSend(Atomic(1, WrOpcode.AtomicFetchAdd, local, 0, remote, 64, 25));
        var wc = VerbsRig.WaitOne(_rig.CqA);
        Assert.Equal((WcStatus.Success, WcOpcode.FetchAdd), (wc.Status, wc.Opcode));
        Assert.Equal(1000ul, At(local, 0));
        Assert.Equal(1025ul, At(remote, 64));

        _rig.A.PostSend(Atomic(2, WrOpcode.AtomicCompareSwap, local, 8, remote, 64, 999, 7)); // miss
        wc = VerbsRig.WaitOne(_rig.CqA);
        Assert.Equal((WcStatus.Success, WcOpcode.CompSwap), (wc.Status, wc.Opcode));
        Assert.Equal(1025ul, At(local, 8));
        Assert.Equal(1025ul, At(remote, 64));

        _rig.A.PostSend(Atomic(3, WrOpcode.AtomicCompareSwap, local, 16, remote, 64, 1025, 7)); // hit
        Assert.Equal(WcStatus.Success, VerbsRig.WaitOne(_rig.CqA).Status);
        Assert.Equal(1025ul, At(local, 16));
        Assert.Equal(7ul, At(remote, 64));
        Assert.Equal(new byte[64], remote.Get(0, 64));
        Assert.Equal(new byte[64], remote.Get(72, 64));
    }

    // ------------------------------------------------------------------ errors

    private void ExpectFailure(SendWorkRequest wr, WcStatus status)
    {
        _rig.A.PostSend(wr);
        var wc = VerbsRig.WaitOne(_rig.CqA);
        Assert.Equal(wr.WrId, wc.WrId);
        Assert.Equal(status, wc.Status);
        Assert.Equal(QpState.Error, _rig.A.State);
        _rig.Reconnect();
    }

    [Theory]
    [InlineData("buffer")]
    [InlineData("file")]
    public void BadKeysBoundsAndAccessFail(string kind)
    {
        var local = Make(kind, 4096, VerbsRig.All);
        var remote = Make(kind, 4096, VerbsRig.All);
        var writeOnly = Make(kind, 4096, AccessFlags.LocalWrite | AccessFlags.RemoteWrite);
        var localOnly = Make(kind, 4096, AccessFlags.LocalWrite);
        var readOnlyLocal = Make(kind, 4096, AccessFlags.RemoteRead);
        local.Fill(0, Pattern(4096, 6));

        var wr = VerbsRig.Write(1, local.Mr, 0, 64, remote.Mr, 0);
        ExpectFailure(wr with { Local = wr.Local with { LKey = local.Mr.LKey ^ 0x5A } }, WcStatus.LocProtErr);
        ExpectFailure(wr with { Local = wr.Local with { LKey = 0 } }, WcStatus.LocProtErr);
        ExpectFailure(wr with { RKey = remote.Mr.RKey ^ 0x01 }, WcStatus.RemAccessErr); // stale key byte
        var rng = new Random(7);
        for (int i = 0; i < 20; i++)
        {
            uint guess = (uint)rng.NextInt64(1, uint.MaxValue);
            if (guess == remote.Mr.RKey || _rig.Device.Keys.Lookup(guess) is not null) continue;
            ExpectFailure(wr with { RKey = guess }, WcStatus.RemAccessErr);
        }
        // Local bounds.
        ExpectFailure(wr with { Local = wr.Local with { Address = local.Mr.Address + 4090 } }, WcStatus.LocProtErr);
        // Remote out of bounds: past the end, straddling the end, before the start.
        ExpectFailure(wr with { RemoteAddress = remote.Mr.Address + 4096 }, WcStatus.RemAccessErr);
        ExpectFailure(wr with { RemoteAddress = remote.Mr.Address + 4050 }, WcStatus.RemAccessErr);
        if (remote.Mr.Address > 0) ExpectFailure(wr with { RemoteAddress = remote.Mr.Address - 1 }, WcStatus.RemAccessErr);
        ExpectFailure(VerbsRig.Read(2, local.Mr, 0, 64, remote.Mr, 4095), WcStatus.RemAccessErr);
        // Missing remote access.
        ExpectFailure(VerbsRig.Write(3, local.Mr, 0, 64, localOnly.Mr, 0), WcStatus.RemAccessErr);
        ExpectFailure(VerbsRig.Read(4, local.Mr, 0, 64, writeOnly.Mr, 0), WcStatus.RemAccessErr);
        ExpectFailure(Atomic(5, WrOpcode.AtomicFetchAdd, local, 0, new Region(writeOnly.Mr, null), 0, 1), WcStatus.RemAccessErr);
        // A local sink without LocalWrite.
        ExpectFailure(VerbsRig.Read(6, readOnlyLocal.Mr, 0, 64, remote.Mr, 0), WcStatus.LocProtErr);
        // Atomics: misaligned, wrong length.
        ExpectFailure(Atomic(7, WrOpcode.AtomicCompareSwap, local, 0, remote, 4, 0, 1), WcStatus.RemInvReqErr);
        ExpectFailure(Atomic(8, WrOpcode.AtomicFetchAdd, local, 0, remote, 8, 1, len: 4), WcStatus.LocLenErr);
        ExpectFailure(Atomic(9, WrOpcode.AtomicFetchAdd, local, 0, remote, 8, 1, len: 16), WcStatus.LocLenErr);

        Assert.Equal(new byte[4096], remote.Get(0, 4096));
        Assert.Equal(new byte[4096], localOnly.Get(0, 4096));
        Assert.Equal(new byte[4096], writeOnly.Get(0, 4096));
    }

    [Fact]
    public void QpRemoteAccessFlagsGateIncomingRequests()
    {
        var local = Make("buffer", 4096, VerbsRig.All);
        var remote = Make("buffer", 4096, VerbsRig.All);
        _rig.A.Modify(new QpAttributes { State = QpState.Reset });
        _rig.B.Modify(new QpAttributes { State = QpState.Reset });
        LoopbackFabric.Connect(_rig.A, _rig.B, AccessFlags.RemoteRead);
        _rig.A.PostSend(VerbsRig.Write(1, local.Mr, 0, 64, remote.Mr, 0));
        Assert.Equal(WcStatus.RemAccessErr, VerbsRig.WaitOne(_rig.CqA).Status);
    }

    [Theory]
    [InlineData("buffer")]
    [InlineData("file")]
    public void RegionsOfAnotherPdAreUnreachable(string kind)
    {
        var pd2 = _rig.Device.AllocatePd();
        var local = Make(kind, 4096, VerbsRig.All);
        var remote = Make(kind, 4096, VerbsRig.All);
        var foreign = Make(kind, 4096, VerbsRig.All, pd2);
        local.Fill(0, Pattern(4096, 8));
        foreign.Fill(0, Pattern(4096, 9));
        ExpectFailure(VerbsRig.Write(1, local.Mr, 0, 64, foreign.Mr, 0), WcStatus.RemAccessErr);
        ExpectFailure(VerbsRig.Read(2, local.Mr, 0, 64, foreign.Mr, 0), WcStatus.RemAccessErr);
        ExpectFailure(VerbsRig.Write(3, foreign.Mr, 0, 64, remote.Mr, 0), WcStatus.LocProtErr);
        ExpectFailure(new SendWorkRequest { WrId = 4, Opcode = WrOpcode.LocalInvalidate, Flags = SendFlags.Signaled, InvalidateRKey = foreign.Mr.LKey }, WcStatus.LocProtErr);
        Assert.Equal(Pattern(4096, 9), foreign.Get(0, 4096));
        Assert.Equal(new byte[4096], remote.Get(0, 4096));
        Assert.True(foreign.Mr.IsValid);
    }

    [Theory]
    [InlineData("buffer")]
    [InlineData("file")]
    public void ReceiveBufferTooSmall(string kind)
    {
        var local = Make(kind, 4096, VerbsRig.All);
        var rbuf = Make(kind, 4096, AccessFlags.LocalWrite);
        _rig.B.PostRecv(VerbsRig.Recv(80, rbuf.Mr, 0, 100));
        _rig.B.PostRecv(VerbsRig.Recv(81, rbuf.Mr, 200, 1000));
        _rig.A.PostSend(VerbsRig.Send(11, local.Mr, 0, 101));
        var s = VerbsRig.WaitOne(_rig.CqA);
        Assert.Equal((11ul, WcStatus.RemInvReqErr), (s.WrId, s.Status));
        var r = VerbsRig.WaitMany(_rig.CqB, 2);
        Assert.Equal((80ul, WcStatus.LocLenErr), (r[0].WrId, r[0].Status));
        Assert.Equal((81ul, WcStatus.WrFlushErr), (r[1].WrId, r[1].Status));
        Assert.Equal(QpState.Error, _rig.A.State);
        Assert.Equal(QpState.Error, _rig.B.State);
    }

    [Fact]
    public void NoReceivePostedGivesRnrRetryExceeded()
    {
        var local = Make("buffer", 4096, VerbsRig.All);
        _rig.A.Modify(new QpAttributes { State = QpState.Rts, RnrTimeout = TimeSpan.FromMilliseconds(30) });
        _rig.A.PostSend(VerbsRig.Send(12, local.Mr, 0, 10));
        _rig.A.PostSend(VerbsRig.Send(13, local.Mr, 0, 10));
        var wc = VerbsRig.WaitMany(_rig.CqA, 2);
        Assert.Equal((12ul, WcStatus.RnrRetryExcErr), (wc[0].WrId, wc[0].Status));
        Assert.Equal((13ul, WcStatus.WrFlushErr), (wc[1].WrId, wc[1].Status));
        Assert.Equal(QpState.Error, _rig.A.State);
    }

    [Fact]
    public void AReceivePostedWithinTheRnrWindowIsUsed()
    {
        var local = Make("buffer", 4096, VerbsRig.All);
        var rbuf = Make("buffer", 4096, AccessFlags.LocalWrite);
        local.Fill(0, Pattern(10, 10));
        _rig.A.Modify(new QpAttributes { State = QpState.Rts, RnrTimeout = TimeSpan.FromSeconds(20) });
        _rig.A.PostSend(VerbsRig.Send(14, local.Mr, 0, 10));
        _rig.B.PostRecv(VerbsRig.Recv(90, rbuf.Mr, 0, 10));
        Assert.Equal(WcStatus.Success, VerbsRig.WaitOne(_rig.CqA).Status);
        Assert.Equal(WcStatus.Success, VerbsRig.WaitOne(_rig.CqB).Status);
        Assert.Equal(Pattern(10, 10), rbuf.Get(0, 10));
    }

    [Theory]
    [InlineData("buffer")]
    [InlineData("file")]
    public void AfterAFailureTheRestIsFlushedInOrder(string kind)
    {
        var local = Make(kind, 4096, VerbsRig.All);
        var remote = Make(kind, 4096, VerbsRig.All);
        local.Fill(0, Pattern(4096, 11));
        // Queue everything while the send queue is drained, so the engine sees the whole batch.
        _rig.A.Modify(new QpAttributes { State = QpState.Sqd });
        _rig.A.PostSend(VerbsRig.Write(1, local.Mr, 0, 64, remote.Mr, 0));
        _rig.A.PostSend(VerbsRig.Write(2, local.Mr, 64, 64, remote.Mr, 64, signaled: false));
        _rig.A.PostSend(VerbsRig.Write(3, local.Mr, 128, 64, remote.Mr, 4090)); // out of bounds
        for (ulong i = 4; i < 10; i++) _rig.A.PostSend(VerbsRig.Write(i, local.Mr, 0, 64, remote.Mr, 1024, signaled: i % 2 == 0));
        _rig.A.Modify(new QpAttributes { State = QpState.Rts });
        var wc = VerbsRig.WaitMany(_rig.CqA, 8);
        Assert.Equal(new ulong[] { 1, 3, 4, 5, 6, 7, 8, 9 }, wc.Select(w => w.WrId));
        Assert.Equal(WcStatus.Success, wc[0].Status);
        Assert.Equal(WcStatus.RemAccessErr, wc[1].Status);
        Assert.All(wc.Skip(2), w => Assert.Equal(WcStatus.WrFlushErr, w.Status));
        Assert.Equal(QpState.Error, _rig.A.State);
        Assert.Equal(local.Get(0, 128), remote.Get(0, 128));
        Assert.Equal(new byte[64], remote.Get(1024, 64));
        // Posted after the failure: flushed at once, still in order.
        _rig.A.PostSend(VerbsRig.Write(20, local.Mr, 0, 64, remote.Mr, 0));
        _rig.A.PostSend(VerbsRig.Write(21, local.Mr, 0, 64, remote.Mr, 0, signaled: false));
        var late = VerbsRig.WaitMany(_rig.CqA, 2);
        Assert.Equal(new ulong[] { 20, 21 }, late.Select(w => w.WrId));
        Assert.All(late, w => Assert.Equal(WcStatus.WrFlushErr, w.Status));
        VerbsRig.AssertNoMore(_rig.CqA, _rig.A);
    }

    [Fact]
    public void FlushOrderHoldsWhilePostingRacesTheFailure()
    {
        var local = Make("buffer", 4096, VerbsRig.All);
        var remote = Make("buffer", 4096, VerbsRig.All);
        for (int round = 0; round < 30; round++)
        {
            _rig.A.PostSend(VerbsRig.Write(0, local.Mr, 0, 64, remote.Mr, 4090)); // fails
            for (ulong i = 1; i <= 40; i++) _rig.A.PostSend(VerbsRig.Write(i, local.Mr, 0, 64, remote.Mr, 0, signaled: false));
            var wc = VerbsRig.WaitMany(_rig.CqA, 41);
            Assert.Equal(WcStatus.RemAccessErr, wc[0].Status);
            Assert.Equal(Enumerable.Range(0, 41).Select(i => (ulong)i), wc.Select(w => w.WrId));
            Assert.All(wc.Skip(1), w => Assert.Equal(WcStatus.WrFlushErr, w.Status));
            _rig.Reconnect();
        }
    }
}
