using System.Runtime.CompilerServices;
using PinnedDma.Storage;
using PinnedDma.Tests.Verbs;
using PinnedDma.Verbs;
using Xunit;

namespace PinnedDma.Tests.Lifetimes;

/// <summary>A memory region dropped without Dispose gives back its pin and memlock charge when it is finalized, as a leaked pin does.</summary>
public sealed class LeakedRegionTests
{
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static (uint Key, long Charged) RegisterAndDrop(ProtectionDomain pd, PinOwner owner, VolumeFile f)
    {
        var mr = pd.RegisterFile(owner, f, 0, 64 * 1024, VerbsRig.All);
        mr.LeaseBreaking += (_, _) => { }; // a handler, as applications have: it must not keep the region alive
        return (mr.RKey, mr.Pin!.ChargedBytes);
    }

    [Fact]
    public void DroppedFileRegionReleasesItsMemlockChargeOnFinalization()
    {
        using var v = Volume.CreateInMemory(new VolumeOptions { BlockCount = 512 });
        var f = v.CreateFile("f");
        f.Write(0, new byte[64 * 1024]);
        using var owner = new PinOwner(v, 1 << 20);
        using var dev = new RdmaDevice("leak");
        var pd = dev.AllocatePd();
        var (key, charged) = RegisterAndDrop(pd, owner, f);
        Assert.Equal(charged, owner.LockedBytes);
        for (int i = 0; i < 200 && (owner.LockedBytes != 0 || owner.PinCount != 0); i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            Thread.Sleep(10); // the pin's finalizer hands the release to the thread pool
        }
        Assert.Equal(0, owner.LockedBytes);
        Assert.Equal(0, owner.PinCount);
        Assert.Null(dev.Keys.Lookup(key));
        // The range is free again: an exclusive pin over it is granted.
        using var again = owner.Pin(f, 0, 64 * 1024, PinAccess.Write, PinOptions.Unbreakable);
    }
}
