using System.Buffers.Binary;
using System.Globalization;
using System.Net;
using PinnedDma.Tests.Iwarp;
using PinnedDma.Transports.Iwarp;
using PinnedDma.Transports.Iwarp.Internal;
using PinnedDma.Verbs;
using Xunit;
using Xunit.Abstractions;

namespace PinnedDma.Tests.Interop;

/// <summary>
/// Errors from our side against the kernel's siw, both directions (our client to rping's server, rping's client to our
/// server): an FPDU with a wrong MPA CRC, and an RDMA Write naming an STag the kernel never issued. Each must get the
/// kernel's Terminate with the RFC's error (MPA CRC error, DDP invalid STag), and a clean close on both sides: our
/// queue pair in Error with its posted receive flushed, the kernel's rping ending on its own (not by the guest's time
/// limit), and no oops in the guest's kernel.
/// </summary>
/// <remarks>
/// siw (Linux 6.1) declares the Terminate header's Layer and EType nibbles with little-endian bit-fields, so on x86 it
/// reads and writes them swapped against RFC 5040's layout (Layer is the high nibble of the first byte). Our side
/// writes the RFC's layout; the cases accept the kernel's Terminate in either nibble order and check the error code
/// exactly.
/// </remarks>
[Collection(GuestCollection.Name)]
[Trait("Category", "Guest")]
public sealed class KernelTerminateInteropTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(60);
    private const uint ForeignStag = 0x5A5A5A01; // not an STag the kernel issued on this connection
    private readonly GuestFixture _guest;
    private readonly ITestOutputHelper _log;

    public KernelTerminateInteropTests(GuestFixture guest, ITestOutputHelper log)
    {
        _guest = guest;
        _log = log;
    }

    public enum Fault
    {
        BadCrc,
        InvalidStag,
    }

    private sealed class Side : IDisposable
    {
        public readonly RdmaDevice Device = new("terminate-interop");
        public readonly ProtectionDomain Pd;
        public readonly CompletionQueue Cq;
        public readonly QueuePair Qp;
        public readonly MemoryRegion Buffer;

        public Side()
        {
            Pd = Device.AllocatePd();
            Cq = Device.CreateCompletionQueue(16);
            Qp = Pd.CreateQueuePair(new QueuePairOptions { SendCq = Cq, RecvCq = Cq, MaxSendWr = 4, MaxRecvWr = 4 });
            Buffer = Pd.RegisterBuffer(4096, AccessFlags.LocalWrite | AccessFlags.RemoteRead | AccessFlags.RemoteWrite);
            Qp.Modify(new QpAttributes { State = QpState.Init, AccessFlags = AccessFlags.RemoteRead | AccessFlags.RemoteWrite });
        }

        public void PostRecv(ulong id) => Qp.PostRecv(new RecvWorkRequest(id, new ScatterGatherElement(Buffer.Address, 256, Buffer.LKey)));

        /// <summary>rping's 16-byte buffer description: be64 address, be32 rkey, be32 size.</summary>
        public void PostRpingInfo(ulong id)
        {
            var info = Buffer.GetBufferSpan().Slice(1024, 16);
            BinaryPrimitives.WriteUInt64BigEndian(info, Buffer.Address);
            BinaryPrimitives.WriteUInt32BigEndian(info[8..], Buffer.RKey);
            BinaryPrimitives.WriteUInt32BigEndian(info[12..], 64);
            Qp.PostSend(new SendWorkRequest { WrId = id, Opcode = WrOpcode.Send, Flags = SendFlags.Signaled, Local = new ScatterGatherElement(Buffer.Address + 1024, 16, Buffer.LKey) });
        }

        public void Inject(Fault fault, ulong id)
        {
            if (fault == Fault.BadCrc)
            {
                Qp.Connection!.CorruptNextCrcsForTest(1);
                PostRpingInfo(id);
            }
            else
            {
                Qp.PostSend(new SendWorkRequest
                {
                    WrId = id, Opcode = WrOpcode.RdmaWrite, Flags = SendFlags.Signaled,
                    Local = new ScatterGatherElement(Buffer.Address, 64, Buffer.LKey), RemoteAddress = 0x10000, RKey = ForeignStag,
                });
            }
        }

        public List<WorkCompletion> DrainUntilClosed(TimeSpan bound)
        {
            var all = new List<WorkCompletion>();
            var wcs = new WorkCompletion[8];
            long deadline = Environment.TickCount64 + (long)bound.TotalMilliseconds;
            while (Environment.TickCount64 < deadline)
            {
                int n = Cq.Poll(wcs, TimeSpan.FromMilliseconds(100));
                for (int i = 0; i < n; i++) all.Add(wcs[i]);
                if (Qp.State == QpState.Error && Qp.ConnectionCloseReason is not null && n == 0) break;
            }
            return all;
        }

        public void Dispose()
        {
            Qp.Dispose();
            Device.Dispose();
        }
    }

    private static WorkCompletion WaitFor(Side side, WcOpcode opcode)
    {
        var wc = new WorkCompletion[1];
        long deadline = Environment.TickCount64 + (long)Bound.TotalMilliseconds;
        while (Environment.TickCount64 < deadline)
        {
            if (side.Cq.Poll(wc, TimeSpan.FromMilliseconds(100)) == 0) continue;
            Assert.True(wc[0].Status == WcStatus.Success && wc[0].Opcode == opcode, $"waiting for {opcode}: {wc[0]} ({side.Qp.ConnectionCloseReason})");
            return wc[0];
        }
        throw new TimeoutException($"no {opcode} within {Bound}");
    }

    /// <summary>What the kernel must answer: MPA CRC error (LLP layer, MPA type, code 2) or DDP tagged-buffer invalid STag.</summary>
    private static (int Layer, int Type, int Code) Expected(Fault fault) => fault == Fault.BadCrc ? (2, 0, 0x02) : (1, 1, 0x00);

    private void AssertCleanTerminate(Side side, Fault fault, List<WorkCompletion> completions, GuestResult theirs, GuestVm vm)
    {
        _log.WriteLine($"our close: {side.Qp.ConnectionCloseReason}\ncompletions: {string.Join("; ", completions)}\nguest rping (exit {theirs.ExitCode}):\n{theirs.Output}");
        _guest.AssertKernelClean(vm);
        Assert.Equal(QpState.Error, side.Qp.State);
        var t = side.Qp.Connection!.LastTerminateReceived;
        Assert.True(t is not null, $"no Terminate from the kernel; close reason: {side.Qp.ConnectionCloseReason}");
        var (layer, type, code) = Expected(fault);
        var got = t!.Value;
        Assert.Equal(code, got.ErrorCode);
        bool rfcOrder = (int)got.Layer == layer && got.ErrorType == type;
        bool siwOrder = (int)got.Layer == type && got.ErrorType == layer; // siw's bit-field order on little-endian hosts
        Assert.True(rfcOrder || siwOrder, $"Terminate {got}: expected layer {layer} type {type} (in either nibble order)");
        Assert.StartsWith("peer terminated:", side.Qp.ConnectionCloseReason, StringComparison.Ordinal);
        // Our posted receive ends flushed, never left pending.
        Assert.Contains(completions, c => c.Opcode == WcOpcode.Recv && c.Status == WcStatus.WrFlushErr);
        Assert.True(theirs.ExitCode != 124, $"the kernel's rping did not end on its own:\n{theirs.Output}");
        if (fault == Fault.BadCrc)
            Assert.Contains("siw: crc error", vm.Run("dmesg | tail -n 40", TimeSpan.FromSeconds(30)).Output, StringComparison.Ordinal);
    }

    /// <summary>Our client connects to rping's server and sends it a bad CRC or writes through an STag it never issued.</summary>
    [Theory]
    [InlineData(Fault.BadCrc)]
    [InlineData(Fault.InvalidStag)]
    public async Task Our_client_error_gets_the_kernels_terminate(Fault fault)
    {
        for (int attempt = 1; ; attempt++)
        {
            var vm = _guest.Healthy();
            vm.ConfigureSiw();
            using var server = vm.Start($"rping -s -v -a {GuestVm.GuestAddress} -p 7174 -S 64 -C 1", Bound, awaitPort: 7174);
            using var side = new Side();
            side.PostRecv(1);
            await IwarpConnector.ConnectAsync(side.Qp, new IPEndPoint(IPAddress.Loopback, vm.HostPort(7174)), default,
                new IwarpOptions { Crc = true }).WaitAsync(Bound);
            side.Inject(fault, 2);
            var completions = side.DrainUntilClosed(Bound);
            var theirs = server.Wait();
            if (TerminateLostToTheKernelsClose(side, theirs, attempt)) continue;
            AssertCleanTerminate(side, fault, completions, theirs, vm);
            return;
        }
    }

    /// <summary>
    /// siw sends its Terminate best effort (Linux 6.1 <c>siw_send_terminate</c>: <c>MSG_DONTWAIT</c>, and skipped once
    /// the endpoint is closed): when rping's own disconnect, on the error event, closes the connection first, a clean
    /// end of stream comes with no Terminate. Such an attempt (nothing received from the kernel but its close, and rping
    /// reporting the disconnect) is tried again, at most <see cref="Attempts"/> times in all; anything else is judged.
    /// </summary>
    private bool TerminateLostToTheKernelsClose(Side side, GuestResult theirs, int attempt)
    {
        bool lost = side.Qp.Connection?.LastTerminateReceived is null
            && side.Qp.ConnectionCloseReason == "peer closed the connection"
            && theirs.Output.Contains("DISCONNECT EVENT", StringComparison.Ordinal);
        if (!lost || attempt >= Attempts) return false;
        _log.WriteLine($"attempt {attempt}: the kernel closed without its Terminate (rping: {theirs.Output.Trim()}); trying again");
        return true;
    }

    private const int Attempts = 3;

    /// <summary>rping's client connects to our server; after its first Send we answer with the fault.</summary>
    [Theory]
    [InlineData(Fault.BadCrc)]
    [InlineData(Fault.InvalidStag)]
    public async Task Our_server_error_gets_the_kernels_terminate(Fault fault)
    {
        for (int attempt = 1; ; attempt++)
        {
            var vm = _guest.Healthy();
            vm.ConfigureSiw();
            int port = vm.FreeHostPort();
            using var listener = new IwarpListener(new IPEndPoint(IPAddress.Loopback, port), new IwarpOptions { Crc = true });
            using var side = new Side();
            using var client = vm.Start($"rping -c -v -a {GuestVm.HostAddress} -p {port.ToString(CultureInfo.InvariantCulture)} -S 64 -C 1", Bound, awaitPort: 0);
            var request = await listener.AcceptAsync().WaitAsync(Bound);
            side.PostRecv(1);
            request.Accept(side.Qp);
            WaitFor(side, WcOpcode.Recv); // rping's buffer description
            side.PostRecv(3);
            side.Inject(fault, 2);
            var completions = side.DrainUntilClosed(Bound);
            var theirs = client.Wait();
            if (TerminateLostToTheKernelsClose(side, theirs, attempt)) continue;
            AssertCleanTerminate(side, fault, completions, theirs, vm);
            return;
        }
    }
}
