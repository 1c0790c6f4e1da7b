using System.Diagnostics;
using System.Text;

namespace PinnedDma.Tests.Interop;

/// <summary>samples/Rping as a real child process (built by the solution build), every wait bounded.</summary>
public sealed class RpingProcess : IDisposable
{
    private readonly Process _p;
    private readonly StringBuilder _out = new();
    private readonly TaskCompletionSource _listening = new(TaskCreationOptions.RunContinuationsAsynchronously);

    private RpingProcess(Process p)
    {
        _p = p;
        p.OutputDataReceived += (_, e) => Append(e.Data);
        p.ErrorDataReceived += (_, e) =>
        {
            Append(e.Data);
            if (e.Data?.StartsWith("rping: listening on", StringComparison.Ordinal) == true) _listening.TrySetResult();
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

    /// <summary>Starts samples/Rping with <paramref name="args"/>.</summary>
    public static RpingProcess Start(string root, params string[] args)
    {
        var baseDir = new DirectoryInfo(AppContext.BaseDirectory);
        string dll = Path.Combine(root, "samples", "Rping", "bin", baseDir.Parent!.Name, baseDir.Name, "Rping.dll");
        if (!File.Exists(dll)) throw new InvalidOperationException($"{dll} is not built (the solution build builds the samples)");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(dll);
        foreach (var a in args) psi.ArgumentList.Add(a);
        return new RpingProcess(Process.Start(psi) ?? throw new InvalidOperationException("dotnet did not start"));
    }

    /// <summary>Waits until a server prints that it listens.</summary>
    public void WaitListening(TimeSpan bound)
    {
        if (!_listening.Task.Wait(bound)) throw new TimeoutException($"Rping server not listening within {bound}:\n{Output}");
    }

    /// <summary>Waits for the exit; kills the process and throws after <paramref name="bound"/>.</summary>
    public (int ExitCode, string Output) Wait(TimeSpan bound)
    {
        if (!_p.WaitForExit(bound))
        {
            Kill();
            throw new TimeoutException($"Rping did not finish within {bound}:\n{Output}");
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
