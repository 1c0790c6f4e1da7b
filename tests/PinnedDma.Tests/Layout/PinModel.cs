using System.Text;
using PinnedDma.Storage;

namespace PinnedDma.Tests.Layout;

/// <summary>The operations the pin model runs. Parameters are raw numbers, fitted to the model's state when run.</summary>
internal enum PinOpKind
{
    CreateFile, Write, Truncate, Punch, ZeroRange, Allocate, Collapse, Insert, Clone, Dedupe, Unshare, Compact,
    Delete, Pin, Unpin, DmaWrite, Upgrade, Map, MapWrite, Unmap, OwnerDispose, SetPolicy, Commit,
}

/// <summary>One step of a generated sequence.</summary>
internal readonly record struct PinOp(PinOpKind Kind, int A, int B, int C, int D, int E)
{
    public override string ToString() => $"{Kind}({A},{B},{C},{D},{E})";
}

/// <summary>
/// A reference model of files (one byte array each), pins, mappings and memlock accounts run beside a real volume.
/// Every step first predicts the outcome from the conflict table of docs/design.md (which pins conflict, and what the
/// effective policy makes of that), runs the real operation, compares the outcome, applies the effect to the model,
/// and then checks every invariant. Any difference throws with the trace of the steps so far.
/// </summary>
internal sealed class PinModel : IDisposable
{
    private const int Bs = 512;
    private const int MaxBlocks = 24;
    private const long MaxBytes = MaxBlocks * Bs;
    private static readonly TimeSpan Tiny = TimeSpan.FromMilliseconds(1);

    private readonly Volume _v;
    private readonly string? _path;
    private readonly List<MFile> _files = new();
    private readonly List<MPin> _pins = new();
    private readonly List<MMap> _maps = new();
    private readonly PinOwner[] _owners = new PinOwner[2];
    private readonly long[] _limits = { 8 * Bs, 32 * Bs };
    private readonly StringBuilder _trace = new();
    private ConflictPolicy _default = ConflictPolicy.Deny;
    private int _nextName;
    private int _nextPin;

    private sealed class MFile
    {
        public required string Name;
        public required VolumeFile H;
        public byte[] Data = Array.Empty<byte>();
        public ConflictPolicy? Policy;
        public bool Deleted;
    }

    private sealed class MPin
    {
        public required int Id;
        public required PinHandle H;
        public required MFile F;
        public required int Owner;
        public required long Off, Len, First, End, Charge;
        public required bool Unbreakable, ReleaseOnBreak;
        public required ScatterGatherEntry[] Sgl;
        public PinAccess Access;
        public PinStatus Expected = PinStatus.Active;
        // Detached: the bytes of the file as it was when the pin left it. Pins detached together share it, as
        // overlapping ones share device blocks; indexed by file offset.
        public byte[]? Detached;
        public bool Live => Expected is PinStatus.Active or PinStatus.Detached;
        public bool Attached => Expected == PinStatus.Active;
        public override string ToString() => $"pin#{Id} {F.Name}[{Off},+{Len}) {Access}{(Unbreakable ? " unbreakable" : "")} {Expected}";
    }

    private sealed class MMap
    {
        public required FileMapping M;
        public required MFile F;
        public required long Off, Len, First, End;
        public required bool Direct;
        public required int Owner;
        public bool Disposed;
        public byte[]? Detached; // a Direct mapping of a deleted file stores into the blocks the file's pins kept
        public bool Seal => Direct && !Disposed && !F.Deleted;
    }

    private readonly bool _checkCowBrokenAtPin;

    public PinModel(int cowGranuleBlocks, bool fileBacked, bool mutateReadPinCowBreak = false, bool checkCowBrokenAtPin = true)
    {
        _checkCowBrokenAtPin = checkCowBrokenAtPin;
        var options = new VolumeOptions
        {
            BlockSize = Bs,
            BlockCount = 4096,
            MaxFiles = 16,
            CowGranuleBlocks = cowGranuleBlocks,
            DurableCommits = false,
            TryMapSync = false,
        };
        if (fileBacked)
        {
            _path = Path.Combine(Path.GetTempPath(), $"pinmodel-{Guid.NewGuid():N}.vol");
            _v = Volume.Create(_path, options);
        }
        else
        {
            _v = Volume.CreateInMemory(options);
        }
        _v.DisableReadPinCowBreakForMutationTest = mutateReadPinCowBreak;
        for (int i = 0; i < _owners.Length; i++) _owners[i] = new PinOwner(_v, _limits[i], $"owner{i}");
    }

    public void Dispose()
    {
        foreach (var o in _owners) o.Dispose();
        _v.Dispose();
        if (_path is not null) File.Delete(_path);
    }

    /// <summary>Runs a sequence on a fresh model; throws on the first difference.</summary>
    public static void RunSequence(IEnumerable<PinOp> ops, int granule = 1, bool fileBacked = false, bool mutate = false, bool checkCowBrokenAtPin = true)
    {
        using var m = new PinModel(granule, fileBacked, mutate, checkCowBrokenAtPin);
        m.Run(ops);
    }

    public void Run(IEnumerable<PinOp> ops)
    {
        int step = 0;
        foreach (var op in ops)
        {
            _trace.Append(step++).Append(": ").Append(op).Append(" -> ");
            try
            {
                Step(op);
                CheckInvariants();
            }
            catch (ModelFailure)
            {
                throw;
            }
            catch (Exception e)
            {
                Fail($"unexpected {e.GetType().Name}: {e.Message}\n{e.StackTrace}");
            }
            _trace.AppendLine();
        }
    }

    private sealed class ModelFailure(string message) : Exception(message);

    private void Fail(string why) => throw new ModelFailure($"{why}\nTrace:\n{_trace}");

    private void Note(string s) => _trace.Append(s).Append(' ');

    // ------------------------------------------------------------------ model utilities

    private List<MFile> LiveFiles => _files.Where(f => !f.Deleted).ToList();

    private MFile? PickFile(int r)
    {
        var l = LiveFiles;
        return l.Count == 0 ? null : l[r % l.Count];
    }

    private static byte[] Bytes(int seed, int n)
    {
        var b = new byte[n];
        new Random(seed).NextBytes(b);
        for (int i = 0; i < n; i++) b[i] |= 1; // never zero, so holes and data differ
        return b;
    }

    private static long RoundUp(long x) => (x + Bs - 1) / Bs * Bs;

    private ConflictPolicy? PolicyFrom(int r) => (r % 5) switch
    {
        0 => null,
        1 => ConflictPolicy.Deny,
        2 => ConflictPolicy.Wait(Tiny),
        3 => ConflictPolicy.Break(Tiny),
        _ => ConflictPolicy.Defer,
    };

    private static void Grow(MFile f, long size)
    {
        if (size > f.Data.Length)
        {
            var d = f.Data;
            Array.Resize(ref d, checked((int)size));
            f.Data = d;
        }
    }

    private static void SetSize(MFile f, long size)
    {
        var d = f.Data;
        Array.Resize(ref d, checked((int)size));
        f.Data = d;
    }

    /// <summary>Model bytes [off, off+len) of a file, zeros past EOF.</summary>
    private static byte[] Slice(MFile f, long off, long len)
    {
        var r = new byte[len];
        if (off < f.Data.Length) f.Data.AsSpan((int)off, (int)Math.Min(len, f.Data.Length - off)).CopyTo(r);
        return r;
    }

    /// <summary>A seal in the model: an attached pin or a live Direct mapping.</summary>
    private readonly record struct MSeal(MPin? Pin, MMap? Map)
    {
        public long First => Pin?.First ?? Map!.First;
        public long End => Pin?.End ?? Map!.End;
        public bool Unbreakable => Pin?.Unbreakable ?? true;
        public bool Deferrable => Pin is not null;
    }

    private List<MSeal> Seals(MFile f)
    {
        var l = new List<MSeal>();
        foreach (var p in _pins) if (p.Attached && p.F == f) l.Add(new MSeal(p, null));
        foreach (var m in _maps) if (m.Seal && m.F == f) l.Add(new MSeal(null, m));
        return l;
    }

    /// <summary>What the conflict table predicts: null = proceed (after <paramref name="effects"/>), else the error.</summary>
    private PinnedDmaError? Resolve(MFile f, List<MSeal> conflicts, ConflictPolicy? opPolicy, bool deferrable, List<Action> effects)
    {
        if (conflicts.Count == 0) return null;
        var policy = opPolicy ?? f.Policy ?? _default;
        Note($"conflicts={conflicts.Count} policy={policy}");
        switch (policy.Kind)
        {
            case ConflictPolicyKind.Defer when deferrable && conflicts.All(s => s.Deferrable):
                var others = Seals(f).Where(s => !conflicts.Contains(s) && conflicts.Any(c => c.First < s.End && s.First < c.End)).ToList();
                if (others.Count > 0) return PinnedDmaError.Busy;
                var detached = conflicts.Select(c => c.Pin!).ToList();
                var snap = Slice(f, 0, detached.Max(p => p.End) * Bs);
                effects.Add(() =>
                {
                    foreach (var p in detached)
                    {
                        p.Expected = PinStatus.Detached;
                        p.Detached = snap;
                    }
                });
                return null;
            case ConflictPolicyKind.Break when !conflicts.Any(s => s.Unbreakable):
                effects.Add(() =>
                {
                    // A holder that releases when asked races the timeout: its handler runs on the thread pool and the
                    // operation does not wait for it, so it ends Released (handler first) or Revoked (timeout first).
                    // Either way it has ended when the operation returns; take whichever it was.
                    foreach (var c in conflicts)
                        c.Pin!.Expected = c.Pin.ReleaseOnBreak && c.Pin.H.Status is PinStatus.Released ? PinStatus.Released : PinStatus.Revoked;
                });
                return null;
            default:
                return PinnedDmaError.Busy;
        }
    }

    private List<MSeal> Overlapping(MFile f, long first, long end) =>
        Seals(f).Where(s => s.First < end && s.End > first).ToList();

    // ------------------------------------------------------------------ steps

    private void Step(PinOp op)
    {
        var effects = new List<Action>();
        PinnedDmaError? expect = null;
        Action? act = null;
        switch (op.Kind)
        {
            case PinOpKind.CreateFile:
            {
                if (LiveFiles.Count >= 4) { Note("skip"); return; }
                string name = $"f{_nextName++}";
                int size = op.A % (12 * Bs);
                var data = Bytes(op.B, size);
                bool holes = op.C % 3 == 0;
                act = () =>
                {
                    var h = _v.CreateFile(name);
                    if (holes) h.Truncate(size);
                    else h.Write(0, data);
                    var f = new MFile { Name = name, H = h, Data = holes ? new byte[size] : data };
                    _files.Add(f);
                };
                Note($"{name} size {size}{(holes ? " sparse" : "")}");
                break;
            }
            case PinOpKind.Write:
            {
                var f = PickFile(op.A);
                if (f is null) return;
                long off = op.B % (f.Data.Length + 2 * Bs);
                int len = 1 + op.C % (3 * Bs);
                if (off + len > MaxBytes) { Note("skip"); return; }
                var data = Bytes(op.D, len);
                var policy = PolicyFrom(op.E);
                act = () => f.H.Write(off, data, policy);
                effects.Add(() => { Grow(f, off + len); data.CopyTo(f.Data, off); });
                Note($"{f.Name}[{off},+{len}) {policy}");
                break;
            }
            case PinOpKind.Truncate:
            {
                var f = PickFile(op.A);
                if (f is null) return;
                long len = op.B % (f.Data.Length + 4 * Bs);
                if (len > MaxBytes) len = MaxBytes;
                var policy = PolicyFrom(op.E);
                if (len < f.Data.Length)
                    expect = Resolve(f, Seals(f).Where(s => s.End * Bs > len).ToList(), policy, true, effects);
                act = () => f.H.Truncate(len, policy);
                effects.Add(() => SetSize(f, len));
                Note($"{f.Name} to {len} {policy}");
                break;
            }
            case PinOpKind.Punch:
            {
                var f = PickFile(op.A);
                if (f is null) return;
                long off = op.B % (f.Data.Length + Bs), len = 1 + op.C % (4 * Bs);
                var policy = PolicyFrom(op.E);
                long ff = (off + Bs - 1) / Bs, fe = (off + len) / Bs;
                if (ff < fe) expect = Resolve(f, Overlapping(f, ff, fe), policy, true, effects);
                act = () => f.H.PunchHole(off, len, policy);
                effects.Add(() =>
                {
                    long e = Math.Min(off + len, f.Data.Length);
                    if (e > off) Array.Clear(f.Data, (int)off, (int)(e - off));
                });
                Note($"{f.Name}[{off},+{len}) {policy}");
                break;
            }
            case PinOpKind.ZeroRange:
            {
                var f = PickFile(op.A);
                if (f is null) return;
                long off = op.B % (f.Data.Length + Bs), len = 1 + op.C % (4 * Bs);
                bool keep = op.D % 2 == 0;
                if (!keep && off + len > MaxBytes) { Note("skip"); return; }
                var policy = PolicyFrom(op.E);
                // Zero range writes zeros in place over sealed blocks: it never conflicts.
                act = () => f.H.ZeroRange(off, len, keep, policy);
                effects.Add(() =>
                {
                    if (!keep) Grow(f, off + len);
                    long e = Math.Min(off + len, f.Data.Length);
                    if (e > off) Array.Clear(f.Data, (int)off, (int)(e - off));
                });
                Note($"{f.Name}[{off},+{len}) keep={keep} {policy}");
                break;
            }
            case PinOpKind.Allocate:
            {
                var f = PickFile(op.A);
                if (f is null) return;
                long off = op.B % (f.Data.Length + Bs), len = 1 + op.C % (4 * Bs);
                bool keep = op.D % 2 == 0;
                if (off + len > MaxBytes) { Note("skip"); return; }
                act = () => f.H.Allocate(off, len, keep);
                effects.Add(() => { if (!keep) Grow(f, off + len); });
                Note($"{f.Name}[{off},+{len}) keep={keep}");
                break;
            }
            case PinOpKind.Collapse:
            {
                var f = PickFile(op.A);
                if (f is null) return;
                long blocksBeforeEof = (f.Data.Length - 1) / Bs; // whole blocks that end before EOF
                if (f.Data.Length == 0 || blocksBeforeEof < 1) { Note("skip"); return; }
                long b = op.B % blocksBeforeEof;
                long n = 1 + op.C % (blocksBeforeEof - b);
                if ((b + n) * Bs >= f.Data.Length) { Note("skip"); return; }
                var policy = PolicyFrom(op.E);
                expect = Resolve(f, Seals(f).Where(s => s.End > b).ToList(), policy, false, effects);
                act = () => f.H.CollapseRange(b * Bs, n * Bs, policy);
                effects.Add(() =>
                {
                    var d = f.Data.Take((int)(b * Bs)).Concat(f.Data.Skip((int)((b + n) * Bs))).ToArray();
                    f.Data = d;
                });
                Note($"{f.Name} blocks [{b},+{n}) {policy}");
                break;
            }
            case PinOpKind.Insert:
            {
                var f = PickFile(op.A);
                if (f is null || f.Data.Length == 0) return;
                long b = op.B % ((f.Data.Length + Bs - 1) / Bs);
                long n = 1 + op.C % 3;
                if (f.Data.Length + n * Bs > MaxBytes) { Note("skip"); return; }
                var policy = PolicyFrom(op.E);
                expect = Resolve(f, Seals(f).Where(s => s.End > b).ToList(), policy, false, effects);
                act = () => f.H.InsertRange(b * Bs, n * Bs, policy);
                effects.Add(() =>
                {
                    f.Data = f.Data.Take((int)(b * Bs)).Concat(new byte[n * Bs]).Concat(f.Data.Skip((int)(b * Bs))).ToArray();
                });
                Note($"{f.Name} at block {b} +{n} {policy}");
                break;
            }
            case PinOpKind.Clone:
            case PinOpKind.Dedupe:
            {
                var src = PickFile(op.A);
                var dst = PickFile(op.A / 7 + op.B);
                if (src is null || dst is null || src.Data.Length == 0) return;
                bool dedupe = op.Kind == PinOpKind.Dedupe;
                long srcBlocks = (src.Data.Length + Bs - 1) / Bs;
                long sb = op.B % srcBlocks;
                long dstLimit = dedupe ? Math.Max(1, (dst.Data.Length + Bs - 1) / Bs) : Math.Max(1, (dst.Data.Length + Bs - 1) / Bs + 1);
                long db = op.C % dstLimit;
                long len;
                if (op.D % 2 == 0)
                {
                    len = src.Data.Length - sb * Bs; // to the source's EOF
                    long dEnd = db * Bs + len;
                    bool ok = len % Bs == 0 || (dedupe ? dEnd == dst.Data.Length : dEnd >= dst.Data.Length);
                    if (!ok) len = len / Bs * Bs;
                }
                else
                {
                    len = Math.Min(1 + op.D % 4, src.Data.Length / Bs - sb) * Bs;
                }
                if (len <= 0 || db * Bs + len > MaxBytes) { Note("skip"); return; }
                if (dedupe && db * Bs + len > dst.Data.Length) { Note("skip"); return; }
                long blocks = (len + Bs - 1) / Bs;
                if (dedupe && len % Bs != 0 && !(db * Bs + len == dst.Data.Length)) blocks = len / Bs;
                if (src == dst && sb < db + blocks && db < sb + blocks) { Note("skip overlap"); return; }
                var policy = PolicyFrom(op.E);
                long sOff = sb * Bs, dOff = db * Bs;
                Note($"{src.Name}[{sOff},+{len}) -> {dst.Name}[{dOff}] {policy}");
                if (dedupe)
                {
                    if (blocks == 0) { act = () => Equal(0L, dst.H.DedupeRangeFrom(src.H, sOff, dOff, len, policy), "dedupe bytes"); break; }
                    if (!Slice(src, sOff, blocks * Bs).AsSpan().SequenceEqual(Slice(dst, dOff, blocks * Bs)))
                    {
                        expect = PinnedDmaError.RangesDiffer;
                        act = () => dst.H.DedupeRangeFrom(src.H, sOff, dOff, len, policy);
                        break;
                    }
                    expect = Resolve(dst, Overlapping(dst, db, db + blocks), policy, true, effects);
                    long want = Math.Min(blocks * Bs, len);
                    act = () => Equal(want, dst.H.DedupeRangeFrom(src.H, sOff, dOff, len, policy), "dedupe bytes");
                    break;
                }
                expect = Resolve(dst, Overlapping(dst, db, db + blocks), policy, true, effects);
                var bytes = Slice(src, sOff, len);
                act = () => dst.H.CloneRangeFrom(src.H, sOff, dOff, len, policy);
                effects.Add(() => { Grow(dst, dOff + len); bytes.CopyTo(dst.Data, dOff); });
                break;
            }
            case PinOpKind.Unshare:
            {
                var f = PickFile(op.A);
                if (f is null) return;
                long off = op.B % (f.Data.Length + Bs), len = 1 + op.C % (8 * Bs);
                var policy = PolicyFrom(op.E);
                act = () => f.H.UnshareRange(off, len, policy, keepSize: true); // FALLOC_FL_KEEP_SIZE: the model keeps the size
                Note($"{f.Name}[{off},+{len}) {policy}");
                break;
            }
            case PinOpKind.Compact:
                act = () => _v.Compact(1 + op.A % 8);
                break;
            case PinOpKind.Commit:
                act = () => { if (op.A % 2 == 0) _v.Commit(); else _v.Checkpoint(); };
                break;
            case PinOpKind.Delete:
            {
                var f = PickFile(op.A);
                if (f is null) return;
                var detached = _pins.Where(p => p.Attached && p.F == f).ToList();
                var detachedMaps = _maps.Where(m => m.Seal && m.F == f).ToList();
                var snap = Slice(f, 0, RoundUp(f.Data.Length) + 8 * Bs);
                act = () => _v.DeleteFile(f.Name);
                effects.Add(() =>
                {
                    foreach (var m in detachedMaps) m.Detached = snap;
                    foreach (var p in detached) { p.Expected = PinStatus.Detached; p.Detached = snap; }
                    f.Deleted = true;
                });
                Note(f.Name);
                break;
            }
            case PinOpKind.Pin:
            {
                var f = PickFile(op.A);
                if (f is null || f.Data.Length == 0) return;
                long end = f.Data.Length; // pins and mappings lie within EOF
                long off = op.B % end;
                long len = 1 + op.C % Math.Min(end - off, 6 * Bs);
                int owner = op.D % 2;
                var access = (op.D / 2) % 2 == 0 ? PinAccess.Read : PinAccess.Write;
                bool unbreakable = (op.D / 4) % 4 == 0;
                bool releaseOnBreak = (op.D / 16) % 2 == 0;
                long first = off / Bs, stop = (off + len + Bs - 1) / Bs;
                long charge = (stop - first) * Bs;
                long locked = _pins.Where(p => p.Live && p.Owner == owner).Sum(p => p.Charge);
                if (locked + charge > _limits[owner]) expect = PinnedDmaError.MemlockLimitExceeded;
                Note($"{f.Name}[{off},+{len}) {access} owner{owner}{(unbreakable ? " unbreakable" : "")}{(releaseOnBreak ? " releases" : " ignores")}");
                act = () =>
                {
                    var h = _owners[owner].Pin(f.H, off, len, access, unbreakable ? PinOptions.Unbreakable : PinOptions.None);
                    var p = new MPin
                    {
                        Id = _nextPin++, H = h, F = f, Owner = owner, Off = off, Len = len, First = first, End = stop,
                        Charge = charge, Unbreakable = unbreakable, ReleaseOnBreak = releaseOnBreak,
                        Sgl = h.ScatterGatherList.ToArray(), Access = access,
                    };
                    if (releaseOnBreak) h.LeaseBreaking += (_, _) => h.Dispose();
                    _pins.Add(p);
                    Equal(charge, h.ChargedBytes, "charged bytes");
                    // docs/design.md, path 1 (the COW break at pin time): after pinning, no block of the range is shared.
                    foreach (var e in _checkCowBrokenAtPin ? f.H.GetExtents(first * Bs, (stop - first) * Bs) : Array.Empty<FileExtent>())
                        if (e.Flags.HasFlag(FileExtentFlags.Shared) && e.FileOffset < stop * Bs && e.FileOffset + e.Length > first * Bs)
                            Fail($"{p}: pinned block at file offset {e.FileOffset} is still shared after pinning (COW was not broken)");
                };
                break;
            }
            case PinOpKind.Unpin:
            {
                if (_pins.Count == 0) return;
                var p = _pins[op.A % _pins.Count];
                act = () => p.H.Dispose();
                effects.Add(() => { if (p.Live) p.Expected = PinStatus.Released; });
                Note(p.ToString());
                break;
            }
            case PinOpKind.DmaWrite:
            {
                if (_pins.Count == 0) return;
                var p = _pins[op.A % _pins.Count];
                long o = op.B % p.Len;
                long n = 1 + op.C % (p.Len - o);
                if (p.Attached) n = Math.Min(n, p.F.Data.Length - (p.Off + o)); // stay inside EOF
                if (n <= 0) { Note("skip past EOF"); return; }
                var data = Bytes(op.D, (int)n);
                Note($"{p} [{o},+{n})");
                if (p.Access == PinAccess.Read)
                {
                    expect = PinnedDmaError.AccessDenied;
                    act = () => p.H.TryWrite(o, data);
                    break;
                }
                act = () => Equal(p.Live, p.H.TryWrite(o, data), "TryWrite result");
                effects.Add(() =>
                {
                    // Through an attached pin DMA changes the file; through a detached one only the pin's blocks.
                    if (p.Attached) data.CopyTo(p.F.Data, p.Off + o);
                    else if (p.Expected == PinStatus.Detached) data.CopyTo(p.Detached!, p.Off + o);
                });
                break;
            }
            case PinOpKind.Upgrade:
            {
                if (_pins.Count == 0) return;
                var p = _pins[op.A % _pins.Count];
                Note(p.ToString());
                if (p.Access == PinAccess.Write) { act = () => p.H.Upgrade(PinAccess.Write); break; }
                if (!p.Live) expect = p.Expected == PinStatus.Revoked ? PinnedDmaError.Revoked : PinnedDmaError.Released;
                act = () => p.H.Upgrade(PinAccess.Write);
                effects.Add(() => p.Access = PinAccess.Write);
                break;
            }
            case PinOpKind.Map:
            {
                var f = PickFile(op.A);
                if (f is null || f.Data.Length == 0) return;
                long end = f.Data.Length; // pins and mappings lie within EOF
                long off = op.B % end;
                long len = 1 + op.C % Math.Min(end - off, 6 * Bs);
                var flags = MapFlags.Shared | (MapFlags)((op.D % 8) * 2);
                bool direct = flags.HasFlag(MapFlags.Direct);
                long first = off / Bs, stop = (off + len + Bs - 1) / Bs;
                int owner = op.E % 2;
                if (direct && !flags.HasFlag(MapFlags.Populate))
                {
                    var ext = f.H.GetExtents(first * Bs, (stop - first) * Bs);
                    // GetExtents reports whole (flag-split) extents: clip them to the range.
                    long covered = ext.Sum(e => Math.Max(0, Math.Min(e.FileOffset + e.Length, stop * Bs) - Math.Max(e.FileOffset, first * Bs)));
                    if (covered != (stop - first) * Bs || ext.Any(e => e.Flags.HasFlag(FileExtentFlags.Shared) && e.FileOffset < stop * Bs && e.FileOffset + e.Length > first * Bs)) expect = PinnedDmaError.InvalidArgument;
                }
                Note($"{f.Name}[{off},+{len}) {flags}");
                act = () =>
                {
                    var m = _owners[owner].Map(f.H, off, len, flags);
                    _maps.Add(new MMap { M = m, F = f, Off = off, Len = len, First = first, End = stop, Direct = direct, Owner = owner });
                };
                break;
            }
            case PinOpKind.MapWrite:
            {
                var live = _maps.Where(m => !m.Disposed).ToList();
                if (live.Count == 0) return;
                var m = live[op.A % live.Count];
                long o = op.B % m.Len;
                long n = 1 + op.C % (m.Len - o);
                Note($"{m.F.Name} map [{m.Off},+{m.Len}) {m.M.Flags} [{o},+{n})");
                if (m.Direct)
                {
                    if (!m.F.Deleted) n = Math.Min(n, m.F.Data.Length - (m.Off + o));
                    if (n <= 0) { Note("skip past EOF"); return; }
                    var data = Bytes(op.D, (int)n);
                    act = () => StoreThroughSpans(m.M, o, data);
                    effects.Add(() => data.CopyTo(m.F.Deleted ? m.Detached! : m.F.Data, m.Off + o));
                }
                else
                {
                    var data = Bytes(op.D, (int)n);
                    if (m.F.Deleted) expect = PinnedDmaError.NotFound;
                    else if (m.Off + o + n > MaxBytes) { Note("skip"); return; }
                    act = () => m.M.Write(o, data);
                    effects.Add(() => { Grow(m.F, m.Off + o + n); data.CopyTo(m.F.Data, m.Off + o); });
                }
                break;
            }
            case PinOpKind.Unmap:
            {
                var live = _maps.Where(m => !m.Disposed).ToList();
                if (live.Count == 0) return;
                var m = live[op.A % live.Count];
                act = () => m.M.Dispose();
                effects.Add(() => m.Disposed = true);
                break;
            }
            case PinOpKind.OwnerDispose:
            {
                int i = op.A % 2;
                act = () =>
                {
                    _owners[i].Dispose();
                    _owners[i] = new PinOwner(_v, _limits[i], $"owner{i}");
                };
                effects.Add(() =>
                {
                    foreach (var p in _pins) if (p.Owner == i && p.Live) p.Expected = PinStatus.Released;
                    foreach (var m in _maps) if (m.Owner == i) m.Disposed = true;
                });
                Note($"owner{i}");
                break;
            }
            case PinOpKind.SetPolicy:
            {
                var policy = PolicyFrom(op.B) ?? ConflictPolicy.Deny;
                var f = PickFile(op.A);
                if (op.C % 3 == 0 || f is null)
                {
                    act = () => _v.DefaultConflictPolicy = policy;
                    effects.Add(() => _default = policy);
                    Note($"volume default {policy}");
                }
                else
                {
                    var p = op.C % 3 == 1 ? (ConflictPolicy?)null : policy;
                    act = () => f.H.ConflictPolicy = p;
                    effects.Add(() => f.Policy = p);
                    Note($"{f.Name} {p}");
                }
                break;
            }
        }
        if (act is null) return;
        Note(expect is null ? "expect ok" : $"expect {expect}");
        try
        {
            act();
        }
        catch (PinnedDmaException e) when (expect is not null)
        {
            if (e.Error != expect) Fail($"expected {expect}, got {e.Error}: {e.Message}");
            return;
        }
        catch (PinnedDmaException e)
        {
            Fail($"expected success, got {e.Error}: {e.Message}");
        }
        if (expect is not null) Fail($"expected {expect}, but the operation succeeded");
        foreach (var a in effects) a();
    }

    private static void StoreThroughSpans(FileMapping m, long offset, byte[] data)
    {
        // The spans of a Direct mapping cover the mapped range in order; store into them as DAX stores would.
        long pos = 0;
        int done = 0;
        for (int i = 0; i < m.ExtentCount && done < data.Length; i++)
        {
            var span = m.GetExtentSpan(i);
            long s = Math.Max(offset + done, pos), t = Math.Min(offset + data.Length, pos + span.Length);
            if (s < t)
            {
                data.AsSpan(done, (int)(t - s)).CopyTo(span[(int)(s - pos)..]);
                done += (int)(t - s);
            }
            pos += span.Length;
        }
        if (done != data.Length) throw new InvalidOperationException($"Direct mapping spans cover {pos} bytes; wanted [{offset},+{data.Length}).");
    }

    private void Equal<T>(T want, T got, string what)
    {
        if (!EqualityComparer<T>.Default.Equals(want, got)) Fail($"{what}: expected {want}, got {got}");
    }

    // ------------------------------------------------------------------ invariants

    private void CheckInvariants()
    {
        var problems = _v.CheckSealInvariants();
        if (problems.Count > 0) Fail("seal invariants: " + string.Join("; ", problems));
        var fsck = _v.Fsck();
        if (!fsck.IsClean) Fail("fsck: " + fsck);

        for (int i = 0; i < _owners.Length; i++)
        {
            var live = _pins.Where(p => p.Live && p.Owner == i).ToList();
            long sum = live.Sum(p => p.H.ChargedBytes);
            Equal(sum, _owners[i].LockedBytes, $"owner{i} locked bytes");
            if (_owners[i].LockedBytes > _owners[i].MemlockLimit) Fail($"owner{i} over its memlock limit");
            Equal(live.Count, _owners[i].PinCount, $"owner{i} pin count");
        }

        var names = LiveFiles.Select(f => f.Name).Order(StringComparer.Ordinal).ToArray();
        if (!names.SequenceEqual(_v.FileNames)) Fail($"files: expected [{string.Join(",", names)}], got [{string.Join(",", _v.FileNames)}]");
        foreach (var f in LiveFiles)
        {
            Equal((long)f.Data.Length, f.H.Length, $"{f.Name} length");
            var got = new byte[f.Data.Length + Bs];
            int n = f.H.Read(0, got);
            Equal(f.Data.Length, n, $"{f.Name} bytes read");
            int diff = got.AsSpan(0, n).CommonPrefixLength(f.Data);
            if (diff != f.Data.Length) Fail($"{f.Name}: content differs from the model at byte {diff}");
        }

        foreach (var p in _pins)
        {
            Equal(p.Expected, p.H.Status, $"{p} status");
            if (!p.H.ScatterGatherList.SequenceEqual(p.Sgl)) Fail($"{p}: scatter-gather list changed since pinning");
            var buf = new byte[p.Len];
            bool ok = p.H.TryRead(0, buf);
            Equal(p.Live, ok, $"{p} TryRead");
            if (!p.Live) continue;
            var want = p.Attached ? Slice(p.F, p.Off, p.Len) : p.Detached!.AsSpan((int)p.Off, (int)p.Len).ToArray();
            int diff = buf.AsSpan().CommonPrefixLength(want);
            if (diff != want.Length) Fail($"{p}: DMA read differs from the model at byte {diff}");
            if (p.Attached) CheckTranslation(p);
        }
    }

    /// <summary>The file's current translation of an attached pin's blocks equals the list recorded at pin time.</summary>
    private void CheckTranslation(MPin p)
    {
        var now = new List<(long Dev, ulong Gen)>();
        foreach (var e in p.F.H.GetExtents(p.First * Bs, (p.End - p.First) * Bs))
            for (long b = Math.Max(e.FileOffset, p.First * Bs); b < Math.Min(e.FileOffset + e.Length, p.End * Bs); b += Bs)
                now.Add((e.DeviceOffset + (b - e.FileOffset), e.Generation));
        var then = new List<(long, ulong)>();
        foreach (var s in p.Sgl)
            for (long k = 0; k < s.Length; k += Bs) then.Add((s.DeviceOffset + k, s.Generation));
        if (!now.SequenceEqual(then)) Fail($"{p}: the file's translation no longer equals the pinned scatter-gather list");
    }
}
