namespace PinnedDma.Diagnostics;

/// <summary>
/// Names to listen on. Metrics: a <see cref="System.Diagnostics.Metrics.Meter"/> named <see cref="MeterName"/>
/// (for example <c>dotnet-counters monitor --counters PinnedDma</c>, or OpenTelemetry's <c>AddMeter("PinnedDma")</c>).
/// Traces: an <see cref="System.Diagnostics.ActivitySource"/> named <see cref="ActivitySourceName"/> with spans for
/// iWARP connection setup, lease breaks and volume open/replay. Logs go to the <c>ILoggerFactory</c> given in
/// <see cref="Storage.VolumeOptions.LoggerFactory"/> and <see cref="Transports.Iwarp.IwarpOptions.LoggerFactory"/>. Nothing is measured
/// or allocated for an instrument nobody listens to.
/// </summary>
/// <remarks>
/// Instruments (all tags low-cardinality):
/// <list type="bullet">
/// <item><c>pinneddma.pins.active</c>, <c>pinneddma.pins.bytes</c> (up-down): pins held and the bytes they pin.</item>
/// <item><c>pinneddma.memlock.bytes</c> (up-down, tag <c>owner</c>: the <see cref="PinOwner"/>'s name): pinned-memory charge per owner.</item>
/// <item><c>pinneddma.lease.breaks</c> (tag <c>outcome</c>: released, revoked, denied) and <c>pinneddma.lease.break.duration</c> (s): break requested to released or revoked.</item>
/// <item><c>pinneddma.lease.revokes</c>: forced revocations (a holder did not release in time).</item>
/// <item><c>pinneddma.verbs.work_requests</c>, <c>pinneddma.verbs.bytes</c> (tag <c>opcode</c>): work requests posted and the bytes they name.</item>
/// <item><c>pinneddma.verbs.completions</c> (tag <c>status</c>) and <c>pinneddma.verbs.cq_overruns</c>.</item>
/// <item><c>pinneddma.verbs.queue_pairs</c> (up-down, tag <c>state</c>): queue pairs in each state.</item>
/// <item><c>pinneddma.iwarp.connections</c> (tag <c>result</c>: established, rejected, failed) and <c>pinneddma.iwarp.connections.open</c> (up-down).</item>
/// <item><c>pinneddma.iwarp.terminates</c> (tags <c>direction</c>: sent, received; <c>layer</c>; <c>code</c>) and <c>pinneddma.iwarp.crc_errors</c>.</item>
/// <item><c>pinneddma.journal.commits</c> and <c>pinneddma.journal.fsync.duration</c> (s).</item>
/// </list>
/// </remarks>
public static class PinnedDmaDiagnostics
{
    /// <summary>The name of the library's meter.</summary>
    public const string MeterName = "PinnedDma";

    /// <summary>The name of the library's activity source.</summary>
    public const string ActivitySourceName = "PinnedDma";
}
