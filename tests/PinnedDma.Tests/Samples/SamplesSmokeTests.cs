using System.Diagnostics;
using Xunit;

namespace PinnedDma.Tests.Samples;

/// <summary>
/// Runs each sample as a new user would, as a real child process built by the same solution build (same
/// configuration as this test assembly), and checks its exit code and the lines that prove it did its work.
/// </summary>
[Trait("Category", "Slow")]
public sealed class SamplesSmokeTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(120);

    internal static string SampleDll(string name)
    {
        // tests/PinnedDma.Tests/bin/<Configuration>/<tfm>/ -> the repository root holds PinnedDma.sln.
        var baseDir = new DirectoryInfo(AppContext.BaseDirectory);
        string tfm = baseDir.Name;
        string configuration = baseDir.Parent!.Name;
        var root = baseDir;
        while (root is not null && !File.Exists(Path.Combine(root.FullName, "PinnedDma.sln"))) root = root.Parent;
        Assert.NotNull(root);
        string dll = Path.Combine(root!.FullName, "samples", name, "bin", configuration, tfm, name + ".dll");
        Assert.True(File.Exists(dll), $"{dll} is not built (the solution build builds the samples)");
        return dll;
    }

    private static (int ExitCode, string Output) Run(string sample, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(SampleDll(sample));
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(Bound))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail($"{sample} {string.Join(' ', args)} did not finish within {Bound}");
        }
        p.WaitForExit();
        return (p.ExitCode, stdout.GetAwaiter().GetResult() + stderr.GetAwaiter().GetResult());
    }

    [Fact]
    public void QuickStart_runs_the_whole_story()
    {
        var (code, output) = Run("QuickStart");
        Assert.True(code == 0, output);
        Assert.Contains("hello, pinned world", output);
        Assert.Contains("RemAccessErr", output);
        Assert.Contains("fsck    clean", output);
    }

    [Fact]
    public void StorageServer_demo_serves_verified_reads_while_the_volume_changes()
    {
        var (code, output) = Run("StorageServer", "demo", "-", "2");
        Assert.True(code == 0, output);
        Assert.Equal(2, output.Split('\n').Count(l => l.StartsWith("client ", StringComparison.Ordinal) && l.Contains(" 0 corrupt", StringComparison.Ordinal)));
        Assert.Contains("fsck clean", output);
    }

    [Theory]
    [InlineData("iwarp")]
    [InlineData("loopback")]
    public void PerfTest_runs_every_test_at_every_size(string transport)
    {
        var (code, output) = Run("PerfTest", "all", "--transport", transport, "--iters", "60", "--events");
        Assert.True(code == 0, output);
        foreach (var test in new[] { "write_bw", "read_bw", "send_lat", "write_lat" })
        {
            Assert.Contains($"# {test} over {transport}", output);
            Assert.Contains($"# {test} baseline: raw TCP socket", output);
        }
        // Five bandwidth sizes for each of the two bandwidth tests, three latency sizes for each latency test, and
        // the same rows again for the raw-socket baseline measured after each test.
        int rows = output.Split('\n').Count(l => l.Length > 1 && l[0] == ' ' && char.IsDigit(l[1]));
        Assert.True(rows == 2 * (2 * 5 + 2 * 3), $"expected 32 result rows, got {rows}:\n{output}");
    }
}
