using System.Diagnostics;
using System.Globalization;

namespace PinnedDma.Samples.ConnectionScale;

/// <summary>A <see cref="ScaleServer"/> in a child process (this assembly run with <c>serve</c>), driven over its standard input and output.</summary>
internal sealed class ServerProcess : IDisposable
{
    private static readonly TimeSpan ReplyBound = TimeSpan.FromSeconds(60);
    private readonly Process _process;

    public ServerProcess(ScaleOptions options)
    {
        var psi = new ProcessStartInfo("dotnet")
        {
            RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = false, UseShellExecute = false,
        };
        psi.ArgumentList.Add(typeof(ServerProcess).Assembly.Location);
        psi.ArgumentList.Add("serve");
        psi.ArgumentList.Add(options.Transport);
        psi.ArgumentList.Add(options.Connections.ToString(CultureInfo.InvariantCulture));
        psi.ArgumentList.Add("--server");
        psi.ArgumentList.Add(options.SocketServer);
        psi.ArgumentList.Add("--io-threads");
        psi.ArgumentList.Add(options.IoThreads.ToString(CultureInfo.InvariantCulture));
        _process = Process.Start(psi) ?? throw new InvalidOperationException("could not start the server process");
        var hello = Values(Expect("listening"));
        Port = int.Parse(hello["port"], CultureInfo.InvariantCulture);
        Start = new ProcessStats(Int(hello["threads"]), long.Parse(hello["rss_kb"], CultureInfo.InvariantCulture), Int(hello["pool_threads"]));
    }

    public int Port { get; }

    public ProcessStats Start { get; }

    /// <summary>Current figures, peak figures and connections accepted.</summary>
    public (ProcessStats Now, ProcessStats Peak, int Connections) Stats()
    {
        var v = Values(Command("stats", "stats"));
        return (new ProcessStats(Int(v["threads"]), long.Parse(v["rss_kb"], CultureInfo.InvariantCulture), Int(v["pool_threads"])),
            new ProcessStats(Int(v["peak_threads"]), long.Parse(v["peak_rss_kb"], CultureInfo.InvariantCulture)), Int(v["connections"]));
    }

    public void ResetPeak() => Command("peak-reset", "ok");

    public int Verify(int ops) => Int(Command($"verify {ops}", "verified").Split(' ')[1]);

    public int Drop() => Int(Values(Command("drop", "dropped"))["closed_by_peer"]);

    private static int Int(string s) => int.Parse(s, CultureInfo.InvariantCulture);

    private string Command(string command, string reply)
    {
        _process.StandardInput.WriteLine(command);
        _process.StandardInput.Flush();
        return Expect(reply);
    }

    private string Expect(string prefix)
    {
        var read = _process.StandardOutput.ReadLineAsync();
        if (!read.Wait(ReplyBound)) throw new TimeoutException($"the server process did not answer '{prefix}' within {ReplyBound}");
        var line = read.Result ?? throw new InvalidOperationException($"the server process exited (code {(_process.HasExited ? _process.ExitCode : -1)}) before '{prefix}'");
        if (!line.StartsWith(prefix, StringComparison.Ordinal)) throw new InvalidOperationException($"the server process answered '{line}', expected '{prefix}'");
        return line;
    }

    private static Dictionary<string, string> Values(string line) => ScaleResult.ParseLine(line);

    public void Dispose()
    {
        try
        {
            _process.StandardInput.WriteLine("quit");
            _process.StandardInput.Close();
        }
        catch (IOException)
        {
        }
        if (!_process.WaitForExit(TimeSpan.FromSeconds(30))) _process.Kill(entireProcessTree: true);
        _process.WaitForExit();
        _process.Dispose();
    }
}
