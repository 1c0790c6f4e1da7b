using System.Buffers.Binary;
using FsCheck;
using FsCheck.Fluent;
using PinnedDma.Storage;
using PinnedDma.Verbs;
using Xunit;

namespace PinnedDma.Tests.Verbs;

/// <summary>
/// Random interleavings of RDMA traffic (WRITE, READ, SEND into pinned and OnDemand file regions) and volume
/// operations under Deny, Break and Defer, checked after every step against a byte-array model of each file, the
/// seal invariants and fsck. Every RDMA WRITE payload carries a unique sentinel.
/// </summary>
public sealed class VerbsRemapPropertyTests
{
    private const int Bs = 4096;
    private const int Chunk = 256;

    [Fact]
    public void RandomTrafficAndVolumeOperationsNeverLandDataInARemappedBlock()
    {
        var prop = Prop.ForAll(Arb.From(Gen.Choose(0, int.MaxValue - 1)), seed => Run(seed));
        Check.One(Config.QuickThrowOnFailure.WithMaxTest(25), prop);
    }

    private sealed class Model
    {
        public byte[] Bytes = [];
        public void Write(long off, ReadOnlySpan<byte> d)
        {
            if (off + d.Length > Bytes.Length) Array.Resize(ref Bytes, (int)(off + d.Length));
            d.CopyTo(Bytes.AsSpan((int)off));
        }
        public void Resize(long len) => Array.Resize(ref Bytes, (int)len);
    }

    private static void Run(int seed)
    {
        var rnd = new Random(seed);
        using var rig = new VerbsRig(blockCount: 1024, name: "prop");
        var f = rig.NewFile("f", 16 * Bs, 0x11);
        var g = rig.NewFile("g", 8 * Bs, 0x22);
        var mf = new Model { Bytes = Enumerable.Repeat((byte)0x11, 16 * Bs).ToArray() };
        var mg = new Model { Bytes = Enumerable.Repeat((byte)0x22, 8 * Bs).ToArray() };
        var src = rig.Pd.RegisterBuffer(Chunk, AccessFlags.LocalWrite);
        var sink = rig.Pd.RegisterBuffer(Chunk, AccessFlags.LocalWrite);
        MemoryRegion? pinned = null, odp = null;
        uint seq = 1;

        void Renew()
        {
            if (pinned is { IsValid: true, Pin.Status: PinStatus.Active }) { }
            else
            {
                pinned?.Dispose();
                pinned = null;
                long len = Math.Min(8 * Bs, f.Length);
                if (len > 0) pinned = rig.Pd.RegisterFile(rig.Owner, f, 0, len, VerbsRig.All);
            }
            odp?.Dispose();
            odp = f.Length > 0 ? rig.Pd.RegisterFile(rig.Owner, f, 0, f.Length, VerbsRig.All | AccessFlags.OnDemand) : null;
        }

        WorkCompletion Post(SendWorkRequest wr)
        {
            rig.A.PostSend(wr);
            var wc = VerbsRig.WaitOne(rig.CqA);
            if (wc.Status != WcStatus.Success) rig.Reconnect();
            return wc;
        }

        string Trace(string s) => $"seed {seed}: {s}";

        Renew();
        for (int step = 0; step < 40; step++)
        {
            var policy = rnd.Next(3) switch
            {
                0 => ConflictPolicy.Deny,
                1 => ConflictPolicy.Break(TimeSpan.FromMilliseconds(rnd.Next(0, 3))),
                _ => ConflictPolicy.Defer,
            };
            int kind = rnd.Next(12);
            string what = kind.ToString();
            try
            {
                switch (kind)
                {
                    case 0 or 1 or 2 when pinned is not null: // RDMA WRITE into the pinned region
                        {
                            var mr = pinned;
                            long off = rnd.Next(0, (int)(mr.Length / Chunk)) * (long)Chunk;
                            uint s = seq++;
                            Span<byte> payload = src.GetBufferSpan();
                            for (int i = 0; i < Chunk; i += 8) BinaryPrimitives.WriteUInt64LittleEndian(payload[i..], 0xABCD_0000_0000_0000UL | s);
                            var status = mr.Pin!.Status;
                            var wc = Post(VerbsRig.Write(s, src, 0, Chunk, mr, off));
                            what = $"write {s} @{off} pin {status}";
                            if (status is PinStatus.Revoked || !mr.IsValid && wc.Status != WcStatus.Success)
                            {
                                Assert.Equal(WcStatus.RemAccessErr, wc.Status);
                                break;
                            }
                            Assert.True(wc.Status == WcStatus.Success, Trace($"{what}: {wc.Status}"));
                            if (status == PinStatus.Active) mf.Write(off, payload);
                            else
                            {
                                // Detached: the bytes are in the pin's own blocks, not in any file.
                                var (dev, _) = mr.Pin.Translate(off);
                                Assert.True(rig.Volume.Device.GetSpan(dev, Chunk).SequenceEqual(payload), Trace(what));
                            }
                            break;
                        }
                    case 3 or 4 when odp is not null: // ODP write lands in the file's current block
                        {
                            long off = rnd.Next(0, (int)(odp.Length / Chunk)) * (long)Chunk;
                            uint s = seq++;
                            Span<byte> payload = src.GetBufferSpan();
                            for (int i = 0; i < Chunk; i += 8) BinaryPrimitives.WriteUInt64LittleEndian(payload[i..], 0xABCD_0000_0000_0000UL | s);
                            var wc = Post(VerbsRig.Write(s, src, 0, Chunk, odp, off));
                            what = $"odp write {s} @{off}";
                            Assert.True(wc.Status == WcStatus.Success, Trace($"{what}: {wc.Status}"));
                            mf.Write(off, payload);
                            break;
                        }
                    case 5 when pinned is { Pin.Status: PinStatus.Active }: // RDMA READ and SEND
                        {
                            long off = rnd.Next(0, (int)(pinned.Length / Chunk)) * (long)Chunk;
                            var wc = Post(VerbsRig.Read(seq++, sink, 0, Chunk, pinned, off));
                            what = $"read @{off}";
                            Assert.Equal(WcStatus.Success, wc.Status);
                            Assert.True(sink.GetBufferSpan().SequenceEqual(mf.Bytes.AsSpan((int)off, Chunk)), Trace(what));
                            rig.B.PostRecv(VerbsRig.Recv(seq, pinned, off, Chunk));
                            wc = Post(VerbsRig.Send(seq++, sink, 0, Chunk));
                            Assert.Equal(WcStatus.Success, wc.Status);
                            Assert.Equal(WcStatus.Success, VerbsRig.WaitOne(rig.CqB).Status);
                            break;
                        }
                    case 6:
                        {
                            long off = rnd.Next(0, 20) * 1000L;
                            var data = new byte[rnd.Next(1, 3 * Bs)];
                            rnd.NextBytes(data);
                            what = $"write f @{off}+{data.Length} {policy}";
                            f.Write(off, data, policy);
                            mf.Write(off, data);
                            break;
                        }
                    case 7:
                        {
                            long blocks = (f.Length + Bs - 1) / Bs;
                            if (blocks == 0) break;
                            long so = rnd.Next(0, (int)blocks) * (long)Bs;
                            long len = Math.Min(rnd.Next(1, 5) * (long)Bs, f.Length - so);
                            long dOff = rnd.Next(0, 4) * (long)Bs;
                            bool fromF = rnd.Next(2) == 0;
                            if (fromF)
                            {
                                if (len % Bs != 0 && dOff + len < g.Length) break;
                                what = $"clone g@{dOff} <- f@{so}+{len}";
                                g.CloneRangeFrom(f, so, dOff, len, policy);
                                if (dOff > mg.Bytes.Length) mg.Resize(dOff);
                                mg.Write(dOff, mf.Bytes.AsSpan((int)so, (int)len));
                            }
                            else
                            {
                                long gl = g.Length;
                                long glen = Math.Min(rnd.Next(1, 4) * (long)Bs, gl);
                                if (glen <= 0 || (glen % Bs != 0 && dOff + glen < f.Length)) break;
                                what = $"clone f@{dOff} <- g@0+{glen} {policy}";
                                f.CloneRangeFrom(g, 0, dOff, glen, policy);
                                if (dOff > mf.Bytes.Length) mf.Resize(dOff);
                                mf.Write(dOff, mg.Bytes.AsSpan(0, (int)glen));
                            }
                            break;
                        }
                    case 8:
                        {
                            long off = rnd.Next(0, 16) * (long)Bs, len = rnd.Next(1, 4) * (long)Bs;
                            what = $"punch f@{off}+{len} {policy}";
                            f.PunchHole(off, len, policy);
                            for (long i = off; i < Math.Min(off + len, mf.Bytes.Length); i++) mf.Bytes[i] = 0;
                            break;
                        }
                    case 9:
                        {
                            long len = rnd.Next(0, 17) * (long)Bs - rnd.Next(0, 2) * 100;
                            if (len < 0) len = 0;
                            what = $"truncate f {len} {policy}";
                            f.Truncate(len, policy);
                            mf.Resize(len);
                            break;
                        }
                    case 10:
                        {
                            long off = rnd.Next(0, 8) * (long)Bs, len = rnd.Next(1, 3) * (long)Bs;
                            if (off + len >= f.Length) break;
                            what = $"collapse f@{off}+{len} {policy}";
                            f.CollapseRange(off, len, policy);
                            var nb = new byte[mf.Bytes.Length - len];
                            mf.Bytes.AsSpan(0, (int)off).CopyTo(nb);
                            mf.Bytes.AsSpan((int)(off + len)).CopyTo(nb.AsSpan((int)off));
                            mf.Bytes = nb;
                            break;
                        }
                    default:
                        {
                            if (rnd.Next(2) == 0) { what = "compact"; rig.Volume.Compact(); }
                            else if (f.Length > 0) { what = $"unshare f {policy}"; f.UnshareRange(0, f.Length, policy); }
                            break;
                        }
                }
            }
            catch (PinnedDmaException e) when (e.Error == PinnedDmaError.Busy)
            {
                Assert.True(policy.Kind != ConflictPolicyKind.Break, Trace($"{what}: busy under Break: {e.Message}"));
            }
            var problems = rig.Volume.CheckSealInvariants();
            Assert.True(problems.Count == 0, Trace($"step {step} {what}: {string.Join("; ", problems)}"));
            var fsck = rig.Volume.Fsck();
            Assert.True(fsck.IsClean, Trace($"step {step} {what}: fsck {string.Join("; ", fsck.Problems)}"));
            Assert.True(f.Length == mf.Bytes.Length, Trace($"step {step} {what}: f length {f.Length} != {mf.Bytes.Length}"));
            Assert.True(VerbsRig.ReadFile(f, 0, (int)f.Length).AsSpan().SequenceEqual(mf.Bytes), Trace($"step {step} {what}: f differs from model"));
            Assert.True(VerbsRig.ReadFile(g, 0, (int)g.Length).AsSpan().SequenceEqual(mg.Bytes), Trace($"step {step} {what}: g differs from model"));
            if (rnd.Next(4) == 0 || pinned is null || !pinned.IsValid || odp is null || odp.Length != f.Length) Renew();
        }
        pinned?.Dispose();
        odp?.Dispose();
    }
}
