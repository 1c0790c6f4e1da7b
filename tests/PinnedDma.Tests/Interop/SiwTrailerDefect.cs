using System.Buffers.Binary;
using System.Globalization;
using System.Text.RegularExpressions;
using PinnedDma.Tests.Iwarp;

namespace PinnedDma.Tests.Interop;

/// <summary>
/// A receive defect in the guest kernel's siw (Linux 6.1): when an FPDU's trailer (pad and the 4-byte MPA CRC) arrives
/// split over two socket buffers, <c>siw_get_trailer</c> copies the second part to the start of its trailer buffer
/// again, instead of after the part it already has. The CRC it then compares is a splice of this FPDU's CRC and what the
/// buffer still held from the FPDU before, so it logs <c>siw: crc error. in: X, own Y</c> and Terminates an FPDU whose
/// CRC is good. siw's own sender never meets it (it puts each FPDU in one TCP segment); our FPDUs span many segments
/// once qemu's user network re-segments the stream to the guest's 1,460-byte MSS, so a trailer can straddle a
/// boundary (measured: in 3 of 16 runs moving 46 MB of 64 KiB Sends; in 6 of 16 with 1,460-byte FPDUs, more trailers).
/// </summary>
/// <remarks>
/// <see cref="Explains"/> accepts a failure only with proof from both sides: Wireshark's own MPA dissector found every
/// FPDU we sent good, and the value siw reports as received is exactly the splice above for some FPDU of ours and the
/// FPDU before it. Anything else is a real failure.
/// </remarks>
internal static partial class SiwTrailerDefect
{
    [GeneratedRegex(@"siw: crc error\. in: ([0-9a-f]{8}), own ([0-9a-f]{8})")]
    private static partial Regex CrcErrorLine();

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

    /// <summary>
    /// True when every CRC error siw logged since <paramref name="reportedBefore"/> errors is this defect on a good FPDU of
    /// ours, as proven by the capture (see the class remarks); <paramref name="why"/> says what was checked.
    /// </summary>
    public static bool Explains(string dmesg, int reportedBefore, TsharkCapture capture, string ourDirection, out string why)
    {
        var reported = ReportedInValues(dmesg).Skip(reportedBefore).ToList();
        if (reported.Count == 0) { why = "siw logged no CRC error"; return false; }
        var (fpdus, allGood, detail) = Decode(capture, ourDirection);
        if (!allGood) { why = $"Wireshark did not find all our FPDUs good ({detail})"; return false; }
        foreach (uint r in reported)
            if (!IsSplice(r, fpdus)) { why = $"siw's 'in: {r:x8}' is no splice of two of our {fpdus.Count} good CRCs"; return false; }
        why = $"siw reported {string.Join(", ", reported.Select(r => r.ToString("x8", CultureInfo.InvariantCulture)))} as received; each is a "
            + $"split-trailer splice of two consecutive CRCs of ours, and Wireshark found all {fpdus.Count} of our FPDUs good";
        return true;
    }
}
