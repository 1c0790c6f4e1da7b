using System.Runtime.InteropServices;
using PinnedDma.Storage;

namespace PinnedDma.CrashChild;

// Shared by the crash child (which runs the operations on a real volume) and the crash test (which runs the same
// operations on an in-memory model). Both generate operation i from the same Random and the same file list with
// lengths, so as long as the volume behaves like the model they stay in lockstep.

internal enum CrashOpKind { Write, Truncate, Punch, Zero, Allocate, Clone, Collapse, Insert, Unshare, Delete, Create, Compact, Checkpoint }

/// <summary>One generated operation. <see cref="File"/> is the file it changes (the destination of a clone).</summary>
internal sealed record CrashOp(CrashOpKind Kind, string File, string Source, long Offset, long Length, long Offset2, bool Flag, int DataSeed, bool Commit)
{
    /// <summary>
    /// The file whose contents or existence the operation may change, or null for operations that keep every
    /// file's bytes (unshare, compact, checkpoint only move data).
    /// </summary>
    public string? Touches => Kind is CrashOpKind.Unshare or CrashOpKind.Compact or CrashOpKind.Checkpoint ? null : File;

    public override string ToString() => Kind switch
    {
        CrashOpKind.Clone => $"Clone {Source}@{Offset2} -> {File}@{Offset} len {Length}",
        CrashOpKind.Zero => $"Zero {File} [{Offset}, +{Length}) keepSize={Flag}",
        CrashOpKind.Compact or CrashOpKind.Checkpoint => Kind.ToString(),
        CrashOpKind.Delete or CrashOpKind.Create => $"{Kind} {File}",
        CrashOpKind.Truncate => $"Truncate {File} to {Offset}",
        _ => $"{Kind} {File} [{Offset}, +{Length})",
    } + (Commit ? " +commit" : "");
}

internal static class CrashWorkload
{
    public const int BlockSize = 4096;
    public const long MaxFileBytes = 40L * BlockSize;
    public static readonly string[] Names = ["f0", "f1", "f2", "f3", "f4", "f5"];

    /// <summary>A small volume with a tiny journal, so that checkpoints happen every few hundred operations.</summary>
    public static VolumeOptions Options => new()
    {
        BlockSize = BlockSize,
        BlockCount = 2048,
        JournalBlocks = 16,
        MaxFiles = 16,
    };

    /// <summary>Generates the next operation from the files (sorted by name) and their lengths. Every generated operation is valid.</summary>
    public static CrashOp Next(Random rng, IReadOnlyList<(string Name, long Length)> files)
    {
        const int bs = BlockSize;
        bool commit = rng.Next(100) < 15;
        int roll = rng.Next(100);
        if (files.Count == 0) roll = 90;
        var (name, size) = files.Count == 0 ? ("", 0L) : files[rng.Next(files.Count)];
        long Range(long lo, long hi) => lo >= hi ? lo : rng.NextInt64(lo, hi + 1);
        CrashOp Op(CrashOpKind k, long off = 0, long len = 0, long off2 = 0, string src = "", bool flag = false, int data = 0) =>
            new(k, name, src, off, len, off2, flag, data, commit);
        CrashOp SmallWrite()
        {
            long len = Range(1, 2 * bs);
            return Op(CrashOpKind.Write, Range(0, Math.Min(size, MaxFileBytes - len)), len, data: rng.Next());
        }

        if (roll < 28)
        {
            long len = rng.Next(4) == 0 ? Range(1, 8 * bs) : Range(1, 2 * bs);
            return Op(CrashOpKind.Write, Range(0, Math.Min(size + 2 * bs, MaxFileBytes - len)), len, data: rng.Next());
        }
        if (roll < 35) return Op(CrashOpKind.Truncate, Range(0, Math.Min(size + 3 * bs, MaxFileBytes)));
        if (roll < 42) return Op(CrashOpKind.Punch, Range(0, size + bs), Range(1, 4 * bs));
        if (roll < 49)
        {
            bool keep = rng.Next(2) == 0;
            long len = Range(1, 4 * bs);
            return Op(CrashOpKind.Zero, Range(0, Math.Min(size + bs, MaxFileBytes - len)), len, flag: keep);
        }
        if (roll < 53)
        {
            long len = Range(1, 4 * bs);
            return Op(CrashOpKind.Allocate, Range(0, Math.Min(size + bs, MaxFileBytes - len)), len);
        }
        if (roll < 66)
        {
            var (src, srcSize) = files[rng.Next(files.Count)];
            if (srcSize == 0) return SmallWrite();
            long srcOff = Range(0, (srcSize - 1) / bs) * bs;
            long remaining = srcSize - srcOff;
            bool toEof = remaining < bs || rng.Next(3) == 0;
            long len = toEof ? remaining : Range(1, Math.Min(remaining / bs, 12)) * bs;
            long dstOff;
            if (len % bs != 0)
            {
                long minBlock = (Math.Max(0, size - len) + bs - 1) / bs;
                dstOff = Range(minBlock, minBlock + 2) * bs;
            }
            else
            {
                dstOff = Range(0, (size + bs - 1) / bs + 1) * bs;
            }
            if (dstOff + len > MaxFileBytes) return SmallWrite();
            if (src == name)
            {
                long blocks = (len + bs - 1) / bs, s = srcOff / bs, d = dstOff / bs;
                if (s < d + blocks && d < s + blocks) return SmallWrite();
            }
            return Op(CrashOpKind.Clone, dstOff, len, srcOff, src);
        }
        if (roll < 72)
        {
            long maxEnd = (size - 1) / bs; // blocks [off, off+n) with (off+n)*bs < size
            if (size == 0 || maxEnd < 1) return SmallWrite();
            long off = Range(0, maxEnd - 1);
            long n = Range(1, Math.Min(maxEnd - off, 4));
            return Op(CrashOpKind.Collapse, off * bs, n * bs);
        }
        if (roll < 78)
        {
            long n = Range(1, 3);
            if (size == 0 || size + n * bs > MaxFileBytes) return SmallWrite();
            return Op(CrashOpKind.Insert, Range(0, (size - 1) / bs) * bs, n * bs);
        }
        if (roll < 83) return Op(CrashOpKind.Unshare, Range(0, size), Range(1, 8 * bs));
        if (roll < 88)
        {
            if (files.Count <= 1) return SmallWrite();
            return Op(CrashOpKind.Delete);
        }
        if (roll < 95)
        {
            var free = Names.Where(n => !files.Any(f => f.Name == n)).ToArray();
            if (free.Length == 0) return SmallWrite();
            name = free[rng.Next(free.Length)];
            return Op(CrashOpKind.Create);
        }
        if (roll < 98) return Op(CrashOpKind.Compact);
        return Op(CrashOpKind.Checkpoint);
    }

    public static byte[] Data(int seed, long length)
    {
        var b = new byte[length];
        new Random(seed).NextBytes(b);
        return b;
    }

    /// <summary>Runs the operation on the volume.</summary>
    public static void Apply(Volume v, CrashOp op)
    {
        switch (op.Kind)
        {
            case CrashOpKind.Write: v.OpenFile(op.File).Write(op.Offset, Data(op.DataSeed, op.Length)); break;
            case CrashOpKind.Truncate: v.OpenFile(op.File).Truncate(op.Offset); break;
            case CrashOpKind.Punch: v.OpenFile(op.File).PunchHole(op.Offset, op.Length); break;
            case CrashOpKind.Zero: v.OpenFile(op.File).ZeroRange(op.Offset, op.Length, op.Flag); break;
            case CrashOpKind.Allocate: v.OpenFile(op.File).Allocate(op.Offset, op.Length); break;
            case CrashOpKind.Clone: v.OpenFile(op.File).CloneRangeFrom(v.OpenFile(op.Source), op.Offset2, op.Offset, op.Length); break;
            case CrashOpKind.Collapse: v.OpenFile(op.File).CollapseRange(op.Offset, op.Length); break;
            case CrashOpKind.Insert: v.OpenFile(op.File).InsertRange(op.Offset, op.Length); break;
            case CrashOpKind.Unshare: v.OpenFile(op.File).UnshareRange(op.Offset, op.Length, keepSize: true); break;
            case CrashOpKind.Delete: v.DeleteFile(op.File); break;
            case CrashOpKind.Create: v.CreateFile(op.File); break;
            case CrashOpKind.Compact: v.Compact(); break;
            case CrashOpKind.Checkpoint: v.Checkpoint(); break;
            default: throw new ArgumentOutOfRangeException(nameof(op));
        }
    }

    public static byte[] ReadAll(VolumeFile f)
    {
        var b = new byte[f.Length];
        int n = f.Read(0, b);
        if (n != b.Length) throw new InvalidOperationException($"'{f.Name}' read {n} of {b.Length} bytes.");
        return b;
    }

    public static List<(string Name, long Length)> Lengths(Volume v) =>
        v.FileNames.Select(n => (n, v.OpenFile(n).Length)).ToList();

    /// <summary>A 64-bit hash of a file's bytes (its length included).</summary>
    public static ulong Hash(ReadOnlySpan<byte> data)
    {
        ulong h = 0xCBF29CE484222325UL ^ (ulong)data.Length;
        var words = MemoryMarshal.Cast<byte, ulong>(data);
        foreach (ulong w in words) h = Mix(h ^ w);
        for (int i = words.Length * 8; i < data.Length; i++) h = Mix(h ^ data[i]);
        return h;
    }

    private static ulong Mix(ulong h)
    {
        h *= 0x9E3779B97F4A7C15UL;
        return h ^ (h >> 29);
    }

    /// <summary>Hash of every file (names, lengths, bytes), sorted by name.</summary>
    public static ulong HashAll(IEnumerable<(string Name, byte[] Data)> files)
    {
        ulong h = 17;
        foreach (var (name, data) in files.OrderBy(f => f.Name, StringComparer.Ordinal))
        {
            h = Mix(h ^ Hash(System.Text.Encoding.UTF8.GetBytes(name)));
            h = Mix(h ^ Hash(data));
        }
        return h;
    }
}

/// <summary>The reference model: each file is a byte array of exactly its length. Every change replaces the array, so snapshots are cheap.</summary>
internal sealed class CrashModel
{
    private readonly SortedDictionary<string, byte[]> _files = new(StringComparer.Ordinal);

    public CrashModel() { }

    public CrashModel(IEnumerable<KeyValuePair<string, byte[]>> files)
    {
        foreach (var (k, v) in files) _files.Add(k, v);
    }

    public IReadOnlyDictionary<string, byte[]> Files => _files;

    public List<(string Name, long Length)> Lengths() => _files.Select(kv => (kv.Key, (long)kv.Value.Length)).ToList();

    public Dictionary<string, byte[]> Snapshot() => new(_files, StringComparer.Ordinal);

    public ulong HashAll() => CrashWorkload.HashAll(_files.Select(kv => (kv.Key, kv.Value)));

    public void Apply(CrashOp op)
    {
        byte[] f = op.Kind == CrashOpKind.Create ? [] : _files[op.File];
        switch (op.Kind)
        {
            case CrashOpKind.Write:
                {
                    var d = Resized(f, Math.Max(f.Length, op.Offset + op.Length));
                    CrashWorkload.Data(op.DataSeed, op.Length).CopyTo(d, op.Offset);
                    _files[op.File] = d;
                    break;
                }
            case CrashOpKind.Truncate: _files[op.File] = Resized(f, op.Offset); break;
            case CrashOpKind.Punch: _files[op.File] = Zeroed(Resized(f, f.Length), op.Offset, op.Length); break;
            case CrashOpKind.Zero:
                {
                    long size = op.Flag ? f.Length : Math.Max(f.Length, op.Offset + op.Length);
                    _files[op.File] = Zeroed(Resized(f, size), op.Offset, op.Length);
                    break;
                }
            case CrashOpKind.Allocate: _files[op.File] = Resized(f, Math.Max(f.Length, op.Offset + op.Length)); break;
            case CrashOpKind.Clone:
                {
                    var src = _files[op.Source].AsSpan((int)op.Offset2, (int)op.Length).ToArray();
                    var d = Resized(f, Math.Max(f.Length, op.Offset + op.Length));
                    src.CopyTo(d, op.Offset);
                    _files[op.File] = d;
                    break;
                }
            case CrashOpKind.Collapse:
                {
                    var d = new byte[f.Length - op.Length];
                    f.AsSpan(0, (int)op.Offset).CopyTo(d);
                    f.AsSpan((int)(op.Offset + op.Length)).CopyTo(d.AsSpan((int)op.Offset));
                    _files[op.File] = d;
                    break;
                }
            case CrashOpKind.Insert:
                {
                    var d = new byte[f.Length + op.Length];
                    f.AsSpan(0, (int)op.Offset).CopyTo(d);
                    f.AsSpan((int)op.Offset).CopyTo(d.AsSpan((int)(op.Offset + op.Length)));
                    _files[op.File] = d;
                    break;
                }
            case CrashOpKind.Delete: _files.Remove(op.File); break;
            case CrashOpKind.Create: _files.Add(op.File, []); break;
            case CrashOpKind.Unshare:
            case CrashOpKind.Compact:
            case CrashOpKind.Checkpoint:
                break;
            default: throw new ArgumentOutOfRangeException(nameof(op));
        }
    }

    private static byte[] Resized(byte[] f, long length)
    {
        var d = new byte[length];
        f.AsSpan(0, (int)Math.Min(f.Length, length)).CopyTo(d);
        return d;
    }

    private static byte[] Zeroed(byte[] d, long offset, long length)
    {
        long end = Math.Min(d.Length, offset + length);
        if (offset < end) Array.Clear(d, (int)offset, (int)(end - offset));
        return d;
    }
}
