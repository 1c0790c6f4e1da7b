using PinnedDma.Storage;
using Xunit;

namespace PinnedDma.Tests.Lifetimes;

/// <summary>
/// The lock split between the volume (Gate) and its seal table: seals leave without Gate, while operations under Gate
/// read the table, detach seals (Defer) and remap. First the place to stand (a seal goes while an operation holds
/// Gate), then real threads for a bounded number of rounds: pins come and go while punch (Deny and Defer), zero range,
/// writes and FIEMAP read the table. A read of the table outside its lock shows up as a collection modified during
/// enumeration, a lost or doubly released block (fsck) or a remapped pin (the seal invariants).
/// </summary>
public sealed class SealTableRaceTests
{
    private const int Bs = 4096;
    private const int Blocks = 64;
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);

    [Fact]
    public void APinIsReleasedWhileAnOperationHoldsTheVolumeLock()
    {
        using var v = Volume.CreateInMemory(new VolumeOptions { BlockCount = 512 });
        var f = v.CreateFile("f");
        f.Write(0, new byte[4 * Bs]);
        using var owner = new PinOwner(v, 1 << 20);
        var pin = owner.Pin(f, 0, 4 * Bs, PinAccess.Write);
        var releasing = new Thread(pin.Dispose);
        bool endedUnderGate;
        lock (v.Gate)
        {
            releasing.Start();
            // The release needs only the seal table's lock: it completes while Gate is held.
            endedUnderGate = releasing.Join(Bound);
        }
        Assert.True(endedUnderGate, "releasing a pin waited for the volume lock");
        releasing.Join();
        Assert.Equal(PinStatus.Released, pin.Status);
        Assert.Empty(v.Seals.Of(f.Inode));
        f.PunchHole(0, 4 * Bs, ConflictPolicy.Deny);
        Assert.True(v.Fsck().IsClean);
    }

    [Fact]
    public void ADetachedPinReleasedAfterTheDetachGivesItsBlocksBackOnce()
    {
        using var v = Volume.CreateInMemory(new VolumeOptions { BlockCount = 512 });
        var f = v.CreateFile("f");
        f.Write(0, new byte[4 * Bs]);
        long free = v.FreeBlocks;
        using var owner = new PinOwner(v, 1 << 20);
        var pin = owner.Pin(f, 0, 2 * Bs, PinAccess.Read);
        f.PunchHole(0, 4 * Bs, ConflictPolicy.Defer);
        Assert.Equal(PinStatus.Detached, pin.Status);
        Assert.Single(v.Seals.Detached());
        pin.Dispose();
        pin.Dispose();
        Assert.Empty(v.Seals.Detached());
        v.Commit();
        Assert.Equal(free + 4, v.FreeBlocks);
        Assert.True(v.Fsck().IsClean);
    }

    [Fact]
    public void PinsComingAndGoingRaceOperationsThatReadTheTable()
    {
        using var v = Volume.CreateInMemory(new VolumeOptions { BlockCount = 2048 });
        var f = v.CreateFile("f");
        f.Write(0, new byte[Blocks * Bs]);
        using var owner = new PinOwner(v, 1L << 30);
        var errors = new System.Collections.Concurrent.ConcurrentQueue<Exception>();
        long stopAt = Environment.TickCount64 + 4000;
        int rounds = 0;
        bool Go() => Environment.TickCount64 < stopAt && Volatile.Read(ref rounds) < 20000 && errors.IsEmpty;

        void Pinner(int seed)
        {
            var rnd = new Random(seed);
            try
            {
                while (Go())
                {
                    Interlocked.Increment(ref rounds);
                    long first = rnd.Next(Blocks - 4);
                    PinHandle pin;
                    try
                    {
                        pin = owner.Pin(f, first * Bs, (1 + rnd.Next(3)) * Bs, rnd.Next(2) == 0 ? PinAccess.Read : PinAccess.Write);
                    }
                    catch (PinnedDmaException e) when (e.Error is PinnedDmaError.Busy or PinnedDmaError.InvalidArgument)
                    {
                        continue; // a punch made the file shorter than the range, or another pin holds a sharer
                    }
                    if (rnd.Next(2) == 0) Thread.Yield();
                    if (rnd.Next(2) == 0) pin.Dispose();
                    else pin.DisposeAsync().AsTask().Wait();
                }
            }
            catch (Exception e)
            {
                errors.Enqueue(e);
            }
        }

        void Operator()
        {
            var rnd = new Random(99);
            try
            {
                while (Go())
                {
                    long first = rnd.Next(Blocks - 8), count = 1 + rnd.Next(8);
                    try
                    {
                        switch (rnd.Next(5))
                        {
                            case 0: f.PunchHole(first * Bs, count * Bs, ConflictPolicy.Deny); break;
                            case 1: f.PunchHole(first * Bs, count * Bs, ConflictPolicy.Defer); break;
                            case 2: f.ZeroRange(first * Bs, count * Bs, keepSize: true, ConflictPolicy.Deny); break;
                            case 3: f.Write(first * Bs, new byte[count * Bs]); break;
                            default: _ = f.GetExtents(); break;
                        }
                    }
                    catch (PinnedDmaException e) when (e.Error == PinnedDmaError.Busy)
                    {
                    }
                    var problems = v.CheckSealInvariants();
                    if (problems.Count > 0) throw new InvalidOperationException(string.Join("; ", problems));
                }
            }
            catch (Exception e)
            {
                errors.Enqueue(e);
            }
        }

        var threads = new[] { new Thread(() => Pinner(1)), new Thread(() => Pinner(2)), new Thread(Operator) };
        foreach (var t in threads) t.Start();
        foreach (var t in threads) Assert.True(t.Join(Bound + Bound));
        Assert.True(errors.IsEmpty, string.Join(Environment.NewLine, errors));
        Assert.Equal(0, owner.PinCount);
        Assert.Empty(v.Seals.Attached());
        Assert.Empty(v.Seals.Detached());
        Assert.Empty(v.CheckSealInvariants());
        Assert.True(v.Fsck().IsClean, string.Join("; ", v.Fsck().Problems));
    }
}
