namespace PinnedDma;

/// <summary>Options of a pin.</summary>
[Flags]
public enum PinOptions
{
    /// <summary>A breakable pin.</summary>
    None = 0,
    /// <summary>An exclusive pin whose lease cannot be broken: under the Break policy a conflicting operation fails busy.</summary>
    Unbreakable = 1,
}
