namespace PinnedDma;

/// <summary>What a volume operation does when it would remap a pinned range (docs/design.md, "Conflict table").</summary>
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
