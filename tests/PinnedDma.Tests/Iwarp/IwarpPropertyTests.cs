using System.Buffers;
using System.IO.Pipelines;
using FsCheck.Xunit;
using PinnedDma.Transports.Iwarp.Internal;
using Xunit;

namespace PinnedDma.Tests.Iwarp;

public class IwarpPropertyTests
{
    private static int Pick(int value, int n) => (int)((uint)value % (uint)n);

    private static FpduOptions Options(bool crc) => new() { Crc = crc, MaxUlpduLength = 2048 };

    private static byte[] Bytes(byte[]? a, int max = 1500) => a is null ? Array.Empty<byte>() : a.Length > max ? a[..max] : a;

    /// <summary>Parses exactly one FPDU from a chunked copy of <paramref name="wire"/> followed by a trailer FPDU.</summary>
    private static Fpdu RoundTrip(FpduOptions options, byte[] wire, int chunk)
    {
        var enc = new FpduEncoder(options);
        byte[] trailer = IwarpTestUtil.Encode(enc, w => enc.WriteSend(w, RdmapOpcode.Send, 99, 0, true, "z"u8));
        byte[] all = wire.Concat(trailer).ToArray();
        var seq = IwarpTestUtil.Chunked(all, 1 + Pick(chunk, 37));
        var dec = new FpduDecoder(options);
        Assert.Equal(ParseStatus.Frame, dec.TryParse(ref seq, out Fpdu f, out IwarpError e));
        Assert.Equal(IwarpError.None, e);
        Assert.Equal(wire.Length, f.WireLength);
        Assert.Equal(0, f.WireLength % 4);
        Assert.Equal(trailer.Length, seq.Length);
        Assert.Equal(ParseStatus.Frame, dec.TryParse(ref seq, out Fpdu t, out _));
        Assert.Equal(99u, t.Header.MessageSequenceNumber);
        Assert.True(seq.IsEmpty);
        return f;
    }

    [Property(MaxTest = 300)]
    public void Tagged_messages_round_trip(uint stag, ulong to, bool last, bool readResponse, byte[] payload, bool crc, int chunk)
    {
        payload = Bytes(payload);
        var enc = new FpduEncoder(Options(crc));
        byte[] wire = IwarpTestUtil.Encode(enc, w =>
        {
            if (readResponse) enc.WriteReadResponse(w, stag, to, last, payload);
            else enc.WriteRdmaWrite(w, stag, to, last, payload);
        });
        Fpdu f = RoundTrip(Options(crc), wire, chunk);
        Assert.Equal(readResponse ? RdmapOpcode.RdmaReadResponse : RdmapOpcode.RdmaWrite, f.Header.Opcode);
        Assert.Equal(DdpRdmapHeader.ForTagged(f.Header.Opcode, stag, to, last), f.Header);
        Assert.Equal(payload, f.Payload.ToArray());
    }

    [Property(MaxTest = 300)]
    public void Sends_round_trip(int kind, uint msn, uint mo, bool last, uint invalidate, byte[] payload, bool crc, int chunk)
    {
        payload = Bytes(payload);
        RdmapOpcode op = (RdmapOpcode)(3 + Pick(kind, 4));
        var enc = new FpduEncoder(Options(crc));
        byte[] wire = IwarpTestUtil.Encode(enc, w => enc.WriteSend(w, op, msn, mo, last, payload, invalidate));
        Fpdu f = RoundTrip(Options(crc), wire, chunk);
        bool inv = op is RdmapOpcode.SendWithInvalidate or RdmapOpcode.SendWithSolicitedEventAndInvalidate;
        Assert.Equal(DdpRdmapHeader.ForUntagged(op, DdpQueue.Send, msn, mo, last, inv ? invalidate : 0), f.Header);
        Assert.Equal(payload, f.Payload.ToArray());
    }

    [Property(MaxTest = 300)]
    public void Read_requests_round_trip(uint msn, uint sinkStag, ulong sinkTo, uint size, uint srcStag, ulong srcTo, bool crc, int chunk)
    {
        var rr = new RdmaReadRequest(sinkStag, sinkTo, size, srcStag, srcTo);
        var enc = new FpduEncoder(Options(crc));
        Fpdu f = RoundTrip(Options(crc), IwarpTestUtil.Encode(enc, w => enc.WriteReadRequest(w, msn, rr)), chunk);
        Assert.Equal(RdmapOpcode.RdmaReadRequest, f.Header.Opcode);
        Assert.Equal(DdpQueue.RdmaReadRequest, f.Header.QueueNumber);
        Assert.Equal(msn, f.Header.MessageSequenceNumber);
        Assert.Equal(rr, f.ReadRequest);
    }

    private static TerminateMessage MakeTerminate(int layer, byte etype, byte code, bool m, bool d, bool r, ushort segLen,
        byte ddpCtrl, byte rdmapCtrl, uint a, ulong b, uint c, uint e, RdmaReadRequest rr)
    {
        DdpRdmapHeader? hdr = null;
        if (d)
        {
            hdr = (ddpCtrl & 0x80) != 0
                ? new DdpRdmapHeader { DdpControl = ddpCtrl, RdmapControl = rdmapCtrl, STag = a, TaggedOffset = b }
                : new DdpRdmapHeader { DdpControl = ddpCtrl, RdmapControl = rdmapCtrl, InvalidateSTag = a, QueueNumber = c, MessageSequenceNumber = e, MessageOffset = (uint)b };
        }
        return new TerminateMessage
        {
            Code = new TerminateCode((TerminateLayer)Pick(layer, 3), (byte)(etype & 0x0F), code),
            SegmentLengthValid = m,
            DdpSegmentLength = d ? segLen : (ushort)0,
            TerminatedDdpHeader = hdr,
            TerminatedReadRequest = r ? rr : null,
        };
    }

    [Property(MaxTest = 300)]
    public void Terminates_round_trip(int layer, byte etype, byte code, bool m, bool d, bool r, ushort segLen, byte ddpCtrl, byte rdmapCtrl,
        uint a, ulong b, uint c, uint e, uint msn, bool crc, int chunk)
    {
        var term = MakeTerminate(layer, etype, code, m, d, r, segLen, ddpCtrl, rdmapCtrl, a, b, c, e, new RdmaReadRequest(a, b, c, e, ~b));
        var enc = new FpduEncoder(Options(crc));
        Fpdu f = RoundTrip(Options(crc), IwarpTestUtil.Encode(enc, w => enc.WriteTerminate(w, msn, term)), chunk);
        Assert.Equal(RdmapOpcode.Terminate, f.Header.Opcode);
        Assert.Equal(DdpQueue.Terminate, f.Header.QueueNumber);
        Assert.Equal(term, f.Terminate);
    }

    [Property(MaxTest = 300)]
    public void Mpa_frames_round_trip(bool reply, bool markers, bool crc, bool reject, bool rev2, bool enhanced, ushort ird, ushort ord, bool p2p, int rtr, byte[] pd, int chunk)
    {
        var frame = new MpaFrame
        {
            Kind = reply ? MpaFrameKind.Reply : MpaFrameKind.Request,
            Markers = markers,
            Crc = crc,
            Reject = reject,
            Revision = rev2 ? (byte)2 : (byte)1,
            Enhanced = rev2 && enhanced ? new MpaEnhancedParameters((ushort)(ird & 0x3FFF), (ushort)(ord & 0x3FFF), p2p, (MpaRtrTypes)Pick(rtr, 8)) : null,
            PrivateData = Bytes(pd, 508),
        };
        byte[] wire = frame.ToArray();
        Assert.Equal(frame.EncodedLength, wire.Length);
        var seq = IwarpTestUtil.Chunked(wire.Concat(new byte[] { 0xEE }).ToArray(), 1 + Pick(chunk, 29));
        Assert.Equal(ParseStatus.Frame, MpaFrame.TryParse(ref seq, frame.Kind, out MpaFrame? parsed, out _));
        Assert.Equal(frame, parsed);
        Assert.Equal(1, seq.Length);

        // Every strict prefix is incomplete (never an error, never a frame) and consumes nothing.
        for (int cut = 0; cut < wire.Length; cut += 1 + cut / 8)
        {
            var prefix = new ReadOnlySequence<byte>(wire, 0, cut);
            Assert.Equal(ParseStatus.NeedMoreData, MpaFrame.TryParse(ref prefix, frame.Kind, out _, out _));
            Assert.Equal(cut, prefix.Length);
        }
    }

    /// <summary>A random valid stream of FPDUs of every kind, with the start offset of each FPDU.</summary>
    private static (byte[] Wire, List<int> Starts) RandomStream(FpduEncoder enc, int seed, int count)
    {
        var rnd = new Random(seed);
        var w = new ArrayBufferWriter<byte>();
        var starts = new List<int>();
        for (int i = 0; i < count; i++)
        {
            starts.Add(w.WrittenCount);
            byte[] payload = new byte[rnd.Next(0, 200)];
            rnd.NextBytes(payload);
            switch (rnd.Next(6))
            {
                case 0: enc.WriteRdmaWrite(w, (uint)rnd.Next(), (ulong)rnd.NextInt64(), rnd.Next(2) == 0, payload); break;
                case 1: enc.WriteReadResponse(w, (uint)rnd.Next(), (ulong)rnd.NextInt64(), rnd.Next(2) == 0, payload); break;
                case 2: enc.WriteSend(w, (RdmapOpcode)rnd.Next(3, 7), (uint)rnd.Next(), (uint)rnd.Next(), rnd.Next(2) == 0, payload, (uint)rnd.Next()); break;
                case 3: enc.WriteReadRequest(w, (uint)rnd.Next(), new RdmaReadRequest((uint)rnd.Next(), (ulong)rnd.NextInt64(), (uint)rnd.Next(), (uint)rnd.Next(), (ulong)rnd.NextInt64())); break;
                case 4:
                    enc.WriteTerminate(w, (uint)rnd.Next(), MakeTerminate(rnd.Next(), (byte)rnd.Next(16), (byte)rnd.Next(256), rnd.Next(2) == 0, rnd.Next(2) == 0, rnd.Next(2) == 0,
                        (ushort)rnd.Next(65536), (byte)rnd.Next(256), (byte)rnd.Next(256), (uint)rnd.Next(), (ulong)rnd.NextInt64(), (uint)rnd.Next(), (uint)rnd.Next(),
                        new RdmaReadRequest(1, 2, 3, 4, 5)));
                    break;
                default: enc.WriteSend(w, RdmapOpcode.Send, (uint)rnd.Next(), 0, true, ReadOnlySpan<byte>.Empty); break;
            }
        }
        return (w.WrittenSpan.ToArray(), starts);
    }

    /// <summary>Parses a whole buffer; every outcome must be a frame, a request for more data, or a correctly mapped typed error.</summary>
    private static (int Frames, IwarpError Error, long Consumed) ParseAll(FpduDecoder dec, ReadOnlySequence<byte> seq)
    {
        long total = seq.Length;
        int frames = 0;
        for (int guard = 0; guard <= total; guard++)
        {
            ReadOnlySequence<byte> before = seq;
            ParseStatus s = dec.TryParse(ref seq, out Fpdu f, out IwarpError e);
            switch (s)
            {
                case ParseStatus.Frame:
                    Assert.True(f.WireLength > 0 && seq.Length == before.Length - f.WireLength);
                    frames++;
                    continue;
                case ParseStatus.NeedMoreData:
                    Assert.Equal(before.Length, seq.Length);
                    Assert.Equal(default, e);
                    return (frames, default, total - seq.Length);
                default:
                    Assert.Equal(before.Length, seq.Length);
                    Assert.True(e.IsError);
                    bool tagged = seq.Length > 2 && (seq.Slice(2, 1).FirstSpan[0] & 0x80) != 0;
                    Assert.Equal(IwarpTestUtil.ExpectedTerminate(e, tagged), e.Terminate);
                    return (frames, e, total - seq.Length);
            }
        }
        throw new InvalidOperationException("parser made no progress");
    }

    [Property(MaxTest = 300)]
    public void Random_mutations_yield_frames_or_typed_errors(int seed, byte count, int[] positions, byte[] xors, bool crc, int chunk)
    {
        var options = Options(crc);
        var (wire, starts) = RandomStream(new FpduEncoder(options), seed, 1 + count % 6);
        byte[] mutated = (byte[])wire.Clone();
        int firstCorrupt = int.MaxValue;
        positions ??= Array.Empty<int>();
        xors ??= Array.Empty<byte>();
        for (int i = 0; i < Math.Min(positions.Length, 8); i++)
        {
            int pos = Pick(positions[i], mutated.Length);
            byte x = i < xors.Length && xors[i] != 0 ? xors[i] : (byte)0x5A;
            mutated[pos] ^= x;
        }
        for (int i = 0; i < mutated.Length; i++)
        {
            if (mutated[i] != wire[i])
            {
                firstCorrupt = i;
                break;
            }
        }
        var (frames, error, _) = ParseAll(new FpduDecoder(options), IwarpTestUtil.Chunked(mutated, 1 + Pick(chunk, 64)));
        if (firstCorrupt == int.MaxValue)
        {
            Assert.Equal(starts.Count, frames);
            Assert.False(error.IsError);
        }
        else if (crc)
        {
            // With CRC every FPDU from the first corrupted one on must be refused: nothing corrupted is delivered.
            int intact = starts.Count(s => s <= firstCorrupt) - 1;
            Assert.True(frames <= intact, $"{frames} frames delivered but only {intact} precede the corruption at {firstCorrupt}");
        }
    }

    [Property(MaxTest = 200)]
    public void Truncated_fpdus_wait_for_more_data(int seed, int cutSeed, bool crc)
    {
        var options = Options(crc);
        var (wire, _) = RandomStream(new FpduEncoder(options), seed, 1);
        int cut = Pick(cutSeed, wire.Length);
        var seq = new ReadOnlySequence<byte>(wire, 0, cut);
        Assert.Equal(ParseStatus.NeedMoreData, new FpduDecoder(options).TryParse(ref seq, out _, out _));
        Assert.Equal(cut, seq.Length);
    }

    [Property(MaxTest = 200)]
    public void Oversized_lengths_are_framing_errors(ushort length, bool crc)
    {
        var options = Options(crc);
        int ulpdu = options.ReceiveLimit + 1 + Pick(length, ushort.MaxValue - options.ReceiveLimit);
        byte[] bytes = { (byte)(ulpdu >> 8), (byte)ulpdu, 0xC1, 0x40 };
        var seq = new ReadOnlySequence<byte>(bytes);
        Assert.Equal(ParseStatus.Error, new FpduDecoder(options).TryParse(ref seq, out _, out IwarpError e));
        Assert.Equal(IwarpErrorKind.FpduLengthTooLarge, e.Kind);
        Assert.Equal(new TerminateCode(TerminateLayer.Llp, 0, 3), e.Terminate);
    }

    [Property(MaxTest = 200)]
    public void Any_crc_damage_is_a_crc_error(int seed, int pos, byte xor)
    {
        var options = Options(true);
        var (wire, _) = RandomStream(new FpduEncoder(options), seed, 1);
        int p = 2 + Pick(pos, wire.Length - 2); // leave the length field alone
        wire[p] ^= xor == 0 ? (byte)1 : xor;
        var seq = new ReadOnlySequence<byte>(wire);
        Assert.Equal(ParseStatus.Error, new FpduDecoder(options).TryParse(ref seq, out _, out IwarpError e));
        Assert.Equal(IwarpErrorKind.CrcMismatch, e.Kind);
        Assert.Equal(new TerminateCode(TerminateLayer.Llp, 0, 2), e.Terminate);
    }

    /// <summary>Independent statement of which error a header with arbitrary control fields must produce.</summary>
    private static IwarpErrorKind ExpectedHeaderError(bool tagged, int dv, int rv, int opcode, uint qn, bool last, uint mo, int bodyLength)
    {
        if (dv != 1) return IwarpErrorKind.InvalidDdpVersion;
        if (!tagged && qn > 2) return IwarpErrorKind.InvalidQueueNumber;
        if (rv != 1) return IwarpErrorKind.InvalidRdmapVersion;
        if (opcode > 7) return IwarpErrorKind.UnknownOpcode;
        bool opTagged = opcode is 0 or 2;
        if (opTagged != tagged) return IwarpErrorKind.OpcodeBufferModelMismatch;
        if (!tagged)
        {
            uint want = opcode == 1 ? 1u : opcode == 7 ? 2u : 0u;
            if (qn != want) return IwarpErrorKind.OpcodeQueueMismatch;
            if ((opcode is 1 or 7) && (mo != 0 || !last)) return IwarpErrorKind.InvalidMessageOffset;
            if (opcode == 1 && bodyLength != 28) return IwarpErrorKind.MalformedReadRequest;
            // A Terminate needs its 4-byte control word; copies that disagree with M/D/R are ignored, never answered.
            if (opcode == 7 && bodyLength < 4) return IwarpErrorKind.MalformedTerminate;
        }
        return IwarpErrorKind.None;
    }

    [Property(MaxTest = 500)]
    public void Arbitrary_control_fields_map_to_the_right_terminate(bool tagged, bool last, int dv, int rv, int opcode, int qnSel, uint mo, byte bodySel, bool crc)
    {
        dv = Pick(dv, 4);
        rv = Pick(rv, 4);
        opcode = Pick(opcode, 16);
        uint qn = (uint)Pick(qnSel, 5);
        if (Pick(qnSel, 7) == 6) qn = uint.MaxValue;
        mo = Pick((int)mo, 3) == 0 ? mo : 0;
        int bodyLength = bodySel % 3 == 0 ? 28 : bodySel % 3 == 1 ? 4 : bodySel % 40;
        var header = new DdpRdmapHeader
        {
            DdpControl = (byte)((tagged ? 0x80 : 0) | (last ? 0x40 : 0) | dv),
            RdmapControl = (byte)((rv << 6) | opcode),
            STag = 7,
            TaggedOffset = 9,
            QueueNumber = qn,
            MessageSequenceNumber = 1,
            MessageOffset = mo,
        };
        var options = Options(crc);
        var enc = new FpduEncoder(options);
        byte[] wire = IwarpTestUtil.Encode(enc, w => enc.Write(w, header, new byte[bodyLength]));
        var seq = new ReadOnlySequence<byte>(wire);
        ParseStatus s = new FpduDecoder(options).TryParse(ref seq, out Fpdu f, out IwarpError e);
        IwarpErrorKind expected = ExpectedHeaderError(tagged, dv, rv, opcode, qn, last, mo, bodyLength);
        if (expected == IwarpErrorKind.None)
        {
            Assert.Equal(ParseStatus.Frame, s);
            Assert.Equal(tagged ? header with { QueueNumber = 0, MessageSequenceNumber = 0, MessageOffset = 0 } : header with { STag = 0, TaggedOffset = 0 }, f.Header);
        }
        else
        {
            Assert.Equal(ParseStatus.Error, s);
            Assert.Equal(expected, e.Kind);
            Assert.Equal(IwarpTestUtil.ExpectedTerminate(e, tagged), e.Terminate);
        }
    }

    [Property(MaxTest = 300)]
    public void Mutated_mpa_frames_parse_or_fail_typed(bool reply, byte[] pd, int[] positions, byte[] xors, bool expectReply)
    {
        var frame = new MpaFrame { Kind = reply ? MpaFrameKind.Reply : MpaFrameKind.Request, Crc = true, PrivateData = Bytes(pd, 64) };
        byte[] wire = frame.ToArray();
        positions ??= Array.Empty<int>();
        xors ??= Array.Empty<byte>();
        for (int i = 0; i < Math.Min(positions.Length, 6); i++)
            wire[Pick(positions[i], wire.Length)] ^= i < xors.Length ? xors[i] : (byte)0xFF;
        var seq = new ReadOnlySequence<byte>(wire);
        ParseStatus s = MpaFrame.TryParse(ref seq, expectReply ? MpaFrameKind.Reply : MpaFrameKind.Request, out MpaFrame? parsed, out IwarpError e);
        if (s == ParseStatus.Error) Assert.Equal(IwarpTestUtil.ExpectedTerminate(e, false), e.Terminate);
        else if (s == ParseStatus.Frame)
        {
            Assert.NotNull(parsed);
            Assert.True(parsed!.Revision is 1 or 2);
            Assert.True(parsed.PrivateDataLengthField <= 512);
            // A peer that asks for markers is always refused with a reject and a typed error.
            if (!expectReply)
            {
                MpaResponderDecision d = MpaNegotiation.Respond(parsed, new MpaLocalSettings { Revision = 2 });
                if (parsed.Markers)
                {
                    Assert.Equal(IwarpErrorKind.MpaMarkersRequested, d.Error.Kind);
                    Assert.True(d.Reply.Reject);
                }
                if (d.Error.IsError) Assert.Equal(IwarpTestUtil.ExpectedTerminate(d.Error, false), d.Error.Terminate);
                Assert.False(d.Reply.Markers);
            }
        }
        else Assert.Equal(wire.Length, seq.Length);
    }

    [Property(MaxTest = 100)]
    public void Pipe_reader_loop_always_terminates(int seed, byte count, int[] positions, bool crc, int chunk, int cutSeed, bool garbage)
    {
        var options = Options(crc);
        var (wire, starts) = RandomStream(new FpduEncoder(options), seed, 1 + count % 5);
        if (garbage) new Random(seed).NextBytes(wire);
        positions ??= Array.Empty<int>();
        foreach (int p in positions.Take(4)) wire[Pick(p, wire.Length)] ^= 0xA5;
        int cut = Pick(cutSeed, 4) == 0 ? Pick(cutSeed, wire.Length + 1) : wire.Length;
        bool intact = !garbage && positions.Length == 0;

        var pipe = new Pipe(new PipeOptions(pauseWriterThreshold: 0));
        int step = 1 + Pick(chunk, 97);
        for (int off = 0; off < cut; off += step)
            pipe.Writer.Write(wire.AsSpan(off, Math.Min(step, cut - off)));
        pipe.Writer.Complete();

        int delivered = 0;
        ValueTask<IwarpError> run = FpduPipeReader.ReadAllAsync(pipe.Reader, new FpduDecoder(options), f => { delivered++; return true; });
        IwarpError e = run.AsTask().WaitAsync(TimeSpan.FromSeconds(10)).GetAwaiter().GetResult();
        if (e.IsError && e.Kind != IwarpErrorKind.InvalidDdpVersion) Assert.Equal(IwarpTestUtil.ExpectedTerminate(e, false), e.Terminate);
        if (e.Kind == IwarpErrorKind.InvalidDdpVersion) Assert.Contains(e.Terminate, new[] { new TerminateCode(TerminateLayer.Ddp, 1, 4), new TerminateCode(TerminateLayer.Ddp, 2, 6) });
        if (intact)
        {
            int complete = starts.Count(s => s < cut) - (starts.Contains(cut) || cut == wire.Length ? 0 : 1);
            if (cut == wire.Length) complete = starts.Count;
            Assert.Equal(complete, delivered);
            bool atBoundary = cut == wire.Length || starts.Contains(cut);
            Assert.Equal(atBoundary ? IwarpErrorKind.None : IwarpErrorKind.StreamTruncated, e.Kind);
        }
    }
}
