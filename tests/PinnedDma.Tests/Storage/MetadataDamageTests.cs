using System.Security.Cryptography;
using System.Text;
using PinnedDma.Storage;
using Xunit;
using Xunit.Abstractions;

using static PinnedDma.Tests.Storage.VolumeTestData;

namespace PinnedDma.Tests.Storage;

/// <summary>
/// Recovery never silently chooses an older state. Every single-bit flip in the superblocks, checkpoints and journal
/// of small volumes either recovers the last committed state exactly or is refused with Corrupt; a refused volume
/// opens with AllowRollback to a state it really went through.
/// </summary>
public sealed class MetadataDamageTests : IDisposable
{
    private readonly ITestOutputHelper _output;
    private readonly string _dir = Directory.CreateTempSubdirectory("pdma-flip-").FullName;

    public MetadataDamageTests(ITestOutputHelper output) => _output = output;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>Names and lengths of every file: what a rollback (an older metadata state) must match.</summary>
    private static string Shape(Volume v) => string.Join(";", v.FileNames.Select(n => $"{n}:{v.OpenFile(n).Length}"));

    /// <summary>Names, lengths and contents of every file, as one comparable string.</summary>
    private static string State(Volume v)
    {
        var sb = new StringBuilder();
        foreach (var name in v.FileNames)
            sb.Append(name).Append(':').Append(Convert.ToHexString(SHA256.HashData(ReadAll(v.OpenFile(name))))).Append(';');
        return sb.ToString();
    }

    // ---------------------------------------------------------------- the issue's repros, on real files

    [Trait("Category", "Slow")]
    [Fact]
    public void EveryFlipInTheNewestSuperblockCopy_AfterDisposeWithoutCommit_RecoversExactly()
    {
        string path = Path.Combine(_dir, "v.img");
        string expect;
        using (var v = Volume.Create(path, new VolumeOptions { BlockCount = 256, TryMapSync = false }))
        {
            v.CreateFile("a").Write(0, Bytes(1, 9000));
            v.CreateFile("b").Write(100, Bytes(2, 300));
            expect = State(v);
        } // Dispose: the files reach the disk only through the closing checkpoint
        var image = File.ReadAllBytes(path);
        int newest = SuperblockSequence(image, 0) > SuperblockSequence(image, 1) ? 0 : 1;
        string p = Path.Combine(_dir, "flip.img");
        for (int bit = 0; bit < 124 * 8; bit += 7)
        {
            var bad = (byte[])image.Clone();
            bad[newest * 4096 + bit / 8] ^= (byte)(1 << (bit % 8));
            File.WriteAllBytes(p, bad);
            using var v = Volume.Open(p);
            Assert.Equal(expect, State(v));
            Assert.True(v.Fsck().IsClean);
        }
    }

    [Fact]
    public void ZeroedNewestSuperblockCopy_AfterCheckpointThenMoreWrites_KeepsEverything()
    {
        string path = Path.Combine(_dir, "v.img");
        string expect;
        using (var v = Volume.Create(path, new VolumeOptions { BlockCount = 256, TryMapSync = false }))
        {
            v.CreateFile("x").Write(0, Bytes(1, 5000));
            v.Commit();
            v.Checkpoint();
            v.CreateFile("y").Write(0, Bytes(2, 7000));
            expect = State(v);
        }
        var image = File.ReadAllBytes(path);
        int newest = SuperblockSequence(image, 0) > SuperblockSequence(image, 1) ? 0 : 1;
        image.AsSpan(newest * 4096, 4096).Clear();
        File.WriteAllBytes(path, image);
        using (var v = Volume.Open(path))
        {
            Assert.Null(v.RollbackReason);
            Assert.Equal(expect, State(v));
        }
        using (var v = Volume.Open(path)) Assert.Equal(expect, State(v)); // and again after the closing checkpoint
    }

    [Fact]
    public void DamagedNewestCheckpoint_IsCorrupt_AndAllowRollbackOpensTheOlderOne()
    {
        string path = Path.Combine(_dir, "v.img");
        string older;
        using (var v = Volume.Create(path, new VolumeOptions { BlockCount = 256, TryMapSync = false }))
        {
            v.CreateFile("x").Write(0, Bytes(1, 5000));
            v.Checkpoint();
            older = State(v);
            v.CreateFile("y").Write(0, Bytes(2, 7000));
        }
        var image = File.ReadAllBytes(path);
        int newest = SuperblockSequence(image, 0) > SuperblockSequence(image, 1) ? 0 : 1;
        long slotOffset = ActiveCheckpointOffset(image, newest);
        image[slotOffset + 60] ^= 0x08; // inside the checkpoint body
        File.WriteAllBytes(path, image);
        var e = Assert.Throws<PinnedDmaException>(() => Volume.Open(path).Dispose());
        Assert.Equal(PinnedDmaError.Corrupt, e.Error);
        Assert.Equal(image, File.ReadAllBytes(path));
        using (var v = Volume.Open(path, new VolumeOptions { AllowRollback = true, TryMapSync = false }))
        {
            Assert.Contains("rolled back", v.RollbackReason, StringComparison.Ordinal);
            Assert.Equal(older, State(v));
            Assert.True(v.Fsck().IsClean);
        }
        using (var v = Volume.Open(path))
        {
            Assert.Null(v.RollbackReason);
            Assert.Equal(older, State(v));
        }
    }

    private static ulong SuperblockSequence(byte[] image, int copy) =>
        System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(image.AsSpan(copy * 4096 + 72));

    private static long ActiveCheckpointOffset(byte[] image, int copy)
    {
        var s = image.AsSpan(copy * 4096);
        int active = System.Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(s[80..]);
        long c0 = System.Buffers.Binary.BinaryPrimitives.ReadInt64LittleEndian(s[40..]);
        long c1 = System.Buffers.Binary.BinaryPrimitives.ReadInt64LittleEndian(s[48..]);
        return (active == 0 ? c0 : c1) * 4096;
    }

    // ---------------------------------------------------------------- every bit

    private const int Bs = 512;

    /// <summary>
    /// A small volume image (not closed: a crash right after the last commit), its last committed state, and the
    /// shapes (names and lengths) of every state its history went through. Data written in place is not versioned,
    /// so a repair to an older metadata state is checked by shape; exact recovery is checked by content.
    /// </summary>
    private sealed record Scenario(string What, byte[] Image, string Committed, HashSet<string> History);

    private static Scenario Build(string what, Action<Volume, Action> script)
    {
        var options = new VolumeOptions { BlockSize = Bs, BlockCount = 256, MaxFiles = 4, JournalBlocks = 8, DurableCommits = false };
        var v = Volume.CreateInMemory(options);
        var history = new HashSet<string> { Shape(v) };
        script(v, () => history.Add(Shape(v)));
        v.Commit();
        string committed = State(v);
        history.Add(Shape(v));
        var image = v.Device.GetSpan(0, checked((int)v.Device.Length)).ToArray();
        return new Scenario(what, image, committed, history);
    }

    private static IEnumerable<Scenario> Scenarios()
    {
        yield return Build("journal after a checkpoint", (v, step) =>
        {
            v.CreateFile("a"); step();
            v.OpenFile("a").Write(0, Bytes(1, 1500)); step();
            v.Commit();
            v.Checkpoint();
            v.CreateFile("b"); step();
            v.OpenFile("b").Write(0, Bytes(2, 700)); step();
            v.Commit();
            v.OpenFile("a").Truncate(600); step();
            v.OpenFile("b").CloneRangeFrom(v.OpenFile("a"), 0, 1024, 600); step();
            v.Commit();
            v.DeleteFile("a"); step();
        });
        yield return Build("checkpoint only", (v, step) =>
        {
            v.CreateFile("a"); step();
            v.OpenFile("a").Write(0, Bytes(3, 2000)); step();
            v.CreateFile("b"); step();
            v.OpenFile("b").Write(512, Bytes(4, 100)); step();
            v.Checkpoint();
        });
        yield return Build("two checkpoints and a journal", (v, step) =>
        {
            v.CreateFile("a"); step();
            v.OpenFile("a").Write(0, Bytes(5, 1000)); step();
            v.Checkpoint();
            v.CreateFile("b"); step();
            v.OpenFile("b").Write(0, Bytes(6, 900)); step();
            v.Checkpoint();
            v.OpenFile("b").Write(900, Bytes(7, 300)); step();
            v.Commit();
            v.CreateFile("c"); step();
        });
    }

    [Fact]
    public void EveryBitOfTheMetadata_FlipsToExactRecoveryOrCorrupt_NeverAnOlderState()
    {
        int exact = 0, refused = 0, scenarios = 0;
        foreach (var sc in Scenarios())
        {
            scenarios++;
            using var device = new MemoryBlockDevice(Bs, sc.Image.Length / Bs);
            var mem = device.GetSpan(0, sc.Image.Length);
            sc.Image.CopyTo(mem);
            using (var v = Volume.Mount(device, new VolumeOptions { DurableCommits = false }))
                Assert.Equal(sc.Committed, State(v)); // the undamaged image recovers the last committed state
            foreach (var (from, to) in MetadataRanges(sc.Image))
            {
                for (long bit = from * 8; bit < to * 8; bit++)
                {
                    sc.Image.CopyTo(mem);
                    mem[(int)(bit / 8)] ^= (byte)(1 << (int)(bit % 8));
                    string where = $"{sc.What}: bit {bit % 8} of byte {bit / 8}";
                    Volume v;
                    try
                    {
                        v = Volume.Mount(device, new VolumeOptions { DurableCommits = false });
                    }
                    catch (PinnedDmaException e) when (e.Error == PinnedDmaError.Corrupt)
                    {
                        refused++;
                        // The repair path opens it at a state the volume went through.
                        using var repaired = Volume.Mount(device, new VolumeOptions { DurableCommits = false, AllowRollback = true });
                        Assert.True(sc.History.Contains(Shape(repaired)), $"{where}: the repair opened a state that never existed: {Shape(repaired)} ({repaired.RollbackReason}); history: {string.Join(" | ", sc.History)}");
                        Assert.True(repaired.Fsck().IsClean, where);
                        continue;
                    }
                    string got = State(v);
                    Assert.True(v.Fsck().IsClean, where);
                    Assert.Null(v.RollbackReason);
                    v.Dispose();
                    if (got != sc.Committed)
                        Assert.Fail($"{where}: opened a state other than the last committed one: {got}.");
                    exact++;
                }
            }
        }
        _output.WriteLine($"{scenarios} scenarios: {exact} flips recovered exactly, {refused} refused as corrupt");
        Assert.True(exact > 0 && refused > 0, $"exact {exact}, refused {refused}");
    }

    /// <summary>
    /// Byte ranges to flip: both superblock copies, both checkpoint slots (header and body as far as either is used),
    /// and the journal through a little past its last entry.
    /// </summary>
    private static List<(long From, long To)> MetadataRanges(byte[] image)
    {
        var s0 = image.AsSpan(0, 128);
        long journalStart = System.Buffers.Binary.BinaryPrimitives.ReadInt64LittleEndian(s0[24..]);
        long journalBlocks = System.Buffers.Binary.BinaryPrimitives.ReadInt64LittleEndian(s0[32..]);
        long c0 = System.Buffers.Binary.BinaryPrimitives.ReadInt64LittleEndian(s0[40..]);
        long c1 = System.Buffers.Binary.BinaryPrimitives.ReadInt64LittleEndian(s0[48..]);
        var ranges = new List<(long, long)> { (0, 128), (Bs, Bs + 128) };
        foreach (long slot in new[] { c0, c1 })
        {
            long len = System.Buffers.Binary.BinaryPrimitives.ReadInt64LittleEndian(image.AsSpan((int)(slot * Bs) + 16));
            ranges.Add((slot * Bs, slot * Bs + 48 + Math.Clamp(len, 0, 4096)));
        }
        // The journal: up to the last non-zero byte, and one header beyond.
        long js = journalStart * Bs, je = (journalStart + journalBlocks) * Bs;
        long last = js;
        for (long i = js; i < je; i++) if (image[i] != 0) last = i + 1;
        ranges.Add((js, Math.Min(je, last + 32)));
        return ranges;
    }
}
