using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Diagnostics;
using PinnedDma.Storage;
using Xunit;

namespace PinnedDma.Tests.Layout;

/// <summary>
/// Real threads pin, unpin, break leases and DMA-write through pins while others clone, punch, truncate, write and
/// compact. Every DMA write is a sentinel naming its pin and sequence number. The test proves that no DMA write
/// lands after its pin's revocation completed: a TryWrite that starts after the pin ended (or after another TryWrite
/// on it failed) must fail; every sentinel anywhere on the device (files and free blocks) must come from a write that
/// reported success; and right after a pin ends, with no volume operation running, its blocks must not receive a
/// new sentinel of that pin.
/// </summary>
public sealed class PinRaceTests
{
    private const int Bs = 512;
    private const int SentinelSize = 16;
    private const uint Magic = 0x4C544E53; // "SNTL"
    private static readonly TimeSpan RunTime = TimeSpan.FromSeconds(4);

    private sealed class PinRecord
    {
        public required int Id;
        public required PinHandle H;
        public required int Thread;
        public required ScatterGatherEntry[] Sgl;
        public int NextSeq;
        public readonly ConcurrentDictionary<int, bool> Successful = new();
        public volatile bool ObservedFailure;
        public int Tripped;
    }

    private readonly object _testGate = new();
    private readonly ConcurrentDictionary<int, PinRecord> _all = new();
    private readonly ConcurrentQueue<string> _failures = new();
    private int _nextPin;

    private static uint Check(int pin, int seq) => Magic ^ (uint)pin * 2654435761u ^ (uint)seq * 40503u ^ 0x9E3779B9u;

    private static byte[] Sentinel(int pin, int seq)
    {
        var b = new byte[SentinelSize];
        BinaryPrimitives.WriteUInt32LittleEndian(b, Magic);
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(4), pin);
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(8), seq);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(12), Check(pin, seq));
        return b;
    }

    /// <summary>Every intact sentinel in <paramref name="bytes"/>: (offset, pin, seq).</summary>
    private static IEnumerable<(int At, int Pin, int Seq)> Sentinels(byte[] bytes)
    {
        var magic = new byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(magic, Magic);
        int at = 0;
        while (true)
        {
            int i = bytes.AsSpan(at).IndexOf(magic);
            if (i < 0) yield break;
            at += i;
            if (at + SentinelSize <= bytes.Length)
            {
                int pin = BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(at + 4));
                int seq = BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(at + 8));
                if (BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(at + 12)) == Check(pin, seq)) yield return (at, pin, seq);
            }
            at++;
        }
    }

    private void Failure(string s) => _failures.Enqueue(s);

    private static byte[] Filler(Random r, int n)
    {
        var b = new byte[n];
        r.NextBytes(b);
        return b;
    }

    [Fact]
    public void NoDmaLandsAfterRevocation()
    {
        using var v = Volume.CreateInMemory(new VolumeOptions { BlockSize = Bs, BlockCount = 4096, MaxFiles = 16, DurableCommits = false });
        var files = new VolumeFile[3];
        var seedRandom = new Random(12345);
        for (int i = 0; i < files.Length; i++)
        {
            files[i] = v.CreateFile($"f{i}");
            files[i].Write(0, Filler(seedRandom, 16 * Bs));
        }
        var owner = new PinOwner(v, 1 << 30);
        var stop = Stopwatch.StartNew();
        bool Running() => stop.Elapsed < RunTime && _failures.IsEmpty;

        var threads = new List<Thread>();
        for (int t = 0; t < 2; t++)
        {
            int id = t;
            threads.Add(new Thread(() => Guard(() => Pinner(id, owner, files, Running))));
            threads.Add(new Thread(() => Guard(() => DmaWriter(id, Running))));
            threads.Add(new Thread(() => Guard(() => Mutator(id, v, files, Running))));
        }
        foreach (var th in threads) th.Start();
        foreach (var th in threads)
            if (!th.Join(TimeSpan.FromSeconds(60))) Failure($"thread {th.ManagedThreadId} did not stop");

        owner.Dispose();
        foreach (var r in _all.Values)
        {
            if (r.H.TryWrite(0, Sentinel(r.Id, int.MaxValue))) Failure($"pin {r.Id}: TryWrite succeeded after its owner was disposed");
            TripwireIfEnded(v, r);
        }
        Assert.True(_failures.IsEmpty, string.Join("\n", _failures.Take(20)));

        Assert.Empty(v.CheckSealInvariants());
        v.Commit();
        var fsck = v.Fsck();
        Assert.True(fsck.IsClean, fsck.ToString());

        // Every sentinel on the device, in files and in free blocks alike, must come from a write that reported success.
        var device = new byte[(v.DataBlocks) * Bs];
        v.Device.GetSpan(v.DataStartBlock * Bs, device.Length).CopyTo(device);
        int found = 0;
        foreach (var (at, pin, seq) in Sentinels(device))
        {
            found++;
            if (!_all.TryGetValue(pin, out var r)) { Failure($"sentinel of unknown pin {pin} at device byte {at}"); continue; }
            if (!r.Successful.ContainsKey(seq))
                Failure($"pin {pin}: sentinel seq {seq} at device byte {v.DataStartBlock * Bs + at} comes from a write that reported failure (last successful {r.Successful.Keys.DefaultIfEmpty(-1).Max()})");
        }
        Assert.True(_failures.IsEmpty, string.Join("\n", _failures.Take(20)));
        int successes = _all.Values.Sum(r => r.Successful.Count);
        Assert.True(_all.Count > 10 && successes > 100 && found > 0,
            $"the race did too little to prove anything: {_all.Count} pins, {successes} successful DMA writes, {found} sentinels on the device");
        Assert.Contains(_all.Values, r => r.H.Status == PinStatus.Revoked);
    }

    private void Guard(Action body)
    {
        try
        {
            body();
        }
        catch (Exception e)
        {
            Failure($"thread died: {e}");
        }
    }

    private void Pinner(int id, PinOwner owner, VolumeFile[] files, Func<bool> running)
    {
        var r = new Random(100 + id);
        var mine = new List<PinRecord>();
        for (int i = 0; i < 20_000 && running(); i++)
        {
            lock (_testGate)
            {
                mine.RemoveAll(p => p.H.Ended.IsCompleted);
                if (mine.Count < 3 || r.Next(3) != 0)
                {
                    if (mine.Count >= 4) continue;
                    var f = files[r.Next(files.Length)];
                    long size = f.Length;
                    if (size == 0) continue;
                    long end = size; // pins lie within EOF
                    long off = r.NextInt64(end);
                    long len = 1 + r.NextInt64(Math.Min(end - off, 4 * Bs));
                    if (len < SentinelSize) continue;
                    PinHandle h;
                    try
                    {
                        h = owner.Pin(f, off, len, PinAccess.Write, r.Next(8) == 0 ? PinOptions.Unbreakable : PinOptions.None);
                    }
                    catch (PinnedDmaException e) when (e.Error is PinnedDmaError.NoSpace or PinnedDmaError.InvalidArgument)
                    {
                        continue; // a racing truncate may have moved EOF below the range since Length was read
                    }
                    var rec = new PinRecord { Id = Interlocked.Increment(ref _nextPin), H = h, Thread = id, Sgl = h.ScatterGatherList.ToArray() };
                    switch (r.Next(3))
                    {
                        case 0: h.LeaseBreaking += (_, _) => h.Dispose(); break;                 // releases in the callback
                        case 1: h.BreakRequested.ContinueWith(_ => h.Dispose(), TaskScheduler.Default); break; // releases later, on another thread
                        default: break;                                                           // ignores the break: revoked
                    }
                    _all[rec.Id] = rec;
                    mine.Add(rec);
                }
                else
                {
                    var p = mine[r.Next(mine.Count)];
                    p.H.Dispose();
                    mine.Remove(p);
                    TripwireIfEnded(files[0].Volume, p);
                }
            }
            Thread.Yield();
        }
    }

    private void DmaWriter(int id, Func<bool> running)
    {
        var r = new Random(200 + id);
        for (int i = 0; i < 2_000_000 && running(); i++)
        {
            var live = _all.Values.Where(p => !p.H.Ended.IsCompleted || r.Next(4) == 0).ToArray();
            if (live.Length == 0) { Thread.Yield(); continue; }
            for (int k = 0; k < 32; k++)
            {
                var p = live[r.Next(live.Length)];
                bool endedBefore = p.H.Ended.IsCompleted;
                bool failedBefore = p.ObservedFailure;
                int seq = Interlocked.Increment(ref p.NextSeq);
                long slots = p.H.Length / SentinelSize;
                bool ok = p.H.TryWrite(r.NextInt64(slots) * SentinelSize, Sentinel(p.Id, seq));
                if (ok)
                {
                    p.Successful[seq] = true;
                    if (endedBefore) Failure($"pin {p.Id}: TryWrite seq {seq} succeeded after the pin had ended ({p.H.Status})");
                    if (failedBefore) Failure($"pin {p.Id}: TryWrite seq {seq} succeeded after an earlier TryWrite had failed");
                }
                else
                {
                    p.ObservedFailure = true;
                    if (!p.H.Ended.IsCompleted && p.H.Status is not (PinStatus.Revoked or PinStatus.Released))
                        Failure($"pin {p.Id}: TryWrite failed while the pin is {p.H.Status}");
                }
            }
        }
    }

    private void Mutator(int id, Volume v, VolumeFile[] files, Func<bool> running)
    {
        var r = new Random(300 + id);
        var tiny = TimeSpan.FromMilliseconds(1);
        for (int i = 0; i < 20_000 && running(); i++)
        {
            var policy = r.Next(10) switch
            {
                < 6 => ConflictPolicy.Break(tiny),
                < 8 => ConflictPolicy.Defer,
                8 => ConflictPolicy.Wait(tiny),
                _ => ConflictPolicy.Deny,
            };
            var f = files[r.Next(files.Length)];
            lock (_testGate)
            {
                try
                {
                    long size = f.Length;
                    long blocks = size / Bs;
                    switch (r.Next(7))
                    {
                        case 0:
                        {
                            var src = files[r.Next(files.Length)];
                            long sBlocks = src.Length / Bs;
                            if (sBlocks == 0 || src == f) break;
                            long sb = r.NextInt64(sBlocks), n = 1 + r.NextInt64(Math.Min(4, sBlocks - sb));
                            long db = r.NextInt64(Math.Min(blocks + 1, 28));
                            f.CloneRangeFrom(src, sb * Bs, db * Bs, n * Bs, policy);
                            break;
                        }
                        case 1:
                            f.PunchHole(r.NextInt64(size + 1), 1 + r.Next(4 * Bs), policy);
                            break;
                        case 2:
                            f.Truncate(r.Next(3) == 0 ? Math.Min(32 * Bs, size + r.Next(4 * Bs)) : r.NextInt64(size + 1), policy);
                            break;
                        case 3:
                        {
                            long off = r.NextInt64(Math.Min(size + 1, 28 * Bs));
                            f.Write(off, Filler(r, 1 + r.Next(3 * Bs)), policy);
                            break;
                        }
                        case 4:
                            v.Compact(1 + r.Next(8));
                            break;
                        case 5:
                            // An empty range is EINVAL (as fallocate with length 0): only unshare a non-empty file.
                            if (size > 0) f.UnshareRange(0, size, policy);
                            break;
                        default:
                            if (size < 8 * Bs) f.Write(size, Filler(r, 8 * Bs), policy);
                            else f.ZeroRange(r.NextInt64(size), 1 + r.Next(2 * Bs), keepSize: true, policy);
                            break;
                    }
                }
                catch (PinnedDmaException e) when (e.Error is PinnedDmaError.Busy or PinnedDmaError.NoSpace)
                {
                }
                foreach (var p in _all.Values) TripwireIfEnded(v, p);
            }
            if (r.Next(4) == 0) Thread.Sleep(1);
        }
    }

    /// <summary>
    /// Called with no volume operation running: once a pin has ended, snapshot its blocks, let the DMA writers run,
    /// and look again. A new sentinel of that pin would be DMA landing after the revocation completed.
    /// </summary>
    private void TripwireIfEnded(Volume v, PinRecord p)
    {
        if (!p.H.Ended.IsCompleted || Interlocked.Exchange(ref p.Tripped, 1) != 0) return;
        var before = p.Sgl.Select(e => v.Device.GetSpan(e.DeviceOffset, (int)e.Length).ToArray()).ToArray();
        for (int i = 0; i < 20; i++) Thread.Yield();
        for (int k = 0; k < p.Sgl.Length; k++)
        {
            var now = v.Device.GetSpan(p.Sgl[k].DeviceOffset, (int)p.Sgl[k].Length).ToArray();
            var old = Sentinels(before[k]).Where(s => s.Pin == p.Id).Select(s => (s.At, s.Seq)).ToHashSet();
            foreach (var s in Sentinels(now))
                if (s.Pin == p.Id && !old.Contains((s.At, s.Seq)))
                    Failure($"pin {p.Id}: sentinel seq {s.Seq} landed in its blocks after the pin ended ({p.H.Status})");
        }
    }
}
