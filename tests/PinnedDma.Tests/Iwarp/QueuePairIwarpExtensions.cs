using PinnedDma.Transports.Iwarp.Internal;
using PinnedDma.Verbs;

namespace PinnedDma.Tests.Iwarp;

/// <summary>The iWARP connection under a queue pair, for tests that look at its negotiated state or its ends.</summary>
internal static class QueuePairIwarpExtensions
{
    extension(QueuePair qp)
    {
        /// <summary>The queue pair's iWARP connection, if an iWARP connection manager attached one.</summary>
        public IwarpConnection? Connection => qp.Transport as IwarpConnection;
    }
}
