using System.Buffers.Binary;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Text;
using PinnedDma;
using PinnedDma.Transports.Iwarp;
using PinnedDma.Verbs;

/// <summary>
/// The other side of perftest's ib_write_bw / ib_read_bw / ib_send_bw with -R (connections by rdma_cm), as perftest
/// 6.06 (Debian's perftest 4.5-0.17) runs them, over our iWARP transport:
///   PerfTest peer write_bw|read_bw|send_bw --server [--bind addr] [--port 18515] [--size N] [--iters N] [--no-crc] [--mpa-rev 1|2] [--max-fpdu N]
///   PerfTest peer write_bw|read_bw|send_bw --connect addr [--port 18515] [--size N] [--iters N] [--no-crc] [--mpa-rev 1|2] [--max-fpdu N]
/// perftest opens two rdma_cm connections to the same port: a control channel first, on which both sides trade
/// fixed-size Sends (the client sends first, the server answers: versions, page and cache line sizes, MTU, then the
/// 56-byte struct pingpong_dest several times as a barrier or to carry the buffer's address and rkey, and at the
/// end the bandwidth report), then the test connection, on which the client runs the RDMA Writes or Reads against
/// the server's buffer.
/// </summary>
sealed class PerftestPeer : IDisposable
{
    private const int DestSize = 56; // struct pingpong_dest: 5 x be32, pad, be64 vaddr, 16-byte gid, 2 x be32
    private const string Version = "6.06";
    private const int MaxRxDepth = 512; // perftest's DEF_RX_SEND
    private static readonly TimeSpan Step = TimeSpan.FromSeconds(60);

    private readonly PeerOptions _o;
    private readonly RdmaDevice _dev = new("perftest");
    private readonly ProtectionDomain _pd;
    private readonly CompletionQueue _commCq, _testCq;
    private readonly QueuePair _comm, _test;
    private readonly MemoryRegion _commRecv, _commSend, _buf, _credit;
    private readonly IwarpOptions _iwarp;
    private IwarpListener? _listener;

    public PerftestPeer(PeerOptions o)
    {
        _o = o;
        _pd = _dev.AllocatePd();
        _commCq = _dev.CreateCompletionQueue(16);
        _testCq = _dev.CreateCompletionQueue(1024);
        _comm = _pd.CreateQueuePair(new QueuePairOptions { SendCq = _commCq, RecvCq = _commCq, MaxSendWr = 4, MaxRecvWr = 4 });
        _test = _pd.CreateQueuePair(new QueuePairOptions { SendCq = _testCq, RecvCq = _testCq, MaxSendWr = 512, MaxRecvWr = MaxRxDepth });
        _commRecv = _pd.RegisterBuffer(256, AccessFlags.LocalWrite);
        _commSend = _pd.RegisterBuffer(256, AccessFlags.LocalWrite);
        // Room for the client's offsets inside a page-sized cycle buffer past a message of the largest size.
        _buf = _pd.RegisterBuffer(Math.Max(o.Size, 4096) * 2 + 8192, AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteRead);
        // send_bw's credit words (perftest's ctrl_buf): [0] the count this side writes to the peer, [1] the peer's to us.
        _credit = _pd.RegisterBuffer(8, AccessFlags.LocalWrite | AccessFlags.RemoteWrite);
        // perftest's read test asks for as many outstanding reads as the device allows (siw: 128) and wants them granted.
        _iwarp = new IwarpOptions { MpaRevision = o.MpaRevision, Crc = o.Crc, Ird = 128, Ord = 128, MaxFpduSize = o.MaxFpduSize };
    }

    public async Task<int> RunAsync()
    {
        if (_o.Server)
        {
            _listener = new IwarpListener(new IPEndPoint(_o.Address, _o.Port), _iwarp);
            Console.Error.WriteLine($"perftest peer: listening on {_listener.LocalEndPoint}");
            await AcceptAsync(_comm, postRecv: true);
        }
        else
        {
            await ConnectAsync(_comm, postRecv: true);
        }
        Console.Error.WriteLine("perftest peer: control channel up");

        var theirVersion = Encoding.ASCII.GetString(Xchg(Fixed(Version, 16))).TrimEnd('\0');
        if (!double.TryParse(theirVersion, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) || v < 5.70)
            throw new InvalidDataException($"perftest version '{theirVersion}' (this speaks 6.06's exchange)");
        int cycle = BinaryPrimitives.ReadInt32BigEndian(Xchg(BigEndian32(4096)));
        int cacheLine = BinaryPrimitives.ReadInt32BigEndian(Xchg(BigEndian32(64)));
        var mtu = Xchg(Fixed("3", 2)); // IBV_MTU_1024, what siw reports for a 1500-byte link
        Console.Error.WriteLine($"perftest peer: remote perftest {theirVersion}, cycle buffer {cycle}, cache line {cacheLine}, mtu enum {Encoding.ASCII.GetString(mtu).TrimEnd('\0')}");

        HandShake(default); // before the test connection
        if (_o.Server) await AcceptAsync(_test, postRecv: false);
        else await ConnectAsync(_test, postRecv: false);
        HandShake(default); // after it
        Console.Error.WriteLine("perftest peer: test connection up");

        if (_o.Verb == "send_bw") return RunSend();

        var mine = new Dest(OutReads: 16, Qpn: (int)_test.QpNumber, Psn: Random.Shared.Next(0xffffff), RKey: _buf.RKey, VAddr: _buf.Address);
        var theirs = HandShake(mine);
        HandShake(mine);
        HandShake(mine); // the extra one after RTR
        Console.Error.WriteLine($"perftest peer: remote qpn {theirs.Qpn:x} rkey {theirs.RKey:x8} vaddr {theirs.VAddr:x} out_reads {theirs.OutReads}");

        var report = new BwReport((ulong)_o.Size, 0, 0, 0, 0);
        if (!_o.Server)
        {
            report = RunTest(theirs);
            Console.WriteLine($" {_o.Size,-10} {report.Iters,-14} {report.BwPeak,-18:F2} {report.BwAvg,-20:F2} {report.MsgRate,-12:F6}");
        }
        HandShake(mine); // the server waits here while the client runs
        var remote = XchgReports(report);
        HandShake(mine); // ctx_close_connection
        if (_o.Server)
        {
            Console.WriteLine($"remote report: size {remote.Size} iters {remote.Iters} BW average {remote.BwAvg:F2} MB/sec");
        }
        else
        {
            // The server's last Send completes only once it is on its way: closing at once could fail it (perftest
            // then reports a failed close). Let the server hang up first, for a bounded time.
            long until = Environment.TickCount64 + 10_000;
            while (_comm.ConnectionCloseReason is null && Environment.TickCount64 < until) Thread.Sleep(20);
        }
        Console.Error.WriteLine("perftest peer: done");
        return 0;
    }

    /// <summary>send_bw from the test connection on: credit words in the pingpong_dest, four barriers, the run, the close.</summary>
    private int RunSend()
    {
        // perftest: rx_depth is DEF_RX_SEND cut to the iteration count, made even; a credit every rx_depth / 3 receives.
        int rxDepth = Math.Min(MaxRxDepth, _o.Iters);
        if (rxDepth % 2 == 1) rxDepth++;
        var mine = new Dest(OutReads: 16, Qpn: (int)_test.QpNumber, Psn: Random.Shared.Next(0xffffff), RKey: _credit.RKey, VAddr: _credit.Address + 4);
        var theirs = HandShake(mine);
        HandShake(mine);
        HandShake(mine);
        if (_o.Server)
        {
            for (int i = 0; i < Math.Min(rxDepth, _o.Iters); i++) PostTestRecv(i);
        }
        HandShake(mine); // the receives are posted: the client may send
        Console.Error.WriteLine($"perftest peer: send_bw, rx_depth {rxDepth}, remote credit word {theirs.VAddr:x} rkey {theirs.RKey:x8}");
        var report = _o.Server ? ReceiveSends(rxDepth, theirs) : SendWithCredits(rxDepth);
        Console.WriteLine($" {_o.Size,-10} {report.Iters,-14} {report.BwPeak,-18:F2} {report.BwAvg,-20:F2} {report.MsgRate,-12:F6}");
        HandShake(mine); // ctx_close_connection
        if (!_o.Server)
        {
            long until = Environment.TickCount64 + 10_000;
            while (_comm.ConnectionCloseReason is null && Environment.TickCount64 < until) Thread.Sleep(20);
        }
        Console.Error.WriteLine("perftest peer: done");
        return 0;
    }

    private void PostTestRecv(int wrId) =>
        _test.PostRecv(new RecvWorkRequest((ulong)wrId, new ScatterGatherElement(_buf.Address, (uint)_o.Size, _buf.LKey)));

    /// <summary>The receiving side: repost each receive while more are due, and credit the sender every rx_depth / 3.</summary>
    private BwReport ReceiveSends(int rxDepth, Dest remote)
    {
        int creditEvery = rxDepth / 3;
        int posted = Math.Min(rxDepth, _o.Iters), received = 0, creditsInFlight = 0;
        var wcs = new WorkCompletion[64];
        var sw = new Stopwatch();
        long deadline = Environment.TickCount64 + (long)Step.TotalMilliseconds * 4;
        while (received < _o.Iters || creditsInFlight > 0)
        {
            int n = _testCq.Poll(wcs, TimeSpan.FromMilliseconds(1));
            for (int i = 0; i < n; i++)
            {
                if (wcs[i].Status != WcStatus.Success) throw new InvalidOperationException($"completion failed: {wcs[i]} ({_test.ConnectionCloseReason})");
                if (wcs[i].Opcode == WcOpcode.RdmaWrite) { creditsInFlight--; continue; }
                if (received++ == 0) sw.Start();
                if (posted < _o.Iters) PostTestRecv(posted++);
                if (received % rxDepth % creditEvery == 0)
                {
                    BinaryPrimitives.WriteUInt32LittleEndian(_credit.GetBufferSpan()[..4], (uint)received);
                    _test.PostSend(new SendWorkRequest
                    {
                        WrId = (ulong)received, Opcode = WrOpcode.RdmaWrite, Flags = SendFlags.Signaled,
                        Local = new ScatterGatherElement(_credit.Address, 4, _credit.LKey), RemoteAddress = remote.VAddr, RKey = remote.RKey,
                    });
                    creditsInFlight++;
                }
            }
            if (Environment.TickCount64 > deadline || (n == 0 && _test.State == QpState.Error && _testCq.Count == 0))
                throw new TimeoutException($"{received} of {_o.Iters} Sends, {posted} receives posted; QP {_test.State} ({_test.ConnectionCloseReason})");
        }
        return Report(sw.Elapsed.TotalSeconds);
    }

    /// <summary>The sending side: at most 128 Sends outstanding, and fewer than rx_depth beyond the receiver's last credit.</summary>
    private BwReport SendWithCredits(int rxDepth)
    {
        const int txDepth = 128;
        int posted = 0, completed = 0;
        var wcs = new WorkCompletion[64];
        var sw = Stopwatch.StartNew();
        long deadline = Environment.TickCount64 + (long)Step.TotalMilliseconds * 4;
        while (completed < _o.Iters)
        {
            while (posted < _o.Iters && posted - completed < txDepth)
            {
                uint credit = BinaryPrimitives.ReadUInt32LittleEndian(_credit.GetBufferSpan().Slice(4, 4));
                if ((uint)posted + 1 - credit >= (uint)rxDepth) break; // the receiver has no buffer for more yet
                _test.PostSend(new SendWorkRequest
                {
                    WrId = (ulong)posted, Opcode = WrOpcode.Send, Flags = SendFlags.Signaled,
                    Local = new ScatterGatherElement(_buf.Address, (uint)_o.Size, _buf.LKey),
                });
                posted++;
            }
            int n = _testCq.Poll(wcs, TimeSpan.FromMilliseconds(1));
            for (int i = 0; i < n; i++)
            {
                if (wcs[i].Status != WcStatus.Success) throw new InvalidOperationException($"completion failed: {wcs[i]} ({_test.ConnectionCloseReason})");
                completed++;
            }
            if (Environment.TickCount64 > deadline) throw new TimeoutException($"{completed} of {_o.Iters} Sends completed in {Step.TotalSeconds * 4} s");
        }
        return Report(sw.Elapsed.TotalSeconds);
    }

    private BwReport Report(double secs)
    {
        double mbs = (double)_o.Size * _o.Iters / secs / (1 << 20);
        return new BwReport((ulong)_o.Size, (ulong)_o.Iters, mbs, mbs, _o.Iters / secs / 1e6);
    }

    private BwReport RunTest(Dest remote)
    {
        bool read = _o.Verb == "read_bw";
        int depth = read ? Math.Clamp(remote.OutReads, 1, 16) : 128;
        var wcs = new WorkCompletion[64];
        int posted = 0, completed = 0;
        var sw = Stopwatch.StartNew();
        long deadline = Environment.TickCount64 + (long)Step.TotalMilliseconds * 4;
        while (completed < _o.Iters)
        {
            while (posted < _o.Iters && posted - completed < depth)
            {
                _test.PostSend(new SendWorkRequest
                {
                    WrId = (ulong)posted, Opcode = read ? WrOpcode.RdmaRead : WrOpcode.RdmaWrite, Flags = SendFlags.Signaled,
                    Local = new ScatterGatherElement(_buf.Address, (uint)_o.Size, _buf.LKey),
                    RemoteAddress = remote.VAddr, RKey = remote.RKey,
                });
                posted++;
            }
            int n = _testCq.Poll(wcs, TimeSpan.FromMilliseconds(100));
            for (int i = 0; i < n; i++)
            {
                if (wcs[i].Status != WcStatus.Success) throw new InvalidOperationException($"completion failed: {wcs[i]} ({_test.ConnectionCloseReason})");
                completed++;
            }
            if (Environment.TickCount64 > deadline) throw new TimeoutException($"{completed} of {_o.Iters} completions in {Step.TotalSeconds * 4} s");
        }
        double secs = sw.Elapsed.TotalSeconds;
        double mbs = (double)_o.Size * _o.Iters / secs / (1 << 20);
        return new BwReport((ulong)_o.Size, (ulong)_o.Iters, mbs, mbs, _o.Iters / secs / 1e6);
    }

    private async Task AcceptAsync(QueuePair qp, bool postRecv)
    {
        using var cts = new CancellationTokenSource(Step);
        var req = await _listener!.AcceptAsync(cts.Token);
        qp.Modify(new QpAttributes { State = QpState.Init, AccessFlags = AccessFlags.RemoteRead | AccessFlags.RemoteWrite });
        if (postRecv) PostRecv();
        req.Accept(qp);
    }

    private async Task ConnectAsync(QueuePair qp, bool postRecv)
    {
        qp.Modify(new QpAttributes { State = QpState.Init, AccessFlags = AccessFlags.RemoteRead | AccessFlags.RemoteWrite });
        if (postRecv) PostRecv();
        // The server listens for the test connection only after the barrier before it: retry as perftest does.
        for (int attempt = 1; ; attempt++)
        {
            try
            {
                using var cts = new CancellationTokenSource(Step);
                await IwarpConnector.ConnectAsync(qp, new IPEndPoint(_o.Address, _o.Port), default, _iwarp, cts.Token);
                return;
            }
            catch (Exception e) when (attempt < 50 && e is IOException or System.Net.Sockets.SocketException or PinnedDmaException or TimeoutException)
            {
                await Task.Delay(200);
            }
        }
    }

    private void PostRecv() => _comm.PostRecv(new RecvWorkRequest(1, new ScatterGatherElement(_commRecv.Address, (uint)_commRecv.Length, _commRecv.LKey)));

    /// <summary>ctx_xchg_data: the client sends, then receives; the server receives, then sends. Returns the peer's bytes.</summary>
    private byte[] Xchg(ReadOnlySpan<byte> mine)
    {
        if (_o.Server)
        {
            var theirs = Receive();
            Send(mine);
            return theirs;
        }
        Send(mine);
        return Receive();
    }

    private Dest HandShake(Dest mine)
    {
        var b = new byte[DestSize];
        BinaryPrimitives.WriteInt32BigEndian(b.AsSpan(4), mine.OutReads);
        BinaryPrimitives.WriteInt32BigEndian(b.AsSpan(8), mine.Qpn);
        BinaryPrimitives.WriteInt32BigEndian(b.AsSpan(12), mine.Psn);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(16), mine.RKey);
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(24), mine.VAddr);
        var r = Xchg(b);
        if (r.Length != DestSize) throw new InvalidDataException($"pingpong_dest of {r.Length} bytes, expected {DestSize}");
        return new Dest(BinaryPrimitives.ReadInt32BigEndian(r.AsSpan(4)), BinaryPrimitives.ReadInt32BigEndian(r.AsSpan(8)),
            BinaryPrimitives.ReadInt32BigEndian(r.AsSpan(12)), BinaryPrimitives.ReadUInt32BigEndian(r.AsSpan(16)), BinaryPrimitives.ReadUInt64BigEndian(r.AsSpan(24)));
    }

    /// <summary>xchg_bw_reports: size, iters, peak, average, message rate; five exchanges of 8 big-endian bytes.</summary>
    private BwReport XchgReports(BwReport mine)
    {
        ulong size = BinaryPrimitives.ReadUInt64BigEndian(Xchg(BigEndian64(mine.Size)));
        ulong iters = BinaryPrimitives.ReadUInt64BigEndian(Xchg(BigEndian64(mine.Iters)));
        double peak = BitConverter.UInt64BitsToDouble(BinaryPrimitives.ReadUInt64BigEndian(Xchg(BigEndian64(BitConverter.DoubleToUInt64Bits(mine.BwPeak)))));
        double avg = BitConverter.UInt64BitsToDouble(BinaryPrimitives.ReadUInt64BigEndian(Xchg(BigEndian64(BitConverter.DoubleToUInt64Bits(mine.BwAvg)))));
        double rate = BitConverter.UInt64BitsToDouble(BinaryPrimitives.ReadUInt64BigEndian(Xchg(BigEndian64(BitConverter.DoubleToUInt64Bits(mine.MsgRate)))));
        return new BwReport(size, iters, peak, avg, rate);
    }

    private void Send(ReadOnlySpan<byte> data)
    {
        data.CopyTo(_commSend.GetBufferSpan());
        _comm.PostSend(new SendWorkRequest { WrId = 2, Opcode = WrOpcode.Send, Flags = SendFlags.Signaled, Local = new ScatterGatherElement(_commSend.Address, (uint)data.Length, _commSend.LKey) });
        Wait(WcOpcode.Send);
    }

    private byte[] Receive()
    {
        var wc = Wait(WcOpcode.Recv);
        var data = _commRecv.GetBufferSpan()[..(int)wc.ByteLength].ToArray();
        PostRecv(); // before anything is sent: iWARP has no receiver-not-ready retry
        return data;
    }

    private WorkCompletion Wait(WcOpcode want)
    {
        var wc = new WorkCompletion[1];
        long deadline = Environment.TickCount64 + (long)Step.TotalMilliseconds * 4;
        while (true)
        {
            if (_commCq.Poll(wc, TimeSpan.FromMilliseconds(200)) == 0)
            {
                if (Environment.TickCount64 > deadline) throw new TimeoutException($"no {want} on the control channel in {Step.TotalSeconds * 4} s");
                continue;
            }
            if (wc[0].Status != WcStatus.Success) throw new InvalidOperationException($"control channel: {wc[0]} ({_comm.ConnectionCloseReason})");
            if (wc[0].Opcode == want) return wc[0];
            throw new InvalidOperationException($"control channel: {wc[0]} while waiting for {want}");
        }
    }

    private static byte[] Fixed(string s, int n)
    {
        var b = new byte[n];
        Encoding.ASCII.GetBytes(s, b);
        return b;
    }

    private static byte[] BigEndian32(int v)
    {
        var b = new byte[4];
        BinaryPrimitives.WriteInt32BigEndian(b, v);
        return b;
    }

    private static byte[] BigEndian64(ulong v)
    {
        var b = new byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(b, v);
        return b;
    }

    public void Dispose()
    {
        _listener?.Dispose();
        _test.Dispose();
        _comm.Dispose();
        _dev.Dispose();
    }

    private readonly record struct Dest(int OutReads, int Qpn, int Psn, uint RKey, ulong VAddr);

    private readonly record struct BwReport(ulong Size, ulong Iters, double BwPeak, double BwAvg, double MsgRate);
}

sealed record PeerOptions(string Verb, bool Server, IPAddress Address, int Port, int Size, int Iters, bool Crc, byte MpaRevision = 2, int MaxFpduSize = 0)
{
    public static PeerOptions? Parse(string[] a)
    {
        if (a.Length < 2 || a[0] != "peer" || a[1] is not ("write_bw" or "read_bw" or "send_bw")) return null;
        var o = new PeerOptions(a[1], false, IPAddress.Loopback, 18515, 65536, 1000, true);
        bool side = false;
        for (int i = 2; i < a.Length; i++)
        {
            string Next() => i + 1 < a.Length ? a[++i] : throw new ArgumentException($"{a[i]} needs a value");
            switch (a[i])
            {
                case "--server": o = o with { Server = true }; side = true; break;
                case "--bind": o = o with { Address = IPAddress.Parse(Next()) }; break;
                case "--connect": o = o with { Server = false, Address = IPAddress.Parse(Next()) }; side = true; break;
                case "--port": o = o with { Port = int.Parse(Next(), CultureInfo.InvariantCulture) }; break;
                case "--size": o = o with { Size = int.Parse(Next(), CultureInfo.InvariantCulture) }; break;
                case "--iters": o = o with { Iters = int.Parse(Next(), CultureInfo.InvariantCulture) }; break;
                case "--no-crc": o = o with { Crc = false }; break;
                case "--mpa-rev": o = o with { MpaRevision = byte.Parse(Next(), CultureInfo.InvariantCulture) }; break;
                case "--max-fpdu": o = o with { MaxFpduSize = int.Parse(Next(), CultureInfo.InvariantCulture) }; break;
                default: return null;
            }
        }
        return side && o.Size is > 0 and <= 1 << 20 && o.Iters > 0 && o.MpaRevision is 1 or 2 ? o : null;
    }
}
