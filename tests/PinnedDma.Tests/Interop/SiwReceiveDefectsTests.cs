using Xunit;

namespace PinnedDma.Tests.Interop;

/// <summary>
/// The recognizer of siw's split-trailer defect, on the values of a real failure: siw logged
/// <c>siw: crc error. in: 3d473f98, own f161484a, op 3</c> while receiving 64 KiB Sends of ours, and the capture on both
/// sides of qemu's network showed FPDU 1,900 of that stream with CRC bytes 14 43 98 3f (good) after FPDU 1,899 with
/// 01 a7 47 3d: siw had the trailer as 2 + 2 bytes and compared 98 3f 47 3d.
/// </summary>
public sealed class SiwReceiveDefectsTests
{
    private const string Dmesg = "[    8.581284] siw: loading out-of-tree module taints kernel.\n[   16.560953] siw: crc error. in: 3d473f98, own f161484a, op 3\n";

    [Fact]
    public void Reads_what_siw_logged_as_received()
    {
        Assert.Equal(new uint[] { 0x3d473f98 }, SiwReceiveDefects.ReportedInValues(Dmesg));
        Assert.Empty(SiwReceiveDefects.ReportedInValues("[ 1.0] siw: device registered\n"));
    }

    [Fact]
    public void Splice_of_a_trailer_split_two_and_two_is_what_siw_reported()
    {
        Assert.Equal(0x3d473f98u, SiwReceiveDefects.Splice(pad: 0, crcWire: 0x1443983f, previousCrcWire: 0x01a7473d, first: 2));
        // Split 1 + 3: bytes 1..3 of this CRC, then the last byte of the previous one.
        Assert.Equal(0x3d3f9843u, SiwReceiveDefects.Splice(0, 0x1443983f, 0x01a7473d, 1));
        // Split 3 + 1: byte 3 of this CRC lands first, bytes 1 and 2 stay from the first part, then the previous byte 3.
        Assert.Equal(0x3d98433fu, SiwReceiveDefects.Splice(0, 0x1443983f, 0x01a7473d, 3));
        Assert.Throws<ArgumentOutOfRangeException>(() => SiwReceiveDefects.Splice(0, 1, 2, 4));
        Assert.Throws<ArgumentOutOfRangeException>(() => SiwReceiveDefects.Splice(0, 1, 2, 0));
    }

    [Fact]
    public void Only_a_splice_of_consecutive_fpdus_in_one_stream_is_explained()
    {
        var fpdus = new List<SiwReceiveDefects.Fpdu>
        {
            new(1, 32762, 0x69934a13),
            new(1, 32762, 0x01a7473d),
            new(1, 32762, 0x1443983f),
            new(1, 66, 0x26f0b04d),
        };
        Assert.True(SiwReceiveDefects.IsSplice(0x3d473f98, fpdus));
        // The true CRC, siw's own value, and a splice of non-neighbours are no evidence of the defect.
        Assert.False(SiwReceiveDefects.IsSplice(0x3f984314, fpdus));
        Assert.False(SiwReceiveDefects.IsSplice(0xf161484a, fpdus));
        Assert.False(SiwReceiveDefects.IsSplice(SiwReceiveDefects.Splice(0, 0x1443983f, 0x69934a13, 2), fpdus));
        // Neighbours in different TCP streams (perftest's control and test connections) are not a splice either.
        var split = new List<SiwReceiveDefects.Fpdu> { new(0, 32762, 0x01a7473d), new(1, 32762, 0x1443983f) };
        Assert.False(SiwReceiveDefects.IsSplice(0x3d473f98, split));
    }

    [Fact]
    public void Pad_bytes_sit_before_the_crc_in_siws_trailer_buffer()
    {
        // ULPDU 61 bytes: 2 + 61 = 63, one pad byte. Split after the pad byte: the CRC arrives whole in the second
        // buffer but lands one byte early, so siw's CRC field holds CRC bytes 1..3 and then CRC byte 3 of the previous.
        Assert.Equal(1, new SiwReceiveDefects.Fpdu(0, 61, 0).Pad);
        Assert.Equal(0, new SiwReceiveDefects.Fpdu(0, 66, 0).Pad);
        Assert.Equal(0xdd332211u, SiwReceiveDefects.Splice(pad: 1, crcWire: 0x00112233, previousCrcWire: 0xaabbccdd, first: 1));
    }

    [Fact]
    public void Reads_the_send_offsets_siw_refused()
    {
        const string log = "[   50.297283] siw: [QP 2], send mo: 65488 != 65485\n[ 51.0] siw: crc error. in: 3d473f98, own f161484a, op 3\n";
        Assert.Equal(new uint[] { 65488 }, SiwReceiveDefects.RefusedSendOffsets(log));
        Assert.Equal((1, 1), SiwReceiveDefects.Count(log));
        Assert.Equal((0, 0), SiwReceiveDefects.Count("[ 1.0] siw: device registered\n"));
    }

    [Fact]
    public void Send_offsets_must_add_up_within_each_message_and_stream()
    {
        // A 64 KiB Send as our peer cuts it: two 32,744-byte payloads and 48 bytes (ULPDU = payload + 18).
        var good = new List<SiwReceiveDefects.SendSegment>
        {
            new(1, 1730, 0, 32762), new(1, 1730, 32744, 32762), new(1, 1730, 65488, 66),
            new(0, 1730, 0, 74), // the same MSN on the control connection is another message
            new(1, 1731, 0, 32762),
        };
        Assert.Null(SiwReceiveDefects.CheckSendOffsets(good));
        var gap = new List<SiwReceiveDefects.SendSegment> { new(1, 7, 0, 32762), new(1, 7, 32741, 32762) };
        Assert.Contains("offset 32741, expected 32744", SiwReceiveDefects.CheckSendOffsets(gap), StringComparison.Ordinal);
        var late = new List<SiwReceiveDefects.SendSegment> { new(1, 7, 4, 100) };
        Assert.NotNull(SiwReceiveDefects.CheckSendOffsets(late));
    }
}
