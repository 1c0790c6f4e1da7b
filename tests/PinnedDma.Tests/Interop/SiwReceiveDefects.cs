using System.Buffers.Binary;
using System.Globalization;
using System.Text.RegularExpressions;
using PinnedDma.Tests.Iwarp;

namespace PinnedDma.Tests.Interop;

/// <summary>
/// Two receive defects of the guest kernel's siw (Linux 6.1) that our peer meets when it sends siw large data, and the
/// proof that a failure was one of them and nothing of ours.
/// </summary>
/// <remarks>
/// <para>
/// Split trailer: when an FPDU's trailer (pad and the 4-byte MPA CRC) arrives split over two socket buffers,
/// <c>siw_get_trailer</c> copies the second part to the start of its trailer buffer again, instead of after the part it
/// already has. The CRC it then compares is a splice of this FPDU's CRC and what the buffer still held from the FPDU
/// before, so it logs <c>siw: crc error. in: X, own Y</c> and Terminates an FPDU whose CRC is good. siw's own sender
/// never meets it (it puts each FPDU in one TCP segment); our FPDUs span many segments once qemu's user network
/// re-segments the stream to the guest's 1,460-byte MSS, so a trailer can straddle a boundary (measured: in 3 of 16
/// runs moving 46 MB of 64 KiB Sends; in 6 of 16 with 1,460-byte FPDUs, more trailers).
/// </para>
/// <para>
/// Lost Send bytes: under load siw sometimes counts fewer bytes of a Send message than it placed and then refuses the
/// message's next DDP segment, logging <c>siw: [QP n], send mo: X != Y</c> (X the segment's message offset, Y its own
/// count; seen 65488 != 65485 on a 64 KiB Send without CRC, about once in 30 runs of 131 MB) and Terminating with DDP
/// untagged "invalid MO". The capture at the guest's NIC had the message's three FPDUs at offsets 0, 32744, 65488.
/// </para>
/// <para>
/// <see cref="Explains"/> accepts a failure only with proof from the capture of our side: it missed no frame, every
/// Send segment of ours has the message offset that the segments before it in its message add up to, with CRC
/// Wireshark's own MPA dissector found every FPDU good, and each value siw logged is the defect's: a CRC that is the
/// splice of two consecutive CRCs of ours, or a message offset that one of our (consistent) Send segments carries.
/// Anything else is a real failure.
/// </para>
/// </remarks>
internal static partial class SiwReceiveDefects
{
    [GeneratedRegex(@"siw: crc error\. in: ([0-9a-f]{8}), own ([0-9a-f]{8})")]
    private static partial Regex CrcErrorLine();

    [GeneratedRegex(@"siw: \[QP \d+\],? send mo: (\d+) != (\d+)")]
    private static partial Regex SendMoLine();

    /// <summary>How many receive errors of each kind siw has logged in <paramref name="dmesg"/>.</summary>
    public static (int Crc, int SendMo) Count(string dmesg) => (CrcErrorLine().Matches(dmesg).Count, SendMoLine().Matches(dmesg).Count);

    /// <summary>The message offsets siw refused in Send segments ("send mo: X != Y": X), in dmesg order.</summary>
    public static List<uint> RefusedSendOffsets(string dmesg) =>
        SendMoLine().Matches(dmesg).Select(m => uint.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture)).ToList();

    /// <summary>The CRC values siw reported as received ("in"), in dmesg order.</summary>
    public static List<uint> ReportedInValues(string dmesg) =>
        CrcErrorLine().Matches(dmesg).Select(m => uint.Parse(m.Groups[1].Value, NumberStyles.HexNumber, CultureInfo.InvariantCulture)).ToList();

    /// <summary>
    /// The value siw prints as "in" when the trailer of an FPDU (<paramref name="pad"/> zero bytes, then the CRC whose wire
    /// bytes are <paramref name="crcWire"/> read big-endian, as Wireshark shows them) arrives as <paramref name="first"/>
    /// bytes, then the rest, while its trailer buffer still holds <paramref name="previousCrcWire"/>. siw reads its
    /// CRC field as a host-order (little-endian) word.
    /// </summary>
    public static uint Splice(int pad, uint crcWire, uint previousCrcWire, int first)
    {
        int n = pad + 4;
        if (first < 1 || first >= n) throw new ArgumentOutOfRangeException(nameof(first));
        Span<byte> trailer = stackalloc byte[8];
        trailer.Clear();
        BinaryPrimitives.WriteUInt32BigEndian(trailer[pad..], crcWire);
        Span<byte> buffer = stackalloc byte[8];
        buffer.Clear();
        BinaryPrimitives.WriteUInt32BigEndian(buffer[pad..], previousCrcWire);
        trailer[..first].CopyTo(buffer);          // the first socket buffer: the leading bytes, at the start
        trailer[first..n].CopyTo(buffer);         // the second: the rest, at the start again (the defect)
        return BinaryPrimitives.ReadUInt32LittleEndian(buffer[pad..]);
    }

    /// <summary>One FPDU as Wireshark decoded it: TCP stream, ULPDU length and the CRC's wire bytes (big-endian).</summary>
    public readonly record struct Fpdu(int Stream, int UlpduLength, uint CrcWire)
    {
        public int Pad => (4 - (2 + UlpduLength) % 4) % 4;
    }

    /// <summary>True when <paramref name="reportedIn"/> is the splice of some FPDU's CRC with the previous FPDU's (same stream).</summary>
    public static bool IsSplice(uint reportedIn, IReadOnlyList<Fpdu> fpdus)
    {
        for (int i = 1; i < fpdus.Count; i++)
        {
            if (fpdus[i].Stream != fpdus[i - 1].Stream) continue;
            for (int first = 1; first < fpdus[i].Pad + 4; first++)
                if (Splice(fpdus[i].Pad, fpdus[i].CrcWire, fpdus[i - 1].CrcWire, first) == reportedIn) return true;
        }
        return false;
    }

    /// <summary>
    /// The FPDUs one side sent in a capture (<paramref name="displayFilter"/> picks the direction, e.g.
    /// "tcp.dstport==N"), decoded by Wireshark, and whether Wireshark found every one of their CRCs good.
    /// </summary>
    public static (List<Fpdu> Fpdus, bool AllGood, string Detail) Decode(TsharkCapture capture, string displayFilter)
    {
        // A capture that missed frames (the capture's loss, not the wire's) cannot prove anything: Wireshark would
        // reassemble across the gap and misparse what follows.
        string gaps = capture.Read("-Y", "tcp.analysis.lost_segment || tcp.analysis.ack_lost_segment", "-T", "fields", "-e", "frame.number");
        if (gaps.Trim().Length > 0) return (new List<Fpdu>(), false, $"the capture missed frames (before frames {string.Join(' ', gaps.Split('\n', StringSplitOptions.RemoveEmptyEntries).Take(5))})");
        string filter = $"({displayFilter}) && iwarp_mpa.crc_check";
        string fields = capture.Read("-Y", filter, "-T", "fields", "-e", "tcp.stream", "-e", "iwarp_mpa.ulpdulength", "-e", "iwarp_mpa.crc_check");
        var fpdus = new List<Fpdu>();
        foreach (string line in fields.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            string[] cols = line.Split('\t');
            if (cols.Length < 3) continue;
            int stream = int.Parse(cols[0], CultureInfo.InvariantCulture);
            string[] lengths = cols[1].Split(','), crcs = cols[2].Split(',');
            if (lengths.Length != crcs.Length) return (fpdus, false, $"frame with {lengths.Length} lengths but {crcs.Length} CRCs: {line}");
            for (int i = 0; i < crcs.Length; i++)
                fpdus.Add(new Fpdu(stream, int.Parse(lengths[i], CultureInfo.InvariantCulture),
                    uint.Parse(crcs[i].Trim().AsSpan(2), NumberStyles.HexNumber, CultureInfo.InvariantCulture)));
        }
        string verbose = capture.Read("-Y", filter, "-V");
        int good = verbose.Split("Good CRC32", StringSplitOptions.None).Length - 1;
        bool bad = verbose.Contains("Bad CRC", StringComparison.OrdinalIgnoreCase);
        return (fpdus, !bad && good == fpdus.Count && fpdus.Count > 0, $"{fpdus.Count} FPDUs, {good} with a good CRC, bad: {bad}");
    }

    /// <summary>One Send (DDP untagged, queue 0) segment as Wireshark decoded it.</summary>
    public readonly record struct SendSegment(int Stream, uint Msn, uint Offset, int UlpduLength)
    {
        /// <summary>Payload bytes: the ULPDU less the 18-byte DDP/RDMAP untagged header.</summary>
        public int Payload => UlpduLength - 18;
    }

    /// <summary>
    /// Checks that every Send segment's message offset is what the segments before it in its message add up to, per
    /// TCP stream; null when they all do, else the first that does not.
    /// </summary>
    public static string? CheckSendOffsets(IReadOnlyList<SendSegment> segments)
    {
        var next = new Dictionary<(int, uint), long>();
        foreach (var s in segments)
        {
            long want = next.GetValueOrDefault((s.Stream, s.Msn));
            if (s.Offset != want) return $"stream {s.Stream} MSN {s.Msn}: a segment at offset {s.Offset}, expected {want}";
            next[(s.Stream, s.Msn)] = want + s.Payload;
        }
        return null;
    }

    /// <summary>Our Send segments in a capture (<paramref name="displayFilter"/> picks our direction), or why they cannot be read.</summary>
    public static (List<SendSegment> Segments, string? Problem) DecodeSends(TsharkCapture capture, string displayFilter)
    {
        string gaps = capture.Read("-Y", "tcp.analysis.lost_segment || tcp.analysis.ack_lost_segment", "-T", "fields", "-e", "frame.number");
        if (gaps.Trim().Length > 0) return (new List<SendSegment>(), "the capture missed frames");
        string fields = capture.Read("-Y", $"({displayFilter}) && iwarp_ddp.qn", "-T", "fields", "-e", "tcp.stream", "-e", "iwarp_ddp.qn",
            "-e", "iwarp_ddp.msn", "-e", "iwarp_ddp.mo", "-e", "iwarp_mpa.ulpdulength");
        var segments = new List<SendSegment>();
        foreach (string line in fields.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            string[] c = line.Split('\t');
            if (c.Length < 5) continue;
            string[] qn = c[1].Split(','), msn = c[2].Split(','), mo = c[3].Split(','), len = c[4].Split(',');
            // A frame that mixes tagged and untagged segments has fewer queue numbers than lengths: the lists no longer
            // line up, so the frame proves nothing.
            if (qn.Length != len.Length || msn.Length != len.Length || mo.Length != len.Length) return (segments, $"a frame mixes tagged and untagged segments: {line}");
            for (int i = 0; i < qn.Length; i++)
                if (qn[i] == "0")
                    segments.Add(new SendSegment(int.Parse(c[0], CultureInfo.InvariantCulture), uint.Parse(msn[i], CultureInfo.InvariantCulture),
                        uint.Parse(mo[i], CultureInfo.InvariantCulture), int.Parse(len[i], CultureInfo.InvariantCulture)));
        }
        return (segments, null);
    }

    /// <summary>
    /// True when every receive error siw logged beyond those counted in <paramref name="reportedBefore"/> is one of the two
    /// defects, as proven by the capture of our direction (see the class remarks); <paramref name="why"/> says what
    /// was checked, or what failed the proof.
    /// </summary>
    public static bool Explains(string dmesg, (int Crc, int SendMo) reportedBefore, TsharkCapture capture, string ourDirection, out string why)
    {
        var crcs = ReportedInValues(dmesg).Skip(reportedBefore.Crc).ToList();
        var offsets = RefusedSendOffsets(dmesg).Skip(reportedBefore.SendMo).ToList();
        if (crcs.Count + offsets.Count == 0) { why = "siw logged no receive error"; return false; }
        var found = new List<string>();
        var (sends, problem) = DecodeSends(capture, ourDirection);
        if (problem is not null) { why = problem; return false; }
        string? inconsistent = CheckSendOffsets(sends);
        if (inconsistent is not null) { why = $"our own Send segments are inconsistent: {inconsistent}"; return false; }
        List<Fpdu>? fpdus = null;
        foreach (uint crc in crcs)
        {
            if (fpdus is null)
            {
                var (decoded, allGood, detail) = Decode(capture, ourDirection);
                if (!allGood) { why = $"Wireshark did not find all our FPDUs good ({detail})"; return false; }
                fpdus = decoded;
            }
            if (!IsSplice(crc, fpdus)) { why = $"siw's 'in: {crc:x8}' is no splice of two of our {fpdus.Count} good CRCs"; return false; }
            found.Add($"CRC 'in: {crc:x8}' = a split-trailer splice of two consecutive CRCs of ours, all {fpdus.Count} good per Wireshark");
        }
        foreach (uint mo in offsets)
        {
            if (!sends.Any(s => s.Offset == mo)) { why = $"siw refused offset {mo}, which none of our {sends.Count} Send segments carries"; return false; }
            found.Add($"'send mo: {mo}' refused, though our {sends.Count} Send segments all carry consistent offsets and {mo} is one of them");
        }
        why = string.Join("; ", found);
        return found.Count > 0;
    }
}
