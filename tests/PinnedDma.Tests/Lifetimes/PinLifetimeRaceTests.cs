using System.Collections.Concurrent;
using PinnedDma.Storage;
using Xunit;

namespace PinnedDma.Tests.Lifetimes;

/// <summary>
/// The edges of a pin's life: an upgrade racing a clone, a pin racing its owner's or its volume's dispose, a Direct
/// mapping used after its volume went. Each test first builds the interleaving that went wrong (deterministically where
/// the code gives a place to stand) and then races it with real threads for a bounded number of rounds.
/// </summary>
public sealed class PinLifetimeRaceTests : IDisposable
{
    private const int Bs = 4096;
    private readonly string _dir = Directory.CreateTempSubdirectory("pdma-life-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static VolumeFile NewFile(Volume v, string name, int blocks, byte fill)
    {
        var f = v.CreateFile(name);
        var data = new byte[blocks * Bs];
        Array.Fill(data, fill);
        f.Write(0, data);
        return f;
    }

    private static byte[] ReadAll(VolumeFile f, int length)
    {
        var b = new byte[length];
        f.Read(0, b);
        return b;
    }

    // ------------------------------------------------------------------ upgrade vs clone

    [Fact]
    public void CloneBetweenTheUpgradesCowBreakAndItsSwitchToWriteGetsACopy()
    {
        using var v = Volume.CreateInMemory(new VolumeOptions { BlockCount = 512 });
        var a = NewFile(v, "a", 4, 0x11);
        using var owner = new PinOwner(v, 1 << 20);
        var pin = owner.Pin(a, 0, 4 * Bs, PinAccess.Read);
        VolumeFile? clone = null;
        // Where the upgrade once released the volume lock before the pin became writable: a clone taken there shared
        // the blocks DMA was about to write.
        pin.UpgradeWindowForTest = () =>
        {
            clone = v.CreateFile("snap");
            clone.CloneRangeFrom(a, 0, 0, a.Length);
        };
        pin.Upgrade(PinAccess.Write);
        Assert.Equal(PinAccess.Write, pin.Access);
        pin.Write(0, Enumerable.Repeat((byte)0xEE, 4 * Bs).ToArray());
        Assert.All(ReadAll(clone!, 4 * Bs), b => Assert.Equal(0x11, b));
        Assert.Empty(v.CheckSealInvariants());
    }

    [Fact]
    public void UpgradeRacingClonesNeverLetsDmaReachASnapshot()
    {
        using var v = Volume.CreateInMemory(new VolumeOptions { BlockCount = 4096, MaxFiles = 64 });
        using var owner = new PinOwner(v, 1 << 24);
        var failures = new ConcurrentQueue<string>();
        long deadline = Environment.TickCount64 + 3000;
        for (int round = 0; round < 400 && Environment.TickCount64 < deadline; round++)
        {
            var a = NewFile(v, "a", 2, 0x22);
            var pin = owner.Pin(a, 0, 2 * Bs, PinAccess.Read);
            VolumeFile? clone = null;
            using var go = new Barrier(2);
            var cloner = new Thread(() =>
            {
                go.SignalAndWait();
                var c = v.CreateFile("snap");
                c.CloneRangeFrom(a, 0, 0, a.Length);
                clone = c;
            });
            cloner.Start();
            go.SignalAndWait();
            pin.Upgrade(PinAccess.Write);
            cloner.Join();
            pin.Write(0, Enumerable.Repeat((byte)0xEE, 2 * Bs).ToArray());
            if (ReadAll(clone!, 2 * Bs).Any(b => b != 0x22)) failures.Enqueue($"round {round}: DMA through the upgraded pin changed the clone");
            pin.Dispose();
            v.DeleteFile("a");
            v.DeleteFile("snap");
        }
        Assert.Empty(failures);
    }

    // ------------------------------------------------------------------ owner dispose vs pin

    /// <summary>
    /// Builds a pin that has to wait outside the volume lock: file b is a clone of a, and both keep sharing blocks
    /// [0, 4) under READ pins (the per-volume mutation switch skips the READ pins' COW break, the only way two pins
    /// can share a block). A WRITE pin of a's [0, 4) must then move b's copy, which b's pin holds, so with Wait it
    /// waits for that pin to go. Returns the pin it waits for and the waiting pin's task.
    /// </summary>
    private static (PinHandle Blocker, Task<PinHandle> Waiting) PinThatWaits(Volume v, PinOwner blockerOwner, PinOwner owner)
    {
        var a = NewFile(v, "a", 8, 0x33);
        var b = v.CreateFile("b");
        b.CloneRangeFrom(a, 0, 0, a.Length);
        v.DisableReadPinCowBreakForMutationTest = true;
        var blocker = blockerOwner.Pin(b, 0, 4 * Bs, PinAccess.Read);
        blockerOwner.Pin(a, 0, 4 * Bs, PinAccess.Read);
        v.DisableReadPinCowBreakForMutationTest = false;
        var started = new ManualResetEventSlim();
        var waiting = Task.Factory.StartNew(() =>
        {
            started.Set();
            return owner.Pin(a, 0, 4 * Bs, PinAccess.Write, PinOptions.None, ConflictPolicy.Wait(TimeSpan.FromSeconds(30)));
        }, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
        started.Wait();
        return (blocker, waiting);
    }

    /// <summary>The pin the task produced, or the exception it threw; fails if it is still running after 30 s.</summary>
    private static async Task<(PinHandle? Pin, Exception? Error)> Outcome(Task<PinHandle> task)
    {
        try
        {
            return (await task.WaitAsync(TimeSpan.FromSeconds(30)), null);
        }
        catch (TimeoutException)
        {
            Assert.Fail("the pin still waits 30 s after its blocker went");
            throw;
        }
        catch (Exception e)
        {
            return (null, e);
        }
    }

    [Fact]
    public async Task PinThatStartedBeforeItsOwnerWasDisposedEndsWithTheOwner()
    {
        using var v = Volume.CreateInMemory(new VolumeOptions { BlockCount = 512 });
        using var blockerOwner = new PinOwner(v, 1 << 20, "blocker");
        var owner = new PinOwner(v, 1 << 20, "victim");
        var (blocker, waiting) = PinThatWaits(v, blockerOwner, owner);
        Thread.Sleep(50); // let it reach the wait; the assertions do not depend on it
        owner.Dispose();
        blocker.Dispose();
        var (pin, error) = await Outcome(waiting);
        if (pin is not null)
        {
            // The pin was granted: it must not have outlived the owner's dispose.
            Assert.NotEqual(PinStatus.Active, pin.Status);
        }
        else
        {
            var e = Assert.IsType<ObjectDisposedException>(error);
            Assert.Contains("PinOwner", e.ObjectName);
        }
        Assert.Equal(0, owner.PinCount);
        Assert.Equal(0, owner.LockedBytes);
        Assert.Empty(v.CheckSealInvariants());
    }

    [Fact]
    public void OwnerDisposeRacingPinsLeavesNoActivePin()
    {
        using var v = Volume.CreateInMemory(new VolumeOptions { BlockCount = 1024 });
        var f = NewFile(v, "f", 16, 0x44);
        int leftActive = 0;
        long deadline = Environment.TickCount64 + 3000;
        for (int round = 0; round < 300 && Environment.TickCount64 < deadline; round++)
        {
            var owner = new PinOwner(v, 1 << 24);
            var handles = new ConcurrentBag<PinHandle>();
            using var go = new Barrier(3);
            var pinners = Enumerable.Range(0, 2).Select(t => new Thread(() =>
            {
                go.SignalAndWait();
                for (int i = 0; i < 8; i++)
                {
                    try
                    {
                        handles.Add(owner.Pin(f, (t * 8 + i % 8) * Bs, Bs, PinAccess.Write));
                    }
                    catch (ObjectDisposedException)
                    {
                        return;
                    }
                }
            })).ToArray();
            foreach (var p in pinners) p.Start();
            go.SignalAndWait();
            owner.Dispose();
            foreach (var p in pinners) p.Join();
            leftActive += handles.Count(h => h.Status == PinStatus.Active);
            if (owner.PinCount != 0) leftActive++;
            foreach (var h in handles) h.Dispose();
        }
        Assert.Equal(0, leftActive);
        Assert.Empty(v.CheckSealInvariants());
    }

    // ------------------------------------------------------------------ volume dispose vs pin

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void VolumeDisposeRacingPinsLeavesNoPinThatCanReachTheDevice(bool fileBacked)
    {
        int stillActive = 0;
        long deadline = Environment.TickCount64 + 4000;
        for (int round = 0; round < 100 && Environment.TickCount64 < deadline; round++)
        {
            var opts = new VolumeOptions { BlockCount = 512 };
            var v = fileBacked ? Volume.Create(Path.Combine(_dir, $"v{round}.img"), opts) : Volume.CreateInMemory(opts);
            var f = NewFile(v, "f", 16, 0x55);
            var owner = new PinOwner(v, 1 << 24);
            var handles = new ConcurrentBag<PinHandle>();
            using var go = new Barrier(3);
            var pinners = Enumerable.Range(0, 2).Select(t => new Thread(() =>
            {
                go.SignalAndWait();
                for (int i = 0; i < 400; i++)
                {
                    try
                    {
                        var h = owner.Pin(f, (t * 8 + i % 8) * Bs, Bs, PinAccess.Write);
                        handles.Add(h);
                        h.TryWrite(0, new byte[] { 1, 2, 3 });
                    }
                    catch (ObjectDisposedException)
                    {
                        return;
                    }
                }
            })).ToArray();
            foreach (var p in pinners) p.Start();
            go.SignalAndWait();
            v.Dispose();
            foreach (var p in pinners) p.Join();
            // After Dispose returned (and the pinners stopped), no pin may still be usable: DMA through one would
            // touch the released device.
            foreach (var h in handles)
                if (h.Status == PinStatus.Active || h.Drain.TryEnterAndExit()) stillActive++;
            owner.Dispose();
        }
        Assert.Equal(0, stillActive);
    }

    [Fact]
    public async Task PinWaitingOutsideTheLockWhenTheVolumeIsDisposedIsRefused()
    {
        var v = Volume.CreateInMemory(new VolumeOptions { BlockCount = 512 });
        using var blockerOwner = new PinOwner(v, 1 << 20, "blocker");
        using var owner = new PinOwner(v, 1 << 20, "victim");
        var (blocker, waiting) = PinThatWaits(v, blockerOwner, owner);
        Thread.Sleep(50); // let it reach the wait; the assertions do not depend on it
        v.Dispose();      // revokes the blocker, which wakes the waiting pin
        Assert.Equal(PinStatus.Revoked, blocker.Status);
        var (pin, error) = await Outcome(waiting);
        if (pin is not null) Assert.NotEqual(PinStatus.Active, pin.Status);
        else Assert.IsType<ObjectDisposedException>(error);
        Assert.Throws<ObjectDisposedException>(() => v.CreateFile("late"));
    }

    [Fact]
    public void DirectMappingSpanWrittenAfterVolumeDisposeNeitherCrashesNorReachesTheFile()
    {
        string path = Path.Combine(_dir, "direct.img");
        var v = Volume.Create(path, new VolumeOptions { BlockCount = 512 });
        var f = NewFile(v, "f", 4, 0x66);
        var owner = new PinOwner(v, 1 << 20);
        var m = owner.Map(f, 0, 4 * Bs, MapFlags.Shared | MapFlags.Direct);
        var span = m.GetExtentSpan(0);
        span[0] = 0x67; // before the end: lands
        v.Dispose();
        span.Fill(0xEE); // after the end: must not kill the process, must not land
        Assert.Throws<ObjectDisposedException>(() => m.GetExtentSpan(0));
        m.Dispose();
        owner.Dispose();

        using var r = Volume.Open(path);
        var back = ReadAll(r.OpenFile("f"), 4 * Bs);
        Assert.Equal(0x67, back[0]);
        Assert.All(back.Skip(1), b => Assert.Equal(0x66, b));
        Assert.DoesNotContain((byte)0xEE, back);
        Assert.True(r.Fsck().IsClean);
    }

    [Fact]
    public void MemoryDeviceOutlivesItsVolumeWhileADirectMappingHoldsIt()
    {
        var v = Volume.CreateInMemory(new VolumeOptions { BlockCount = 256 });
        var f = NewFile(v, "f", 2, 0x10);
        var owner = new PinOwner(v, 1 << 20);
        var m = owner.Map(f, 0, 2 * Bs, MapFlags.Shared | MapFlags.Direct);
        var span = m.GetExtentSpan(0);
        v.Dispose();
        Assert.True(v.Device.IsDisposed);
        span.Fill(0xEE); // the memory is still allocated: the mapping holds it
        Assert.Equal(0xEE, span[span.Length - 1]);
        m.Dispose(); // the last reference: now it goes
        owner.Dispose();
    }
}

internal static class DmaDrainTestExtensions
{
    /// <summary>True when an access could still enter the drain (it leaves again at once).</summary>
    public static bool TryEnterAndExit(this DmaDrain drain)
    {
        if (!drain.TryEnter()) return false;
        drain.Exit();
        return true;
    }
}
