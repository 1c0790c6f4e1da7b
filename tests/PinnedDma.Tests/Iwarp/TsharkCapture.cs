using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Xunit;

namespace PinnedDma.Tests.Iwarp;

/// <summary>
/// A tshark capture on the loopback interface for one TCP port, as the iWARP wire tests use it: start and wait until
/// packets are really seen, stop with SIGINT so the file is finalized, then decode. Every wait is bounded; a missing
/// tshark fails the test.
/// </summary>
internal sealed class TsharkCapture : IDisposable
{
    public static readonly TimeSpan StepTimeout = TimeSpan.FromSeconds(20);
    private readonly Process _process;
    private readonly StringBuilder _stderr = new();
    private readonly Task _exited;
    private readonly DirectoryInfo _dir;
    private int _printed;

    private readonly TcpListener _probe = new(IPAddress.Loopback, 0);

    private TsharkCapture(string tshark, DirectoryInfo dir, int port)
    {
        _probe.Start();
        int probePort = ((IPEndPoint)_probe.LocalEndpoint).Port;
        Tshark = tshark;
        _dir = dir;
        File = Path.Combine(dir.FullName, "iwarp.pcapng");
        var psi = new ProcessStartInfo(tshark) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        // A 256 MiB kernel buffer: loopback frames are up to 64 KiB, and the default 2 MiB holds only a few dozen of them,
        // so a fast bulk transfer would lose frames from the capture (not from the wire).
        foreach (string a in new[] { "-i", "lo", "-B", "256", "-f", $"tcp port {port} or tcp port {probePort}", "-w", File, "-P", "-l" }) psi.ArgumentList.Add(a);
        _process = Process.Start(psi) ?? throw new InvalidOperationException("Could not start tshark.");
        _exited = _process.WaitForExitAsync();
    }

    public string Tshark { get; }
    public string File { get; }
    public string Errors { get { lock (_stderr) return _stderr.ToString(); } }

    public static string? FindOnPath(string name)
    {
        foreach (string dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries))
        {
            string candidate = Path.Combine(dir, name);
            if (System.IO.File.Exists(candidate)) return candidate;
        }
        return null;
    }

    public static (int ExitCode, string StdOut, string StdErr) Run(string file, IEnumerable<string> args, TimeSpan timeout)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi) ?? throw new InvalidOperationException($"Could not start {file}");
        Task<string> so = p.StandardOutput.ReadToEndAsync();
        Task<string> se = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeout))
        {
            p.Kill(entireProcessTree: true);
            p.WaitForExit(5000);
            throw new TimeoutException($"{file} {string.Join(' ', args)} did not finish within {timeout}.");
        }
        p.WaitForExit();
        return (p.ExitCode, so.Result, se.Result);
    }

    /// <summary>
    /// Starts capturing TCP port <paramref name="port"/> on lo and returns once tshark has reported a captured probe
    /// packet (payload-free throwaway connections to a port of its own, also in the capture filter).
    /// </summary>
    public static async Task<TsharkCapture> StartAsync(int port)
    {
        string? tshark = FindOnPath("tshark");
        Assert.True(tshark is not null, "tshark is required for this test but was not found on PATH (install the 'tshark' package).");
        var cap = new TsharkCapture(tshark!, Directory.CreateTempSubdirectory("iwarp-wire-"), port);
        try
        {
            await cap.WaitUntilCapturingAsync();
        }
        catch
        {
            cap.Dispose();
            throw;
        }
        return cap;
    }

    private async Task WaitUntilCapturingAsync()
    {
        var cap = this;
        var capturing = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        cap._process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            lock (cap._stderr) cap._stderr.AppendLine(e.Data);
            if (e.Data.Contains("Capturing on", StringComparison.Ordinal)) capturing.TrySetResult();
        };
        cap._process.OutputDataReceived += (_, e) => { if (!string.IsNullOrWhiteSpace(e.Data)) Interlocked.Increment(ref cap._printed); };
        cap._process.BeginErrorReadLine();
        cap._process.BeginOutputReadLine();
        Task first = await Task.WhenAny(capturing.Task, cap._exited, Task.Delay(TimeSpan.FromSeconds(30)));
        Assert.True(first == capturing.Task, $"tshark did not start capturing: {cap.Errors}");
        // "Capturing on" can precede the moment packets are really seen: probe until tshark prints one.
        for (int attempt = 0; attempt < 50 && Volatile.Read(ref cap._printed) == 0; attempt++)
        {
            using (var probe = new TcpClient(AddressFamily.InterNetwork))
            {
                Task<TcpClient> accepted = cap._probe.AcceptTcpClientAsync();
                await probe.ConnectAsync(IPAddress.Loopback, ((IPEndPoint)cap._probe.LocalEndpoint).Port).WaitAsync(StepTimeout);
                using TcpClient server = await accepted.WaitAsync(StepTimeout);
            }
            await Task.Delay(200);
        }
        Assert.True(Volatile.Read(ref cap._printed) > 0, $"tshark never reported a captured probe packet: {cap.Errors}");
    }

    /// <summary>Stops the capture with SIGINT (bounded) so the file is complete.</summary>
    public async Task StopAsync()
    {
        await Task.Delay(500);
        (int rc, _, string err) = Run("kill", new[] { "-INT", _process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture) }, StepTimeout);
        Assert.True(rc == 0, $"kill -INT failed: {err}");
        await _exited.WaitAsync(StepTimeout);
        Assert.True(System.IO.File.Exists(File), $"no capture file; tshark said: {Errors}");
    }

    /// <summary>Runs tshark over the capture file with extra arguments.</summary>
    public string Read(params string[] args)
    {
        // MPA is found by a heuristic (the request frame's key); without heuristics first, an ephemeral port that
        // happens to be registered for another protocol (44322 is PCP's pmproxy) hands the stream to that dissector.
        (int rc, string stdout, string err) = Run(Tshark, new[] { "-r", File, "-n", "-o", "tcp.try_heuristic_first:TRUE" }.Concat(args), StepTimeout);
        Assert.True(rc == 0, $"tshark -r failed ({rc}): {err}");
        return stdout;
    }

    public void Dispose()
    {
        _probe.Stop();
        _probe.Dispose();
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
            _process.WaitForExit(5000);
        }
        _process.Dispose();
        try { _dir.Delete(recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}
