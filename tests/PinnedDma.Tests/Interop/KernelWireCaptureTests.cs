using System.Globalization;
using PinnedDma.Tests.Iwarp;
using Xunit;
using Xunit.Abstractions;

namespace PinnedDma.Tests.Interop;

/// <summary>
/// Sessions between our side and the kernel's siw, captured with tshark on 127.0.0.1 (between our process and qemu's
/// user-mode network stack, which carries the TCP byte stream unchanged) and decoded by Wireshark's own iWARP
/// dissectors: every frame after the MPA request and reply decodes as DDP/RDMAP (or is the leading part of an FPDU
/// that Wireshark reassembles), nothing is malformed, and with CRC
/// every FPDU's CRC checks good, in both directions and with CRC on and off.
/// </summary>
[Collection(GuestCollection.Name)]
[Trait("Category", "Guest")]
public sealed class KernelWireCaptureTests
{
    private const int Count = 3;
    private const int Size = 20000;
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(120);
    private readonly GuestFixture _guest;
    private readonly ITestOutputHelper _log;

    public KernelWireCaptureTests(GuestFixture guest, ITestOutputHelper log)
    {
        _guest = guest;
        _log = log;
    }

    [Theory]
    [InlineData(true, true)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    [InlineData(false, false)]
    public async Task Tshark_decodes_a_session_with_the_kernel(bool ourClient, bool crc)
    {
        var vm = _guest.Healthy();
        vm.ConfigureSiw();
        string size = Size.ToString(CultureInfo.InvariantCulture), count = Count.ToString(CultureInfo.InvariantCulture);
        var transport = crc ? Array.Empty<string>() : new[] { "--no-crc" };
        int port = ourClient ? vm.HostPort(7174) : vm.FreeHostPort();
        using var capture = await TsharkCapture.StartAsync(port);
        GuestResult theirs;
        int code;
        string ours;
        if (ourClient)
        {
            using var server = vm.Start($"rping -s -v -a {GuestVm.GuestAddress} -p 7174 -S {size}", Bound, awaitPort: 7174);
            using var client = SampleProcess.Start(_guest.Root, "Rping", new[] { "-c", "-v", "-V", "-a", "127.0.0.1", "-p", port.ToString(CultureInfo.InvariantCulture),
                "-S", size, "-C", count }.Concat(transport).ToArray());
            (code, ours) = client.Wait(Bound);
            theirs = server.Wait();
        }
        else
        {
            using var server = SampleProcess.Start(_guest.Root, "Rping", new[] { "-s", "-v", "-a", "127.0.0.1", "-p", port.ToString(CultureInfo.InvariantCulture),
                "-S", size }.Concat(transport).ToArray());
            server.WaitListening(Bound);
            theirs = vm.Run($"rping -c -v -V -a {GuestVm.HostAddress} -p {port} -S {size} -C {count}", Bound);
            (code, ours) = server.Wait(Bound);
        }
        await capture.StopAsync();
        _guest.AssertKernelClean(vm);
        Assert.True(code == 0 && theirs.ExitCode == 0, $"the session failed: ours ({code}):\n{ours}\nguest ({theirs.ExitCode}):\n{theirs.Output}");

        string fields = capture.Read("-Y", "tcp.len > 0 && !tcp.analysis.retransmission", "-T", "fields", "-E", "separator=|",
            "-e", "frame.number", "-e", "_ws.col.Protocol", "-e", "iwarp_mpa.crc_check", "-e", "iwarp_rdma.opcode", "-e", "_ws.col.Info");
        string problems = capture.Read("-Y", "_ws.malformed || _ws.expert.severity >= error || iwarp_mpa.bad_length", "-T", "fields",
            "-e", "frame.number", "-e", "_ws.col.Info");
        _log.WriteLine($"{fields}\nproblems:\n{problems}");
        Assert.True(problems.Trim().Length == 0, $"tshark found malformed or suspect frames:\n{problems}\nall frames:\n{fields}");
        string[][] rows = fields.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.Split('|')).ToArray();
        Assert.True(rows.Length >= 4, $"expected the MPA request, the reply and data frames:\n{fields}");
        Assert.Contains("MPA Request Frame", rows[0][4], StringComparison.Ordinal);
        Assert.Contains("MPA Reply Frame", rows[1][4], StringComparison.Ordinal);
        int fpdus = 0;
        foreach (var row in rows.Skip(2))
        {
            // qemu's network stack re-segments the guest's stream onto 127.0.0.1, so an FPDU may span frames:
            // Wireshark shows the leading parts as TCP continuations and decodes the FPDU in its last frame.
            if (row[1] == "TCP" && row[4].Contains("TCP segment of a reassembled PDU", StringComparison.Ordinal)) continue;
            Assert.True(row[1] == "DDP/RDMA", $"frame {row[0]} decoded as '{row[1]}', expected DDP/RDMA:\n{fields}");
            string[] ops = row[3].Split(',', StringSplitOptions.RemoveEmptyEntries);
            string[] crcs = row[2].Split(',', StringSplitOptions.RemoveEmptyEntries);
            if (crc) Assert.True(crcs.Length == ops.Length, $"frame {row[0]}: {ops.Length} RDMAP headers but {crcs.Length} CRC checks:\n{fields}");
            fpdus += ops.Length;
        }
        string verbose = capture.Read("-Y", "iwarp_mpa", "-V");
        Assert.DoesNotContain("Bad CRC", verbose, StringComparison.OrdinalIgnoreCase);
        int good = verbose.Split("Good CRC", StringSplitOptions.None).Length - 1;
        if (crc) Assert.True(good == fpdus, $"{fpdus} FPDUs but {good} with a good CRC:\n{fields}");
        // rping moves each ping by Send, RDMA Read and RDMA Write: at least one FPDU per operation and direction.
        Assert.True(fpdus >= Count * 4, $"{fpdus} FPDUs decoded for {Count} pings:\n{fields}");
    }
}
