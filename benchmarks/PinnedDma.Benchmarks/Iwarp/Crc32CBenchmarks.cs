using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using Benchmarks;
using PinnedDma.Internal;

namespace PinnedDma.Benchmarks.Iwarp;

/// <summary>
/// CRC32c (MPA's FPDU checksum) over 4 KiB, 64 KiB and 1 MiB of cache-warm native memory, against copying the same
/// bytes (<see cref="Span{T}.CopyTo"/>, the baseline: the goal is a CRC at copy speed). <see cref="Append"/> is the
/// library's path (on a machine with AVX-512 VPCLMULQDQ: folding by carry-less multiplication),
/// <see cref="AppendStreams"/> the path of machines without it (three <c>crc32</c> streams joined by carry-less
/// multiplication), <see cref="AppendOneStream"/> one <c>crc32</c> chain, <see cref="AppendPrevious"/> the
/// implementation before these (three streams over 12 KiB blocks only, joined by tables; a single chain below 12 KiB
/// and for the tail), <see cref="AppendSoftware"/> the portable slicing-by-8 table. <see cref="CopyAndAppend"/> is the
/// fused copy and CRC the FPDU encoder uses (<see cref="CopyAndAppendStreams"/> without AVX-512), against
/// <see cref="CopyThenAppend"/>, the two passes it replaces. The GB/s column is bytes per second of the input.
/// </summary>
[Config(typeof(Config))]
public unsafe class Crc32CBenchmarks
{
    private byte* _source, _destination;
    private uint _state = 0xFFFFFFFF;

    [Params(4096, 64 * 1024, 1024 * 1024)]
    public int Size { get; set; }

    private ReadOnlySpan<byte> Source => new(_source, Size);

    private Span<byte> Destination => new(_destination, Size);

    [GlobalSetup]
    public void Setup()
    {
        _source = (byte*)NativeMemory.AlignedAlloc((nuint)Size, 64);
        _destination = (byte*)NativeMemory.AlignedAlloc((nuint)Size, 64);
        new Random(1).NextBytes(new Span<byte>(_source, Size));
        new Span<byte>(_destination, Size).Clear();
        if (Crc32C.Append(1, Source) != PreviousCrc32C.Append(1, Source) || Crc32C.Append(1, Source) != Crc32C.AppendSoftware(1, Source))
            throw new InvalidOperationException("The CRC32c implementations disagree.");
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        NativeMemory.AlignedFree(_source);
        NativeMemory.AlignedFree(_destination);
    }

    /// <summary>Copies the bytes: the speed a CRC pass is measured against.</summary>
    [Benchmark(Baseline = true)]
    public void Copy() => Source.CopyTo(Destination);

    /// <summary>The library's CRC32c.</summary>
    [Benchmark]
    public uint Append() => _state = Crc32C.Append(_state, Source);

    /// <summary>Three <c>crc32</c> streams (the path without AVX-512).</summary>
    [Benchmark]
    public uint AppendStreams() => _state = Crc32C.AppendStreams(_state, Source);

    /// <summary>One <c>crc32</c> instruction per 8 bytes, each waiting for the last.</summary>
    [Benchmark]
    public uint AppendOneStream() => _state = Crc32C.AppendOneStream(_state, Source);

    /// <summary>The implementation this one replaced.</summary>
    [Benchmark]
    public uint AppendPrevious() => _state = PreviousCrc32C.Append(_state, Source);

    /// <summary>The portable table path (machines without CRC instructions).</summary>
    [Benchmark]
    public uint AppendSoftware() => _state = Crc32C.AppendSoftware(_state, Source);

    /// <summary>Copy and CRC in one pass.</summary>
    [Benchmark]
    public uint CopyAndAppend() => _state = Crc32C.CopyAndAppend(Source, Destination, _state);

    /// <summary>Copy and CRC in one pass, three <c>crc32</c> streams (the path without AVX-512).</summary>
    [Benchmark]
    public uint CopyAndAppendStreams() => _state = Crc32C.CopyAndAppendStreams(Source, Destination, _state);

    /// <summary>Copy, then a CRC pass over the source.</summary>
    [Benchmark]
    public uint CopyThenAppend()
    {
        Source.CopyTo(Destination);
        return _state = Crc32C.Append(_state, Source);
    }

    /// <summary>The project's quick job with a throughput column.</summary>
    public sealed class Config : ManualConfig
    {
        /// <summary>Creates the config.</summary>
        public Config()
        {
            Add(new QuickConfig());
            AddColumn(new ThroughputColumn());
        }
    }

    /// <summary>Input bytes per second (<see cref="Size"/> over the mean time), in GB/s.</summary>
    public sealed class ThroughputColumn : IColumn
    {
        /// <inheritdoc />
        public string Id => "Crc32CThroughput";

        /// <inheritdoc />
        public string ColumnName => "GB/s";

        /// <inheritdoc />
        public bool AlwaysShow => true;

        /// <inheritdoc />
        public ColumnCategory Category => ColumnCategory.Custom;

        /// <inheritdoc />
        public int PriorityInCategory => 0;

        /// <inheritdoc />
        public bool IsNumeric => true;

        /// <inheritdoc />
        public UnitType UnitType => UnitType.Dimensionless;

        /// <inheritdoc />
        public string Legend => "Input bytes per second, 10^9";

        /// <inheritdoc />
        public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, SummaryStyle.Default);

        /// <inheritdoc />
        public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
        {
            var report = summary[benchmarkCase];
            var size = benchmarkCase.Parameters.Items.FirstOrDefault(p => p.Name == nameof(Size))?.Value;
            if (report?.ResultStatistics is not { } stats || size is not int bytes) return "NA";
            return (bytes / stats.Mean).ToString("F1", System.Globalization.CultureInfo.InvariantCulture); // bytes per ns = GB/s
        }

        /// <inheritdoc />
        public bool IsAvailable(Summary summary) => true;

        /// <inheritdoc />
        public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
    }
}

/// <summary>
/// The CRC32c implementation before the current one, kept here as a benchmark reference: three <c>crc32</c> streams
/// over 4 KiB chunks of 12 KiB blocks, joined by a tabulated shift over 4 KiB of zeros; one stream for inputs shorter
/// than 12 KiB and for the tail.
/// </summary>
internal static class PreviousCrc32C
{
    private const int StreamChunk = 4096;
    private static readonly uint[] ShiftTable = BuildShiftTable();

    public static uint Append(uint state, ReadOnlySpan<byte> data)
    {
        if (!Sse42.X64.IsSupported) return Crc32C.AppendSoftware(state, data);
        while (data.Length >= 3 * StreamChunk)
        {
            state = AppendThreeStreams(state, data[..(3 * StreamChunk)]);
            data = data[(3 * StreamChunk)..];
        }
        return Crc32C.AppendOneStream(state, data);
    }

    private static uint AppendThreeStreams(uint state, ReadOnlySpan<byte> data)
    {
        ulong a = state, b = 0, c = 0;
        ref byte p = ref MemoryMarshal.GetReference(data);
        for (int i = 0; i < StreamChunk; i += 8)
        {
            a = Sse42.X64.Crc32(a, Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref p, i)));
            b = Sse42.X64.Crc32(b, Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref p, StreamChunk + i)));
            c = Sse42.X64.Crc32(c, Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref p, 2 * StreamChunk + i)));
        }
        uint ab = Shift((uint)a) ^ (uint)b;
        return Shift(ab) ^ (uint)c;
    }

    private static uint Shift(uint x)
    {
        uint[] t = ShiftTable;
        return t[x & 0xFF] ^ t[256 + ((x >> 8) & 0xFF)] ^ t[512 + ((x >> 16) & 0xFF)] ^ t[768 + (x >> 24)];
    }

    private static uint[] BuildShiftTable()
    {
        var t = new uint[1024];
        var zeros = new byte[StreamChunk];
        for (int pos = 0; pos < 4; pos++)
            for (int v = 0; v < 256; v++)
                t[pos * 256 + v] = Crc32C.AppendSoftware((uint)v << (8 * pos), zeros);
        return t;
    }
}
