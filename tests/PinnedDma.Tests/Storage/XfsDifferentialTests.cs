using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;
using FsCheck;
using FsCheck.Fluent;
using Microsoft.Win32.SafeHandles;
using PinnedDma.Storage;
using Xunit;
using Xunit.Sdk;

namespace PinnedDma.Tests.Storage;

/// <summary>
/// Differential test: random sequences of writes, truncates, fallocate modes, reflinks, dedupes and unshares run on a
/// real XFS file system (reflink enabled, 4 KiB blocks, loop-mounted from a sparse image) and on a file-backed
/// <see cref="Volume"/>. XFS is the reference: after every step both the outcome (success or which error) and the
/// touched files' lengths and bytes must agree.
/// </summary>
[Trait("Category", "Slow")]
public sealed partial class XfsDifferentialTests : IDisposable
{
    private const int Block = 4096;
    private const int FileCount = 3;

    private readonly string _dir;
    private readonly string _image;
    private readonly string _mount;
    private bool _mounted;

    public XfsDifferentialTests()
    {
        _dir = Directory.CreateTempSubdirectory("pdma-xfs-").FullName;
        _image = Path.Combine(_dir, "xfs.img");
        _mount = Path.Combine(_dir, "mnt");
        try
        {
            Directory.CreateDirectory(_mount);
            using (var fs = new FileStream(_image, FileMode.CreateNew, FileAccess.Write)) fs.SetLength(512L << 20);
            Run("mkfs.xfs", "-f", "-q", "-m", "reflink=1", "-b", "size=4096", _image);
            Run("mount", "-o", "loop", _image, _mount);
            _mounted = true;
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        if (_mounted)
        {
            if (!TryRun("umount", _mount)) TryRun("umount", "-l", _mount);
            _mounted = false;
        }
        try
        {
            Directory.Delete(_dir, recursive: true);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }

    [Fact]
    public void RandomOperationSequencesMatchXfs()
    {
        int sequence = 0;
        var seeds = Arb.From(Gen.Choose(0, int.MaxValue));
        var property = Prop.ForAll(seeds, (int seed) => RunSequence(seed, sequence++, opCount: 40 + seed % 21));
        Check.One(Config.QuickThrowOnFailure.WithMaxTest(20), property);
        Assert.Equal(20, sequence);
    }

    /// <summary>Fixed seeds, so that a regression reproduces without the random search.</summary>
    [Theory]
    [InlineData(1)]
    [InlineData(42)]
    [InlineData(20240611)]
    public void FixedSeedSequencesMatchXfs(int seed) => RunSequence(seed, 1000 + seed % 1000, opCount: 60);

    /// <summary>Remap edge cases, each checked against XFS: same-file overlaps, partial EOF blocks, ranges past EOF.</summary>
    [Fact]
    public void RemapEdgeCasesMatchXfs()
    {
        var data = new byte[20000];
        new Random(7).NextBytes(data);
        var copy = data.AsSpan(0, 12000).ToArray();
        RunSequence(0, 2000, opCount: 0, script:
        [
            new Op(Kind.Write, 0, 0, data.Length, Data: data),
            new Op(Kind.Write, 1, 0, copy.Length, Data: copy),
            // Same file, same or overlapping ranges, lengths that dedupe rounds down: EINVAL before any compare.
            new Op(Kind.Dedupe, 0, 4096, 13806, Source: 0, SourceOffset: 4096),
            new Op(Kind.Dedupe, 0, 4096, 10000, Source: 0, SourceOffset: 8192),
            new Op(Kind.Dedupe, 0, 0, 8192, Source: 0, SourceOffset: 4096),
            // Different files: rounded down, both at EOF, past EOF.
            new Op(Kind.Dedupe, 1, 0, 10000, Source: 0, SourceOffset: 0),
            new Op(Kind.Dedupe, 1, 8192, 3808, Source: 0, SourceOffset: 8192),
            new Op(Kind.Dedupe, 1, 8192, 4000, Source: 0, SourceOffset: 8192),
            new Op(Kind.Dedupe, 1, 8192, 5000, Source: 0, SourceOffset: 8192),
            // Clone: the partial EOF block may not land inside the destination, may land at or past its EOF.
            new Op(Kind.Clone, 1, 0, 20000 - 16384, Source: 0, SourceOffset: 16384),
            new Op(Kind.Clone, 1, 8192, 20000 - 16384, Source: 0, SourceOffset: 16384),
            new Op(Kind.Clone, 1, 40960, 20000 - 16384, Source: 0, SourceOffset: 16384),
            new Op(Kind.Clone, 0, 4096, 8192, Source: 0, SourceOffset: 8192),
            new Op(Kind.Clone, 0, 24576, 8192, Source: 0, SourceOffset: 0),
            new Op(Kind.Clone, 2, 0, 4096, Source: 0, SourceOffset: 45056),
            // Length 0: a clone goes to the source's EOF (nothing when at it, EINVAL past it); a dedupe does nothing,
            // but EINVAL with the source offset past EOF.
            new Op(Kind.Clone, 2, 0, 0, Source: 1, SourceOffset: 12000),
            new Op(Kind.Clone, 2, 0, 0, Source: 1, SourceOffset: 16384),
            new Op(Kind.Clone, 2, 0, 0, Source: 1, SourceOffset: 12001),
            new Op(Kind.Clone, 2, 4096, 0, Source: 1, SourceOffset: 8192),
            new Op(Kind.Dedupe, 1, 0, 0, Source: 0, SourceOffset: 20000),
            new Op(Kind.Dedupe, 1, 0, 0, Source: 0, SourceOffset: 24576),
            new Op(Kind.Dedupe, 1, 0, 0, Source: 0, SourceOffset: 20001),
            new Op(Kind.Dedupe, 1, 90000, 0, Source: 0, SourceOffset: 0),
            // Unshare past or straddling EOF: grows the file unless KEEP_SIZE.
            new Op(Kind.Unshare, 2, 40000, 5000, KeepSize: true),
            new Op(Kind.Unshare, 2, 40000, 5000),
            new Op(Kind.Unshare, 2, 60000, 100),
            new Op(Kind.Unshare, 1, 0, 0),
        ]);
    }

    // ------------------------------------------------------------------ the driver

    private void RunSequence(int seed, int index, int opCount, Op[]? script = null)
    {
        var rng = new Random(seed);
        var log = new List<string>();
        string volPath = Path.Combine(_dir, $"vol{index}.img");
        var xfsPaths = new string[FileCount];
        var handles = new SafeFileHandle[FileCount];
        // The COW granule changes which blocks a write copies, never what the files read.
        int granule = new[] { 1, 1, 2, 4, 16 }[rng.Next(5)];
        // Some sequences work far into the file (past 4 GiB), behind a hole, where 32-bit offset arithmetic would break.
        long far = script is null && rng.Next(4) == 0 ? (1L << 32) + rng.Next(0, 1 << 16) * (long)Block : 0;
        log.Add($"volume: CowGranuleBlocks={granule}; operations start at byte {far}");
        var volume = Volume.Create(volPath, new VolumeOptions { BlockCount = 8192, CowGranuleBlocks = granule, DurableCommits = false });
        try
        {
            var files = new VolumeFile[FileCount];
            for (int i = 0; i < FileCount; i++)
            {
                xfsPaths[i] = Path.Combine(_mount, $"s{index}-f{i}");
                handles[i] = File.OpenHandle(xfsPaths[i], FileMode.CreateNew, FileAccess.ReadWrite, FileShare.ReadWrite);
                files[i] = volume.CreateFile($"f{i}");
            }
            var state = new SequenceState(rng, files, handles, far);
            if (script is not null) opCount = script.Length;
            for (int step = 0; step < opCount; step++)
            {
                if (script is null && rng.Next(12) == 0)
                {
                    // Volume-only housekeeping that must not change any file's contents.
                    string what = Housekeeping(rng.Next(4), ref volume, volPath, files);
                    log.Add($"{step}: (volume {what})");
                    for (int f = 0; f < FileCount; f++) Compare(seed, log, f, handles[f], files[f], "after " + what);
                }
                var op = script?[step] ?? state.NextOp();
                string linux = op.RunLinux(handles);
                string ours = op.RunVolume(files);
                log.Add($"{step}: {op} -> xfs {linux}, volume {ours}");
                if (linux != ours) Fail(seed, log, $"outcome differs: xfs {linux}, volume {ours}");
                if (linux.StartsWith("ok", StringComparison.Ordinal)) state.Remember(op);
                foreach (int f in op.Touched) Compare(seed, log, f, handles[f], files[f]);
            }
            for (int f = 0; f < FileCount; f++) Compare(seed, log, f, handles[f], files[f]);
            var report = volume.Fsck();
            if (!report.IsClean) Fail(seed, log, "fsck: " + report);

            // The same contents after a checkpoint and a reopen.
            volume.Dispose();
            volume = Volume.Open(volPath);
            for (int f = 0; f < FileCount; f++) Compare(seed, log, f, handles[f], volume.OpenFile($"f{f}"), "after reopen");
            report = volume.Fsck();
            if (!report.IsClean) Fail(seed, log, "fsck after reopen: " + report);
        }
        finally
        {
            volume.Dispose();
            foreach (var h in handles) h?.Dispose();
            foreach (var p in xfsPaths) if (p is not null) File.Delete(p);
            File.Delete(volPath);
        }
    }

    private static string Housekeeping(int which, ref Volume volume, string path, VolumeFile[] files)
    {
        switch (which)
        {
            case 0:
                volume.Commit();
                return "commit";
            case 1:
                volume.Checkpoint();
                return "checkpoint";
            case 2:
                return $"compact moved {volume.Compact(maxRunBlocks: 8)} blocks";
            default:
                volume.Commit();
                volume.Dispose();
                volume = Volume.Open(path);
                for (int f = 0; f < files.Length; f++) files[f] = volume.OpenFile($"f{f}");
                return "reopen";
        }
    }

    /// <summary>
    /// Compares length and bytes from the first byte where either file has data (XFS: SEEK_DATA; the volume: its
    /// first extent), so that a file far past 4 GiB is not read through its leading hole; that hole reads as zeros
    /// in both by definition.
    /// </summary>
    private static void Compare(int seed, List<string> log, int index, SafeFileHandle xfs, VolumeFile ours, string when = "")
    {
        long xlen = RandomAccess.GetLength(xfs);
        if (xlen != ours.Length) Fail(seed, log, $"f{index} {when}: length xfs {xlen}, volume {ours.Length}");
        long from = xlen;
        long data = Native.Lseek((int)xfs.DangerousGetHandle(), 0, SeekData);
        if (data >= 0) from = Math.Min(from, data);
        var extents = ours.GetExtents();
        if (extents.Count > 0) from = Math.Min(from, extents[0].FileOffset);
        from = from / Block * Block;
        var a = new byte[xlen - from];
        var b = new byte[xlen - from];
        int got = RandomAccess.Read(xfs, a, from);
        if (got != a.Length) Fail(seed, log, $"f{index}: short read from xfs ({got} of {a.Length})");
        if (ours.Read(from, b) != b.Length) Fail(seed, log, $"f{index}: short read from the volume");
        int at = a.AsSpan().CommonPrefixLength(b);
        if (at != a.Length)
        {
            int end = at;
            while (end < a.Length && a[end] != b[end]) end++;
            long pos = from + at;
            Fail(seed, log, $"f{index} {when}: contents differ at byte {pos} (block {pos / Block}), for {end - at} bytes: " +
                $"xfs {Convert.ToHexString(a, at, Math.Min(8, a.Length - at))}, volume {Convert.ToHexString(b, at, Math.Min(8, b.Length - at))}");
        }
    }

    private static void Fail(int seed, List<string> log, string what)
    {
        var sb = new StringBuilder();
        sb.AppendLine($"seed {seed}: {what}");
        sb.AppendLine("operations:");
        foreach (var line in log) sb.AppendLine("  " + line);
        throw new XunitException(sb.ToString());
    }

    // ------------------------------------------------------------------ operations

    private enum Kind { Write, CopyWrite, Truncate, Punch, Zero, Allocate, Collapse, Insert, Clone, Dedupe, Unshare }

    private sealed record Op(Kind Kind, int File, long Offset, long Length, bool KeepSize = false, int Source = -1, long SourceOffset = 0, byte[]? Data = null)
    {
        public IEnumerable<int> Touched => Source >= 0 && Source != File ? [File, Source] : [File];

        public override string ToString() => Kind switch
        {
            Kind.Write => $"pwrite f{File} off={Offset} len={Length}",
            Kind.CopyWrite => $"pwrite f{File} off={Offset} len={Length} (bytes of f{Source} at {SourceOffset})",
            Kind.Truncate => $"truncate f{File} {Offset}",
            Kind.Punch => $"fpunch f{File} {Offset} {Length}",
            Kind.Zero => $"fzero{(KeepSize ? " -k" : "")} f{File} {Offset} {Length}",
            Kind.Allocate => $"falloc{(KeepSize ? " -k" : "")} f{File} {Offset} {Length}",
            Kind.Collapse => $"fcollapse f{File} {Offset} {Length}",
            Kind.Insert => $"finsert f{File} {Offset} {Length}",
            Kind.Clone => $"reflink f{Source} {SourceOffset} -> f{File} {Offset} len={Length}",
            Kind.Dedupe => $"dedupe f{Source} {SourceOffset} -> f{File} {Offset} len={Length}",
            Kind.Unshare => $"funshare{(KeepSize ? " -k" : "")} f{File} {Offset} {Length}",
            _ => Kind.ToString(),
        };

        public string RunLinux(SafeFileHandle[] h)
        {
            int fd = (int)h[File].DangerousGetHandle();
            int keep = KeepSize ? FallocKeepSize : 0;
            switch (Kind)
            {
                case Kind.Write:
                case Kind.CopyWrite:
                    RandomAccess.Write(h[File], Data, Offset);
                    return "ok";
                case Kind.Truncate: return Errno(Native.Ftruncate(fd, Offset));
                case Kind.Punch: return Errno(Native.Fallocate(fd, FallocPunchHole | FallocKeepSize, Offset, Length));
                case Kind.Zero: return Errno(Native.Fallocate(fd, FallocZeroRange | keep, Offset, Length));
                case Kind.Allocate: return Errno(Native.Fallocate(fd, keep, Offset, Length));
                case Kind.Collapse: return Errno(Native.Fallocate(fd, FallocCollapseRange, Offset, Length));
                case Kind.Insert: return Errno(Native.Fallocate(fd, FallocInsertRange, Offset, Length));
                case Kind.Unshare: return Errno(Native.Fallocate(fd, FallocUnshareRange | keep, Offset, Length));
                case Kind.Clone:
                {
                    var arg = new FileCloneRange
                    {
                        SrcFd = (long)h[Source].DangerousGetHandle(),
                        SrcOffset = (ulong)SourceOffset,
                        SrcLength = (ulong)Length,
                        DestOffset = (ulong)Offset,
                    };
                    return Errno(Native.IoctlClone(fd, FicloneRange, ref arg));
                }
                case Kind.Dedupe:
                {
                    var arg = new FileDedupeRange
                    {
                        SrcOffset = (ulong)SourceOffset,
                        SrcLength = (ulong)Length,
                        DestCount = 1,
                        DestFd = (long)h[File].DangerousGetHandle(),
                        DestOffset = (ulong)Offset,
                    };
                    int rc = Native.IoctlDedupe((int)h[Source].DangerousGetHandle(), FideDupeRange, ref arg);
                    if (rc != 0) return Errno(rc);
                    return arg.Status switch
                    {
                        0 => $"ok {arg.BytesDeduped}",
                        1 => "RangesDiffer",
                        < 0 => ErrnoName(-arg.Status),
                        _ => $"dedupe status {arg.Status}",
                    };
                }
                default: throw new InvalidOperationException(Kind.ToString());
            }
        }

        public string RunVolume(VolumeFile[] f)
        {
            var file = f[File];
            try
            {
                switch (Kind)
                {
                    case Kind.Write:
                    case Kind.CopyWrite: file.Write(Offset, Data); break;
                    case Kind.Truncate: file.Truncate(Offset); break;
                    case Kind.Punch: file.PunchHole(Offset, Length); break;
                    case Kind.Zero: file.ZeroRange(Offset, Length, KeepSize); break;
                    case Kind.Allocate: file.Allocate(Offset, Length, KeepSize); break;
                    case Kind.Collapse: file.CollapseRange(Offset, Length); break;
                    case Kind.Insert: file.InsertRange(Offset, Length); break;
                    case Kind.Unshare: file.UnshareRange(Offset, Length, keepSize: KeepSize); break;
                    case Kind.Clone: file.CloneRangeFrom(f[Source], SourceOffset, Offset, Length); break;
                    case Kind.Dedupe: return $"ok {file.DedupeRangeFrom(f[Source], SourceOffset, Offset, Length)}";
                    default: throw new InvalidOperationException(Kind.ToString());
                }
                return "ok";
            }
            catch (PinnedDmaException e)
            {
                return e.Error.ToString();
            }
            catch (Exception e) when (e is ArgumentException or InvalidOperationException or IndexOutOfRangeException)
            {
                return $"{e.GetType().Name}: {e.Message}";
            }
        }

        private static string Errno(int rc) => rc == 0 ? "ok" : ErrnoName(Marshal.GetLastPInvokeError());

        private static string ErrnoName(int errno) => errno switch
        {
            22 => "InvalidArgument", // EINVAL
            28 => "NoSpace", // ENOSPC
            _ => $"errno {errno}",
        };
    }

    /// <summary>Generates operations from the files' current sizes, so that most are valid and some are not.</summary>
    private sealed class SequenceState(Random rng, VolumeFile[] files, SafeFileHandle[] handles, long far)
    {
        private const long MaxEnd = 1L << 20; // keeps the files small, so that operations overlap often
        private readonly List<(int Src, long SrcOff, int Dst, long DstOff, long Len)> _equalRanges = new();

        /// <summary>The size past <c>far</c>: the generators work in offsets relative to it.</summary>
        private long Size(int f) => Math.Max(0, RandomAccess.GetLength(handles[f]) - far);

        public Op NextOp()
        {
            var op = NextRelativeOp();
            return op with { Offset = op.Offset + far, SourceOffset = op.Source >= 0 ? op.SourceOffset + far : 0 };
        }

        private Op NextRelativeOp()
        {
            int f = rng.Next(FileCount);
            long size = Size(f);
            int roll = rng.Next(100);
            return roll switch
            {
                < 18 => Write(f, size),
                < 23 => CopyWrite(f),
                < 29 => new Op(Kind.Truncate, f, TruncateLength(size), 0),
                < 37 => new Op(Kind.Punch, f, AnyOffset(size), AnyLength()),
                < 45 => new Op(Kind.Zero, f, AnyOffset(size), AnyLength(), KeepSize: rng.Next(2) == 0),
                < 51 => new Op(Kind.Allocate, f, AnyOffset(size), AnyLength(), KeepSize: rng.Next(2) == 0),
                < 58 => Collapse(f, size),
                < 65 => Insert(f, size),
                < 80 => Clone(f),
                < 92 => Dedupe(f),
                _ => new Op(Kind.Unshare, f, AnyOffset(size), AnyLength() * (rng.Next(3) == 0 ? 8 : 1), KeepSize: rng.Next(2) == 0),
            };
        }

        /// <summary>Records ranges that hold equal bytes after a successful clone or copy: candidates for a dedupe.</summary>
        public void Remember(Op op)
        {
            if (op.Kind is Kind.Clone or Kind.CopyWrite)
            {
                _equalRanges.Add((op.Source, op.SourceOffset - far, op.File, op.Offset - far, op.Length));
                if (_equalRanges.Count > 16) _equalRanges.RemoveAt(0);
            }
        }

        private Op Write(int f, long size)
        {
            long off = rng.Next(3) switch
            {
                0 => rng.NextInt64(0, Math.Max(size, Block) + 2 * Block),
                1 => Math.Max(0, size + rng.Next(-Block, Block)),
                _ => rng.Next(0, 48) * (long)Block + rng.Next(0, 2) * rng.Next(Block),
            };
            off = Math.Min(off, MaxEnd - 4 * Block);
            var data = new byte[rng.Next(4) == 0 ? rng.Next(1, 16 * Block) : rng.Next(1, 3 * Block)];
            rng.NextBytes(data);
            return new Op(Kind.Write, f, off, data.Length, Data: data);
        }

        private Op CopyWrite(int dst)
        {
            int src = rng.Next(FileCount);
            long srcSize = Size(src);
            if (srcSize == 0) return Write(dst, Size(dst));
            long srcOff = AlignedBelow(srcSize);
            long len = Math.Min(srcSize - srcOff, rng.Next(1, 6) * (long)Block);
            long dstOff = rng.Next(0, 40) * (long)Block;
            var data = new byte[len];
            files[src].Read(far + srcOff, data);
            return new Op(Kind.CopyWrite, dst, dstOff, len, Source: src, SourceOffset: srcOff, Data: data);
        }

        private Op Collapse(int f, long size)
        {
            if (rng.Next(6) == 0 || size <= Block) return new Op(Kind.Collapse, f, AnyOffset(size), AnyLength());
            long blocks = (size - 1) / Block; // blocks that can go, leaving at least one byte after the range
            long first = rng.NextInt64(0, blocks);
            long count = rng.NextInt64(1, Math.Min(blocks - first, 8) + 1);
            return new Op(Kind.Collapse, f, first * Block, count * Block);
        }

        private Op Insert(int f, long size)
        {
            if (size >= MaxEnd) return new Op(Kind.Truncate, f, TruncateLength(size), 0);
            if (rng.Next(6) == 0 || size == 0) return new Op(Kind.Insert, f, AnyOffset(size), AnyLength());
            long off = AlignedBelow(size);
            return new Op(Kind.Insert, f, off, rng.Next(1, 9) * (long)Block);
        }

        private Op Clone(int dst)
        {
            int src = rng.Next(FileCount);
            long srcSize = Size(src);
            if (rng.Next(8) == 0)
                return new Op(Kind.Clone, dst, AlignedBelow(Size(dst) + 2 * Block), 0, Source: src, SourceOffset: PastOrAtEof(srcSize));
            if (rng.Next(5) == 0 || srcSize == 0)
                return new Op(Kind.Clone, dst, AnyOffset(Size(dst)), AnyLength(), Source: src, SourceOffset: AnyOffset(srcSize));
            long srcOff = AlignedBelow(srcSize);
            long len = srcSize - srcOff;
            if (rng.Next(2) == 0) len = Math.Max(Block, len / Block / (rng.Next(1, 4)) * Block);
            if (len > srcSize - srcOff) len = srcSize - srcOff;
            long dstOff = Math.Min(AlignedBelow(Size(dst) + 3 * Block), MaxEnd - len / Block * Block - Block) / Block * Block;
            return new Op(Kind.Clone, dst, Math.Max(0, dstOff), len, Source: src, SourceOffset: srcOff);
        }

        private Op Dedupe(int dst)
        {
            if (_equalRanges.Count > 0 && rng.Next(3) != 0)
            {
                var r = _equalRanges[rng.Next(_equalRanges.Count)];
                long hinted = r.Len;
                int tweak = rng.Next(4);
                if (tweak == 1) hinted = Math.Max(1, hinted - rng.Next(1, Block));
                else if (tweak == 2) hinted += rng.Next(1, Block);
                bool swap = rng.Next(2) == 0;
                return swap
                    ? new Op(Kind.Dedupe, r.Src, r.SrcOff, hinted, Source: r.Dst, SourceOffset: r.DstOff)
                    : new Op(Kind.Dedupe, r.Dst, r.DstOff, hinted, Source: r.Src, SourceOffset: r.SrcOff);
            }
            int src = rng.Next(FileCount);
            long srcSize = Size(src), dstSize = Size(dst);
            if (rng.Next(8) == 0)
                return new Op(Kind.Dedupe, dst, PastOrAtEof(dstSize), 0, Source: src, SourceOffset: PastOrAtEof(srcSize));
            if (rng.Next(4) == 0 || srcSize == 0 || dstSize == 0)
                return new Op(Kind.Dedupe, dst, AnyOffset(dstSize), AnyLength(), Source: src, SourceOffset: AnyOffset(srcSize));
            // Often both ranges are holes or zeroed, which dedupe as equal.
            long srcOff = AlignedBelow(srcSize), dstOff = AlignedBelow(dstSize);
            long len = Math.Min(srcSize - srcOff, dstSize - dstOff);
            if (rng.Next(2) == 0) len = Math.Min(len, rng.Next(1, 4) * (long)Block);
            return new Op(Kind.Dedupe, dst, dstOff, len, Source: src, SourceOffset: srcOff);
        }

        /// <summary>The EOF itself, or a block-aligned or unaligned offset past it.</summary>
        private long PastOrAtEof(long size) => rng.Next(3) switch
        {
            0 => size,
            1 => (size / Block + rng.Next(1, 3)) * Block,
            _ => size + rng.Next(1, Block),
        };

        private long AlignedBelow(long size) => size <= 0 ? 0 : rng.NextInt64(0, (size - 1) / Block + 1) * Block;

        private long TruncateLength(long size) => rng.Next(4) switch
        {
            0 => 0,
            1 => Math.Max(0, size - rng.Next(1, 5 * Block)),
            2 => rng.Next(0, 64) * (long)Block,
            _ => Math.Min(MaxEnd, size + rng.Next(1, 5 * Block)),
        };

        private long AnyOffset(long size)
        {
            long off = rng.Next(5) switch
            {
                0 => rng.Next(0, 64) * (long)Block,
                1 => Math.Max(0, size + rng.Next(-2 * Block, Block)),
                2 => size + rng.Next(0, 3) * (long)Block + rng.Next(0, 2) * rng.Next(1, Block), // at or past EOF
                _ => rng.NextInt64(0, Math.Max(size, Block) + 2 * Block),
            };
            return Math.Min(off, MaxEnd - 16 * Block);
        }

        private long AnyLength() => rng.Next(5) switch
        {
            0 => rng.Next(1, 9) * (long)Block,
            1 when rng.Next(3) == 0 => 0, // fallocate refuses it; a clone goes to EOF, a dedupe does nothing
            1 => rng.Next(1, 200),
            _ => rng.Next(1, 4 * Block),
        };
    }

    // ------------------------------------------------------------------ Linux interfaces

    private const int SeekData = 3;
    private const int FallocKeepSize = 0x01;
    private const int FallocPunchHole = 0x02;
    private const int FallocCollapseRange = 0x08;
    private const int FallocZeroRange = 0x10;
    private const int FallocInsertRange = 0x20;
    private const int FallocUnshareRange = 0x40;
    private const ulong FicloneRange = 0x4020940D; // _IOW(0x94, 13, struct file_clone_range)
    private const ulong FideDupeRange = 0xC0189436; // _IOWR(0x94, 54, struct file_dedupe_range)

    [StructLayout(LayoutKind.Sequential)]
    private struct FileCloneRange
    {
        public long SrcFd;
        public ulong SrcOffset;
        public ulong SrcLength;
        public ulong DestOffset;
    }

    /// <summary>struct file_dedupe_range followed by one struct file_dedupe_range_info.</summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct FileDedupeRange
    {
        public ulong SrcOffset;
        public ulong SrcLength;
        public ushort DestCount;
        public ushort Reserved1;
        public uint Reserved2;
        public long DestFd;
        public ulong DestOffset;
        public ulong BytesDeduped;
        public int Status;
        public uint Reserved;
    }

    private static partial class Native
    {
        [LibraryImport("libc", EntryPoint = "fallocate", SetLastError = true)]
        public static partial int Fallocate(int fd, int mode, long offset, long length);

        [LibraryImport("libc", EntryPoint = "lseek", SetLastError = true)]
        public static partial long Lseek(int fd, long offset, int whence);

        [LibraryImport("libc", EntryPoint = "ftruncate", SetLastError = true)]
        public static partial int Ftruncate(int fd, long length);

        [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
        public static partial int IoctlClone(int fd, ulong request, ref FileCloneRange arg);

        [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
        public static partial int IoctlDedupe(int fd, ulong request, ref FileDedupeRange arg);
    }

    // ------------------------------------------------------------------ processes

    private static void Run(string tool, params string[] args)
    {
        var (ok, output) = Exec(tool, args);
        if (!ok)
            throw new XunitException($"'{tool} {string.Join(' ', args)}' failed; the differential test needs xfsprogs, loop devices and root. {output}");
    }

    private static bool TryRun(string tool, params string[] args) => Exec(tool, args).Ok;

    private static (bool Ok, string Output) Exec(string tool, string[] args)
    {
        var psi = new ProcessStartInfo(tool) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        Process? p;
        try
        {
            p = Process.Start(psi);
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            return (false, $"cannot start {tool}: {e.Message}");
        }
        if (p is null) return (false, $"cannot start {tool}");
        using (p)
        {
            var stdout = p.StandardOutput.ReadToEndAsync();
            var stderr = p.StandardError.ReadToEndAsync();
            if (!p.WaitForExit(60_000))
            {
                p.Kill(entireProcessTree: true);
                return (false, $"{tool} timed out");
            }
            p.WaitForExit();
            return (p.ExitCode == 0, $"exit {p.ExitCode}: {stdout.Result}{stderr.Result}".Trim());
        }
    }
}
