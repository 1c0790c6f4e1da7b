using System.Buffers.Binary;
using System.Net;
using System.Text;
using PinnedDma;
using PinnedDma.Transports.Iwarp;
using PinnedDma.Verbs;

// rping over the iWARP transport, on the wire the same as rdma-core's rping (librdmacm/examples), so either side can
// be the kernel's rping:
//   dotnet run -c Release --project samples/Rping -- -s [-vV] [-S size] [-C count] [-a addr] [-p port]
//   dotnet run -c Release --project samples/Rping -- -c [-vV] [-S size] [-C count] -a addr [-p port]
// Every ping: the client sends {be64 addr, be32 rkey, be32 size} of a source buffer filled with "rdma-ping-N: "
// and a rotating alphabet; the server RDMA READs it and sends a go-ahead; the client sends the same record for its
// sink buffer; the server RDMA WRITEs the data back and sends a go-ahead; the client compares (-V) and prints it (-v).
// Unlike rdma-core's rping, the exit code tells: 0 only when every ping completed (and matched, with -V).
// Transport options: --no-crc, --mpa-rev 1|2 (default 2), --p2p to request RFC 6581 peer-to-peer mode, --rtr with the
// RTR types offered (client) or accepted (server), a comma-separated list of send, write, read (default all three),
// --timeout seconds per step (default 30).
try
{
    var o = RpingOptions.Parse(args);
    if (o is null)
    {
        Console.Error.WriteLine("usage: Rping -s|-c [-v] [-V] [-S size] [-C count] [-a addr] [-p port] [--no-crc] [--mpa-rev 1|2] [--p2p] [--rtr send,write,read] [--timeout s]");
        return 2;
    }
    using var session = new RpingSession(o);
    return o.Server ? await session.ServeAsync() : await session.PingAsync();
}
catch (Exception e) when (e is PinnedDmaException or TimeoutException or IOException or System.Net.Sockets.SocketException or RpingException)
{
    Console.Error.WriteLine($"rping: {e.Message}");
    return 1;
}

sealed record RpingOptions(bool Server, IPAddress Address, int Port, int Size, int Count, bool Verbose, bool Validate, bool Crc, byte MpaRevision, TimeSpan StepTimeout,
    bool PeerToPeer = false, IwarpRtrTypes RtrTypes = IwarpRtrTypes.ZeroLengthSend | IwarpRtrTypes.ZeroLengthRdmaWrite | IwarpRtrTypes.ZeroLengthRdmaRead)
{
    // rping's limits: at least room for "rdma-ping-2147483647: ", below 64 KiB.
    public const int MinSize = 25 + 15;
    public const int MaxSize = 64 * 1024 - 1;

    public static RpingOptions? Parse(string[] a)
    {
        bool? server = null;
        var o = new RpingOptions(false, IPAddress.Loopback, 7174, 64, 0, false, false, true, 2, TimeSpan.FromSeconds(30));
        bool haveAddress = false;
        for (int i = 0; i < a.Length; i++)
        {
            string Next() => i + 1 < a.Length ? a[++i] : throw new RpingException($"{a[i]} needs a value");
            switch (a[i])
            {
                case "-s": server = true; break;
                case "-c": server = false; break;
                case "-v": o = o with { Verbose = true }; break;
                case "-V": o = o with { Validate = true }; break;
                case "-vV" or "-Vv": o = o with { Verbose = true, Validate = true }; break;
                case "-a": o = o with { Address = IPAddress.Parse(Next()) }; haveAddress = true; break;
                case "-p": o = o with { Port = int.Parse(Next()) }; break;
                case "-S": o = o with { Size = int.Parse(Next()) }; break;
                case "-C": o = o with { Count = int.Parse(Next()) }; break;
                case "--no-crc": o = o with { Crc = false }; break;
                case "--mpa-rev": o = o with { MpaRevision = byte.Parse(Next()) }; break;
                case "--p2p": o = o with { PeerToPeer = true }; break;
                case "--rtr": o = o with { RtrTypes = ParseRtr(Next()) }; break;
                case "--timeout": o = o with { StepTimeout = TimeSpan.FromSeconds(double.Parse(Next(), System.Globalization.CultureInfo.InvariantCulture)) }; break;
                default: return null;
            }
        }
        if (server is null || (server == false && !haveAddress)) return null;
        if (o.Size is < MinSize or > MaxSize || o.Count < 0 || o.Port is < 0 or > 65535 || o.MpaRevision is not (1 or 2)) return null;
        if (o.PeerToPeer && (o.MpaRevision != 2 || o.RtrTypes == IwarpRtrTypes.None)) return null;
        return o with { Server = server.Value };
    }

    private static IwarpRtrTypes ParseRtr(string list)
    {
        var t = IwarpRtrTypes.None;
        foreach (var name in list.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            t |= name switch
            {
                "send" => IwarpRtrTypes.ZeroLengthSend,
                "write" => IwarpRtrTypes.ZeroLengthRdmaWrite,
                "read" => IwarpRtrTypes.ZeroLengthRdmaRead,
                _ => throw new RpingException($"unknown RTR type '{name}' (send, write, read)"),
            };
        return t;
    }
}

sealed class RpingException(string message) : Exception(message);

/// <summary>One rping connection: the buffers rping registers, and the two halves of its ping loop.</summary>
sealed class RpingSession : IDisposable
{
    private const int InfoSize = 16; // struct rping_rdma_info: be64 buf, be32 rkey, be32 size
    private const ulong RecvId = 1, SendId = 2, RdmaId = 3;
    private readonly RpingOptions _o;
    private readonly RdmaDevice _dev = new("rping");
    private readonly CompletionQueue _cq;
    private readonly QueuePair _qp;
    private readonly MemoryRegion _recv, _send, _rdma, _start;
    private readonly IwarpOptions _iwarp;
    private static readonly bool Debug = Environment.GetEnvironmentVariable("RPING_DEBUG") == "1";

    public RpingSession(RpingOptions o)
    {
        _o = o;
        var pd = _dev.AllocatePd();
        _cq = _dev.CreateCompletionQueue(64);
        _qp = pd.CreateQueuePair(new QueuePairOptions { SendCq = _cq, RecvCq = _cq, MaxSendWr = 16, MaxRecvWr = 2 });
        _recv = pd.RegisterBuffer(InfoSize, AccessFlags.LocalWrite);
        _send = pd.RegisterBuffer(InfoSize, AccessFlags.None);
        _rdma = pd.RegisterBuffer(o.Size, AccessFlags.LocalWrite | AccessFlags.RemoteRead | AccessFlags.RemoteWrite);
        _start = pd.RegisterBuffer(o.Size, AccessFlags.LocalWrite | AccessFlags.RemoteRead | AccessFlags.RemoteWrite);
        // rping's connection parameters: one RDMA Read in flight each way.
        _iwarp = new IwarpOptions { MpaRevision = o.MpaRevision, Crc = o.Crc, Ird = 1, Ord = 1, PeerToPeer = o.PeerToPeer, RtrTypes = o.RtrTypes };
    }

    public async Task<int> ServeAsync()
    {
        using var listener = new IwarpListener(new IPEndPoint(_o.Address, _o.Port), _iwarp);
        Console.Error.WriteLine($"rping: listening on {listener.LocalEndPoint}");
        using var cts = new CancellationTokenSource(_o.StepTimeout);
        IwarpConnectionRequest request;
        try
        {
            request = await listener.AcceptAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            throw new TimeoutException($"no client within {_o.StepTimeout.TotalSeconds} s");
        }
        _qp.Modify(new QpAttributes { State = QpState.Init, AccessFlags = AccessFlags.RemoteRead | AccessFlags.RemoteWrite });
        PostRecv();
        request.Accept(_qp);
        Console.Error.WriteLine($"rping: connected to {request.RemoteEndPoint} (MPA rev {request.MpaRevision})");

        int pings = 0;
        while (true)
        {
            // The client's source buffer, or its disconnect once it has done all its pings.
            var adv = WaitFor(WcOpcode.Recv, allowDisconnect: true);
            if (adv is null) break;
            var (addr, rkey, len) = TakeInfo(adv.Value);
            if (len > _o.Size) throw new RpingException($"client buffer of {len} bytes is larger than ours ({_o.Size}): run both with the same -S");
            Post(WrOpcode.RdmaRead, RdmaId, _rdma.Address, len, _rdma.LKey, addr, rkey);
            WaitFor(WcOpcode.RdmaRead);
            if (_o.Verbose) Console.WriteLine($"server ping data: {CString(_rdma.GetBufferSpan())}");

            Post(WrOpcode.Send, SendId, _send.Address, InfoSize, _send.LKey); // go ahead
            var sink = WaitFor(WcOpcode.Recv) ?? throw new RpingException("disconnected before the sink advertisement");
            (addr, rkey, len) = TakeInfo(sink);
            uint echo = (uint)CString(_rdma.GetBufferSpan()).Length + 1;
            if (echo > len) throw new RpingException($"client sink of {len} bytes cannot hold the {echo}-byte echo");
            Post(WrOpcode.RdmaWrite, RdmaId, _rdma.Address, echo, _rdma.LKey, addr, rkey);
            WaitFor(WcOpcode.RdmaWrite);
            Post(WrOpcode.Send, SendId, _send.Address, InfoSize, _send.LKey); // go ahead
            pings++;
        }
        Console.Error.WriteLine($"rping: client disconnected after {pings} pings");
        return 0;
    }

    public async Task<int> PingAsync()
    {
        _qp.Modify(new QpAttributes { State = QpState.Init, AccessFlags = AccessFlags.RemoteRead | AccessFlags.RemoteWrite });
        PostRecv();
        using (var cts = new CancellationTokenSource(_o.StepTimeout))
            await IwarpConnector.ConnectAsync(_qp, new IPEndPoint(_o.Address, _o.Port), default, _iwarp, cts.Token);

        var start = _start.GetBufferSpan();
        var rdma = _rdma.GetBufferSpan();
        byte first = (byte)'A';
        int failures = 0;
        for (int ping = 0; _o.Count == 0 || ping < _o.Count; ping++)
        {
            FillPing(start, ping, first);
            first = first == (byte)'z' ? (byte)'A' : (byte)(first + 1);

            PutInfo(_start.Address, _start.RKey, (uint)_o.Size);
            Post(WrOpcode.Send, SendId, _send.Address, InfoSize, _send.LKey);
            GoAhead(ping);

            PutInfo(_rdma.Address, _rdma.RKey, (uint)_o.Size);
            Post(WrOpcode.Send, SendId, _send.Address, InfoSize, _send.LKey);
            GoAhead(ping);

            if (_o.Validate && !start.SequenceEqual(rdma))
            {
                Console.Error.WriteLine($"data mismatch! (ping {ping})");
                failures++;
                break;
            }
            if (_o.Verbose) Console.WriteLine($"ping data: {CString(rdma)}");
        }
        if (failures == 0 && _o.Validate) Console.Error.WriteLine($"rping: {_o.Count} pings of {_o.Size} bytes verified");
        return failures == 0 ? 0 : 1;
    }

    /// <summary>rping's pattern: "rdma-ping-N: ", then letters from <paramref name="first"/> cycling through 'A'..'z', NUL last.</summary>
    internal static void FillPing(Span<byte> buf, int ping, byte first)
    {
        int n = Encoding.ASCII.GetBytes($"rdma-ping-{ping}: ", buf);
        byte c = first;
        for (int i = n; i < buf.Length; i++)
        {
            buf[i] = c;
            c = c == (byte)'z' ? (byte)'A' : (byte)(c + 1);
        }
        buf[^1] = 0;
    }

    private static string CString(ReadOnlySpan<byte> b)
    {
        int nul = b.IndexOf((byte)0);
        return Encoding.ASCII.GetString(nul < 0 ? b : b[..nul]);
    }

    private void PutInfo(ulong addr, uint rkey, uint size)
    {
        var s = _send.GetBufferSpan();
        BinaryPrimitives.WriteUInt64BigEndian(s, addr);
        BinaryPrimitives.WriteUInt32BigEndian(s[8..], rkey);
        BinaryPrimitives.WriteUInt32BigEndian(s[12..], size);
    }

    private (ulong Addr, uint RKey, uint Len) TakeInfo(WorkCompletion wc)
    {
        if (wc.ByteLength != InfoSize) throw new RpingException($"received bogus data, size {wc.ByteLength}");
        var r = _recv.GetBufferSpan();
        var info = (BinaryPrimitives.ReadUInt64BigEndian(r), BinaryPrimitives.ReadUInt32BigEndian(r[8..]), BinaryPrimitives.ReadUInt32BigEndian(r[12..]));
        PostRecv();
        return info;
    }

    /// <summary>The server's go-ahead: any 16-byte Send (rping's carries zeros); the receive is posted again at once.</summary>
    private void GoAhead(int ping)
    {
        var wc = WaitFor(WcOpcode.Recv) ?? throw new RpingException($"server disconnected at ping {ping}");
        if (wc.ByteLength != InfoSize) throw new RpingException($"received bogus data, size {wc.ByteLength}");
        PostRecv();
    }

    private void PostRecv() => _qp.PostRecv(new RecvWorkRequest(RecvId, new ScatterGatherElement(_recv.Address, InfoSize, _recv.LKey)));

    private void Post(WrOpcode op, ulong id, ulong local, uint length, uint lkey, ulong remote = 0, uint rkey = 0) =>
        _qp.PostSend(new SendWorkRequest
        {
            WrId = id, Opcode = op, Flags = SendFlags.Signaled,
            Local = new ScatterGatherElement(local, length, lkey), RemoteAddress = remote, RKey = rkey,
        });

    /// <summary>
    /// The next completion of <paramref name="want"/>; send completions are consumed on the way (rping ignores them
    /// too, but a failed one fails the run). Null when the connection ended (its receive flushed) and that is allowed.
    /// </summary>
    private WorkCompletion? WaitFor(WcOpcode want, bool allowDisconnect = false)
    {
        var wc = new WorkCompletion[1];
        long deadline = Environment.TickCount64 + (long)_o.StepTimeout.TotalMilliseconds;
        while (true)
        {
            long left = deadline - Environment.TickCount64;
            if (left <= 0) throw new TimeoutException($"no {want} completion within {_o.StepTimeout.TotalSeconds} s");
            if (_cq.Poll(wc, TimeSpan.FromMilliseconds(Math.Min(left, 200))) == 0) continue;
            var c = wc[0];
            if (Debug) Console.Error.WriteLine($"rping: {c}");
            if (c.Status == WcStatus.WrFlushErr && allowDisconnect) return null;
            if (c.Status != WcStatus.Success)
                throw new RpingException($"cq completion failed: {c} ({_qp.ConnectionCloseReason ?? "connection open"})");
            if (c.Opcode == want) return c;
            if (c.Opcode != WcOpcode.Send) throw new RpingException($"unexpected completion {c} while waiting for {want}");
        }
    }

    public void Dispose()
    {
        _qp.Dispose();
        _cq.Dispose();
        _dev.Dispose();
    }
}
