using System.Collections.Concurrent;
using System.Diagnostics;
using System.Diagnostics.Metrics;
using System.Net;
using Microsoft.Extensions.Logging;
using PinnedDma.Diagnostics;
using PinnedDma.Storage;
using PinnedDma.Tests.Iwarp;
using PinnedDma.Tests.Verbs;
using PinnedDma.Transports.Iwarp;
using PinnedDma.Verbs;
using Xunit;

namespace PinnedDma.Tests.Diagnostics;

/// <summary>
/// The meter, activity source and logs move as operations happen. The meter's instruments are process-wide, so these
/// tests run in a collection of their own, alone, and compare before/after values of what they cause.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class TelemetryCollection
{
    public const string Name = "Telemetry";
}

/// <summary>Records every measurement of the PinnedDma meter: counters summed by instrument and tag set, levels as last observed.</summary>
internal sealed class MeterRecorder : IDisposable
{
    private readonly MeterListener _listener = new();
    private readonly ConcurrentDictionary<string, long> _sums = new();
    private readonly ConcurrentDictionary<string, double> _doubles = new();
    private readonly ConcurrentDictionary<string, long> _levels = new();

    public MeterRecorder()
    {
        _listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == PinnedDmaDiagnostics.MeterName) l.EnableMeasurementEvents(instrument);
        };
        _listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
        {
            string key = Key(instrument.Name, tags);
            if (instrument.IsObservable) _levels[key] = value;
            else _sums.AddOrUpdate(key, value, (_, v) => v + value);
        });
        _listener.SetMeasurementEventCallback<double>((instrument, value, tags, _) =>
            _doubles.AddOrUpdate(Key(instrument.Name, tags) + "#count", 1, (_, v) => v + 1));
        _listener.Start();
    }

    private static string Key(string name, ReadOnlySpan<KeyValuePair<string, object?>> tags)
    {
        var parts = new List<string>();
        foreach (var t in tags) parts.Add($"{t.Key}={t.Value}");
        parts.Sort(StringComparer.Ordinal);
        return parts.Count == 0 ? name : $"{name}{{{string.Join(",", parts)}}}";
    }

    /// <summary>A counter's total since this recorder started (0 if it never moved).</summary>
    public long Sum(string key) => _sums.TryGetValue(key, out long v) ? v : 0;

    /// <summary>How many values a histogram recorded.</summary>
    public double Count(string key) => _doubles.TryGetValue(key + "#count", out double v) ? v : 0;

    /// <summary>An observable level, observed now.</summary>
    public long Level(string key)
    {
        _levels.Clear();
        _listener.RecordObservableInstruments();
        return _levels.TryGetValue(key, out long v) ? v : 0;
    }

    public string Dump() => string.Join("\n", _sums.Select(kv => $"{kv.Key} = {kv.Value}").Concat(_levels.Select(kv => $"{kv.Key} ~ {kv.Value}")).Order(StringComparer.Ordinal));

    public void Dispose() => _listener.Dispose();
}

/// <summary>Keeps every PinnedDma activity that stopped.</summary>
internal sealed class SpanRecorder : IDisposable
{
    private readonly ActivityListener _listener;

    public SpanRecorder()
    {
        _listener = new ActivityListener
        {
            ShouldListenTo = s => s.Name == PinnedDmaDiagnostics.ActivitySourceName,
            Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
            ActivityStopped = Spans.Enqueue,
        };
        ActivitySource.AddActivityListener(_listener);
    }

    public ConcurrentQueue<Activity> Spans { get; } = new();

    public void Dispose() => _listener.Dispose();
}

/// <summary>An ILoggerFactory that keeps every message.</summary>
internal sealed class ListLoggerFactory : ILoggerFactory
{
    public ConcurrentQueue<(string Category, LogLevel Level, EventId Id, string Message)> Entries { get; } = new();

    public ILogger CreateLogger(string categoryName) => new ListLogger(this, categoryName);

    public void AddProvider(ILoggerProvider provider) => throw new NotSupportedException();

    public void Dispose()
    {
    }

    private sealed class ListLogger(ListLoggerFactory owner, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            owner.Entries.Enqueue((category, logLevel, eventId, formatter(state, exception)));
    }
}

[Collection(TelemetryCollection.Name)]
public sealed class TelemetryTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(20);

    [Fact]
    public void Verbs_instruments_count_work_requests_bytes_completions_and_queue_pair_states()
    {
        using var m = new MeterRecorder();
        long rtsBefore = m.Level("pinneddma.verbs.queue_pairs{state=rts}");
        using (var rig = new VerbsRig(name: "telemetry"))
        {
            Assert.Equal(rtsBefore + 2, m.Level("pinneddma.verbs.queue_pairs{state=rts}"));
            var src = rig.Pd.RegisterBuffer(4096 * 8, AccessFlags.LocalWrite);
            var dst = rig.Pd.RegisterBuffer(4096 * 8, VerbsRig.All);
            for (int i = 0; i < 8; i++) rig.A.PostSend(VerbsRig.Write((ulong)i, src, i * 4096, 4096, dst, i * 4096));
            rig.A.PostSend(VerbsRig.Read(8, src, 0, 100, dst, 0));
            var wcs = VerbsRig.WaitMany(rig.CqA, 9);
            Assert.All(wcs, w => Assert.Equal(WcStatus.Success, w.Status));
            Assert.Equal(8, m.Sum("pinneddma.verbs.work_requests{opcode=rdma_write}"));
            Assert.Equal(8 * 4096, m.Sum("pinneddma.verbs.bytes{opcode=rdma_write}"));
            Assert.Equal(1, m.Sum("pinneddma.verbs.work_requests{opcode=rdma_read}"));
            Assert.Equal(100, m.Sum("pinneddma.verbs.bytes{opcode=rdma_read}"));
            Assert.True(m.Sum("pinneddma.verbs.completions{status=success}") >= 9, m.Dump());
            long errorBefore = m.Level("pinneddma.verbs.queue_pairs{state=error}");
            rig.A.Modify(new QpAttributes { State = QpState.Error });
            Assert.Equal(rtsBefore + 1, m.Level("pinneddma.verbs.queue_pairs{state=rts}"));
            Assert.Equal(errorBefore + 1, m.Level("pinneddma.verbs.queue_pairs{state=error}"));
            // A request posted on a QP in Error completes flushed, and is counted so.
            rig.A.PostSend(VerbsRig.Write(9, src, 0, 16, dst, 0));
            Assert.Equal(WcStatus.WrFlushErr, VerbsRig.WaitOne(rig.CqA).Status);
            Assert.True(m.Sum("pinneddma.verbs.completions{status=wr_flush_err}") >= 1, m.Dump());
        }
        // Disposed queue pairs leave every state.
        Assert.Equal(rtsBefore, m.Level("pinneddma.verbs.queue_pairs{state=rts}"));
    }

    [Fact]
    public void A_completion_queue_overrun_is_counted()
    {
        using var m = new MeterRecorder();
        using var rig = new VerbsRig(cqCapacity: 1, name: "overrun");
        var src = rig.Pd.RegisterBuffer(4096, AccessFlags.LocalWrite);
        var dst = rig.Pd.RegisterBuffer(4096, VerbsRig.All);
        rig.A.PostSend(VerbsRig.Write(1, src, 0, 64, dst, 0));
        rig.A.PostSend(VerbsRig.Write(2, src, 0, 64, dst, 0));
        long deadline = Environment.TickCount64 + (long)Bound.TotalMilliseconds;
        while (m.Sum("pinneddma.verbs.cq_overruns") == 0 && Environment.TickCount64 < deadline) Thread.Sleep(5);
        Assert.Equal(1, m.Sum("pinneddma.verbs.cq_overruns"));
    }

    [Fact]
    public void Pins_and_memlock_levels_follow_pins_taken_and_released()
    {
        using var m = new MeterRecorder();
        using var volume = Volume.CreateInMemory(new VolumeOptions { BlockCount = 1024 });
        using var owner = new PinOwner(volume, 1 << 20, "telemetry-owner");
        var f = volume.CreateFile("f");
        f.Write(0, new byte[64 * 1024]);
        long pins = m.Level("pinneddma.pins.active"), bytes = m.Level("pinneddma.pins.bytes");
        var a = owner.Pin(f, 0, 8192, PinAccess.Write);
        var b = owner.Pin(f, 10_000, 100, PinAccess.Read); // one block: 8192..12288
        Assert.Equal(pins + 2, m.Level("pinneddma.pins.active"));
        Assert.Equal(bytes + 8192 + 4096, m.Level("pinneddma.pins.bytes"));
        Assert.Equal(8192 + 4096, m.Level("pinneddma.memlock.bytes{owner=telemetry-owner}"));
        a.Dispose();
        Assert.Equal(pins + 1, m.Level("pinneddma.pins.active"));
        Assert.Equal(4096, m.Level("pinneddma.memlock.bytes{owner=telemetry-owner}"));
        b.Dispose();
        Assert.Equal(pins, m.Level("pinneddma.pins.active"));
        Assert.Equal(bytes, m.Level("pinneddma.pins.bytes"));
    }

    [Fact]
    public void Lease_breaks_are_counted_by_outcome_timed_traced_and_logged()
    {
        using var m = new MeterRecorder();
        using var recorder = new SpanRecorder();
        var spans = recorder.Spans;
        var logs = new ListLoggerFactory();
        using var volume = Volume.CreateInMemory(new VolumeOptions { BlockCount = 1024, LoggerFactory = logs });
        using var owner = new PinOwner(volume, 1 << 20, "lease-owner");
        var f = volume.CreateFile("f");
        f.Write(0, new byte[64 * 1024]);

        // Deny: refused, nothing changes.
        using (owner.Pin(f, 0, 4096, PinAccess.Read))
            Assert.Throws<PinnedDmaException>(() => f.PunchHole(0, 4096, ConflictPolicy.Deny));
        Assert.Equal(1, m.Sum("pinneddma.lease.breaks{outcome=denied}"));

        // Break, and the holder lets go when asked: released, with its latency.
        var cooperative = owner.Pin(f, 8192, 4096, PinAccess.Write);
        cooperative.LeaseBreaking += (_, _) => cooperative.Dispose();
        f.PunchHole(8192, 4096, ConflictPolicy.Break(TimeSpan.FromSeconds(20)));
        Assert.Equal(1, m.Sum("pinneddma.lease.breaks{outcome=released}"));
        Assert.Equal(1, m.Count("pinneddma.lease.break.duration{outcome=released}"));

        // Break, and the holder never answers: revoked at the timeout.
        var stubborn = owner.Pin(f, 16384, 4096, PinAccess.Write);
        f.PunchHole(16384, 4096, ConflictPolicy.Break(TimeSpan.FromMilliseconds(50)));
        Assert.Equal(PinStatus.Revoked, stubborn.Status);
        Assert.Equal(1, m.Sum("pinneddma.lease.revokes"));
        Assert.Equal(1, m.Sum("pinneddma.lease.breaks{outcome=revoked}"));
        Assert.Equal(1, m.Count("pinneddma.lease.break.duration{outcome=revoked}"));
        stubborn.Dispose();

        Assert.Equal(2, spans.Count(a => a.OperationName == "pinneddma.lease.break" && (string?)a.GetTagItem("pinneddma.operation") == "punch hole"));
        Assert.Contains(logs.Entries, e => e.Message.Contains("revoked: its holder did not release", StringComparison.Ordinal));
        Assert.Contains(logs.Entries, e => e.Message.StartsWith("Lease break on inode", StringComparison.Ordinal) && e.Message.Contains("1 released", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Iwarp_connections_terminates_crc_errors_spans_and_logs()
    {
        using var m = new MeterRecorder();
        using var recorder = new SpanRecorder();
        var spans = recorder.Spans;
        var logs = new ListLoggerFactory();
        var options = new IwarpOptions { LoggerFactory = logs };
        long open = m.Level("pinneddma.iwarp.connections.open");

        using var sdev = new RdmaDevice("telemetry-server");
        using var cdev = new RdmaDevice("telemetry-client");
        var spd = sdev.AllocatePd();
        var cpd = cdev.AllocatePd();
        var scq = sdev.CreateCompletionQueue(64);
        var ccq = cdev.CreateCompletionQueue(64);
        var target = spd.RegisterBuffer(4096, VerbsRig.All);
        var source = cpd.RegisterBuffer(4096, AccessFlags.LocalWrite);
        using var listener = new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0), options);

        // One connection refused by the listener's owner, then two accepted.
        var refused = cpd.CreateQueuePair(new QueuePairOptions { SendCq = ccq, RecvCq = ccq });
        var reject = Task.Run(async () => (await listener.AcceptAsync()).Reject());
        await Assert.ThrowsAsync<PinnedDmaException>(() => IwarpConnector.ConnectAsync(refused, listener.LocalEndPoint, default, options).WaitAsync(Bound));
        await reject.WaitAsync(Bound);
        Assert.Equal(2, m.Sum("pinneddma.iwarp.connections{result=rejected}")); // counted on both sides

        // A client that sends something other than an MPA request: a failed handshake.
        using (var junk = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.InterNetwork, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp))
        {
            junk.Connect(listener.LocalEndPoint);
            junk.Send(System.Text.Encoding.ASCII.GetBytes("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
            long until = Environment.TickCount64 + (long)Bound.TotalMilliseconds;
            while (m.Sum("pinneddma.iwarp.connections{result=failed}") == 0 && Environment.TickCount64 < until) Thread.Sleep(5);
        }
        Assert.Equal(1, m.Sum("pinneddma.iwarp.connections{result=failed}"));

        async Task<(QueuePair Server, QueuePair Client)> Connect()
        {
            var sqp = spd.CreateQueuePair(new QueuePairOptions { SendCq = scq, RecvCq = scq });
            var cqp = cpd.CreateQueuePair(new QueuePairOptions { SendCq = ccq, RecvCq = ccq });
            var accept = Task.Run(async () => (await listener.AcceptAsync()).Accept(sqp));
            await IwarpConnector.ConnectAsync(cqp, listener.LocalEndPoint, default, options).WaitAsync(Bound);
            await accept.WaitAsync(Bound);
            return (sqp, cqp);
        }

        var (s1, c1) = await Connect();
        Assert.Equal(2, m.Sum("pinneddma.iwarp.connections{result=established}"));
        Assert.Equal(open + 2, m.Level("pinneddma.iwarp.connections.open"));

        // An RDMA Write through a key the server never issued: a Terminate each way of the count (sent, received).
        c1.PostSend(VerbsRig.Write(1, source, 0, 64, target, 0) with { RKey = target.RKey ^ 0x80 });
        VerbsRig.WaitOne(ccq);
        await c1.Connection!.Completion.WaitAsync(Bound);
        await s1.Connection!.Completion.WaitAsync(Bound);
        Assert.Equal(1, m.Sum("pinneddma.iwarp.terminates{code=0x1/0x00,direction=sent,layer=ddp}"));
        Assert.Equal(1, m.Sum("pinneddma.iwarp.terminates{code=0x1/0x00,direction=received,layer=ddp}"));
        Assert.Equal(open, m.Level("pinneddma.iwarp.connections.open"));

        // A wrong CRC: the receiver counts it.
        var (s2, c2) = await Connect();
        c2.Connection!.CorruptNextCrcsForTest(1);
        c2.PostSend(VerbsRig.Write(2, source, 0, 64, target, 0));
        await s2.Connection!.Completion.WaitAsync(Bound);
        Assert.Equal(1, m.Sum("pinneddma.iwarp.crc_errors"));
        c2.Dispose();
        s2.Dispose();

        Assert.Contains(spans, a => a.OperationName == "pinneddma.iwarp.connect" && a.Status == ActivityStatusCode.Error);
        Assert.Equal(2, spans.Count(a => a.OperationName == "pinneddma.iwarp.connect" && a.Status != ActivityStatusCode.Error));
        Assert.Equal(2, spans.Count(a => a.OperationName == "pinneddma.iwarp.accept"));
        var messages = logs.Entries.Select(e => e.Message).ToList();
        Assert.Contains(messages, s => s.StartsWith("iWARP connection established", StringComparison.Ordinal));
        Assert.Contains(messages, s => s.StartsWith("iWARP connection to", StringComparison.Ordinal) && s.Contains("rejected", StringComparison.Ordinal));
        Assert.Contains(messages, s => s.StartsWith("Terminate sent", StringComparison.Ordinal));
        Assert.Contains(messages, s => s.StartsWith("iWARP handshake with 127.0.0.1 failed", StringComparison.Ordinal));
        Assert.Contains(messages, s => s.StartsWith("Terminate received", StringComparison.Ordinal));
        Assert.Contains(messages, s => s.StartsWith("iWARP connection with", StringComparison.Ordinal) && s.Contains("closed", StringComparison.Ordinal));
    }

    [Fact]
    public void Journal_commits_fsyncs_and_volume_open_are_measured_traced_and_logged()
    {
        using var m = new MeterRecorder();
        using var recorder = new SpanRecorder();
        var spans = recorder.Spans;
        var logs = new ListLoggerFactory();
        string path = Path.Combine(Directory.CreateTempSubdirectory("telemetry-").FullName, "v.pdv");
        using (var v = Volume.Create(path, new VolumeOptions { BlockCount = 1024, LoggerFactory = logs }))
        {
            var f = v.CreateFile("a");
            f.Write(0, new byte[5000]);
            v.Commit();
            v.CreateFile("b").Write(0, new byte[100]); // new metadata: a second commit
            v.Commit();
        }
        Assert.True(m.Sum("pinneddma.journal.commits") >= 2, m.Dump());
        Assert.True(m.Count("pinneddma.journal.fsync.duration") >= 2, m.Dump());
        using (var v = Volume.Open(path, new VolumeOptions { LoggerFactory = logs }))
            Assert.Equal(5000, v.OpenFile("a").Length);
        var open = Assert.Single(spans, a => a.OperationName == "pinneddma.volume.open" && (string?)a.GetTagItem("pinneddma.volume.path") == path);
        Assert.IsType<int>(open.GetTagItem("pinneddma.journal.replayed")); // 0 here: a clean close checkpoints
        Assert.Contains(logs.Entries, e => e.Category == "PinnedDma.Volume" && e.Message.StartsWith($"Volume {path} opened", StringComparison.Ordinal));
    }
}
