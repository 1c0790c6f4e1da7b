using System.Buffers;
using System.Diagnostics;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using System.Text;
using PinnedDma.Transports.Iwarp.Internal;
using Xunit;
using Xunit.Abstractions;

namespace PinnedDma.Tests.Iwarp;

/// <summary>
/// Sends real MPA/DDP/RDMAP traffic over a loopback TCP connection while tshark captures it, then requires Wireshark's
/// iwarp_mpa / iwarp_ddp_rdmap dissectors to decode every data frame without malformed-packet or bad-CRC findings.
/// </summary>
public class IwarpWireTests
{
    private static readonly TimeSpan StepTimeout = TimeSpan.FromSeconds(20);
    private readonly ITestOutputHelper _out;

    public IwarpWireTests(ITestOutputHelper output) => _out = output;

    private static string? FindOnPath(string name) => TsharkCapture.FindOnPath(name);

    private static (int ExitCode, string StdOut, string StdErr) Run(string file, IEnumerable<string> args, TimeSpan timeout) =>
        TsharkCapture.Run(file, args, timeout);

    private sealed record Received(DdpRdmapHeader Header, byte[] Payload, RdmaReadRequest ReadRequest, TerminateMessage Terminate);

    private static async Task<Received> ReadOneAsync(PipeReader reader, FpduDecoder decoder)
    {
        using var cts = new CancellationTokenSource(StepTimeout);
        for (int i = 0; i < 10_000; i++)
        {
            ReadResult r = await reader.ReadAsync(cts.Token);
            ReadOnlySequence<byte> buf = r.Buffer;
            ParseStatus s = decoder.TryParse(ref buf, out Fpdu f, out IwarpError e);
            if (s == ParseStatus.Frame)
            {
                var rec = new Received(f.Header, f.Payload.ToArray(), f.ReadRequest, f.Terminate);
                reader.AdvanceTo(buf.Start);
                return rec;
            }
            if (s == ParseStatus.Error) throw new IwarpProtocolException(e);
            if (r.IsCompleted) throw new EndOfStreamException("Peer closed before a whole FPDU arrived.");
            reader.AdvanceTo(buf.Start, buf.End);
        }
        throw new TimeoutException("Too many partial reads.");
    }

    [Trait("Category", "Slow")]
    [Fact]
    public async Task Tshark_decodes_mpa_setup_and_every_fpdu_kind()
    {
        string? tshark = FindOnPath("tshark");
        Assert.True(tshark is not null, "tshark is required for this test but was not found on PATH (install the 'tshark' package).");

        DirectoryInfo dir = Directory.CreateTempSubdirectory("iwarp-wire-");
        string capture = Path.Combine(dir.FullName, "iwarp.pcapng");
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        Process? cap = null;
        try
        {
            // 1. Start capturing and wait (bounded) until tshark reports it is capturing.
            var psi = new ProcessStartInfo(tshark!) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
            foreach (string a in new[] { "-i", "lo", "-f", $"tcp port {port}", "-w", capture, "-P", "-l" }) psi.ArgumentList.Add(a);
            cap = Process.Start(psi)!;
            var capErr = new StringBuilder();
            var capturing = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            cap.ErrorDataReceived += (_, e) =>
            {
                if (e.Data is null) return;
                lock (capErr) capErr.AppendLine(e.Data);
                if (e.Data.Contains("Capturing on", StringComparison.Ordinal)) capturing.TrySetResult();
            };
            int printed = 0;
            cap.OutputDataReceived += (_, e) => { if (!string.IsNullOrWhiteSpace(e.Data)) Interlocked.Increment(ref printed); };
            cap.BeginErrorReadLine();
            cap.BeginOutputReadLine();
            Task exited = cap.WaitForExitAsync();
            Task first = await Task.WhenAny(capturing.Task, exited, Task.Delay(TimeSpan.FromSeconds(30)));
            Assert.True(first == capturing.Task, $"tshark did not start capturing: {capErr}");

            // "Capturing on" can precede the moment packets are really seen: probe with throwaway connections
            // (no payload) until tshark prints a captured packet.
            for (int attempt = 0; attempt < 50 && Volatile.Read(ref printed) == 0; attempt++)
            {
                using (var probe = new TcpClient(AddressFamily.InterNetwork))
                {
                    Task<TcpClient> probeAccept = listener.AcceptTcpClientAsync();
                    await probe.ConnectAsync(IPAddress.Loopback, port).WaitAsync(StepTimeout);
                    using TcpClient accepted = await probeAccept.WaitAsync(StepTimeout);
                }
                await Task.Delay(200);
            }
            Assert.True(Volatile.Read(ref printed) > 0, $"tshark never reported a captured probe packet: {capErr}");

            // 2. Real TCP connection over loopback.
            using var client = new TcpClient(AddressFamily.InterNetwork) { NoDelay = true };
            Task<TcpClient> acceptTask = listener.AcceptTcpClientAsync();
            await client.ConnectAsync(IPAddress.Loopback, port).WaitAsync(StepTimeout);
            using TcpClient server = await acceptTask.WaitAsync(StepTimeout);
            server.NoDelay = true;
            NetworkStream cs = client.GetStream(), ss = server.GetStream();
            PipeReader cReader = PipeReader.Create(cs, new StreamPipeReaderOptions(leaveOpen: true));
            PipeWriter cWriter = PipeWriter.Create(cs, new StreamPipeWriterOptions(leaveOpen: true));
            PipeReader sReader = PipeReader.Create(ss, new StreamPipeReaderOptions(leaveOpen: true));
            PipeWriter sWriter = PipeWriter.Create(ss, new StreamPipeWriterOptions(leaveOpen: true));
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));

            // 3. MPA rev 1 setup with CRC.
            MpaFrame request = MpaNegotiation.BuildRequest(new MpaLocalSettings { Revision = 1, WantCrc = true, PrivateData = "pinned-dma"u8.ToArray() });
            request.WriteTo(cWriter);
            await cWriter.FlushAsync(cts.Token);
            MpaFrame gotRequest = await FpduPipeReader.ReadMpaFrameAsync(sReader, MpaFrameKind.Request, cts.Token);
            Assert.Equal(request, gotRequest);
            MpaResponderDecision decision = MpaNegotiation.Respond(gotRequest, new MpaLocalSettings { Revision = 1, WantCrc = true });
            Assert.True(decision.Accepted, decision.Error.ToString());
            decision.Reply.WriteTo(sWriter);
            await sWriter.FlushAsync(cts.Token);
            MpaFrame gotReply = await FpduPipeReader.ReadMpaFrameAsync(cReader, MpaFrameKind.Reply, cts.Token);
            Assert.Equal(IwarpError.None, MpaNegotiation.CompleteInitiator(request, gotReply, out MpaNegotiated negotiated));
            Assert.True(negotiated.Crc);

            var options = new FpduOptions { Crc = negotiated.Crc };
            var enc = new FpduEncoder(options);
            var dec = new FpduDecoder(options);

            // 4. One FPDU per TCP segment: send, then wait until the peer decoded it before sending the next.
            byte[] writeData = Enumerable.Range(0, 301).Select(i => (byte)i).ToArray();
            enc.WriteRdmaWrite(cWriter, 0x00ABCD01, 0x10000, last: true, writeData);
            await cWriter.FlushAsync(cts.Token);
            Received r1 = await ReadOneAsync(sReader, dec);
            Assert.Equal(RdmapOpcode.RdmaWrite, r1.Header.Opcode);
            Assert.Equal(writeData, r1.Payload);

            byte[] sendData = Encoding.ASCII.GetBytes("untagged send on queue 0, odd length");
            enc.WriteSend(cWriter, RdmapOpcode.Send, msn: 1, messageOffset: 0, last: true, sendData);
            await cWriter.FlushAsync(cts.Token);
            Received r2 = await ReadOneAsync(sReader, dec);
            Assert.Equal(RdmapOpcode.Send, r2.Header.Opcode);
            Assert.Equal(sendData, r2.Payload);

            var rr = new RdmaReadRequest(SinkSTag: 0x00C0FFEE, SinkTaggedOffset: 0x2000, MessageSize: 1000, SourceSTag: 0x00ABCD01, SourceTaggedOffset: 0x10000);
            enc.WriteReadRequest(cWriter, msn: 1, rr);
            await cWriter.FlushAsync(cts.Token);
            Received r3 = await ReadOneAsync(sReader, dec);
            Assert.Equal(RdmapOpcode.RdmaReadRequest, r3.Header.Opcode);
            Assert.Equal(rr, r3.ReadRequest);

            byte[] readData = Enumerable.Range(0, (int)rr.MessageSize).Select(i => (byte)(i * 7)).ToArray();
            enc.WriteReadResponse(sWriter, rr.SinkSTag, rr.SinkTaggedOffset, last: true, readData);
            await sWriter.FlushAsync(cts.Token);
            Received r4 = await ReadOneAsync(cReader, dec);
            Assert.Equal(RdmapOpcode.RdmaReadResponse, r4.Header.Opcode);
            Assert.Equal(readData, r4.Payload);

            var term = new TerminateMessage
            {
                Code = TerminateCode.Ddp(DdpErrorType.TaggedBuffer, DdpErrorCode.TaggedInvalidStag),
                SegmentLengthValid = true,
                DdpSegmentLength = (ushort)(DdpRdmapHeader.TaggedLength + writeData.Length),
                TerminatedDdpHeader = r1.Header,
            };
            enc.WriteTerminate(sWriter, msn: 1, term);
            await sWriter.FlushAsync(cts.Token);
            Received r5 = await ReadOneAsync(cReader, dec);
            Assert.Equal(RdmapOpcode.Terminate, r5.Header.Opcode);
            Assert.Equal(term, r5.Terminate);

            await cWriter.CompleteAsync();
            await sWriter.CompleteAsync();
            client.Close();
            server.Close();

            // 5. Stop the capture with SIGINT so the file is finalized; bounded wait.
            await Task.Delay(500);
            (int killRc, _, string killErr) = Run("kill", new[] { "-INT", cap.Id.ToString(System.Globalization.CultureInfo.InvariantCulture) }, StepTimeout);
            Assert.True(killRc == 0, $"kill -INT failed: {killErr}");
            await exited.WaitAsync(StepTimeout);
            Assert.True(File.Exists(capture), $"no capture file; tshark said: {capErr}");

            // 6. Decode with Wireshark's iWARP dissectors.
            string[] common = { "-r", capture, "-n" };
            (int rc, string fields, string err) = Run(tshark!, common.Concat(new[]
            {
                "-Y", "tcp.len > 0",
                "-T", "fields", "-E", "separator=|",
                "-e", "frame.number", "-e", "_ws.col.Protocol", "-e", "iwarp_mpa.crc_check", "-e", "_ws.col.Info",
            }), StepTimeout);
            _out.WriteLine(fields);
            Assert.True(rc == 0, $"tshark -r failed ({rc}): {err}");
            string[][] rows = fields.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.Split('|')).ToArray();
            Assert.True(rows.Length == 7, $"expected 7 data frames (request, reply, 5 FPDUs), got {rows.Length}:\n{fields}");
            Assert.Equal("MPA", rows[0][1]);
            Assert.Contains("MPA Request Frame", rows[0][3], StringComparison.Ordinal);
            Assert.Equal("MPA", rows[1][1]);
            Assert.Contains("MPA Reply Frame", rows[1][3], StringComparison.Ordinal);
            string[] kinds = { "Write", "Send", "Read Request", "Read Response", "Terminate" };
            for (int i = 0; i < kinds.Length; i++)
            {
                string[] row = rows[i + 2];
                Assert.True(row[1] == "DDP/RDMA", $"frame {row[0]} decoded as '{row[1]}', expected DDP/RDMA");
                Assert.True(row[3].Contains(kinds[i] + " [last DDP segment]", StringComparison.Ordinal), $"frame {row[0]} info '{row[3]}' lacks '{kinds[i]}'");
                Assert.True(row[2].Length > 0, $"frame {row[0]} has no MPA CRC check");
            }

            (rc, string bad, err) = Run(tshark!, common.Concat(new[]
            {
                "-Y", "_ws.malformed || _ws.expert.severity >= error || iwarp_mpa.bad_length",
                "-T", "fields", "-e", "frame.number", "-e", "_ws.col.Info",
            }), StepTimeout);
            Assert.True(rc == 0, $"tshark -r failed ({rc}): {err}");
            Assert.True(bad.Trim().Length == 0, $"malformed / error-level frames:\n{bad}");

            (rc, string verbose, err) = Run(tshark!, common.Concat(new[] { "-Y", "iwarp_mpa", "-V" }), StepTimeout);
            Assert.True(rc == 0, $"tshark -V failed ({rc}): {err}");
            Assert.DoesNotContain("Bad CRC", verbose, StringComparison.OrdinalIgnoreCase);
            int good = verbose.Split("Good CRC", StringSplitOptions.None).Length - 1;
            Assert.True(good == 5, $"expected 5 FPDUs with a good CRC, found {good}");
            Assert.Contains("Read request", verbose, StringComparison.Ordinal);
            Assert.Contains("Terminate", verbose, StringComparison.Ordinal);
        }
        finally
        {
            listener.Stop();
            if (cap is { HasExited: false })
            {
                cap.Kill(entireProcessTree: true);
                cap.WaitForExit(5000);
            }
            cap?.Dispose();
            try { dir.Delete(recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }
}
