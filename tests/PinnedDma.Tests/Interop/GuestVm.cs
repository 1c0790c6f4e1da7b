using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace PinnedDma.Tests.Interop;

/// <summary>
/// A Debian 12 guest under qemu (TCG) with the kernel's soft iWARP driver (siw0 on eth0) and rdma-core's tools, built
/// by tests/guest/build-guest.sh. User-mode networking: the guest is 10.0.2.15 and reaches this host's 127.0.0.1 as
/// 10.0.2.2; each guest port in <see cref="ForwardedPorts"/> is forwarded from an ephemeral port on 127.0.0.1 only.
/// Commands run through the guest's command channel (pdma-cmd on guest port 7000): one TCP connection per command,
/// every wait bounded. Dispose kills qemu.
/// </summary>
public sealed class GuestVm : IDisposable
{
    /// <summary>The guest's address on its link (slirp's default).</summary>
    public const string GuestAddress = "10.0.2.15";

    /// <summary>This host as the guest sees it.</summary>
    public const string HostAddress = "10.0.2.2";

    /// <summary>Guest ports forwarded from 127.0.0.1: the command channel, rping's, perftest's.</summary>
    public static readonly int[] ForwardedPorts = { 7000, 7174, 7175, 18515 };

    private readonly Process _qemu;
    private readonly Dictionary<int, int> _hostPort = new();
    private readonly string _dir;
    private int _disposed;

    /// <summary>Console output so far (the guest kernel's and pdma-init's messages).</summary>
    public string Console => File.Exists(ConsolePath) ? File.ReadAllText(ConsolePath) : "";

    /// <summary>Where the serial console is written.</summary>
    public string ConsolePath { get; }

    /// <summary>How long the boot took, to the guest's "READY".</summary>
    public TimeSpan BootTime { get; private set; }

    /// <summary>The guest kernel release (uname -r).</summary>
    public string KernelRelease { get; private set; } = "";

    private GuestVm(Process qemu, string dir, Dictionary<int, int> ports)
    {
        _qemu = qemu;
        _dir = dir;
        _hostPort = ports;
        ConsolePath = Path.Combine(dir, "console.log");
    }

    /// <summary>The port on 127.0.0.1 that reaches <paramref name="guestPort"/> in the guest.</summary>
    public int HostPort(int guestPort) => _hostPort[guestPort];

    /// <summary>Boots the guest from <paramref name="cache"/> and waits (at most <paramref name="bootTimeout"/>) until its command channel answers.</summary>
    public static GuestVm Boot(string cache, TimeSpan bootTimeout)
    {
        foreach (var f in new[] { "vmlinuz", "initrd.img", "rootfs.img" })
            if (!File.Exists(Path.Combine(cache, f))) throw new InvalidOperationException($"guest cache {cache} has no {f}: run tests/guest/build-guest.sh");
        string dir = Directory.CreateTempSubdirectory("pdma-guest-").FullName;
        var ports = new Dictionary<int, int>();
        foreach (int p in ForwardedPorts) ports[p] = FreePort(ports.Values);
        var psi = new ProcessStartInfo("qemu-system-x86_64") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true };
        string fwd = string.Join(",", ports.Select(kv => $"hostfwd=tcp:127.0.0.1:{kv.Value}-:{kv.Key}"));
        foreach (var a in new[]
        {
            "-accel", "tcg", "-m", "1024", "-smp", "2", "-no-reboot", "-display", "none", "-monitor", "none",
            "-kernel", Path.Combine(cache, "vmlinuz"), "-initrd", Path.Combine(cache, "initrd.img"),
            "-append", "root=/dev/vda rw console=ttyS0 net.ifnames=0 init=/sbin/pdma-init panic=-1 quiet",
            // snapshot: the cached image is never written, and several guests may boot from it at once.
            "-drive", $"file={Path.Combine(cache, "rootfs.img")},format=raw,if=virtio,snapshot=on",
            "-netdev", $"user,id=n0,{fwd}", "-device", "virtio-net-pci,netdev=n0",
            "-serial", $"file:{Path.Combine(dir, "console.log")}",
        }) psi.ArgumentList.Add(a);
        var sw = Stopwatch.StartNew();
        var qemu = Process.Start(psi) ?? throw new InvalidOperationException("qemu-system-x86_64 did not start");
        var vm = new GuestVm(qemu, dir, ports);
        try
        {
            var qemuErr = qemu.StandardError.ReadToEndAsync();
            _ = qemu.StandardOutput.ReadToEndAsync();
            long deadline = Environment.TickCount64 + (long)bootTimeout.TotalMilliseconds;
            while (!vm.Console.Contains("pdma-init: READY", StringComparison.Ordinal))
            {
                if (qemu.HasExited)
                    throw new InvalidOperationException($"qemu exited ({qemu.ExitCode}) during boot: {qemuErr.GetAwaiter().GetResult()}\n{vm.Console}");
                if (Environment.TickCount64 > deadline)
                    throw new TimeoutException($"guest not ready within {bootTimeout}:\n{vm.Console}");
                Thread.Sleep(250);
            }
            // socat is exec'd right after READY: until it listens, slirp accepts and then resets the connection.
            while (true)
            {
                string failure;
                try
                {
                    var r = vm.Run("uname -r", TimeSpan.FromSeconds(20));
                    if (r.ExitCode == 0) { vm.KernelRelease = r.Output.Trim(); break; }
                    failure = r.Output;
                }
                catch (Exception e) when (e is IOException or SocketException or TimeoutException or InvalidOperationException)
                {
                    failure = e.Message;
                }
                if (Environment.TickCount64 > deadline)
                    throw new TimeoutException($"guest command channel does not answer within {bootTimeout}: {failure}\n{vm.Console}");
                Thread.Sleep(500);
            }
            vm.BootTime = sw.Elapsed;
            return vm;
        }
        catch
        {
            vm.Dispose();
            throw;
        }
    }

    /// <summary>A free port on 127.0.0.1 for a server of ours that the guest connects to (as 10.0.2.2).</summary>
    public int FreeHostPort() => FreePort(_hostPort.Values);

    private static int FreePort(IEnumerable<int> taken)
    {
        for (int i = 0; i < 50; i++)
        {
            using var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            s.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            int p = ((IPEndPoint)s.LocalEndPoint!).Port;
            if (!taken.Contains(p)) return p;
        }
        throw new InvalidOperationException("no free port");
    }

    /// <summary>Runs a shell command in the guest and waits for it (killed in the guest after <paramref name="timeout"/>).</summary>
    public GuestResult Run(string command, TimeSpan timeout)
    {
        using var c = Start(command, timeout, 0);
        return c.Wait();
    }

    /// <summary>
    /// Starts a shell command in the guest; with <paramref name="awaitPort"/> not 0, returns once something listens on
    /// that guest TCP port (or throws if nothing does within 60 s). The guest kills the command after <paramref name="timeout"/>.
    /// </summary>
    public GuestCommand Start(string command, TimeSpan timeout, int awaitPort)
    {
        if (command.Contains('\n', StringComparison.Ordinal)) throw new ArgumentException("one line", nameof(command));
        var client = new TcpClient();
        try
        {
            client.Connect(IPAddress.Loopback, HostPort(7000));
            var stream = client.GetStream();
            // The guest's bound plus margin for the channel itself.
            stream.ReadTimeout = (int)(timeout + TimeSpan.FromSeconds(60)).TotalMilliseconds;
            var line = Encoding.UTF8.GetBytes($"{(int)Math.Ceiling(timeout.TotalSeconds)} {awaitPort} {command}\n");
            stream.Write(line);
            var cmd = new GuestCommand(client, command);
            string? first = cmd.ReadLine();
            if (first != "STARTED") throw new InvalidOperationException($"guest did not start '{command}': {first}\n{Console}");
            if (awaitPort != 0)
            {
                string? ready = cmd.ReadLine();
                if (ready != "LISTENING")
                    throw new InvalidOperationException($"nothing listens on guest port {awaitPort} after '{command}': {ready}\n{cmd.Wait().Output}");
            }
            return cmd;
        }
        catch
        {
            client.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Sets every test knob of the guest's siw (module parameters; see build-guest.sh), so a case never depends on
    /// the one before: the MPA revision siw requests, whether it requires CRC, whether it requests peer-to-peer mode,
    /// and the RTR types its P2P request offers (1 RDMA Write, 2 RDMA Read, 3 both).
    /// </summary>
    public void ConfigureSiw(int mpaVersion = 2, bool crcRequired = false, bool peerToPeer = false, int rtrTypes = 3)
    {
        // A case starts from a quiet guest: a tool an earlier case left behind (a server nobody connected to, a client
        // that lost its peer) would still hold its rdma_cm id and siw endpoint while this case runs.
        var r = Run("tools='rping ib_write_bw ib_read_bw ib_send_bw'; for t in $tools; do pkill -x $t; done; for i in 1 2 3 4 5 6 7 8 9 10; do"
            + " left=0; for t in $tools; do pgrep -x $t >/dev/null 2>&1 && left=1; done; [ $left = 0 ] && break; sleep 0.5; done;"
            + $" cd /sys/module/siw/parameters && echo {mpaVersion} > mpa_version && echo {(crcRequired ? 1 : 0)} > mpa_crc_required"
            + $" && echo {(peerToPeer ? 1 : 0)} > peer_to_peer && echo {rtrTypes} > rtr_types && cat mpa_version mpa_crc_required peer_to_peer rtr_types | tr '\\n' ' '",
            TimeSpan.FromSeconds(20));
        string want = $"{mpaVersion} {(crcRequired ? 'Y' : 'N')} {(peerToPeer ? 'Y' : 'N')} {rtrTypes}";
        if (r.ExitCode != 0 || r.Output.Trim() != want)
            throw new InvalidOperationException($"siw knobs not set (want '{want}'): exit {r.ExitCode}: {r.Output}");
    }

    /// <summary>
    /// The guest kernel's oops or BUG report since boot with the lines after it, or "" when there is none (read
    /// from dmesg; bounded like every command).
    /// </summary>
    public string KernelOops()
    {
        var r = Run("dmesg | grep -E -A24 'cut here|kernel BUG|BUG:|Oops:|general protection fault' | head -60", TimeSpan.FromSeconds(30));
        return r.ExitCode == 0 ? r.Output.Trim() : $"dmesg failed (exit {r.ExitCode}): {r.Output}";
    }

    /// <summary>Kills qemu and deletes its working directory.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        try
        {
            if (!_qemu.HasExited) _qemu.Kill(entireProcessTree: true);
            _qemu.WaitForExit(10_000);
        }
        catch (InvalidOperationException)
        {
        }
        _qemu.Dispose();
        try { Directory.Delete(_dir, true); } catch (IOException) { }
    }
}

/// <summary>A command's combined output and exit code (124: the guest's timeout killed it).</summary>
public readonly record struct GuestResult(int ExitCode, string Output);

/// <summary>A command running in the guest.</summary>
public sealed class GuestCommand : IDisposable
{
    private readonly TcpClient _client;
    private readonly StreamReader _reader;
    private readonly string _command;
    private GuestResult? _result;

    internal GuestCommand(TcpClient client, string command)
    {
        _client = client;
        _command = command;
        _reader = new StreamReader(client.GetStream(), Encoding.UTF8);
    }

    internal string? ReadLine()
    {
        try
        {
            return _reader.ReadLine();
        }
        catch (IOException e)
        {
            throw new TimeoutException($"guest command '{_command}' did not answer in time", e);
        }
    }

    /// <summary>Waits for the command to end (bounded by its guest-side timeout plus a margin).</summary>
    public GuestResult Wait()
    {
        if (_result is { } r) return r;
        var output = new StringBuilder();
        while (ReadLine() is { } line)
        {
            // Output that does not end with a newline runs into the status line.
            int at = line.LastIndexOf("PDMA-EXIT ", StringComparison.Ordinal);
            if (at >= 0 && int.TryParse(line.AsSpan(at + 10), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int code))
            {
                if (at > 0) output.Append(line, 0, at).Append('\n');
                _result = new GuestResult(code, output.ToString());
                return _result.Value;
            }
            output.Append(line).Append('\n');
        }
        throw new InvalidOperationException($"guest command '{_command}' ended without an exit code:\n{output}");
    }

    /// <summary>Closes the channel (the guest's timeout ends the command if it still runs).</summary>
    public void Dispose()
    {
        _reader.Dispose();
        _client.Dispose();
    }
}
