using System.Buffers;
using PinnedDma.Internal;
using PinnedDma.Transports.Iwarp.Internal;
using Xunit;

namespace PinnedDma.Tests.Iwarp;

public class IwarpKnownAnswerTests
{
    private static byte[] Hex(string s) => Convert.FromHexString(s.Replace(" ", ""));

    public static TheoryData<string, string> Rfc3720Vectors => new()
    {
        // RFC 3720 appendix B.4: data, CRC bytes as transmitted.
        { string.Concat(Enumerable.Repeat("00", 32)), "aa 36 91 8a" },
        { string.Concat(Enumerable.Repeat("ff", 32)), "43 ab a8 62" },
        { string.Concat(Enumerable.Range(0, 32).Select(i => i.ToString("x2"))), "4e 79 dd 46" },
        { string.Concat(Enumerable.Range(0, 32).Select(i => (31 - i).ToString("x2"))), "5c db 3f 11" },
        { "01 c0 00 00 00 00 00 00 00 00 00 00 00 00 00 00 14 00 00 00 00 00 04 00 00 00 00 14 00 00 00 18 28 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00", "56 3a 96 d9" },
    };

    [Theory]
    [MemberData(nameof(Rfc3720Vectors))]
    public void Crc32C_matches_RFC3720_B4_vectors(string dataHex, string crcHex)
    {
        byte[] data = Hex(dataHex);
        byte[] crcBytes = Hex(crcHex);
        uint expected = BitConverter.ToUInt32(crcBytes); // transmitted least significant byte first
        Assert.Equal(expected, Crc32C.Compute(data));
        Assert.Equal(expected, ~Crc32C.AppendSoftware(0xFFFFFFFF, data));
        Assert.Equal(expected, IwarpTestUtil.ReferenceCrc32C(data));
        uint state = Crc32C.Append(0xFFFFFFFF, data.AsSpan(0, 5));
        Assert.Equal(expected, ~Crc32C.Append(state, data.AsSpan(5)));
    }

    [Fact]
    public void Mpa_request_rev1_with_crc_encodes_byte_exact()
    {
        var req = new MpaFrame { Kind = MpaFrameKind.Request, Crc = true, Revision = 1, PrivateData = "abc"u8.ToArray() };
        byte[] expected = Hex("4d 50 41 20 49 44 20 52 65 71 20 46 72 61 6d 65 40 01 00 03 61 62 63");
        Assert.Equal(expected, req.ToArray());

        var seq = new ReadOnlySequence<byte>(expected);
        Assert.Equal(ParseStatus.Frame, MpaFrame.TryParse(ref seq, MpaFrameKind.Request, out MpaFrame? parsed, out _));
        Assert.True(seq.IsEmpty);
        Assert.Equal(req, parsed);
    }

    [Fact]
    public void Mpa_reply_rev2_enhanced_encodes_byte_exact()
    {
        var rep = new MpaFrame
        {
            Kind = MpaFrameKind.Reply,
            Crc = true,
            Revision = 2,
            Enhanced = new MpaEnhancedParameters(0x0010, 0x3FFF, true, MpaRtrTypes.ZeroLengthRdmaRead),
        };
        // key "MPA ID Rep Frame", flags C|S = 0x50, rev 2, PD_Length 4, |A=1|B=0|IRD=0x10| |C=0|D=1|ORD=0x3fff|
        byte[] expected = Hex("4d 50 41 20 49 44 20 52 65 70 20 46 72 61 6d 65 50 02 00 04 80 10 7f ff");
        Assert.Equal(expected, rep.ToArray());
        var seq = new ReadOnlySequence<byte>(expected);
        Assert.Equal(ParseStatus.Frame, MpaFrame.TryParse(ref seq, MpaFrameKind.Reply, out MpaFrame? parsed, out _));
        Assert.Equal(rep, parsed);
    }

    private static readonly FpduEncoder CrcEncoder = new(new FpduOptions { Crc = true });
    private static readonly FpduDecoder CrcDecoder = new(new FpduOptions { Crc = true });

    private static readonly byte[] WriteFpdu = Hex(
        "00 10" +                               // ULPDU_Length 16 = 14-byte tagged header + 2
        "c1 40" +                               // T=1 L=1 DV=1 | RV=1 opcode 0 (RDMA Write)
        "11 22 33 44" +                         // STag
        "01 02 03 04 05 06 07 08" +             // TO
        "68 69" +                               // "hi"
        "00 00" +                               // pad to 4
        "5a a7 ac 12");                         // CRC32c 0x12ACA75A, least significant byte first

    [Fact]
    public void Tagged_rdma_write_fpdu_encodes_byte_exact()
    {
        byte[] bytes = IwarpTestUtil.Encode(CrcEncoder, w => CrcEncoder.WriteRdmaWrite(w, 0x11223344, 0x0102030405060708, true, "hi"u8));
        Assert.Equal(WriteFpdu, bytes);

        var seq = new ReadOnlySequence<byte>(bytes);
        Assert.Equal(ParseStatus.Frame, CrcDecoder.TryParse(ref seq, out Fpdu f, out _));
        Assert.Equal(RdmapOpcode.RdmaWrite, f.Header.Opcode);
        Assert.True(f.Header.Tagged);
        Assert.True(f.Header.Last);
        Assert.Equal(0x11223344u, f.Header.STag);
        Assert.Equal(0x0102030405060708ul, f.Header.TaggedOffset);
        Assert.Equal("hi"u8.ToArray(), f.Payload.ToArray());
        Assert.Equal(24, f.WireLength);
    }

    [Fact]
    public void Without_crc_the_fpdu_keeps_a_zero_crc_field_that_is_not_checked()
    {
        // RFC 5044 §4.1: the CRC field is part of every FPDU; §4.4: without CRC it is sent as zero and not checked.
        var enc = new FpduEncoder(new FpduOptions { Crc = false });
        byte[] bytes = IwarpTestUtil.Encode(enc, w => enc.WriteRdmaWrite(w, 0x11223344, 0x0102030405060708, true, "hi"u8));
        byte[] expected = (byte[])WriteFpdu.Clone();
        expected.AsSpan(expected.Length - 4).Clear();
        Assert.Equal(expected, bytes);
        var dec = new FpduDecoder(new FpduOptions { Crc = false });
        bytes[^2] = 0x5a; // whatever the peer put there
        var seq = new ReadOnlySequence<byte>(bytes);
        Assert.Equal(ParseStatus.Frame, dec.TryParse(ref seq, out Fpdu f, out _));
        Assert.True(seq.IsEmpty);
        Assert.Equal(24, f.WireLength);
        Assert.Equal(16, f.DdpSegmentLength);
        Assert.Equal("hi"u8.ToArray(), f.Payload.ToArray());
    }

    [Fact]
    public void Terminate_fpdu_encodes_byte_exact()
    {
        var term = new TerminateMessage
        {
            Code = TerminateCode.Ddp(DdpErrorType.TaggedBuffer, DdpErrorCode.TaggedInvalidStag),
            SegmentLengthValid = true,
            DdpSegmentLength = 16,
            TerminatedDdpHeader = DdpRdmapHeader.ForTagged(RdmapOpcode.RdmaWrite, 0x11223344, 0x0102030405060708, true),
        };
        byte[] expected = Hex(
            "00 26" +                           // ULPDU_Length 38 = 18 + 20
            "41 47" +                           // T=0 L=1 DV=1 | RV=1 opcode 7 (Terminate)
            "00 00 00 00" +                     // reserved
            "00 00 00 02" +                     // QN 2
            "00 00 00 01" +                     // MSN 1
            "00 00 00 00" +                     // MO 0
            "11 00 c0 00" +                     // layer DDP, etype tagged, code 0 (invalid STag), M D
            "00 10" +                           // DDP Segment Length
            "c1 40 11 22 33 44 01 02 03 04 05 06 07 08" + // terminated DDP header
            "3d 51 3f 3b");                     // CRC32c 0x3B3F513D (no pad: 2 + 38 = 40)
        byte[] bytes = IwarpTestUtil.Encode(CrcEncoder, w => CrcEncoder.WriteTerminate(w, 1, term));
        Assert.Equal(expected, bytes);

        var seq = new ReadOnlySequence<byte>(bytes);
        Assert.Equal(ParseStatus.Frame, CrcDecoder.TryParse(ref seq, out Fpdu f, out _));
        Assert.Equal(RdmapOpcode.Terminate, f.Header.Opcode);
        Assert.Equal(term, f.Terminate);
    }

    [Fact]
    public void Read_request_fpdu_layout()
    {
        var rr = new RdmaReadRequest(0xA1A2A3A4, 0xB1B2B3B4B5B6B7B8, 0x00010000, 0xC1C2C3C4, 0xD1D2D3D4D5D6D7D8);
        var enc = new FpduEncoder(new FpduOptions { Crc = false });
        byte[] bytes = IwarpTestUtil.Encode(enc, w => enc.WriteReadRequest(w, 7, rr));
        byte[] expected = Hex(
            "00 2e" +                           // 18 + 28 = 46
            "41 41 00 00 00 00 00 00 00 01 00 00 00 07 00 00 00 00" +
            "a1 a2 a3 a4 b1 b2 b3 b4 b5 b6 b7 b8 00 01 00 00 c1 c2 c3 c4 d1 d2 d3 d4 d5 d6 d7 d8" + // 2 + 46 = 48: no pad
            "00 00 00 00");                     // the CRC field: present, zero without CRC (RFC 5044 §4.1, §4.4)
        Assert.Equal(expected, bytes);
        var seq = new ReadOnlySequence<byte>(bytes);
        Assert.Equal(ParseStatus.Frame, new FpduDecoder(new FpduOptions { Crc = false }).TryParse(ref seq, out Fpdu f, out _));
        Assert.Equal(rr, f.ReadRequest);
    }

    [Fact]
    public void Bad_crc_maps_to_mpa_crc_terminate()
    {
        byte[] bytes = (byte[])WriteFpdu.Clone();
        bytes[^1] ^= 0x01;
        var seq = new ReadOnlySequence<byte>(bytes);
        Assert.Equal(ParseStatus.Error, CrcDecoder.TryParse(ref seq, out _, out IwarpError e));
        Assert.Equal(IwarpErrorKind.CrcMismatch, e.Kind);
        Assert.Equal(new TerminateCode(TerminateLayer.Llp, 0, 2), e.Terminate);
        Assert.Equal(bytes.Length, seq.Length);
    }

    [Fact]
    public void Oversized_length_is_rejected_before_waiting_for_data()
    {
        var dec = new FpduDecoder(new FpduOptions { Crc = true, MaxUlpduLength = 1024 });
        var seq = new ReadOnlySequence<byte>(Hex("04 01 c1 40"));
        Assert.Equal(ParseStatus.Error, dec.TryParse(ref seq, out _, out IwarpError e));
        Assert.Equal(IwarpErrorKind.FpduLengthTooLarge, e.Kind);
        Assert.Equal(new TerminateCode(TerminateLayer.Llp, 0, 3), e.Terminate);
    }

    [Fact]
    public void Frame_sizes_follow_options()
    {
        Assert.Equal(16378, new FpduOptions().MaxUlpduLength);
        Assert.Equal(16384, Fpdu.WireLengthFor(16378));
        Assert.Equal(1454, FpduOptions.MaxUlpduForMss(1460));
        var enc = new FpduEncoder(new FpduOptions { MaxUlpduLength = 100 });
        Assert.Equal(86, enc.MaxPayload(DdpRdmapHeader.TaggedLength));
        Assert.Throws<ArgumentOutOfRangeException>(() => IwarpTestUtil.Encode(enc, w => enc.WriteRdmaWrite(w, 1, 0, true, new byte[87])));
        Assert.Throws<ArgumentOutOfRangeException>(() => new FpduEncoder(new FpduOptions { MaxUlpduLength = 70000 }));
    }

    [Fact]
    public void Markers_requested_by_initiator_is_answered_with_a_reject()
    {
        var req = new MpaFrame { Kind = MpaFrameKind.Request, Markers = true, Crc = true, Revision = 1 };
        var seq = new ReadOnlySequence<byte>(req.ToArray());
        Assert.Equal(ParseStatus.Frame, MpaFrame.TryParse(ref seq, MpaFrameKind.Request, out MpaFrame? parsed, out _));
        MpaResponderDecision d = MpaNegotiation.Respond(parsed!, new MpaLocalSettings());
        Assert.False(d.Accepted);
        Assert.True(d.Reply.Reject);
        Assert.False(d.Reply.Markers);
        Assert.Equal(MpaFrameKind.Reply, d.Reply.Kind);
        Assert.Equal(IwarpErrorKind.MpaMarkersRequested, d.Error.Kind);
        Assert.Equal(new TerminateCode(TerminateLayer.Llp, 0, 4), d.Error.Terminate);
        Assert.Equal(0x20, d.Reply.ToArray()[16] & 0x20);
    }

    [Fact]
    public void Markers_requested_by_responder_fails_the_initiator()
    {
        MpaFrame req = MpaNegotiation.BuildRequest(new MpaLocalSettings());
        var reply = new MpaFrame { Kind = MpaFrameKind.Reply, Markers = true, Crc = true, Revision = 1 };
        IwarpError e = MpaNegotiation.CompleteInitiator(req, reply, out _);
        Assert.Equal(IwarpErrorKind.MpaMarkersRequested, e.Kind);
    }

    [Fact]
    public void Mpa_setup_negotiates_crc_and_rev2_rtr()
    {
        var initiator = new MpaLocalSettings { Revision = 2, WantCrc = false, Ird = 8, Ord = 4, PeerToPeer = true, RtrTypes = MpaRtrTypes.ZeroLengthRdmaWrite | MpaRtrTypes.ZeroLengthRdmaRead };
        var responder = new MpaLocalSettings { Revision = 2, WantCrc = true, Ird = 2, Ord = 16, PeerToPeer = true, RtrTypes = MpaRtrTypes.ZeroLengthRdmaRead | MpaRtrTypes.ZeroLengthSend };
        MpaFrame req = MpaNegotiation.BuildRequest(initiator);
        MpaResponderDecision d = MpaNegotiation.Respond(req, responder);
        Assert.True(d.Accepted, d.Error.ToString());
        Assert.True(d.Reply.Crc);
        Assert.Equal(MpaRtrTypes.ZeroLengthRdmaRead, d.Reply.Enhanced!.Value.RtrTypes);
        Assert.Equal(8, d.Negotiated.Ord); // min(responder ORD 16, initiator IRD 8)
        Assert.Equal(IwarpError.None, MpaNegotiation.CompleteInitiator(req, d.Reply, out MpaNegotiated n));
        Assert.True(n.Crc);
        Assert.Equal(2, n.Ord); // min(initiator ORD 4, responder IRD 2)
        Assert.Equal(MpaRtrTypes.ZeroLengthRdmaRead, n.Rtr);

        MpaResponderDecision none = MpaNegotiation.Respond(req, responder with { RtrTypes = MpaRtrTypes.ZeroLengthSend });
        Assert.Equal(IwarpErrorKind.MpaNoMatchingRtr, none.Error.Kind);
        Assert.Equal(new TerminateCode(TerminateLayer.Llp, 0, 7), none.Error.Terminate);
        Assert.True(none.Reply.Reject);
    }

    [Theory]
    [InlineData("4d 50 41 20 49 44 20 52 65 70 20 46 72 61 6d 65 40 01 00 00", "MpaInvalidKey")]      // reply key where request expected
    [InlineData("4d 50 41 20 49 44 20 52 65 71 20 46 72 61 6d 65 40 03 00 00", "MpaUnsupportedRevision")]
    [InlineData("4d 50 41 20 49 44 20 52 65 71 20 46 72 61 6d 65 40 01 02 01", "MpaPrivateDataTooLong")]
    [InlineData("4d 50 41 20 49 44 20 52 65 71 20 46 72 61 6d 65 50 02 00 03 00 00 00", "MpaEnhancedDataMissing")]
    [InlineData("4d 50 41 21", "MpaInvalidKey")]                                                       // wrong key detected early
    public void Invalid_mpa_requests_are_typed_errors(string hex, string kindName)
    {
        var seq = new ReadOnlySequence<byte>(Hex(hex));
        Assert.Equal(ParseStatus.Error, MpaFrame.TryParse(ref seq, MpaFrameKind.Request, out _, out IwarpError e));
        Assert.Equal(Enum.Parse<IwarpErrorKind>(kindName), e.Kind);
        Assert.Equal(new TerminateCode(TerminateLayer.Llp, 0, 4), e.Terminate);
    }
}

public class IwarpAllocationTests
{
    [Fact]
    public void Steady_state_encode_and_parse_do_not_allocate()
    {
        var options = new FpduOptions { Crc = true };
        var enc = new FpduEncoder(options);
        var dec = new FpduDecoder(options);
        var writer = new System.Buffers.ArrayBufferWriter<byte>(64 * 1024);
        byte[] payload = new byte[4000];
        var rr = new RdmaReadRequest(1, 2, 3, 4, 5);
        var term = new TerminateMessage { Code = TerminateCode.Mpa(MpaErrorCode.CrcMismatch) };

        void Round()
        {
            writer.ResetWrittenCount();
            enc.WriteRdmaWrite(writer, 1, 2, true, payload);
            enc.WriteSend(writer, RdmapOpcode.SendWithSolicitedEvent, 1, 0, true, payload.AsSpan(0, 33));
            enc.WriteReadRequest(writer, 2, rr);
            enc.WriteReadResponse(writer, 9, 0, false, payload.AsSpan(0, 1001));
            enc.WriteTerminate(writer, 3, term);
            var seq = new System.Buffers.ReadOnlySequence<byte>(writer.WrittenMemory);
            int frames = 0;
            while (dec.TryParse(ref seq, out Fpdu f, out _) == ParseStatus.Frame) frames += f.WireLength > 0 ? 1 : 0;
            if (frames != 5) throw new InvalidOperationException($"parsed {frames} frames");
        }

        for (int i = 0; i < 50; i++) Round(); // warm up (JIT, tiering)
        // The runtime itself may allocate on this thread once in a while (tier-up of the methods above); a
        // per-frame allocation would show in every round, so the quietest of a few rounds must be zero.
        long allocated = long.MaxValue;
        for (int attempt = 0; attempt < 5 && allocated != 0; attempt++)
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < 200; i++) Round();
            allocated = Math.Min(allocated, GC.GetAllocatedBytesForCurrentThread() - before);
        }
        Assert.Equal(0, allocated);
    }
}

public sealed class Crc32CStreamTests
{
    [FsCheck.Xunit.Property(MaxTest = 200)]
    public void Hardware_three_stream_path_equals_the_table_path(int seed, ushort lengthHint, byte split)
    {
        var rng = new Random(seed);
        var data = new byte[lengthHint * 3 % 70000];
        rng.NextBytes(data);
        uint reference = ~PinnedDma.Internal.Crc32C.AppendSoftware(0xFFFFFFFF, data);
        Assert.Equal(reference, PinnedDma.Internal.Crc32C.Compute(data));
        int cut = data.Length == 0 ? 0 : split * data.Length / 255;
        uint state = PinnedDma.Internal.Crc32C.Append(0xFFFFFFFF, data.AsSpan(0, cut));
        Assert.Equal(reference, ~PinnedDma.Internal.Crc32C.Append(state, data.AsSpan(cut)));
    }
}

public class TerminateDecodingTests
{
    private static ReadOnlySequence<byte> Ulpdu(byte[] body)
    {
        var header = DdpRdmapHeader.ForUntagged(RdmapOpcode.Terminate, 2, 1, 0, true);
        var bytes = new byte[header.Length + body.Length];
        header.WriteTo(bytes);
        body.CopyTo(bytes, header.Length);
        return new ReadOnlySequence<byte>(bytes);
    }

    /// <summary>
    /// The Terminate siw (Linux 6.1, x86) sent for an RDMA Write through an STag it never issued: DDP layer, tagged
    /// buffer, invalid STag, with the DDP Segment Length and the 14-byte tagged header copied; its bit-fields put the
    /// layer in the low nibble and M/D in the low bits of the third byte. It must still read as that Terminate (the
    /// code is symmetric in its nibbles), never as a malformed message that would be answered with a Terminate.
    /// </summary>
    [Fact]
    public void A_terminate_whose_copies_disagree_with_its_flags_keeps_its_code()
    {
        var body = new byte[20];
        body[0] = 0x11; // layer 1 (DDP), type 1 (tagged buffer), in either nibble order
        body[1] = 0x00; // invalid STag
        body[2] = 0x03; // siw's M and D, in the bits RFC 5040 reserves
        body[4] = 0x00; body[5] = 0x4E; // DDP Segment Length 78
        body[6] = 0xC1; body[7] = 0x40; // a tagged DDP header copy: T, L, DV 1 / RV 1, RDMA Write
        Assert.True(FpduDecoder.TryDecodeUlpdu(Ulpdu(body), out var header, out _, out _, out var terminate, out var error), error.ToString());
        Assert.Equal(RdmapOpcode.Terminate, header.Opcode);
        Assert.Equal(TerminateCode.Ddp(DdpErrorType.TaggedBuffer, DdpErrorCode.TaggedInvalidStag), terminate.Code);
        Assert.True(terminate.HeaderCopiesUnreadable);
        Assert.Null(terminate.TerminatedDdpHeader);
    }

    [Fact]
    public void A_terminate_laid_out_as_the_rfc_says_reads_its_copies()
    {
        var copy = DdpRdmapHeader.ForTagged(RdmapOpcode.RdmaWrite, 0x5A5A5A01, 0x10000, true);
        var message = new TerminateMessage
        {
            Code = TerminateCode.Ddp(DdpErrorType.TaggedBuffer, DdpErrorCode.TaggedInvalidStag),
            SegmentLengthValid = true, DdpSegmentLength = 78, TerminatedDdpHeader = copy,
        };
        var body = new byte[message.Length];
        message.WriteTo(body);
        Assert.True(FpduDecoder.TryDecodeUlpdu(Ulpdu(body), out _, out _, out _, out var terminate, out var error), error.ToString());
        Assert.False(terminate.HeaderCopiesUnreadable);
        Assert.Equal(message.Code, terminate.Code);
        Assert.Equal((ushort)78, terminate.DdpSegmentLength);
        Assert.Equal(copy, terminate.TerminatedDdpHeader);
    }

    [Fact]
    public void A_terminate_without_its_control_word_is_malformed()
    {
        Assert.False(FpduDecoder.TryDecodeUlpdu(Ulpdu(new byte[3]), out _, out _, out _, out _, out var error));
        Assert.Equal(IwarpErrorKind.MalformedTerminate, error.Kind);
    }
}
