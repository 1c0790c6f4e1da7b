namespace PinnedDma.Verbs;

/// <summary>Work completion flags (enum ibv_wc_flags).</summary>
[Flags]
public enum WcFlags
{
    /// <summary>None.</summary>
    None = 0,
    /// <summary>IBV_WC_WITH_IMM: <see cref="WorkCompletion.ImmData"/> is valid.</summary>
    WithImm = 2,
    /// <summary>IBV_WC_WITH_INV: <see cref="WorkCompletion.InvalidatedRKey"/> was invalidated by a Send with Invalidate.</summary>
    WithInv = 8,
}
