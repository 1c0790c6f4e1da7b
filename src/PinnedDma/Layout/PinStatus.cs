namespace PinnedDma;

/// <summary>Where a pin is in its life.</summary>
public enum PinStatus
{
    /// <summary>Translation frozen, DMA works.</summary>
    Active,
    /// <summary>A lease break was requested; DMA still works until the holder releases or the timeout revokes.</summary>
    Breaking,
    /// <summary>Defer moved the range out of the file; the pin owns its blocks, DMA still works.</summary>
    Detached,
    /// <summary>The lease was revoked: DMA fails.</summary>
    Revoked,
    /// <summary>Released by its holder or its owner.</summary>
    Released,
}
