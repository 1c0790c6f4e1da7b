namespace PinnedDma;

/// <summary>A conflict policy and its timeout. Set per volume, overridden per file and per operation.</summary>
public readonly record struct ConflictPolicy(ConflictPolicyKind Kind, TimeSpan Timeout)
{
    /// <summary>Fail busy at once.</summary>
    public static ConflictPolicy Deny => new(ConflictPolicyKind.Deny, TimeSpan.Zero);

    /// <summary>Deferred freeing.</summary>
    public static ConflictPolicy Defer => new(ConflictPolicyKind.Defer, TimeSpan.Zero);

    /// <summary>Wait up to <paramref name="timeout"/> for the pins to be released.</summary>
    /// <param name="timeout">How long to wait (zero or more).</param>
    /// <returns>The policy.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="timeout"/> is negative.</exception>
    public static ConflictPolicy Wait(TimeSpan timeout) => new(ConflictPolicyKind.Wait, CheckTimeout(timeout));

    /// <summary>Break leases, revoking after <paramref name="timeout"/>.</summary>
    /// <param name="timeout">How long a holder has to release its pin before it is revoked (zero or more).</param>
    /// <returns>The policy.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="timeout"/> is negative.</exception>
    public static ConflictPolicy Break(TimeSpan timeout) => new(ConflictPolicyKind.Break, CheckTimeout(timeout));

    private static TimeSpan CheckTimeout(TimeSpan timeout) =>
        timeout < TimeSpan.Zero ? throw new ArgumentOutOfRangeException(nameof(timeout), timeout, "Timeout must not be negative.") : timeout;

    /// <inheritdoc />
    public override string ToString() => Kind is ConflictPolicyKind.Wait or ConflictPolicyKind.Break ? $"{Kind}({Timeout.TotalMilliseconds} ms)" : Kind.ToString();
}
