using System.Buffers;
using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using PinnedDma.Storage;
using PinnedDma.Transports.Iwarp;
using PinnedDma.Transports.Iwarp.Internal;
using PinnedDma.Verbs;
using Xunit;

namespace PinnedDma.Tests.Iwarp;

/// <summary>
/// The zero-copy paths of the iWARP transport: large payloads leave by reference (gathered sends straight from region
/// memory, with and without CRC) and, without CRC, large tagged segments are received straight into the region.
/// A model checks every byte after generated mixes of RDMA Writes, RDMA Reads and Sends of every size class against
/// a fragmented pinned file (one 4 KiB extent after another) and a contiguous buffer; hostile peers without CRC cut a
/// directly placed segment short, aim it outside the region, or stall in the middle of it while the region is revoked.
/// </summary>
public sealed class IwarpZeroCopyTests : IDisposable
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(20);
    private const int Block = 4096;
    private const int FileLength = 96 * Block;       // the fragmented server file region
    private const int BufferLength = 512 * 1024;     // the contiguous server buffer region
    private const int ClientLength = 1024 * 1024;
    private const int RecvLength = 192 * 1024;

    private readonly Volume _vol = Volume.CreateInMemory(new VolumeOptions { BlockCount = 1024 });
    private readonly RdmaDevice _serverDev = new("zc-srv"), _clientDev = new("zc-cli");
    private readonly PinOwner _owner;
    private readonly VolumeFile _file;

    public IwarpZeroCopyTests()
    {
        _owner = new PinOwner(_vol, 64 << 20);
        // Two files written block by block in turn: each ends up as one-block extents scattered over the device.
        _file = _vol.CreateFile("fragmented");
        var other = _vol.CreateFile("interleaved");
        for (int i = 0; i < FileLength / Block; i++)
        {
            _file.Write((long)i * Block, Pattern(Block, i + 1));
            other.Write((long)i * Block, Pattern(Block, 200 + i));
        }
    }

    public void Dispose()
    {
        _owner.Dispose();
        _serverDev.Dispose();
        _clientDev.Dispose();
        _vol.Dispose();
    }

    private static bool WaitBounded(Task t) => t.Wait(Bound);

    private static byte[] Pattern(int length, int seed)
    {
        var b = new byte[length];
        for (int i = 0; i < b.Length; i++) b[i] = (byte)(i * 31 + (i >> 9) * 7 + seed);
        return b;
    }

    // ------------------------------------------------------------ a connected pair

    private sealed class Pair : IDisposable
    {
        public required IwarpListener Listener { get; init; }
        public required QueuePair Server { get; init; }
        public required QueuePair Client { get; init; }
        public required CompletionQueue ServerCq { get; init; }
        public required CompletionQueue ClientCq { get; init; }
        public required MemoryRegion FileMr { get; init; }
        public required MemoryRegion BufferMr { get; init; }
        public required MemoryRegion RecvMr { get; init; }
        public required MemoryRegion ClientMr { get; init; }

        public void Dispose()
        {
            Listener.Dispose();
            Client.Dispose();
            Server.Dispose();
            foreach (var mr in new[] { FileMr, BufferMr, RecvMr, ClientMr }) mr.Dispose();
        }
    }

    private Pair Connect(bool crc, int maxFpdu)
    {
        var options = new IwarpOptions { Crc = crc, MaxFpduSize = maxFpdu };
        var spd = _serverDev.AllocatePd();
        var cpd = _clientDev.AllocatePd();
        var scq = _serverDev.CreateCompletionQueue(256);
        var ccq = _clientDev.CreateCompletionQueue(256);
        var server = spd.CreateQueuePair(new QueuePairOptions { SendCq = scq, RecvCq = scq, MaxRecvWr = 64 });
        var client = cpd.CreateQueuePair(new QueuePairOptions { SendCq = ccq, RecvCq = ccq, MaxSendWr = 128 });
        var access = AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteRead;
        var fileMr = spd.RegisterFile(_owner, _file, 0, FileLength, access);
        var bufferMr = spd.RegisterBuffer(BufferLength, access);
        Pattern(BufferLength, 77).CopyTo(bufferMr.GetBufferSpan());
        var recvMr = spd.RegisterBuffer(RecvLength, AccessFlags.LocalWrite);
        var clientMr = cpd.RegisterBuffer(ClientLength, AccessFlags.LocalWrite | AccessFlags.RemoteWrite);
        Pattern(ClientLength, 5).CopyTo(clientMr.GetBufferSpan());
        var listener = new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0), options);
        var accept = Task.Run(async () =>
        {
            var request = await listener.AcceptAsync();
            server.Modify(new QpAttributes { State = QpState.Init, AccessFlags = AccessFlags.RemoteRead | AccessFlags.RemoteWrite });
            request.Accept(server);
        });
        var connect = IwarpConnector.ConnectAsync(client, listener.LocalEndPoint, default, options);
        Assert.True(Task.WaitAll([accept, connect], Bound), "connection setup did not finish");
        Assert.Equal(crc, server.Connection!.Negotiated.Crc);
        return new Pair
        {
            Listener = listener, Server = server, Client = client, ServerCq = scq, ClientCq = ccq,
            FileMr = fileMr, BufferMr = bufferMr, RecvMr = recvMr, ClientMr = clientMr,
        };
    }

    // ------------------------------------------------------------ generated traffic against a model

    public enum Kind { Write, Read, Send }

    /// <summary>One operation: which server region (file or buffer), where, how long, where in the client buffer.</summary>
    public sealed record Op(Kind Kind, bool ToFile, int RemoteOffset, int Length, int LocalOffset);

    private static Gen<int> Length(int max) => Gen.Frequency(
        (3, Gen.Choose(0, 64)),
        (3, Gen.Choose(65, 4095)),
        (3, Gen.Choose(4096, 70_000)),
        (2, Gen.Choose(70_001, max)),
        (1, Gen.Elements(4096, 8192, 65_536 - 20, 65_536, 131_072)));

    private static Gen<Op> OpGen =>
        from kind in Gen.Frequency((5, Gen.Constant(Kind.Write)), (4, Gen.Constant(Kind.Read)), (1, Gen.Constant(Kind.Send)))
        from toFile in Gen.Elements(true, false)
        from length in Length(kind == Kind.Send ? RecvLength : 200_000)
        from remote in Gen.Choose(0, int.MaxValue)
        from local in Gen.Choose(0, int.MaxValue)
        let regionLength = toFile ? FileLength : BufferLength
        let len = Math.Min(length, kind == Kind.Send ? RecvLength : regionLength)
        select new Op(kind, toFile, remote % (regionLength - len + 1), len, local % (ClientLength / 2 - Math.Min(len, ClientLength / 2) + 1));

    public static Arbitrary<(bool Crc, int MaxFpdu, Op[] Ops)> Scenarios() =>
        (from crc in Gen.Elements(true, false)
         from fpdu in Gen.Elements(1024, 16 * 1024, 65_541)
         from ops in Gen.ArrayOf(OpGen, 12)
         select (crc, fpdu, ops)).ToArbitrary();

    [Property(MaxTest = 30, Arbitrary = new[] { typeof(IwarpZeroCopyTests) })]
    public void Generated_writes_reads_and_sends_land_exactly_as_the_model_says((bool Crc, int MaxFpdu, Op[] Ops) scenario)
    {
        var (crc, maxFpdu, ops) = scenario;
        using var p = Connect(crc, maxFpdu);
        var fileModel = new byte[FileLength];
        Assert.Equal(FileLength, _file.Read(0, fileModel));
        var bufferModel = p.BufferMr.GetBufferSpan().ToArray();
        var clientModel = p.ClientMr.GetBufferSpan().ToArray();
        Assert.True(_file.GetExtents().Count > 8, "the file region is not fragmented: the test would not cross extents");

        // Writes and Sends read the client's lower half; Reads land in its upper half (disjoint ranges per batch), so
        // posting a whole batch at once has one outcome, the model's.
        int readCursor = ClientLength / 2;
        ulong wrId = 1;
        var sends = new List<(ulong WrId, int Length, int LocalOffset)>();
        var readRanges = new List<(bool ToFile, int Start, int End)>();
        foreach (var op in ops)
        {
            var region = op.ToFile ? p.FileMr : p.BufferMr;
            var model = op.ToFile ? fileModel : bufferModel;
            switch (op.Kind)
            {
                case Kind.Write:
                    {
                        // A Write may overtake an earlier Read's response (RDMA orders them only with a fence): fence
                        // the Writes that touch what an earlier Read of the batch reads.
                        bool fence = readRanges.Any(r => r.ToFile == op.ToFile && r.Start < op.RemoteOffset + op.Length && op.RemoteOffset < r.End);
                        Post(p, WrOpcode.RdmaWrite, wrId++, p.ClientMr.Address + (ulong)op.LocalOffset, op.Length, region.Address + (ulong)op.RemoteOffset, region.RKey, fence);
                        clientModel.AsSpan(op.LocalOffset, op.Length).CopyTo(model.AsSpan(op.RemoteOffset));
                        break;
                    }
                case Kind.Read:
                    {
                        int len = Math.Min(op.Length, ClientLength - readCursor);
                        Post(p, WrOpcode.RdmaRead, wrId++, p.ClientMr.Address + (ulong)readCursor, len, region.Address + (ulong)op.RemoteOffset, region.RKey);
                        // The read sees every earlier write of the batch (the responder handles the stream in order).
                        model.AsSpan(op.RemoteOffset, len).CopyTo(clientModel.AsSpan(readCursor));
                        readRanges.Add((op.ToFile, op.RemoteOffset, op.RemoteOffset + len));
                        readCursor += len;
                        break;
                    }
                case Kind.Send:
                    {
                        ulong id = wrId++;
                        p.Server.PostRecv(new RecvWorkRequest(id, new(p.RecvMr.Address, RecvLength, p.RecvMr.LKey)));
                        Post(p, WrOpcode.Send, id, p.ClientMr.Address + (ulong)op.LocalOffset, op.Length, 0, 0);
                        sends.Add((id, op.Length, op.LocalOffset));
                        break;
                    }
            }
        }
        // A last signaled 8-byte read fences the batch: its response follows everything before it on the stream.
        Post(p, WrOpcode.RdmaRead, wrId, p.ClientMr.Address + ClientLength - 8, 8, p.BufferMr.Address, p.BufferMr.RKey);
        bufferModel.AsSpan(0, 8).CopyTo(clientModel.AsSpan(ClientLength - 8));
        var done = DrainClient(p, wrId);
        Assert.True(done.All(w => w.Status == WcStatus.Success), $"failed completions: {string.Join(", ", done.Where(w => w.Status != WcStatus.Success))} (close: {p.Client.ConnectionCloseReason} / {p.Server.ConnectionCloseReason})");
        // Send-queue completions come in posting order, reads included (a Write behind an outstanding Read waits).
        Assert.Equal(Enumerable.Range(1, (int)wrId).Select(i => (ulong)i), done.Select(w => w.WrId));

        var fileNow = new byte[FileLength];
        Assert.Equal(FileLength, _file.Read(0, fileNow));
        AssertSame(fileModel, fileNow, "pinned file region");
        AssertSame(bufferModel, p.BufferMr.GetBufferSpan().ToArray(), "server buffer region");
        AssertSame(clientModel, p.ClientMr.GetBufferSpan().ToArray(), "client buffer");

        // Each receive holds one Send; the receive buffer is shared, so check each right after its completion is
        // known to be the latest (sends complete in order; only the last one's bytes remain).
        var recvs = PollAll(p.ServerCq, sends.Count);
        Assert.Equal(sends.Select(s => s.WrId), recvs.Select(r => r.WrId));
        Assert.All(recvs.Zip(sends), x => Assert.Equal((uint)x.Second.Length, x.First.ByteLength));
        if (sends.Count > 0)
        {
            var last = sends[^1];
            Assert.True(p.RecvMr.GetBufferSpan()[..last.Length].SequenceEqual(clientModel.AsSpan(last.LocalOffset, last.Length)), "the last Send's bytes differ");
        }
        Assert.Equal(QpState.Rts, p.Client.State);
        Assert.Equal(QpState.Rts, p.Server.State);
    }

    private static void Post(Pair p, WrOpcode op, ulong id, ulong local, int length, ulong remote, uint rkey, bool fence = false) =>
        p.Client.PostSend(new SendWorkRequest
        {
            WrId = id,
            Opcode = op,
            Flags = SendFlags.Signaled | (fence ? SendFlags.Fence : SendFlags.None),
            Local = new ScatterGatherElement(local, (uint)length, p.ClientMr.LKey),
            RemoteAddress = remote,
            RKey = rkey,
        });

    private static List<WorkCompletion> DrainClient(Pair p, ulong lastWrId)
    {
        var all = new List<WorkCompletion>();
        var wcs = new WorkCompletion[64];
        var sw = Stopwatch.StartNew();
        while (sw.Elapsed < Bound)
        {
            int n = p.ClientCq.Poll(wcs, TimeSpan.FromMilliseconds(100));
            all.AddRange(wcs.Take(n));
            if (all.Any(w => w.WrId == lastWrId || w.Status != WcStatus.Success)) return all;
        }
        Assert.Fail($"no completion for the fence within {Bound} ({all.Count} completions; close: {p.Client.ConnectionCloseReason} / {p.Server.ConnectionCloseReason})");
        return all;
    }

    private static List<WorkCompletion> PollAll(CompletionQueue cq, int count)
    {
        var all = new List<WorkCompletion>();
        var wcs = new WorkCompletion[64];
        var sw = Stopwatch.StartNew();
        while (all.Count < count && sw.Elapsed < Bound) all.AddRange(wcs.Take(cq.Poll(wcs, TimeSpan.FromMilliseconds(100))));
        Assert.True(all.Count == count, $"{all.Count} of {count} completions");
        Assert.All(all, w => Assert.Equal(WcStatus.Success, w.Status));
        return all;
    }

    private static void AssertSame(byte[] expected, byte[] actual, string what)
    {
        int i = expected.AsSpan().CommonPrefixLength(actual);
        Assert.True(i == expected.Length, $"{what}: byte {i} is 0x{(i < actual.Length ? actual[i] : 0):X2}, the model says 0x{(i < expected.Length ? expected[i] : 0):X2}");
    }

    // ------------------------------------------------------------ hostile peers without CRC

    /// <summary>A raw TCP peer that negotiated MPA revision 1 without CRC with a real listener and queue pair.</summary>
    private sealed class RawPeer : IDisposable
    {
        public required Socket Socket { get; init; }
        public required QueuePair Qp { get; init; }
        public required MemoryRegion Region { get; init; }
        public required IwarpListener Listener { get; init; }

        public void Send(ReadOnlySpan<byte> bytes)
        {
            while (!bytes.IsEmpty) bytes = bytes[Socket.Send(bytes)..];
        }

        /// <summary>Reads until the stream ends; returns the Terminate the real side sent, if any.</summary>
        public TerminateMessage? ReadUntilEnd()
        {
            var dec = new FpduDecoder(new FpduOptions { Crc = false, MaxUlpduLength = ushort.MaxValue });
            var bytes = new List<byte>();
            var buf = new byte[4096];
            var sw = Stopwatch.StartNew();
            while (sw.Elapsed < Bound)
            {
                int n = Socket.Receive(buf);
                if (n == 0) break;
                bytes.AddRange(buf.AsSpan(0, n).ToArray());
            }
            var seq = new ReadOnlySequence<byte>(bytes.ToArray());
            TerminateMessage? term = null;
            while (dec.TryParse(ref seq, out Fpdu f, out _) == ParseStatus.Frame)
                if (f.Header.Opcode == RdmapOpcode.Terminate) term = f.Terminate;
            return term;
        }

        public void Dispose()
        {
            Socket.Dispose();
            Qp.Dispose();
            Region.Dispose();
            Listener.Dispose();
        }
    }

    private RawPeer ConnectRaw()
    {
        var pd = _serverDev.AllocatePd();
        var cq = _serverDev.CreateCompletionQueue(16);
        var qp = pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = cq });
        qp.Modify(new QpAttributes { State = QpState.Init, AccessFlags = AccessFlags.RemoteRead | AccessFlags.RemoteWrite });
        var mr = pd.RegisterFile(_owner, _file, 0, FileLength, AccessFlags.LocalWrite | AccessFlags.RemoteWrite);
        var listener = new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0), new IwarpOptions { Crc = false, MaxFpduSize = 65_541 });
        var accept = Task.Run(async () => (await listener.AcceptAsync()).Accept(qp));
        var (s, frame) = IwarpTestUtil.ConnectRawMpa(listener.LocalEndPoint, wantCrc: false, Bound);
        var peer = new RawPeer { Socket = s, Qp = qp, Region = mr, Listener = listener };
        Assert.True(WaitBounded(accept), "the listener did not accept the raw peer");
        Assert.False(frame.Crc);
        Assert.Equal(QpState.Rts, qp.State);
        return peer;
    }

    /// <summary>Length field and tagged header of an RDMA Write FPDU without CRC (payload and pad follow).</summary>
    private static byte[] WriteHead(uint stag, ulong to, int payloadLength)
    {
        var h = DdpRdmapHeader.ForTagged(RdmapOpcode.RdmaWrite, stag, to, last: true);
        var b = new byte[2 + DdpRdmapHeader.TaggedLength];
        BinaryPrimitives.WriteUInt16BigEndian(b, (ushort)(DdpRdmapHeader.TaggedLength + payloadLength));
        h.WriteTo(b.AsSpan(2));
        return b;
    }

    /// <summary>Pad and the CRC field, which is present and zero without CRC (RFC 5044 §4.1, §4.4).</summary>
    private static byte[] Trailer(int payloadLength) => new byte[Fpdu.PadLength(DdpRdmapHeader.TaggedLength + payloadLength) + Fpdu.CrcSize];

    /// <summary>Device bytes behind the region's file range, block by block in file order.</summary>
    private byte[] RegionDeviceBytes(MemoryRegion mr)
    {
        var image = new byte[FileLength];
        for (long off = 0; off < FileLength;)
        {
            var (dev, contiguous) = mr.Pin!.Translate(off);
            int n = (int)Math.Min(contiguous, FileLength - off);
            _vol.Device.GetSpan(dev, n).CopyTo(image.AsSpan((int)off, n));
            off += n;
        }
        return image;
    }

    [Theory]
    [InlineData(3000)]
    [InlineData(40_000)]
    [InlineData(64_999)]
    public void A_large_write_cut_short_ends_the_connection_and_lands_only_its_own_bytes(int sent)
    {
        const int payloadLength = 65_000, at = 5 * Block + 123;
        using var peer = ConnectRaw();
        var before = RegionDeviceBytes(peer.Region);
        var payload = Pattern(payloadLength, 99);
        peer.Send(WriteHead(peer.Region.RKey, peer.Region.Address + at, payloadLength));
        peer.Send(payload.AsSpan(0, Math.Min(sent, payloadLength)));
        peer.Socket.Shutdown(SocketShutdown.Send);
        var term = peer.ReadUntilEnd();
        Assert.True(WaitBounded(peer.Qp.Connection!.Completion), "the receive loop did not end");
        Assert.Equal(TerminateCode.Mpa(MpaErrorCode.TcpConnectionLost), term?.Code);
        Assert.Contains("Stream", peer.Qp.ConnectionCloseReason);
        Assert.Equal(QpState.Error, peer.Qp.State);
        var after = RegionDeviceBytes(peer.Region);
        // Bytes outside [at, at + sent) are untouched; inside, only the peer's own bytes may have landed.
        Assert.True(before.AsSpan(0, at).SequenceEqual(after.AsSpan(0, at)), "bytes before the write changed");
        Assert.True(before.AsSpan(at + sent).SequenceEqual(after.AsSpan(at + sent)), "bytes past what the peer sent changed");
        for (int i = 0; i < sent; i++)
            Assert.True(after[at + i] == before[at + i] || after[at + i] == payload[i], $"byte {at + i} is neither old nor the peer's");
    }

    [Fact]
    public void A_large_write_outside_the_region_is_refused_before_any_byte_lands()
    {
        const int payloadLength = 60_000;
        using var peer = ConnectRaw();
        var before = _vol.Device.GetSpan(0, (int)_vol.Device.Length).ToArray();
        var payload = Pattern(payloadLength, 3);
        // Starts inside, ends past the region: the whole segment must be rejected (base-or-bounds), not half placed.
        peer.Send(WriteHead(peer.Region.RKey, peer.Region.Address + FileLength - 1000, payloadLength));
        peer.Send(payload);
        peer.Send(Trailer(payloadLength));
        var term = peer.ReadUntilEnd();
        Assert.Equal(TerminateCode.Ddp(DdpErrorType.TaggedBuffer, DdpErrorCode.TaggedBaseOrBounds), term?.Code);
        Assert.True(WaitBounded(peer.Qp.Connection!.Completion));
        var after = _vol.Device.GetSpan(0, (int)_vol.Device.Length);
        int diff = before.AsSpan().CommonPrefixLength(after);
        Assert.True(diff == before.Length, $"device byte {diff} changed");
    }

    [Fact]
    public void A_peer_stalled_inside_a_large_write_does_not_hold_off_a_revoke_and_lands_nothing_after_it()
    {
        const int payloadLength = 64_000, at = 7 * Block;
        const int first = 20_000;
        using var peer = ConnectRaw();
        var devBefore = RegionDeviceBytes(peer.Region);
        var blocks = Enumerable.Range(0, FileLength / Block).Select(i => peer.Region.Pin!.Translate((long)i * Block).DeviceOffset).ToArray();
        var payload = Pattern(payloadLength, 41);
        peer.Send(WriteHead(peer.Region.RKey, peer.Region.Address + at, payloadLength));
        peer.Send(payload.AsSpan(0, first));
        // Wait until the first part was placed (the receiver is now waiting for the rest).
        var sw = Stopwatch.StartNew();
        while (!RegionDeviceBytes(peer.Region).AsSpan(at, first).SequenceEqual(payload.AsSpan(0, first)) && sw.Elapsed < Bound) Thread.Sleep(5);
        Assert.True(RegionDeviceBytes(peer.Region).AsSpan(at, first).SequenceEqual(payload.AsSpan(0, first)), "the first part never landed");

        // The file is truncated under a Break policy: the lease break must revoke the pin although the peer is in
        // the middle of a segment for it (the receiver holds the region only while bytes are there to copy).
        var truncate = Task.Run(() => _file.Truncate(0, ConflictPolicy.Break(TimeSpan.FromMilliseconds(20))));
        Assert.True(WaitBounded(truncate), "the truncate waited on a stalled peer");
        Assert.False(peer.Region.IsValid);
        var snapshot = blocks.Select(d => _vol.Device.GetSpan(d, Block).ToArray()).ToArray();

        try
        {
            peer.Send(payload.AsSpan(first));
            peer.Send(Trailer(payloadLength));
        }
        catch (SocketException)
        {
            // The real side may already have sent its Terminate and closed: the rest of the FPDU has nowhere to go.
        }
        var term = peer.ReadUntilEnd();
        Assert.Equal(TerminateCode.Ddp(DdpErrorType.TaggedBuffer, DdpErrorCode.TaggedInvalidStag), term?.Code);
        Assert.True(WaitBounded(peer.Qp.Connection!.Completion));
        Assert.Equal(QpState.Error, peer.Qp.State);
        for (int i = 0; i < blocks.Length; i++)
            Assert.True(_vol.Device.GetSpan(blocks[i], Block).SequenceEqual(snapshot[i]), $"block {i} of the revoked region changed after the revoke");
        Assert.True(devBefore.Length == FileLength);
        Assert.True(_vol.Fsck().IsClean);
    }

    // ------------------------------------------------------------ a peer that stops reading

    /// <summary>A raw peer that asks for four 16 MiB RDMA Reads and then never reads its socket.</summary>
    private (QueuePair Qp, MemoryRegion Big, IwarpListener Listener, Socket Socket) StalledPeer(TimeSpan stallTimeout)
    {
        const int regionLength = 16 << 20;
        var pd = _serverDev.AllocatePd();
        var cq = _serverDev.CreateCompletionQueue(16);
        var qp = pd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = cq });
        qp.Modify(new QpAttributes { State = QpState.Init, AccessFlags = AccessFlags.RemoteRead | AccessFlags.RemoteWrite });
        var big = pd.RegisterBuffer(regionLength, AccessFlags.RemoteRead);
        var listener = new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0), new IwarpOptions { Crc = false, SendStallTimeout = stallTimeout });
        var accept = Task.Run(async () => (await listener.AcceptAsync()).Accept(qp));
        var (s, _) = IwarpTestUtil.ConnectRawMpa(listener.LocalEndPoint, wantCrc: false, Bound, receiveBufferSize: 4096);
        Assert.True(WaitBounded(accept), "the listener did not accept the raw peer");
        for (uint msn = 1; msn <= 4; msn++)
        {
            var body = new byte[RdmaReadRequest.Size];
            new RdmaReadRequest(0x77, 0, regionLength, big.RKey, big.Address).WriteTo(body);
            var h = DdpRdmapHeader.ForUntagged(RdmapOpcode.RdmaReadRequest, DdpQueue.RdmaReadRequest, msn, 0, true);
            // Framing, header, body, pad and the CRC field (zero without CRC: it is always on the wire).
            var f = new byte[2 + h.Length + body.Length + Fpdu.PadLength(h.Length + body.Length) + Fpdu.CrcSize];
            BinaryPrimitives.WriteUInt16BigEndian(f, (ushort)(h.Length + body.Length));
            h.WriteTo(f.AsSpan(2));
            body.CopyTo(f.AsSpan(2 + h.Length));
            s.Send(f);
        }
        return (qp, big, listener, s);
    }

    /// <summary>An RDMA Write and Read of 100 000 bytes on a fresh pair whose server side shares the stalled peer's device.</summary>
    private void OtherTrafficWorks()
    {
        using var p = Connect(crc: true, maxFpdu: 16 * 1024);
        Post(p, WrOpcode.RdmaWrite, 1, p.ClientMr.Address, 100_000, p.BufferMr.Address + 4096, p.BufferMr.RKey);
        Post(p, WrOpcode.RdmaRead, 2, p.ClientMr.Address + ClientLength / 2, 100_000, p.BufferMr.Address + 4096, p.BufferMr.RKey);
        var done = DrainClient(p, 2);
        Assert.All(done, w => Assert.Equal(WcStatus.Success, w.Status));
        Assert.True(p.ClientMr.GetBufferSpan().Slice(ClientLength / 2, 100_000).SequenceEqual(p.ClientMr.GetBufferSpan()[..100_000]));
    }

    [Fact]
    public void A_peer_that_stops_reading_delays_no_other_queue_pair_of_the_device()
    {
        var (qp, big, listener, s) = StalledPeer(TimeSpan.FromSeconds(60));
        try
        {
            // TCP's buffers fill within milliseconds; from then on the stalled QP's sends make no progress.
            Thread.Sleep(300);
            OtherTrafficWorks();
            Assert.Equal(QpState.Rts, qp.State);
        }
        finally
        {
            qp.Dispose();
            s.Dispose();
            listener.Dispose();
            big.Dispose();
        }
    }

    [Fact]
    public void A_peer_that_stops_reading_is_cut_off_after_the_stall_timeout()
    {
        var (qp, big, listener, s) = StalledPeer(TimeSpan.FromMilliseconds(300));
        try
        {
            var sw = Stopwatch.StartNew();
            while (qp.State != QpState.Error && sw.Elapsed < Bound) Thread.Sleep(20);
            Assert.Equal(QpState.Error, qp.State);
            Assert.Contains("send failed", qp.ConnectionCloseReason);
            OtherTrafficWorks();
        }
        finally
        {
            qp.Dispose();
            s.Dispose();
            listener.Dispose();
            big.Dispose();
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_peer_that_resets_the_connection_ends_it_cleanly(bool midSegment)
    {
        using var peer = ConnectRaw();
        if (midSegment)
        {
            // Inside a directly placed segment: the receive thread is waiting for the rest of the payload.
            peer.Send(WriteHead(peer.Region.RKey, peer.Region.Address, 60_000));
            peer.Send(Pattern(20_000, 1));
            Thread.Sleep(100);
        }
        // RST instead of FIN: the receive thread's wait ends with an error, not an end of stream.
        peer.Socket.LingerState = new LingerOption(true, 0);
        peer.Socket.Close();
        Assert.True(WaitBounded(peer.Qp.Connection!.Completion), "the receive thread did not end after a reset");
        Assert.Equal(QpState.Error, peer.Qp.State);
        Assert.NotNull(peer.Qp.ConnectionCloseReason);
    }
}
