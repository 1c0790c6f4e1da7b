using System.Diagnostics;
using System.Globalization;
using System.Text;
using PinnedDma.CrashChild;
using PinnedDma.Storage;
using Xunit;
using Xunit.Abstractions;

namespace PinnedDma.Tests.Storage;

/// <summary>
/// Crash recovery against real process death: a child process (PinnedDma.CrashChild) runs generated operations on a
/// file-backed volume and is killed with SIGKILL at a random moment; the test replays the same operations on an
/// in-memory model, reopens the volume (recovery) and checks that fsck is clean and that every file not touched
/// since the last commit the child reported holds exactly the committed bytes, and that every file touched since
/// then shows no state that did not exist: it exists (or not) as in some state it went through since that commit,
/// its length is one it had, and each byte is one that offset held in some such state (data written in place since
/// the commit may show in part, as after a crash of any file system with ordered data). The next child continues on
/// the recovered volume.
/// </summary>
[Trait("Category", "Slow")]
public sealed class CrashRecoveryTests : IDisposable
{
    /// <summary>Children started per chain; every one is killed unless it fails, so this bounds and sets the kill count.</summary>
    private const int ChildrenPerChain = 105;
    private const int Chains = 2;
    private const int MinKills = 200;
    private static readonly TimeSpan ChildTimeout = TimeSpan.FromSeconds(60);

    private readonly ITestOutputHelper _output;
    private readonly string _dir = Directory.CreateTempSubdirectory("pdma-crash-").FullName;

    public CrashRecoveryTests(ITestOutputHelper output) => _output = output;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void KilledWriterLeavesCommittedFilesIntactAndFsckClean()
    {
        string childDll = Path.Combine(AppContext.BaseDirectory, "crash-child", "PinnedDma.CrashChild.dll");
        Assert.True(File.Exists(childDll), $"The crash child was not built next to the tests: {childDll} is missing (the test project copies it after build).");
        string host = DotnetHost();
        int masterSeed = Environment.GetEnvironmentVariable("PINNEDDMA_CRASH_SEED") is { } s
            ? int.Parse(s, CultureInfo.InvariantCulture)
            : Random.Shared.Next();
        var clock = Stopwatch.StartNew();
        // Independent chains of children, each on its own volume, overlap one child's start-up with another's run.
        var stats = new ChainStats[Chains];
        var failures = new Exception?[Chains];
        var threads = new Thread[Chains];
        for (int k = 0; k < Chains; k++)
        {
            int chain = k;
            stats[chain] = new ChainStats();
            threads[chain] = new Thread(() =>
            {
                try
                {
                    RunChain(host, childDll, masterSeed, chain, stats[chain]);
                }
                catch (Exception e)
                {
                    failures[chain] = e;
                }
            });
            threads[chain].Start();
        }
        foreach (var t in threads) t.Join();
        clock.Stop();
        foreach (var f in failures)
            if (f is not null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(f).Throw();

        var total = new ChainStats();
        foreach (var c in stats) total.Add(c);
        _output.WriteLine(
            $"crash recovery: master seed {masterSeed}, {Chains} chains; {total.Kills} kills ({total.KilledBeforeReady} before the volume was open, " +
            $"{total.FastChildren} without msync), {total.Ops} ops, {total.Commits} commits, {total.Recoveries} recoveries " +
            $"({total.RecoveriesOfCopies} of copies, the rest in place); {total.FilesChecked} untouched files compared exactly, " +
            $"{total.FilesTouched} touched files ({total.TouchedChecked} checked byte by byte against their states since the commit), " +
            $"{total.OpsAfterLastCommit} ops after the last reported commit; {clock.Elapsed.TotalSeconds:F1} s");
        Assert.True(total.TouchedChecked > 0, "No touched file was checked.");
        Assert.True(total.Kills >= MinKills, $"Only {total.Kills} kills (want at least {MinKills}).");
        Assert.True(total.Commits > 0 && total.Ops > total.Commits, $"The children ran {total.Ops} ops and {total.Commits} commits: the workload did not run.");
    }

    private sealed class ChainStats
    {
        public long Kills, KilledBeforeReady, FastChildren, Recoveries, RecoveriesOfCopies, Ops, Commits, FilesChecked, FilesTouched, OpsAfterLastCommit, TouchedChecked;

        public void Add(ChainStats o)
        {
            Kills += o.Kills; KilledBeforeReady += o.KilledBeforeReady; FastChildren += o.FastChildren; Recoveries += o.Recoveries;
            RecoveriesOfCopies += o.RecoveriesOfCopies; Ops += o.Ops; Commits += o.Commits; FilesChecked += o.FilesChecked;
            FilesTouched += o.FilesTouched; OpsAfterLastCommit += o.OpsAfterLastCommit; TouchedChecked += o.TouchedChecked;
        }
    }

    private void RunChain(string host, string childDll, int masterSeed, int chain, ChainStats stats)
    {
        var master = new Random(HashCode.Combine(masterSeed, chain));
        string volume = Path.Combine(_dir, $"crash{chain}.img");
        string copy = Path.Combine(_dir, $"check{chain}.img");
        using (Volume.Create(volume, CrashWorkload.Options)) { }
        var model = new CrashModel();
        long nextOp = 0;
        for (int c = 0; c < ChildrenPerChain; c++)
        {
            int seed = master.Next();
            int mode = master.Next(100);
            // Mostly kill while operations run (sometimes within the first few), sometimes during start-up and recovery.
            bool waitReady = mode >= 5;
            int delayMs = mode < 5 ? master.Next(0, 400) : mode < 25 ? master.Next(0, 8) : master.Next(8, 160);
            // Half the children commit without msync: the journal logic is the same, they just run more operations.
            bool durable = master.Next(2) == 0;
            string where = $"chain {chain} child {c} (seed {seed}, first op {nextOp}, {(durable ? "durable" : "fast")}; rerun with PINNEDDMA_CRASH_SEED={masterSeed})";

            var run = RunChild(host, childDll, volume, seed, nextOp, durable, waitReady, delayMs, where);
            if (!run.Killed)
                Assert.Fail($"{where}: exited on its own with code {run.ExitCode} instead of being killed.\n{run.Tail()}\nstderr: {run.Stderr}");
            stats.Kills++;
            if (!durable) stats.FastChildren++;

            var replay = Replay(model, seed, nextOp, run, where);
            if (!replay.Ready) stats.KilledBeforeReady++;
            nextOp += replay.Begun;
            stats.Ops += replay.Begun;
            stats.Commits += replay.Commits;
            stats.FilesTouched += replay.Touched.Count;
            stats.OpsAfterLastCommit += replay.OpsAfterCommit;

            // Recover a copy (three times in four) so that the next child recovers the very same image itself and
            // appends to a journal that was never cleanly closed; or recover the image in place (which ends with a
            // clean-close checkpoint).
            string target = volume;
            if (master.Next(4) != 0)
            {
                File.Copy(volume, copy, overwrite: true);
                target = copy;
                stats.RecoveriesOfCopies++;
            }
            using (var v = Volume.Open(target))
            {
                stats.Recoveries++;
                var report = v.Fsck();
                if (!report.IsClean) Assert.Fail($"{where}: fsck after recovery: {report}\n{replay.Log()}");
                var names = v.FileNames;
                foreach (var (name, expected) in replay.Snapshot)
                {
                    if (replay.Touched.Contains(name)) continue;
                    if (!v.FileExists(name))
                        Assert.Fail($"{where}: '{name}' existed at the last commit (op {replay.LastCommit}) and was not touched since, but is gone after recovery.\n{replay.Log()}");
                    var actual = CrashWorkload.ReadAll(v.OpenFile(name));
                    if (!actual.AsSpan().SequenceEqual(expected))
                        Assert.Fail($"{where}: '{name}' (untouched since the commit after op {replay.LastCommit}) differs after recovery: {Difference(expected, actual)}.\n{replay.Log()}");
                    stats.FilesChecked++;
                }
                foreach (var (name, states) in replay.History)
                {
                    byte[]? actual = v.FileExists(name) ? CrashWorkload.ReadAll(v.OpenFile(name)) : null;
                    if (NeverExisted(states, actual) is { } why)
                        Assert.Fail($"{where}: '{name}', touched since the commit after op {replay.LastCommit}, recovered to a state that never existed: {why}.\n{replay.Log()}");
                    stats.TouchedChecked++;
                }
                foreach (var name in names)
                {
                    if (!replay.Snapshot.ContainsKey(name) && !replay.Touched.Contains(name))
                        Assert.Fail($"{where}: '{name}' exists after recovery, but did not exist at the last commit (op {replay.LastCommit}) and no later operation created it.\n{replay.Log()}");
                }
                // The next child starts from what recovery produced.
                model = new CrashModel(names.Select(n => KeyValuePair.Create(n, CrashWorkload.ReadAll(v.OpenFile(n)))));
            }
        }
    }

    [Fact]
    public void GrowingAFileAfterACrashReadsZerosWhereAnUncommittedWriteWent()
    {
        string live = Path.Combine(_dir, "live.img"), crashed = Path.Combine(_dir, "crashed.img");
        using (var v = Volume.Create(live, new VolumeOptions { BlockCount = 256 }))
        {
            var f = v.CreateFile("f");
            f.Write(0, Enumerable.Repeat((byte)1, 100).ToArray());
            v.Commit();
            // Goes in place into f's private last block; the size change is not committed.
            f.Write(100, Enumerable.Repeat((byte)2, 100).ToArray());
            // The file behind a shared mapping, as a process killed now would leave it.
            File.Copy(live, crashed);
        }
        using (var v = Volume.Open(crashed))
        {
            var f = v.OpenFile("f");
            Assert.Equal(100, f.Length);
            f.Truncate(4096);
            var buf = new byte[4096];
            Assert.Equal(4096, f.Read(0, buf));
            Assert.All(buf[..100], b => Assert.Equal(1, b));
            Assert.True(buf.AsSpan(100).IndexOfAnyExcept((byte)0) < 0, "bytes past the recovered EOF came back after growing the file");
            Assert.True(v.Fsck().IsClean);
        }
    }

    /// <summary>The volume file as a process killed right now would leave it (its mapping is shared, so the file holds every store).</summary>
    private string CrashCopy(string live, string name)
    {
        string copy = Path.Combine(_dir, name);
        File.Copy(live, copy);
        return copy;
    }

    [Fact]
    public void TruncateThenCrash_ShowsTheOldFileOrTheTruncatedOne_NeverTheOldSizeWithAZeroedTail()
    {
        string live = Path.Combine(_dir, "trunc.img");
        var data = CrashWorkload.Data(11, 8192);
        string crashed;
        using (var v = Volume.Create(live, new VolumeOptions { BlockCount = 256 }))
        {
            var f = v.CreateFile("f");
            f.Write(0, data);
            v.Commit();
            f.Truncate(5000);
            crashed = CrashCopy(live, "trunc-crash.img");
        }
        using (var v = Volume.Open(crashed))
        {
            var got = CrashWorkload.ReadAll(v.OpenFile("f"));
            Assert.Null(NeverExisted([data, data[..5000]], got));
            Assert.True(v.Fsck().IsClean);
            // Growing it again reads zeros past 5000, whichever state came back.
            v.OpenFile("f").Truncate(8192);
            var grown = CrashWorkload.ReadAll(v.OpenFile("f"));
            if (got.Length == 5000) Assert.True(grown.AsSpan(5000).IndexOfAnyExcept((byte)0) < 0);
        }
    }

    [Fact]
    public void CollapseOrInsertThenInPlaceWriteThenCrash_ShowsTheWriteAtItsNewOffset()
    {
        // Decided behaviour: a collapse or insert is durable when it returns (it commits), so a crash after it shows
        // the shifted file, and a later in-place write shows at the offset it was written to, or not at all; never at
        // the offset its block had before the shift.
        const int bs = CrashWorkload.BlockSize;
        var a = CrashWorkload.Data(1, bs);
        var b = CrashWorkload.Data(2, bs);
        var c = CrashWorkload.Data(3, bs);
        var x = CrashWorkload.Data(4, bs);
        string live = Path.Combine(_dir, "shift.img");
        string crashed;
        using (var v = Volume.Create(live, new VolumeOptions { BlockCount = 256 }))
        {
            var f = v.CreateFile("f");
            f.Write(0, [.. a, .. b, .. c]);
            var g = v.CreateFile("g");
            g.Write(0, [.. a, .. b]);
            v.Commit();
            f.CollapseRange(0, bs); // f = b c
            f.Write(0, x);          // in place into b's block: f = x c
            g.InsertRange(0, bs);   // g = hole a b
            g.Write(bs, x);         // in place into a's block: g = 0 x b
            crashed = CrashCopy(live, "shift-crash.img");
        }
        using var r = Volume.Open(crashed);
        var zero = new byte[bs];
        Assert.Null(NeverExisted([[.. b, .. c], [.. x, .. c]], CrashWorkload.ReadAll(r.OpenFile("f"))));
        Assert.Null(NeverExisted([[.. zero, .. a, .. b], [.. zero, .. x, .. b]], CrashWorkload.ReadAll(r.OpenFile("g"))));
        Assert.True(r.Fsck().IsClean);
    }

    internal static string DotnetHost()
    {
        // The test host itself usually runs under the dotnet muxer.
        string? self = Environment.ProcessPath;
        if (self is not null && Path.GetFileNameWithoutExtension(self) == "dotnet") return self;
        if (Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } hostPath && File.Exists(hostPath)) return hostPath;
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries))
        {
            string candidate = Path.Combine(dir, OperatingSystem.IsWindows() ? "dotnet.exe" : "dotnet");
            if (File.Exists(candidate)) return candidate;
        }
        Assert.Fail("Cannot find the dotnet host to run the crash child (not the test host, not DOTNET_HOST_PATH, not on PATH).");
        return "";
    }

    private sealed record ChildRun(List<string> Lines, bool Killed, int ExitCode, string Stderr)
    {
        public string Tail() => "stdout (last lines): " + string.Join(" | ", Lines.TakeLast(12));
    }

    private static ChildRun RunChild(string host, string dll, string volume, int seed, long first, bool durable, bool waitReady, int delayMs, string where)
    {
        var psi = new ProcessStartInfo(host)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        psi.ArgumentList.Add(dll);
        psi.ArgumentList.Add(volume);
        psi.ArgumentList.Add(seed.ToString(CultureInfo.InvariantCulture));
        psi.ArgumentList.Add(first.ToString(CultureInfo.InvariantCulture));
        psi.ArgumentList.Add("1000000");
        psi.ArgumentList.Add(durable ? "durable" : "fast");
        var lines = new List<string>();
        var stderr = new StringBuilder();
        using var started = new ManualResetEventSlim();
        using var p = new Process { StartInfo = psi };
        p.OutputDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            lock (lines) lines.Add(e.Data);
            if (e.Data.StartsWith("ready ", StringComparison.Ordinal) || e.Data.StartsWith("error", StringComparison.Ordinal)) started.Set();
        };
        p.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            lock (stderr) stderr.AppendLine(e.Data);
        };
        if (!p.Start()) Assert.Fail($"{where}: could not start '{host} {dll}'.");
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        bool killed = false;
        try
        {
            if (waitReady)
            {
                var deadline = Stopwatch.StartNew();
                while (!started.Wait(20) && !p.HasExited)
                {
                    if (deadline.Elapsed > ChildTimeout)
                        Assert.Fail($"{where}: the child did not open the volume within {ChildTimeout.TotalSeconds} s.");
                }
            }
            if (delayMs > 0) Thread.Sleep(delayMs);
            if (!p.HasExited)
            {
                p.Kill(); // SIGKILL
                killed = true;
            }
        }
        finally
        {
            if (!p.HasExited)
            {
                try { p.Kill(); } catch (InvalidOperationException) { }
            }
            if (!p.WaitForExit(ChildTimeout)) Assert.Fail($"{where}: the child did not end within {ChildTimeout.TotalSeconds} s of SIGKILL.");
            p.WaitForExit(); // drains the redirected output
        }
        List<string> copy;
        lock (lines) copy = [.. lines];
        string err;
        lock (stderr) err = stderr.ToString();
        // A child that died on its own before the kill landed reports done or error (or nothing and a non-kill code).
        bool endedItself = copy.Any(l => l == "done" || l.StartsWith("error", StringComparison.Ordinal));
        return new ChildRun(copy, killed && !endedItself, p.ExitCode, err);
    }

    private sealed class ReplayResult
    {
        public bool Ready;
        public long Begun;
        public long Commits;
        public long LastCommit = -1;
        public long OpsAfterCommit;
        public Dictionary<string, byte[]> Snapshot = new(StringComparer.Ordinal);
        public HashSet<string> Touched = new(StringComparer.Ordinal);

        /// <summary>For each touched file: its state at the last commit, then after each operation on it (null: absent).</summary>
        public Dictionary<string, List<byte[]?>> History = new(StringComparer.Ordinal);
        public List<string> Ops = [];

        public string Log() => "ops of this child (last 25): " + string.Join("; ", Ops.TakeLast(25));
    }

    /// <summary>
    /// Runs the child's operations on the model, in step with its report: the snapshot at the last reported commit,
    /// the files touched by an operation begun after it, and a check of the hash the child reported after each op.
    /// </summary>
    private static ReplayResult Replay(CrashModel model, int seed, long first, ChildRun run, string where)
    {
        var result = new ReplayResult { Snapshot = model.Snapshot() }; // the recovered state the child started from is durable
        var rng = new Random(seed);
        CrashOp? op = null;
        long expect = first;
        foreach (var line in run.Lines)
        {
            var parts = line.Split(' ');
            switch (parts[0])
            {
                case "ready":
                    {
                        ulong h = ulong.Parse(parts[1], CultureInfo.InvariantCulture);
                        if (h != model.HashAll())
                            Assert.Fail($"{where}: the child's recovery of the volume read different files than the test's recovery of it.");
                        result.Ready = true;
                        break;
                    }
                case "begin":
                    {
                        long i = long.Parse(parts[1], CultureInfo.InvariantCulture);
                        if (i != expect || !result.Ready) Assert.Fail($"{where}: out-of-order report '{line}' (expected op {expect}).");
                        op = CrashWorkload.Next(rng, model.Lengths());
                        result.Ops.Add($"{i}: {op}");
                        model.Apply(op);
                        if (op.Touches is { } t)
                        {
                            result.Touched.Add(t);
                            if (!result.History.TryGetValue(t, out var states))
                                result.History[t] = states = [result.Snapshot.GetValueOrDefault(t)];
                            states.Add(model.Files.GetValueOrDefault(t));
                        }
                        result.Begun++;
                        result.OpsAfterCommit++;
                        expect++;
                        break;
                    }
                case "end":
                    {
                        long i = long.Parse(parts[1], CultureInfo.InvariantCulture);
                        ulong h = ulong.Parse(parts[2], CultureInfo.InvariantCulture);
                        if (op is null || i != expect - 1) Assert.Fail($"{where}: out-of-order report '{line}'.");
                        ulong want = model.Files.TryGetValue(op.File, out var bytes) ? CrashWorkload.Hash(bytes) : 0;
                        if (h != want)
                            Assert.Fail($"{where}: after op {i} ({op}) the volume's '{op.File}' differs from the model's " +
                                $"({(bytes is null ? "absent" : bytes.Length + " bytes")}): the live volume is wrong.\n{result.Log()}");
                        break;
                    }
                case "commit":
                    {
                        long i = long.Parse(parts[1], CultureInfo.InvariantCulture);
                        if (i != expect - 1) Assert.Fail($"{where}: out-of-order report '{line}'.");
                        result.Snapshot = model.Snapshot();
                        result.Touched.Clear();
                        result.History.Clear();
                        result.Commits++;
                        result.LastCommit = i;
                        result.OpsAfterCommit = 0;
                        break;
                    }
                case "error":
                    Assert.Fail($"{where}: the child failed: {line}\n{result.Log()}\nstderr: {run.Stderr}");
                    break;
                case "done":
                    break;
                default:
                    // A line cut by the kill can only be the last one; it carries no information.
                    if (!ReferenceEquals(line, run.Lines[^1])) Assert.Fail($"{where}: unexpected report '{line}'.");
                    break;
            }
        }
        return result;
    }

    /// <summary>
    /// Null when <paramref name="actual"/> (null: the file is absent) is made of states the file went through: it exists
    /// or not as in one of them, has the length of one, and each byte equals that offset's byte in one of them; else why not.
    /// </summary>
    internal static string? NeverExisted(IReadOnlyList<byte[]?> states, byte[]? actual)
    {
        if (actual is null) return states.Any(s => s is null) ? null : "absent, but the file existed in every state since the commit";
        var present = states.Where(s => s is not null).Select(s => s!).ToList();
        if (present.Count == 0) return "present, but the file was absent in every state since the commit";
        if (!present.Any(s => s.Length == actual.Length))
            return $"length {actual.Length}; the lengths it had were {string.Join(", ", present.Select(s => s.Length).Distinct())}";
        int hint = 0;
        for (int i = 0; i < actual.Length; i++)
        {
            if (hint < present.Count && present[hint].Length > i && present[hint][i] == actual[i]) continue;
            hint = present.FindIndex(s => s.Length > i && s[i] == actual[i]);
            if (hint < 0)
                return $"byte {i} (block {i / CrashWorkload.BlockSize}) is {actual[i]:X2}, which that offset never held " +
                       $"(it held {string.Join(", ", present.Where(s => s.Length > i).Select(s => s[i].ToString("X2", CultureInfo.InvariantCulture)).Distinct())})";
        }
        return null;
    }

    private static string Difference(byte[] expected, byte[] actual)
    {
        if (expected.Length != actual.Length) return $"length {actual.Length}, expected {expected.Length}";
        int i = expected.AsSpan().CommonPrefixLength(actual);
        return $"first difference at byte {i} (block {i / CrashWorkload.BlockSize}): {actual[i]:X2}, expected {expected[i]:X2}";
    }
}
