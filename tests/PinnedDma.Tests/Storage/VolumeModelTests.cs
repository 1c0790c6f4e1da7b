using System.Runtime.InteropServices;
using System.Text;
using FsCheck;
using FsCheck.Fluent;
using PinnedDma.Storage;
using Xunit;

namespace PinnedDma.Tests.Storage;

/// <summary>
/// Model-based tests: random operation sequences run against a file-backed volume and against a reference model
/// (a byte list per file with the Linux semantics of each call). After every step every file's length and content
/// must equal the model's, the names must match, and fsck must be clean. Invalid requests must fail with the
/// documented error and leave contents, extent maps and free space as they were.
/// </summary>
public sealed class VolumeModelTests
{
    public enum OpKind
    {
        Create, Delete, Write, WritePattern, Truncate, PunchHole, ZeroRange, Allocate, Collapse, Insert,
        Clone, Dedupe, Unshare, Compact, Commit, Checkpoint, Reopen, Crash,
    }

    /// <summary>
    /// One abstract step. The numbers are resolved against the model state when the step runs (so that a shrunk
    /// sequence still makes sense): files by index into the live files, offsets and lengths modulo the file's size.
    /// </summary>
    public sealed record Op(OpKind Kind, int File, int File2, int A, int B, int C, bool Flag, bool Invalid)
    {
        public override string ToString() =>
            $"{Kind}(file={File}, file2={File2}, a={A}, b={B}, c={C}, flag={Flag}, invalid={Invalid})";
    }

    /// <summary>A generated sequence; prints one step per line so that a (shrunk) counterexample is readable.</summary>
    public sealed class Scenario(int fileNames, IReadOnlyList<Op> ops)
    {
        public int FileNames { get; } = fileNames;
        public IReadOnlyList<Op> Ops { get; } = ops;

        public override string ToString() =>
            $"Scenario({FileNames} names, {Ops.Count} ops):" + Environment.NewLine + "    " +
            string.Join(Environment.NewLine + "    ", Ops);
    }

    /// <summary>
    /// Volume geometry. Durable: msync/fsync on commit; off where only the logic is under test (the page cache still
    /// carries every write to a reopen or a crash copy), on for one geometry so the flush paths run too.
    /// </summary>
    public sealed record Geometry(int BlockSize, long BlockCount, int Granule, long JournalBlocks = 0, bool Durable = false)
    {
        public override string ToString() => $"bs={BlockSize} blocks={BlockCount} granule={Granule} journal={JournalBlocks} durable={Durable}";
    }

    private static readonly Gen<Op> OpGen =
        from kind in Gen.Frequency(
            (4, Gen.Constant(OpKind.Create)),
            (1, Gen.Constant(OpKind.Delete)),
            (8, Gen.Constant(OpKind.Write)),
            (3, Gen.Constant(OpKind.WritePattern)),
            (3, Gen.Constant(OpKind.Truncate)),
            (3, Gen.Constant(OpKind.PunchHole)),
            (3, Gen.Constant(OpKind.ZeroRange)),
            (2, Gen.Constant(OpKind.Allocate)),
            (3, Gen.Constant(OpKind.Collapse)),
            (3, Gen.Constant(OpKind.Insert)),
            (6, Gen.Constant(OpKind.Clone)),
            (5, Gen.Constant(OpKind.Dedupe)),
            (2, Gen.Constant(OpKind.Unshare)),
            (1, Gen.Constant(OpKind.Compact)),
            (1, Gen.Constant(OpKind.Commit)),
            (1, Gen.Constant(OpKind.Checkpoint)),
            (1, Gen.Constant(OpKind.Reopen)),
            (1, Gen.Constant(OpKind.Crash)))
        from file in Gen.Choose(0, 3)
        from file2 in Gen.Choose(0, 3)
        from a in Gen.Choose(0, 1 << 20)
        from b in Gen.Choose(0, 1 << 20)
        from c in Gen.Choose(0, 1 << 20)
        from flag in Gen.Elements(true, false)
        from invalid in Gen.Frequency((1, Gen.Constant(true)), (4, Gen.Constant(false)))
        select new Op(kind, file, file2, a, b, c, flag, invalid);

    private static readonly Arbitrary<Scenario> Scenarios = Arb.From(
        from names in Gen.Choose(2, 4)
        from n in Gen.Choose(20, 60)
        from ops in Gen.ArrayOf(OpGen, n)
        select new Scenario(names, ops),
        ShrinkScenario);

    /// <summary>Shrinks by dropping halves, then quarters, then single steps.</summary>
    private static IEnumerable<Scenario> ShrinkScenario(Scenario s)
    {
        var ops = s.Ops;
        int n = ops.Count;
        for (int chunk = n / 2; chunk >= 1; chunk /= 2)
            for (int start = 0; start + chunk <= n; start += chunk)
                yield return new Scenario(s.FileNames, ops.Take(start).Concat(ops.Skip(start + chunk)).ToArray());
    }

    private static void RunProperty(Geometry g, int sequences)
    {
        var config = Config.QuickThrowOnFailure.WithMaxTest(sequences).WithName(g.ToString());
        Check.One(config, Prop.ForAll(Scenarios, (Scenario s) => Run(g, s)));
    }

    [Fact]
    public void Model_Block4096_Granule1() => RunProperty(new Geometry(4096, 1024, 1, Durable: true), 30);

    [Fact]
    public void Model_Block4096_Granule4() => RunProperty(new Geometry(4096, 1024, 4), 30);

    [Fact]
    public void Model_Block512_Granule1_SmallJournal() => RunProperty(new Geometry(512, 4096, 1, JournalBlocks: 16), 40);

    [Fact]
    public void Model_Block512_Granule4() => RunProperty(new Geometry(512, 4096, 4), 40);

    private static void Run(Geometry g, Scenario s)
    {
        using var h = new Harness(g, s.FileNames);
        h.Start();
        for (int i = 0; i < s.Ops.Count; i++)
        {
            try
            {
                h.Step(s.Ops[i]);
                h.Verify();
            }
            catch (Exception ex)
            {
                throw new ModelMismatchException(
                    $"[{g}] step {i} ({s.Ops[i]}) failed: {ex.GetType().Name}: {ex.Message}{Environment.NewLine}" +
                    $"calls so far:{Environment.NewLine}    {string.Join(Environment.NewLine + "    ", h.Trace)}", ex);
            }
        }
    }

    public sealed class ModelMismatchException(string message, Exception? inner = null) : Exception(message, inner);

    /// <summary>The volume under test, the model, and the log of concrete calls.</summary>
    private sealed class Harness : IDisposable
    {
        private const int CapBlocks = 32; // offsets are drawn below min(size, cap) + 2 blocks, bounding growth
        private readonly Geometry _g;
        private readonly int _names;
        private readonly string _dir;
        private readonly string _path;
        private readonly SortedDictionary<string, List<byte>> _model = new(StringComparer.Ordinal);
        private readonly Dictionary<string, VolumeFile> _files = new(StringComparer.Ordinal);
        private Volume _v;

        public List<string> Trace { get; } = new();

        /// <summary>Names and lengths after each step since the last explicit commit: the states a crash may recover to.</summary>
        private readonly List<string> _sinceDurable = new();

        public Harness(Geometry g, int names)
        {
            _g = g;
            _names = names;
            _dir = Directory.CreateTempSubdirectory("pdma-model-").FullName;
            _path = Path.Combine(_dir, "volume.img");
            _v = Volume.Create(_path, new VolumeOptions
            {
                // (The initial empty state is durable: Create writes a checkpoint.)
                BlockSize = g.BlockSize,
                BlockCount = g.BlockCount,
                CowGranuleBlocks = g.Granule,
                JournalBlocks = g.JournalBlocks,
                MaxFiles = 8,
                TryMapSync = false,
                DurableCommits = g.Durable,
            });
        }

        private int Bs => _g.BlockSize;

        /// <summary>Records the initial (empty, durable) state.</summary>
        public void Start() => _sinceDurable.Add("");

        public void Dispose()
        {
            try
            {
                _v.Dispose();
            }
            finally
            {
                Directory.Delete(_dir, recursive: true);
            }
        }

        private void Log(string s) => Trace.Add(s);

        private static string NameOf(int i) => "f" + i;

        /// <summary>The live file that index <paramref name="i"/> picks, or null when there is none.</summary>
        private string? Pick(int i)
        {
            if (_model.Count == 0) return null;
            return _model.Keys.ElementAt(i % _model.Count);
        }

        private long Span(long size) => Math.Min(size, (long)CapBlocks * Bs) + 2L * Bs;

        private static byte[] Bytes(int seed, int length)
        {
            var b = new byte[length];
            new Random(seed).NextBytes(b);
            return b;
        }

        private static long CeilDiv(long a, long b) => (a + b - 1) / b;

        // ------------------------------------------------------------------ model primitives

        private static void EnsureSize(List<byte> m, long size)
        {
            if (m.Count < size) m.AddRange(new byte[size - m.Count]);
        }

        private static void SetSize(List<byte> m, long size)
        {
            if (m.Count > size) m.RemoveRange((int)size, m.Count - (int)size);
            else EnsureSize(m, size);
        }

        private static void ZeroModel(List<byte> m, long from, long to)
        {
            to = Math.Min(to, m.Count);
            if (from < to) CollectionsMarshal.AsSpan(m).Slice((int)from, (int)(to - from)).Clear();
        }

        private static void WriteModel(List<byte> m, long offset, ReadOnlySpan<byte> data)
        {
            EnsureSize(m, offset + data.Length);
            data.CopyTo(CollectionsMarshal.AsSpan(m)[(int)offset..]);
        }

        /// <summary>Bytes [from, from+count) with zeros past EOF (what a block holds past the file's end).</summary>
        private static byte[] ModelRange(List<byte> m, long from, long count)
        {
            var r = new byte[count];
            long n = Math.Clamp(m.Count - from, 0, count);
            if (n > 0) CollectionsMarshal.AsSpan(m).Slice((int)from, (int)n).CopyTo(r);
            return r;
        }

        // ------------------------------------------------------------------ expected failures

        private sealed record FileState(byte[] Content, FileExtent[] Extents);

        private Dictionary<string, FileState> Snapshot()
        {
            var d = new Dictionary<string, FileState>(StringComparer.Ordinal);
            foreach (var (name, f) in _files)
            {
                var buf = new byte[f.Length];
                f.Read(0, buf);
                d[name] = new FileState(buf, f.GetExtents().ToArray());
            }
            return d;
        }

        /// <summary>Runs a call that must fail with <paramref name="error"/> and change nothing.</summary>
        private void ExpectError(string call, PinnedDmaError error, Action act)
        {
            Log($"{call} -> expect {error}");
            ExpectFailure(call, act, ex => ex is PinnedDmaException pe && pe.Error == error, error.ToString());
        }

        private void ExpectArgumentOutOfRange(string call, Action act)
        {
            Log($"{call} -> expect ArgumentOutOfRangeException");
            ExpectFailure(call, act, ex => ex is ArgumentOutOfRangeException, nameof(ArgumentOutOfRangeException));
        }

        private void ExpectFailure(string call, Action act, Func<Exception, bool> ok, string what)
        {
            var before = Snapshot();
            long freeBefore = _v.FreeBlocks;
            Exception? ex = null;
            try
            {
                act();
            }
            catch (Exception e)
            {
                ex = e;
            }
            if (ex is null) throw new ModelMismatchException($"{call}: expected {what}, but it succeeded.");
            if (!ok(ex)) throw new ModelMismatchException($"{call}: expected {what}, got {ex.GetType().Name}: {ex.Message}", ex);
            var after = Snapshot();
            foreach (var (name, st) in before)
            {
                if (!after.TryGetValue(name, out var now)) throw new ModelMismatchException($"{call} failed but removed '{name}'.");
                if (!st.Content.AsSpan().SequenceEqual(now.Content)) throw new ModelMismatchException($"{call} failed but changed the content of '{name}'.");
                if (!st.Extents.SequenceEqual(now.Extents))
                    throw new ModelMismatchException($"{call} failed but changed the extents of '{name}': [{string.Join(", ", st.Extents)}] -> [{string.Join(", ", now.Extents)}]");
            }
            if (_v.FreeBlocks != freeBefore) throw new ModelMismatchException($"{call} failed but free blocks went {freeBefore} -> {_v.FreeBlocks}.");
        }

        // ------------------------------------------------------------------ steps

        public void Step(Op op)
        {
            switch (op.Kind)
            {
                case OpKind.Create: DoCreate(NameOf(op.File % _names)); return;
                case OpKind.Delete: DoDelete(NameOf(op.File % _names)); return;
                case OpKind.Compact:
                    {
                        int run = 1 + op.A % 64;
                        Log($"Compact(maxRun={run})");
                        _v.Compact(run);
                        return;
                    }
                case OpKind.Commit: Log("Commit()"); _v.Commit(); _sinceDurable.Clear(); return;
                case OpKind.Checkpoint: Log("Checkpoint()"); _v.Checkpoint(); _sinceDurable.Clear(); return;
                case OpKind.Reopen: Reopen(); _sinceDurable.Clear(); return;
                case OpKind.Crash: Crash(); return;
            }
            string? name = Pick(op.File);
            if (name is null)
            {
                DoCreate(NameOf(op.File % _names));
                return;
            }
            string name2 = Pick(op.File2)!;
            switch (op.Kind)
            {
                case OpKind.Write: DoWrite(name, op); break;
                case OpKind.WritePattern: DoWritePattern(name, op); break;
                case OpKind.Truncate: DoTruncate(name, op); break;
                case OpKind.PunchHole:
                case OpKind.ZeroRange:
                case OpKind.Allocate: DoSpace(name, op); break;
                case OpKind.Collapse: DoCollapse(name, op); break;
                case OpKind.Insert: DoInsert(name, op); break;
                case OpKind.Clone: DoClone(name, name2, op); break;
                case OpKind.Dedupe: DoDedupe(name, name2, op); break;
                case OpKind.Unshare:
                    {
                        long size = _model[name].Count;
                        long off = op.A % (Span(size) + 1), len = 1 + op.B % (4 * Bs);
                        Log($"{name}.UnshareRange({off}, {len}, keepSize: true)");
                        _files[name].UnshareRange(off, len, keepSize: true);
                        break;
                    }
                default: throw new InvalidOperationException(op.Kind.ToString());
            }
        }

        private void DoCreate(string name)
        {
            if (_model.ContainsKey(name))
            {
                ExpectError($"CreateFile({name})", PinnedDmaError.AlreadyExists, () => _v.CreateFile(name));
                return;
            }
            Log($"CreateFile({name})");
            _files[name] = _v.CreateFile(name);
            _model[name] = new List<byte>();
        }

        private void DoDelete(string name)
        {
            if (!_model.ContainsKey(name))
            {
                ExpectError($"DeleteFile({name})", PinnedDmaError.NotFound, () => _v.DeleteFile(name));
                return;
            }
            Log($"DeleteFile({name})");
            var old = _files[name];
            _v.DeleteFile(name);
            _files.Remove(name);
            _model.Remove(name);
            if (old.Exists) throw new ModelMismatchException($"'{name}' still exists after DeleteFile.");
            ExpectError($"deleted {name}.Read(0, 1)", PinnedDmaError.NotFound, () => old.Read(0, new byte[1]));
        }

        private void Write(string name, long off, byte[] data, string what)
        {
            Log($"{name}.Write({off}, {what} len={data.Length})");
            _files[name].Write(off, data);
            WriteModel(_model[name], off, data);
        }

        private void DoWrite(string name, Op op)
        {
            long size = _model[name].Count;
            long off = op.Flag ? op.A % (Span(size) / Bs + 1) * Bs : op.A % (Span(size) + 1);
            int len = 1 + op.B % (3 * Bs);
            if (op.Invalid && op.C % 4 == 0)
            {
                ExpectArgumentOutOfRange($"{name}.Write(-{off + 1}, len={len})", () => _files[name].Write(-off - 1, new byte[len]));
                return;
            }
            Write(name, off, Bytes(op.C, len), $"seed={op.C}");
        }

        /// <summary>Writes the same block content to consecutive blocks: makes equal ranges for dedupe likely.</summary>
        private void DoWritePattern(string name, Op op)
        {
            long size = _model[name].Count;
            long blk = op.A % (Span(size) / Bs + 1);
            int n = 1 + op.B % 4;
            var block = Bytes(op.C % 3, Bs);
            var data = new byte[n * Bs];
            for (int i = 0; i < n; i++) block.CopyTo(data, i * Bs);
            Write(name, blk * Bs, data, $"pattern={op.C % 3}");
        }

        private void DoTruncate(string name, Op op)
        {
            long size = _model[name].Count;
            if (op.Invalid && op.C % 4 == 0)
            {
                ExpectArgumentOutOfRange($"{name}.Truncate(-1)", () => _files[name].Truncate(-1));
                return;
            }
            long len = op.Flag ? size + 1 + op.B % (3 * Bs) : size == 0 ? 0 : op.B % size;
            if (op.C % 2 == 0) len = op.Flag ? CeilDiv(len, Bs) * Bs : len / Bs * Bs;
            Log($"{name}.Truncate({len}) (from {size})");
            _files[name].Truncate(len);
            SetSize(_model[name], len);
        }

        private void DoSpace(string name, Op op)
        {
            var m = _model[name];
            long size = m.Count;
            long off = op.A % (Span(size) + 1);
            long len = 1 + op.B % (3 * Bs);
            if (op.C % 3 == 0)
            {
                off = off / Bs * Bs;
                len = CeilDiv(len, Bs) * Bs;
            }
            var f = _files[name];
            bool keep = op.Flag;
            if (op.Invalid && op.C % 4 == 1)
            {
                ExpectArgumentOutOfRange($"{name}.{op.Kind}({off}, -{len})", () =>
                {
                    if (op.Kind == OpKind.PunchHole) f.PunchHole(off, -len);
                    else if (op.Kind == OpKind.ZeroRange) f.ZeroRange(off, -len, keep);
                    else f.Allocate(off, -len, keep);
                });
                return;
            }
            long end = off + len;
            switch (op.Kind)
            {
                case OpKind.PunchHole:
                    Log($"{name}.PunchHole({off}, {len}) size={size}");
                    f.PunchHole(off, len);
                    ZeroModel(m, off, end);
                    break;
                case OpKind.ZeroRange:
                    Log($"{name}.ZeroRange({off}, {len}, keepSize={keep}) size={size}");
                    f.ZeroRange(off, len, keep);
                    ZeroModel(m, off, end);
                    if (!keep) EnsureSize(m, end);
                    break;
                default:
                    Log($"{name}.Allocate({off}, {len}, keepSize={keep}) size={size}");
                    f.Allocate(off, len, keep);
                    if (!keep) EnsureSize(m, end);
                    break;
            }
        }

        private void DoCollapse(string name, Op op)
        {
            var m = _model[name];
            long size = m.Count;
            var f = _files[name];
            long k = size > 0 ? (size - 1) / Bs : 0; // blocks that can go while leaving something before EOF
            if (!op.Invalid && k >= 1)
            {
                long offBlk = op.A % k;
                long lenBlk = 1 + op.B % Math.Min(k - offBlk, 4);
                long off = offBlk * Bs, len = lenBlk * Bs;
                Log($"{name}.CollapseRange({off}, {len}) size={size}");
                f.CollapseRange(off, len);
                m.RemoveRange((int)off, (int)len);
                return;
            }
            long aOff = op.A % (k + 1) * Bs;
            switch (op.C % 5)
            {
                case 0:
                    {
                        long off = aOff + 1 + op.B % (Bs - 1);
                        ExpectError($"{name}.CollapseRange({off}, {Bs})", PinnedDmaError.InvalidArgument, () => f.CollapseRange(off, Bs));
                        break;
                    }
                case 1:
                    {
                        long len = Bs + 1 + op.B % (Bs - 1);
                        ExpectError($"{name}.CollapseRange({aOff}, {len})", PinnedDmaError.InvalidArgument, () => f.CollapseRange(aOff, len));
                        break;
                    }
                case 2:
                    ExpectError($"{name}.CollapseRange({aOff}, 0)", PinnedDmaError.InvalidArgument, () => f.CollapseRange(aOff, 0));
                    break;
                case 3:
                    {
                        // Reaches or passes EOF.
                        long len = Math.Max(1, CeilDiv(size - aOff, Bs) + op.B % 2) * Bs;
                        ExpectError($"{name}.CollapseRange({aOff}, {len}) size={size}", PinnedDmaError.InvalidArgument, () => f.CollapseRange(aOff, len));
                        break;
                    }
                default:
                    ExpectArgumentOutOfRange($"{name}.CollapseRange(-{Bs}, {Bs})", () => f.CollapseRange(-Bs, Bs));
                    break;
            }
        }

        private void DoInsert(string name, Op op)
        {
            var m = _model[name];
            long size = m.Count;
            var f = _files[name];
            if (!op.Invalid && size > 0)
            {
                long offBlk = op.A % ((size - 1) / Bs + 1);
                long lenBlk = 1 + op.B % 3;
                long off = offBlk * Bs, len = lenBlk * Bs;
                Log($"{name}.InsertRange({off}, {len}) size={size}");
                f.InsertRange(off, len);
                m.InsertRange((int)off, new byte[len]);
                return;
            }
            long aOff = size == 0 ? 0 : op.A % ((size - 1) / Bs + 1) * Bs;
            switch (op.C % 5)
            {
                case 0:
                    {
                        long off = aOff + 1 + op.B % (Bs - 1);
                        ExpectError($"{name}.InsertRange({off}, {Bs})", PinnedDmaError.InvalidArgument, () => f.InsertRange(off, Bs));
                        break;
                    }
                case 1:
                    {
                        long len = 1 + op.B % (Bs - 1);
                        ExpectError($"{name}.InsertRange({aOff}, {len})", PinnedDmaError.InvalidArgument, () => f.InsertRange(aOff, len));
                        break;
                    }
                case 2:
                    ExpectError($"{name}.InsertRange({aOff}, 0)", PinnedDmaError.InvalidArgument, () => f.InsertRange(aOff, 0));
                    break;
                case 3:
                    {
                        long off = (CeilDiv(size, Bs) + op.B % 2) * Bs; // at or past EOF
                        ExpectError($"{name}.InsertRange({off}, {Bs}) size={size}", PinnedDmaError.InvalidArgument, () => f.InsertRange(off, Bs));
                        break;
                    }
                default:
                    ExpectArgumentOutOfRange($"{name}.InsertRange(0, -{Bs})", () => f.InsertRange(0, -Bs));
                    break;
            }
        }

        // ------------------------------------------------------------------ clone and dedupe

        /// <summary>The Linux remap checks for a clone; null when valid.</summary>
        private string? CloneInvalid(string src, long sOff, string dst, long dOff, long len)
        {
            long srcSize = _model[src].Count, dstSize = _model[dst].Count;
            if (sOff % Bs != 0 || dOff % Bs != 0) return "unaligned offset";
            if (sOff + len > srcSize) return "source past EOF";
            long blocks = len / Bs;
            if (len % Bs != 0)
            {
                if (sOff + len != srcSize || dOff + len < dstSize) return "partial block not at EOF";
                blocks++;
            }
            if (src == dst && sOff / Bs < dOff / Bs + blocks && dOff / Bs < sOff / Bs + blocks) return "same-file overlap";
            return null;
        }

        private void DoClone(string src, string dst, Op op)
        {
            long srcSize = _model[src].Count;
            long sOff, dOff, len;
            int variant = op.C % 4;
            if (variant == 3) dst = src;
            long full = srcSize / Bs;
            if ((variant is 0 or 3) && full == 0) variant = 2;
            if (variant == 1 && srcSize == 0) variant = 2;
            long dstSize = _model[dst].Count;
            switch (variant)
            {
                case 0:
                case 3:
                    {
                        long sBlk = op.A % full;
                        long n = 1 + op.B % Math.Min(4, full - sBlk);
                        long dBlk = op.A / 7 % (dstSize / Bs + 3);
                        if (variant == 0 && src == dst && sBlk < dBlk + n && dBlk < sBlk + n) dBlk = sBlk + n + op.B % 2;
                        if (variant == 3) dBlk = op.Invalid ? sBlk + op.B % (n + 1) : sBlk + n + op.B % 3;
                        sOff = sBlk * Bs; dOff = dBlk * Bs; len = n * Bs;
                        break;
                    }
                case 1:
                    {
                        // The EOF-unaligned tail: the source range ends at its EOF, the destination's at or past its own.
                        long lastBlk = (srcSize - 1) / Bs;
                        long sBlk = Math.Max(0, lastBlk - op.A % 3);
                        len = srcSize - sBlk * Bs;
                        long dBlk = CeilDiv(Math.Max(0, dstSize - len), Bs) + op.B % 2;
                        if (src == dst) dBlk = Math.Max(dBlk, sBlk + CeilDiv(len, Bs));
                        if (op.Invalid) dBlk = Math.Max(0, dBlk - 1 - op.B % 2); // may land mid-file: then invalid
                        sOff = sBlk * Bs; dOff = dBlk * Bs;
                        break;
                    }
                default:
                    {
                        sOff = op.Invalid ? op.A % (srcSize + 2 * Bs) : op.A % (srcSize / Bs + 2) * Bs;
                        dOff = op.Invalid ? op.B % (dstSize + 2 * Bs) : op.B % (Span(dstSize) / Bs + 1) * Bs;
                        len = 1 + op.A / 3 % (4 * Bs);
                        if (op.Flag) len = CeilDiv(len, Bs) * Bs;
                        break;
                    }
            }
            string call = $"{dst}.CloneRangeFrom({src}, srcOff={sOff}, dstOff={dOff}, len={len}) srcSize={srcSize} dstSize={dstSize}";
            var why = CloneInvalid(src, sOff, dst, dOff, len);
            if (why is not null)
            {
                ExpectError(call + $" [{why}]", PinnedDmaError.InvalidArgument, () => _files[dst].CloneRangeFrom(_files[src], sOff, dOff, len));
                return;
            }
            Log(call);
            var bytes = ModelRange(_model[src], sOff, len);
            _files[dst].CloneRangeFrom(_files[src], sOff, dOff, len);
            WriteModel(_model[dst], dOff, bytes);
        }

        private void DoDedupe(string src, string dst, Op op)
        {
            int variant = op.C % 4;
            if (variant == 3) dst = src;
            long srcSize = _model[src].Count;
            long sOff, dOff, len;
            switch (variant)
            {
                case 0:
                    {
                        // Make the destination range equal to the source range first.
                        long full = srcSize / Bs;
                        if (full == 0) goto default;
                        long sBlk = op.A % full;
                        long n = 1 + op.B % Math.Min(4, full - sBlk);
                        sOff = sBlk * Bs;
                        len = n * Bs;
                        long dstSize = _model[dst].Count;
                        dOff = op.A / 7 % (Math.Max(dstSize - len, 0) / Bs + 1) * Bs;
                        if (src != dst || op.Flag) Write(dst, dOff, ModelRange(_model[src], sOff, len), $"copy of {src}@{sOff}");
                        if (op.Invalid) len -= 1 + op.B % (Bs - 1); // rounds down unless both ends are EOF
                        break;
                    }
                case 1:
                    {
                        // Both ranges end at EOF with the same partial last block: shares it.
                        if (srcSize == 0 || src == dst) goto default;
                        long lastBlk = (srcSize - 1) / Bs;
                        long sBlk = Math.Max(0, lastBlk - op.A % 3);
                        sOff = sBlk * Bs;
                        len = srcSize - sOff;
                        long dstSize = _model[dst].Count;
                        dOff = op.B % (dstSize / Bs + 2) * Bs;
                        Log($"{dst}.Truncate({dOff + len}) (from {dstSize})");
                        _files[dst].Truncate(dOff + len);
                        SetSize(_model[dst], dOff + len);
                        if (!op.Invalid) Write(dst, dOff, ModelRange(_model[src], sOff, len), $"copy of {src}@{sOff}");
                        break;
                    }
                default:
                    {
                        long dstSize = _model[dst].Count;
                        sOff = op.A % (srcSize / Bs + 1) * Bs;
                        dOff = op.B % (dstSize / Bs + 1) * Bs;
                        if (op.Invalid && op.Flag) sOff += 1 + op.C % (Bs - 1);
                        len = 1 + op.A / 3 % (4 * Bs);
                        if (op.Flag) len = CeilDiv(len, Bs) * Bs;
                        if (op.Invalid && op.C % 7 == 0) len = -len;
                        break;
                    }
            }
            long ss = _model[src].Count, ds = _model[dst].Count;
            string call = $"{dst}.DedupeRangeFrom({src}, srcOff={sOff}, dstOff={dOff}, len={len}) srcSize={ss} dstSize={ds}";
            var f = _files[dst];
            var sf = _files[src];
            if (len < 0)
            {
                ExpectArgumentOutOfRange(call, () => f.DedupeRangeFrom(sf, sOff, dOff, len));
                return;
            }
            // Linux generic_remap_checks for FIDEDUPERANGE (with the length rounded down instead of refused).
            string? why = null;
            long blocks = len / Bs;
            if (sOff % Bs != 0 || dOff % Bs != 0) why = "unaligned offset";
            else if (sOff + len > ss || dOff + len > ds) why = "past EOF";
            else
            {
                if (len % Bs != 0 && sOff + len == ss && dOff + len == ds) blocks++;
                if (src == dst && blocks > 0 && sOff / Bs < dOff / Bs + blocks && dOff / Bs < sOff / Bs + blocks) why = "same-file overlap";
            }
            if (why is not null)
            {
                ExpectError(call + $" [{why}]", PinnedDmaError.InvalidArgument, () => f.DedupeRangeFrom(sf, sOff, dOff, len));
                return;
            }
            if (blocks > 0 && !ModelRange(_model[src], sOff, blocks * Bs).AsSpan().SequenceEqual(ModelRange(_model[dst], dOff, blocks * Bs)))
            {
                ExpectError(call + " [contents differ]", PinnedDmaError.RangesDiffer, () => f.DedupeRangeFrom(sf, sOff, dOff, len));
                return;
            }
            Log(call);
            long got = f.DedupeRangeFrom(sf, sOff, dOff, len);
            long want = len; // Linux reports the length asked for, though it shares whole blocks only
            if (got != want) throw new ModelMismatchException($"{call} returned {got}, expected {want}.");
        }

        // ------------------------------------------------------------------ reopen and verification

        private void Reopen()
        {
            Log("Dispose(); Volume.Open()");
            _v.Dispose();
            _v = Volume.Open(_path, new VolumeOptions { TryMapSync = false, DurableCommits = _g.Durable });
            _files.Clear();
            foreach (var name in _model.Keys) _files[name] = _v.OpenFile(name);
        }

        private static string Shape(IEnumerable<(string Name, long Length)> files) =>
            string.Join(" ", files.Select(f => $"{f.Name}:{f.Length}"));

        /// <summary>
        /// Copies the volume file while the volume is open (a crash: the journal holds only what commits wrote) and
        /// opens the copy: it must be consistent and show the names and lengths of a state since the last commit.
        /// Contents are not compared: overwrites of private blocks go in place, before or without a commit.
        /// </summary>
        private void Crash()
        {
            Log("crash copy; Volume.Open(copy)");
            string copy = Path.Combine(_dir, "crash.img");
            using (var src = new FileStream(_path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite))
            using (var dst = File.Create(copy))
                src.CopyTo(dst);
            try
            {
                using var c = Volume.Open(copy, new VolumeOptions { TryMapSync = false, DurableCommits = false });
                var report = c.Fsck();
                if (!report.IsClean) throw new ModelMismatchException("crash copy fsck: " + report);
                var files = c.FileNames.Select(n => (n, c.OpenFile(n).Length)).ToList();
                foreach (var (n, len) in files)
                {
                    var buf = new byte[len];
                    if (c.OpenFile(n).Read(0, buf) != len) throw new ModelMismatchException($"crash copy: short read of '{n}'");
                }
                string shape = Shape(files);
                if (!_sinceDurable.Contains(shape))
                    throw new ModelMismatchException($"crash copy recovered [{shape}], not one of the states since the last commit: {string.Join(" | ", _sinceDurable.Select(x => "[" + x + "]"))}");
            }
            finally
            {
                File.Delete(copy);
            }
        }

        public void Verify()
        {
            _sinceDurable.Add(Shape(_model.Select(kv => (kv.Key, (long)kv.Value.Count))));
            var names = _v.FileNames;
            if (!names.SequenceEqual(_model.Keys))
                throw new ModelMismatchException($"names [{string.Join(",", names)}], model [{string.Join(",", _model.Keys)}]");
            foreach (var (name, m) in _model)
            {
                var f = _files[name];
                if (f.Length != m.Count) throw new ModelMismatchException($"'{name}' length {f.Length}, model {m.Count}");
                var buf = new byte[m.Count + 1];
                int n = f.Read(0, buf);
                if (n != m.Count) throw new ModelMismatchException($"'{name}' read {n} bytes, length {m.Count}");
                var want = CollectionsMarshal.AsSpan(m);
                var have = buf.AsSpan(0, n);
                if (!have.SequenceEqual(want))
                {
                    int i = 0;
                    while (have[i] == want[i]) i++;
                    throw new ModelMismatchException(
                        $"'{name}' differs from the model first at byte {i} (block {i / Bs}): {have[i]} != {want[i]}; extents {Describe(f.GetExtents())}");
                }
                if (f.Read(m.Count, buf.AsSpan(0, 1)) != 0) throw new ModelMismatchException($"'{name}' reads past EOF");
            }
            var report = _v.Fsck();
            if (!report.IsClean) throw new ModelMismatchException("fsck: " + report);
        }

        private static string Describe(IReadOnlyList<FileExtent> extents)
        {
            var sb = new StringBuilder();
            foreach (var e in extents) sb.Append($"[{e.FileOffset}+{e.Length}->{e.DeviceOffset} {e.Flags}]");
            return sb.ToString();
        }
    }
}
