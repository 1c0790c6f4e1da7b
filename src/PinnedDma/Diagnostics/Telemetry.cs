using System.Diagnostics;
using System.Diagnostics.Metrics;
using PinnedDma.Verbs;

namespace PinnedDma.Diagnostics;

/// <summary>
/// The library's instruments and activity source (see <see cref="PinnedDmaDiagnostics"/> for what each means). Every
/// recording site checks <see cref="Instrument.Enabled"/> first or passes preallocated tags, so a process that does
/// not listen pays a field read per event and allocates nothing.
/// </summary>
internal static class Telemetry
{
    internal static readonly Meter Meter = new(PinnedDmaDiagnostics.MeterName, typeof(Telemetry).Assembly.GetName().Version?.ToString());
    internal static readonly ActivitySource Source = new(PinnedDmaDiagnostics.ActivitySourceName, typeof(Telemetry).Assembly.GetName().Version?.ToString());

    // Levels (pins held, queue pairs per state, open connections) are kept in plain counters at all times, a few
    // interlocked adds per pin or state change, and read by observable instruments: a listener that starts late still
    // sees the true level, never the sum of the deltas it happened to witness.
    private static long s_pins, s_pinnedBytes, s_openConnections;
    private static readonly long[] s_qpStates = new long[(int)QpState.Error + 1];
    private static readonly List<WeakReference<PinOwner>> s_owners = new();

    // Pins and leases
    private static readonly ObservableUpDownCounter<long> PinsActive = Meter.CreateObservableUpDownCounter("pinneddma.pins.active", () => Volatile.Read(ref s_pins), "{pin}", "Pins held.");
    private static readonly ObservableUpDownCounter<long> PinnedBytes = Meter.CreateObservableUpDownCounter("pinneddma.pins.bytes", () => Volatile.Read(ref s_pinnedBytes), "By", "Bytes pinned by the pins held.");
    private static readonly ObservableUpDownCounter<long> MemlockBytes = Meter.CreateObservableUpDownCounter("pinneddma.memlock.bytes", ObserveMemlock, "By", "Pinned-memory charge per pin owner.");
    internal static readonly Counter<long> LeaseBreaks = Meter.CreateCounter<long>("pinneddma.lease.breaks", "{break}", "Lease breaks by outcome: released, revoked, denied.");
    internal static readonly Histogram<double> LeaseBreakDuration = Meter.CreateHistogram<double>("pinneddma.lease.break.duration", "s", "From a lease break's request to the holder's release or the revocation.");
    internal static readonly Counter<long> LeaseRevokes = Meter.CreateCounter<long>("pinneddma.lease.revokes", "{revoke}", "Forced revocations: a holder did not release in time.");

    // Verbs
    internal static readonly Counter<long> WorkRequests = Meter.CreateCounter<long>("pinneddma.verbs.work_requests", "{request}", "Send-queue work requests posted, by opcode.");
    internal static readonly Counter<long> WorkRequestBytes = Meter.CreateCounter<long>("pinneddma.verbs.bytes", "By", "Bytes named by the send-queue work requests posted, by opcode.");
    internal static readonly Counter<long> Completions = Meter.CreateCounter<long>("pinneddma.verbs.completions", "{completion}", "Work completions, by status.");
    internal static readonly Counter<long> CqOverruns = Meter.CreateCounter<long>("pinneddma.verbs.cq_overruns", "{overrun}", "Completions lost to a full completion queue.");
    private static readonly ObservableUpDownCounter<long> QueuePairs = Meter.CreateObservableUpDownCounter("pinneddma.verbs.queue_pairs", ObserveQueuePairs, "{qp}", "Queue pairs, by state.");

    // iWARP
    internal static readonly Counter<long> Connections = Meter.CreateCounter<long>("pinneddma.iwarp.connections", "{connection}", "iWARP connection setups, by result: established, rejected, failed.");
    private static readonly ObservableUpDownCounter<long> OpenConnections = Meter.CreateObservableUpDownCounter("pinneddma.iwarp.connections.open", () => Volatile.Read(ref s_openConnections), "{connection}", "iWARP connections open.");
    internal static readonly Counter<long> Terminates = Meter.CreateCounter<long>("pinneddma.iwarp.terminates", "{terminate}", "Terminate messages, by direction, layer and error code.");
    internal static readonly Counter<long> CrcErrors = Meter.CreateCounter<long>("pinneddma.iwarp.crc_errors", "{fpdu}", "FPDUs received with a wrong MPA CRC.");

    // Storage
    internal static readonly Counter<long> JournalCommits = Meter.CreateCounter<long>("pinneddma.journal.commits", "{commit}", "Metadata journal commits.");
    internal static readonly Histogram<double> FsyncDuration = Meter.CreateHistogram<double>("pinneddma.journal.fsync.duration", "s", "Time spent in fsync/msync for a journal commit or checkpoint.");

    private static KeyValuePair<string, object?>[] TagsFor<TEnum>(string key) where TEnum : struct, Enum
    {
        var values = Enum.GetValues<TEnum>();
        int max = values.Max(v => Convert.ToInt32(v, System.Globalization.CultureInfo.InvariantCulture));
        var tags = new KeyValuePair<string, object?>[max + 1];
        for (int i = 0; i <= max; i++) tags[i] = new(key, "unknown");
        foreach (var v in values) tags[Convert.ToInt32(v, System.Globalization.CultureInfo.InvariantCulture)] = new(key, ToSnake(v.ToString()));
        return tags;
    }

    /// <summary>"RdmaWriteWithImm" → "rdma_write_with_imm".</summary>
    internal static string ToSnake(string name)
    {
        var b = new System.Text.StringBuilder(name.Length + 8);
        for (int i = 0; i < name.Length; i++)
        {
            char c = name[i];
            if (char.IsUpper(c) && i > 0) b.Append('_');
            b.Append(char.ToLowerInvariant(c));
        }
        return b.ToString();
    }

    private static readonly KeyValuePair<string, object?>[] s_opcodeTags = TagsFor<WrOpcode>("opcode");
    private static readonly KeyValuePair<string, object?>[] s_statusTags = TagsFor<WcStatus>("status");
    private static readonly KeyValuePair<string, object?>[] s_stateTags = TagsFor<QpState>("state");

    internal static KeyValuePair<string, object?> Opcode(WrOpcode op) => (uint)op < (uint)s_opcodeTags.Length ? s_opcodeTags[(int)op] : new("opcode", "unknown");

    internal static KeyValuePair<string, object?> Status(WcStatus status) => (uint)status < (uint)s_statusTags.Length ? s_statusTags[(int)status] : new("status", "unknown");

    internal static KeyValuePair<string, object?> State(QpState state) => (uint)state < (uint)s_stateTags.Length ? s_stateTags[(int)state] : new("state", "unknown");

    internal static readonly KeyValuePair<string, object?> Established = new("result", "established");
    internal static readonly KeyValuePair<string, object?> Rejected = new("result", "rejected");
    internal static readonly KeyValuePair<string, object?> Failed = new("result", "failed");
    internal static readonly KeyValuePair<string, object?> Released = new("outcome", "released");
    internal static readonly KeyValuePair<string, object?> Revoked = new("outcome", "revoked");
    internal static readonly KeyValuePair<string, object?> Denied = new("outcome", "denied");

    /// <summary>Records a work request posted (count and bytes by opcode).</summary>
    internal static void Posted(in SendWorkRequest wr)
    {
        if (WorkRequests.Enabled) WorkRequests.Add(1, Opcode(wr.Opcode));
        if (WorkRequestBytes.Enabled) WorkRequestBytes.Add(wr.Local.Length, Opcode(wr.Opcode));
    }

    /// <summary>Records a queue pair leaving <paramref name="from"/> (null: created) for <paramref name="to"/> (null: destroyed).</summary>
    internal static void QueuePairMoved(QpState? from, QpState? to)
    {
        if (from == to) return;
        if (from is { } f) Interlocked.Decrement(ref s_qpStates[(int)f]);
        if (to is { } t) Interlocked.Increment(ref s_qpStates[(int)t]);
    }

    private static IEnumerable<Measurement<long>> ObserveQueuePairs()
    {
        for (int i = 0; i < s_qpStates.Length; i++)
            if (i != (int)QpState.Sqe) yield return new Measurement<long>(Volatile.Read(ref s_qpStates[i]), s_stateTags[i]);
    }

    /// <summary>Records a pin taken (+) or released (-).</summary>
    internal static void PinChanged(int pins, long bytes)
    {
        Interlocked.Add(ref s_pins, pins);
        Interlocked.Add(ref s_pinnedBytes, bytes);
    }

    /// <summary>An iWARP connection opened (+1) or closed (-1).</summary>
    internal static void ConnectionOpen(int delta) => Interlocked.Add(ref s_openConnections, delta);

    /// <summary>Registers a pin owner whose memlock charge <c>pinneddma.memlock.bytes</c> reports while it lives.</summary>
    internal static void Track(PinOwner owner)
    {
        lock (s_owners)
        {
            // Pruned here too, not only when observed: a process that never listens must not keep a reference per
            // owner it ever made.
            if (s_owners.Count >= s_pruneAt)
            {
                PruneLocked();
                s_pruneAt = Math.Max(64, s_owners.Count * 2);
            }
            s_owners.Add(new WeakReference<PinOwner>(owner));
        }
    }

    private static int s_pruneAt = 64;

    private static void PruneLocked() => s_owners.RemoveAll(w => !w.TryGetTarget(out var o) || o.IsDisposed);

    private static List<Measurement<long>> ObserveMemlock()
    {
        var list = new List<Measurement<long>>();
        lock (s_owners)
        {
            PruneLocked();
            foreach (var w in s_owners)
                if (w.TryGetTarget(out var o)) list.Add(new Measurement<long>(o.LockedBytes, new KeyValuePair<string, object?>("owner", o.Name)));
        }
        return list;
    }

    /// <summary>The peer's address for messages, or "?" once the socket is no longer connected (never throws).</summary>
    internal static string PeerOf(System.Net.Sockets.Socket socket)
    {
        try
        {
            return socket.RemoteEndPoint?.ToString() ?? "?";
        }
        catch (Exception e) when (e is System.Net.Sockets.SocketException or ObjectDisposedException)
        {
            return "?";
        }
    }

    /// <summary>Records a Terminate sent or received.</summary>
    internal static void Terminate(bool sent, byte layer, byte errorType, byte code)
    {
        if (!Terminates.Enabled) return;
        Terminates.Add(1, new KeyValuePair<string, object?>("direction", sent ? "sent" : "received"),
            new KeyValuePair<string, object?>("layer", layer switch { 0 => "rdmap", 1 => "ddp", 2 => "llp", _ => "unknown" }),
            new KeyValuePair<string, object?>("code", $"0x{errorType:x}/0x{code:x2}"));
    }
}
