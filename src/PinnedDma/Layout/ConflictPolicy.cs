namespace PinnedDma;

/// <summary>What a volume operation does when it would remap a pinned range (DESIGN.md, "Pins and leases").</summary>
public enum ConflictPolicyKind
{
    /// <summary>Fail at once with <see cref="PinnedDmaError.Busy"/> (ETXTBSY); nothing changes.</summary>
    Deny,
    /// <summary>Wait for the pins to go, up to the timeout; then fail busy.</summary>
    Wait,
    /// <summary>Ask each holder to give its lease back, wait up to the timeout, then revoke and proceed.</summary>
    Break,
    /// <summary>
    /// Space-freeing operations (punch, zero by deallocation, truncate, clone or dedupe over the range, delete)
    /// proceed; the pinned blocks leave the file but stay allocated, owned by the pin, until it is released.
    /// Operations that would shift or move a pinned block (collapse, insert, a write that must move a second pinned
    /// sharer) fail busy as under Deny.
    /// </summary>
    Defer,
}

/// <summary>A conflict policy and its timeout. Set per volume, overridden per file and per operation.</summary>
public readonly record struct ConflictPolicy(ConflictPolicyKind Kind, TimeSpan Timeout)
{
    /// <summary>Fail busy at once.</summary>
    public static ConflictPolicy Deny => new(ConflictPolicyKind.Deny, TimeSpan.Zero);

    /// <summary>Deferred freeing.</summary>
    public static ConflictPolicy Defer => new(ConflictPolicyKind.Defer, TimeSpan.Zero);

    /// <summary>Wait up to <paramref name="timeout"/> for the pins to be released.</summary>
    public static ConflictPolicy Wait(TimeSpan timeout) => new(ConflictPolicyKind.Wait, CheckTimeout(timeout));

    /// <summary>Break leases, revoking after <paramref name="timeout"/>.</summary>
    public static ConflictPolicy Break(TimeSpan timeout) => new(ConflictPolicyKind.Break, CheckTimeout(timeout));

    private static TimeSpan CheckTimeout(TimeSpan t) =>
        t < TimeSpan.Zero ? throw new ArgumentOutOfRangeException(nameof(t), t, "Timeout must not be negative.") : t;

    /// <inheritdoc />
    public override string ToString() => Kind is ConflictPolicyKind.Wait or ConflictPolicyKind.Break ? $"{Kind}({Timeout.TotalMilliseconds} ms)" : Kind.ToString();
}
