using Microsoft.Extensions.Logging;

namespace PinnedDma.Diagnostics;

/// <summary>The library's log messages (source-generated: no formatting or allocation when the level is off).</summary>
internal static partial class Log
{
    internal const string IwarpCategory = "PinnedDma.Iwarp";
    internal const string VolumeCategory = "PinnedDma.Volume";

    internal static ILogger For(ILoggerFactory? factory, string category) =>
        factory?.CreateLogger(category) ?? Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance;

    [LoggerMessage(EventId = 100, Level = LogLevel.Information, Message = "iWARP connection established with {Peer} (MPA rev {Revision}, CRC {Crc}, {Role})")]
    internal static partial void ConnectionEstablished(ILogger logger, string peer, int revision, bool crc, string role);

    [LoggerMessage(EventId = 101, Level = LogLevel.Warning, Message = "iWARP connection to {Peer} rejected: {Reason}")]
    internal static partial void ConnectionRejected(ILogger logger, string peer, string reason);

    [LoggerMessage(EventId = 102, Level = LogLevel.Warning, Message = "iWARP handshake with {Peer} failed: {Reason}")]
    internal static partial void HandshakeFailed(ILogger logger, string peer, string reason);

    [LoggerMessage(EventId = 103, Level = LogLevel.Information, Message = "iWARP connection with {Peer} closed: {Reason}")]
    internal static partial void ConnectionClosed(ILogger logger, string peer, string reason);

    [LoggerMessage(EventId = 104, Level = LogLevel.Warning, Message = "Terminate sent to {Peer}: {Code} ({Reason})")]
    internal static partial void TerminateSent(ILogger logger, string peer, string code, string reason);

    [LoggerMessage(EventId = 105, Level = LogLevel.Warning, Message = "Terminate received from {Peer}: {Code}")]
    internal static partial void TerminateReceived(ILogger logger, string peer, string code);

    [LoggerMessage(EventId = 200, Level = LogLevel.Information, Message = "Lease break on inode {Inode} blocks [{First}, +{Count}) for {Operation}: {Outcome} after {Milliseconds} ms")]
    internal static partial void LeaseBreak(ILogger logger, long inode, long first, long count, string operation, string outcome, double milliseconds);

    [LoggerMessage(EventId = 201, Level = LogLevel.Warning, Message = "Pin on inode {Inode} revoked: its holder did not release within {TimeoutMs} ms")]
    internal static partial void LeaseRevoked(ILogger logger, long inode, double timeoutMs);

    [LoggerMessage(EventId = 300, Level = LogLevel.Warning, Message = "Volume {Path}: recovery: {Finding}")]
    internal static partial void RecoveryFinding(ILogger logger, string path, string finding);

    [LoggerMessage(EventId = 301, Level = LogLevel.Information, Message = "Volume {Path} opened: {Records} journal records replayed in {Milliseconds} ms")]
    internal static partial void VolumeOpened(ILogger logger, string path, int records, double milliseconds);
}
