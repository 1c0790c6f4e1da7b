namespace PinnedDma;

/// <summary>Tells a pin holder that an operation wants its lease back.</summary>
public sealed class LeaseBreakEventArgs : EventArgs
{
    internal LeaseBreakEventArgs(string operation, TimeSpan timeout)
    {
        Operation = operation;
        Timeout = timeout;
    }

    /// <summary>The operation that needs the range.</summary>
    public string Operation { get; }

    /// <summary>How long the holder has to release before the lease is revoked.</summary>
    public TimeSpan Timeout { get; }
}
