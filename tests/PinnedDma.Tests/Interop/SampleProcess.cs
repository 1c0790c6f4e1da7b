using System.Diagnostics;
using System.Text;

namespace PinnedDma.Tests.Interop;

/// <summary>A sample (samples/Rping, samples/PerfTest) as a real child process built by the solution build, every wait bounded.</summary>
public sealed class SampleProcess : IDisposable
{
    private readonly Process _p;
    private readonly StringBuilder _out = new();
    private readonly TaskCompletionSource _listening = new(TaskCreationOptions.RunContinuationsAsynchronously);

    private SampleProcess(Process p)
    {
        _p = p;
        p.OutputDataReceived += (_, e) => Append(e.Data);
        p.ErrorDataReceived += (_, e) =>
        {
            Append(e.Data);
            if (e.Data?.Contains(": listening on", StringComparison.Ordinal) == true) _listening.TrySetResult();
        };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
    }

    private void Append(string? line)
    {
        if (line is null) return;
        lock (_out) _out.Append(line).Append('\n');
    }

    /// <summary>Everything printed so far (stdout and stderr, as lines arrived).</summary>
    public string Output
    {
        get { lock (_out) return _out.ToString(); }
    }

    /// <summary>Starts samples/<paramref name="sample"/> with <paramref name="args"/>.</summary>
    public static SampleProcess Start(string root, string sample, params string[] args)
    {
        var baseDir = new DirectoryInfo(AppContext.BaseDirectory);
        string dll = Path.Combine(root, "samples", sample, "bin", baseDir.Parent!.Name, baseDir.Name, sample + ".dll");
        if (!File.Exists(dll)) throw new InvalidOperationException($"{dll} is not built (the solution build builds the samples)");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(dll);
        foreach (var a in args) psi.ArgumentList.Add(a);
        return new SampleProcess(Process.Start(psi) ?? throw new InvalidOperationException("dotnet did not start"));
    }

    /// <summary>Waits until a server prints that it listens.</summary>
    public void WaitListening(TimeSpan bound)
    {
        if (!_listening.Task.Wait(bound)) throw new TimeoutException($"server not listening within {bound}:\n{Output}");
    }

    /// <summary>Waits for the exit; kills the process and throws after <paramref name="bound"/>.</summary>
    public (int ExitCode, string Output) Wait(TimeSpan bound)
    {
        if (!_p.WaitForExit(bound))
        {
            Kill();
            throw new TimeoutException($"the sample did not finish within {bound}:\n{Output}");
        }
        _p.WaitForExit(); // drains the redirected streams
        return (_p.ExitCode, Output);
    }

    private void Kill()
    {
        try
        {
            if (!_p.HasExited) _p.Kill(entireProcessTree: true);
            _p.WaitForExit(10_000);
        }
        catch (InvalidOperationException)
        {
        }
    }

    /// <summary>Kills the process if it still runs.</summary>
    public void Dispose()
    {
        Kill();
        _p.Dispose();
    }
}
