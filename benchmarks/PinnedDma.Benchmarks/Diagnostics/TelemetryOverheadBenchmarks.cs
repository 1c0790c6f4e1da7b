using System.Diagnostics.Metrics;
using BenchmarkDotNet.Attributes;
using PinnedDma.Diagnostics;
using PinnedDma.Storage;
using PinnedDma.Verbs;

namespace PinnedDma.Benchmarks.Diagnostics;

/// <summary>
/// What the PinnedDma meter costs on the hot paths: pin + unpin of one 4 KiB block and a loopback RDMA WRITE of 64 B
/// and 1 MiB (a batch of <see cref="Batch"/>, signaled every 16th, as in the verbs benchmarks), with nothing listening
/// (the baseline: what every process that does not collect metrics pays) and with a <see cref="MeterListener"/>
/// enabled on every PinnedDma instrument, summing what it receives (what a process under dotnet-counters or
/// OpenTelemetry pays).
/// </summary>
[Config(typeof(global::Benchmarks.QuickConfig))]
public unsafe class TelemetryOverheadBenchmarks
{
    public const int Batch = 256;
    private MeterListener? _listener;
    private long _sink;
    private Volume _volume = null!;
    private PinOwner _owner = null!;
    private VolumeFile _file = null!;
    private Verbs.VerbsBench.LoopbackPair _p = null!;
    private readonly WorkCompletion[] _wcs = new WorkCompletion[64];
    private ulong _wrId;

    /// <summary>Whether a listener takes every PinnedDma measurement.</summary>
    [Params(false, true)]
    public bool Listening { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _volume = Volume.CreateInMemory(new VolumeOptions { BlockCount = 4096 });
        _owner = new PinOwner(_volume, long.MaxValue, "bench");
        _file = _volume.CreateFile("f");
        _file.Allocate(0, 1 << 20);
        _p = Verbs.VerbsBench.LoopbackPair.Create("bench-telemetry", cqCapacity: 1024, maxSendWr: 128, localLength: Verbs.VerbsBench.Region);
        if (Listening)
        {
            _listener = new MeterListener
            {
                InstrumentPublished = (i, l) => { if (i.Meter.Name == PinnedDmaDiagnostics.MeterName) l.EnableMeasurementEvents(i); },
            };
            _listener.SetMeasurementEventCallback<long>((_, v, _, _) => Interlocked.Add(ref _sink, v));
            _listener.SetMeasurementEventCallback<double>((_, _, _, _) => Interlocked.Increment(ref _sink));
            _listener.Start();
        }
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _listener?.Dispose();
        _p.Dispose();
        _owner.Dispose();
        _volume.Dispose();
    }

    [Benchmark]
    public void PinUnpin4K() => _owner.Pin(_file, 0, 4096, PinAccess.Write).Dispose();

    [Benchmark(OperationsPerInvoke = Batch)]
    public void RdmaWrite64() =>
        Verbs.VerbsBench.RunBatch(_p.Qp, _p.Cq, _wcs, WrOpcode.RdmaWrite, _p.Local, _p.Remote, 64, Batch, 128, 16, ref _wrId);

    [Benchmark(OperationsPerInvoke = Batch)]
    public void RdmaWrite1M() =>
        Verbs.VerbsBench.RunBatch(_p.Qp, _p.Cq, _wcs, WrOpcode.RdmaWrite, _p.Local, _p.Remote, 1 << 20, Batch, 128, 16, ref _wrId);
}
