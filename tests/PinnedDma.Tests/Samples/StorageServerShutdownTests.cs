using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Runtime.InteropServices;
using PinnedDma.Storage;
using PinnedDma.Transports.Iwarp;
using PinnedDma.Verbs;
using Xunit;
using Xunit.Abstractions;

namespace PinnedDma.Tests.Samples;

/// <summary>
/// The StorageServer sample as a real child process on a named volume, a client RDMA-writing into it over iWARP, and
/// SIGTERM sent while the client's traffic is going on: the server must exit 0 having shut down in order, its volume
/// must check clean, and every write the client saw acknowledged (read back through the server) must be in the file.
/// </summary>
[Trait("Category", "Slow")]
public sealed partial class StorageServerShutdownTests(ITestOutputHelper log)
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(60);
    private const int Slot = 64;
    private const int Slots = 8192; // the lower half of the client's 1 MiB region: the server's trims keep it

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int Kill(int pid, int signal);

    private const int SigTerm = 15;

    private static void Fill(Span<byte> slot, int index)
    {
        BinaryPrimitives.WriteInt32LittleEndian(slot, index);
        for (int i = 4; i < slot.Length; i++) slot[i] = (byte)(index * 31 + i);
    }

    [Fact]
    public async Task SigtermShutsDownCleanlyAndLosesNoAcknowledgedWrite()
    {
        var dir = Directory.CreateTempSubdirectory("storage-server-test-").FullName;
        string volumePath = Path.Combine(dir, "volume.img");
        try
        {
            var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            psi.ArgumentList.Add(SamplesSmokeTests.SampleDll("StorageServer"));
            psi.ArgumentList.Add("server");
            psi.ArgumentList.Add("0");
            psi.ArgumentList.Add(volumePath);
            using var server = Process.Start(psi)!;
            var output = new System.Text.StringBuilder();
            var serving = new TaskCompletionSource<IPEndPoint>(TaskCreationOptions.RunContinuationsAsynchronously);
            server.OutputDataReceived += (_, e) =>
            {
                if (e.Data is null) return;
                lock (output) output.AppendLine(e.Data);
                const string Prefix = "serving on ";
                if (e.Data.StartsWith(Prefix, StringComparison.Ordinal))
                    serving.TrySetResult(IPEndPoint.Parse(e.Data[Prefix.Length..e.Data.IndexOf(',', StringComparison.Ordinal)]));
            };
            server.ErrorDataReceived += (_, e) =>
            {
                if (e.Data is not null) lock (output) output.AppendLine(e.Data);
            };
            server.BeginOutputReadLine();
            server.BeginErrorReadLine();
            try
            {
                var endpoint = await serving.Task.WaitAsync(Bound);
                var acked = new bool[Slots];
                using var clientStop = new CancellationTokenSource();
                using var enough = new SemaphoreSlim(0);
                var client = Task.Run(() => ClientAsync(endpoint, acked, enough, clientStop.Token));
                // SIGTERM once some writes are acknowledged, with the client still writing.
                Assert.True(await enough.WaitAsync(Bound), "the client got no write acknowledged");
                Assert.Equal(0, Kill(server.Id, SigTerm));
                using (var exit = new CancellationTokenSource(Bound)) await server.WaitForExitAsync(exit.Token);
                server.WaitForExit(); // the output is read to its end
                string text;
                lock (output) text = output.ToString();
                Assert.True(server.ExitCode == 0, $"exit code {server.ExitCode}:\n{text}");
                Assert.Contains("fsck clean", text);
                clientStop.Cancel();
                int ackedCount = await client.WaitAsync(Bound);
                Assert.True(ackedCount > 0);

                var report = Volume.Check(volumePath);
                Assert.True(report.IsClean, report.ToString());
                using var volume = Volume.Open(volumePath);
                var file = volume.OpenFile("client-1");
                var expected = new byte[Slot];
                var actual = new byte[Slot];
                int checkedSlots = 0;
                for (int i = 0; i < Slots; i++)
                {
                    if (!Volatile.Read(ref acked[i])) continue;
                    Fill(expected, i);
                    Assert.Equal(Slot, file.Read((long)i * Slot, actual));
                    Assert.True(expected.AsSpan().SequenceEqual(actual), $"slot {i} was acknowledged to the client but is not in the file");
                    checkedSlots++;
                }
                Assert.Equal(ackedCount, checkedSlots);
                log.WriteLine($"{checkedSlots} acknowledged writes found in the volume after SIGTERM\n{text}");
            }
            finally
            {
                if (!server.HasExited) server.Kill(entireProcessTree: true);
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>
    /// Writes slot after slot (each once), reading each back through the server: a slot is acknowledged when the read
    /// returns it. Reconnects after a stale key; stops when told to or when the server is gone. Returns the count.
    /// </summary>
    private static async Task<int> ClientAsync(IPEndPoint server, bool[] acked, SemaphoreSlim enough, CancellationToken stop)
    {
        using var nic = new RdmaDevice("shutdown-client");
        var pd = nic.AllocatePd();
        var cq = nic.CreateCompletionQueue(64);
        var buf = pd.RegisterBuffer(3 * 4096, AccessFlags.LocalWrite);
        var wc = new WorkCompletion[8];
        var hello = new byte[4];
        BinaryPrimitives.WriteInt32LittleEndian(hello, 1);
        int next = 0, count = 0, failedConnects = 0;
        var sw = Stopwatch.StartNew();
        while (next < Slots && !stop.IsCancellationRequested && sw.Elapsed < Bound && failedConnects < 50)
        {
            var qp = pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = cq });
            try
            {
                qp.Modify(new QpAttributes { State = QpState.Init });
                qp.PostRecv(new RecvWorkRequest(100, new ScatterGatherElement(buf.Address + 8192, 16, buf.LKey)));
                ReadOnlyMemory<byte> key;
                try
                {
                    key = await IwarpConnector.ConnectAsync(qp, server, hello).WaitAsync(TimeSpan.FromSeconds(10), stop);
                }
                catch (OperationCanceledException) when (stop.IsCancellationRequested)
                {
                    break;
                }
                catch (Exception e) when (e is PinnedDmaException or System.Net.Sockets.SocketException or TimeoutException)
                {
                    failedConnects++;
                    await Task.Delay(20, CancellationToken.None);
                    continue;
                }
                uint rkey = BinaryPrimitives.ReadUInt32LittleEndian(key.Span);
                ulong addr = BinaryPrimitives.ReadUInt64LittleEndian(key.Span[4..]);
                bool broken = false;
                while (!broken && next < Slots && !stop.IsCancellationRequested)
                {
                    int slot = next++; // never written twice: a failed write may have landed in part
                    Fill(buf.GetBufferSpan()[..Slot], slot);
                    ulong remote = addr + (ulong)slot * Slot;
                    qp.PostSend(new SendWorkRequest { WrId = 1, Opcode = WrOpcode.RdmaWrite, Local = new(buf.Address, Slot, buf.LKey), RemoteAddress = remote, RKey = rkey });
                    qp.PostSend(new SendWorkRequest { WrId = 2, Opcode = WrOpcode.RdmaRead, Flags = SendFlags.Signaled, Local = new(buf.Address + 4096, Slot, buf.LKey), RemoteAddress = remote, RKey = rkey });
                    bool done = false;
                    using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
                    while (!done)
                    {
                        try
                        {
                            await cq.WaitAsync(timeout.Token);
                        }
                        catch (OperationCanceledException)
                        {
                            broken = true;
                            break;
                        }
                        int n = cq.Poll(wc);
                        for (int i = 0; i < n; i++)
                        {
                            var c = wc[i];
                            if (c.Opcode == WcOpcode.Recv && c.Status == WcStatus.Success)
                            {
                                var msg = buf.GetBufferSpan().Slice(8192, 16);
                                rkey = BinaryPrimitives.ReadUInt32LittleEndian(msg);
                                addr = BinaryPrimitives.ReadUInt64LittleEndian(msg[4..]);
                                qp.PostRecv(new RecvWorkRequest(100, new ScatterGatherElement(buf.Address + 8192, 16, buf.LKey)));
                            }
                            else if (c.WrId == 2)
                            {
                                done = true;
                                if (c.Status == WcStatus.Success && buf.GetBufferSpan().Slice(4096, Slot).SequenceEqual(buf.GetBufferSpan()[..Slot]))
                                {
                                    Volatile.Write(ref acked[slot], true);
                                    if (++count == 100) enough.Release();
                                }
                                else
                                {
                                    broken = true;
                                }
                            }
                            else if (c.Status != WcStatus.Success && c.Opcode != WcOpcode.Recv)
                            {
                                done = broken = true;
                            }
                        }
                    }
                }
            }
            finally
            {
                qp.Dispose();
                while (cq.Poll(wc) > 0)
                {
                }
            }
        }
        if (count < 100) enough.Release(); // the test then reports what it got
        return count;
    }
}
