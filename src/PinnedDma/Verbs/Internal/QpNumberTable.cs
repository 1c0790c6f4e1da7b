namespace PinnedDma.Verbs.Internal;

/// <summary>
/// Every live queue pair of the process by number: what a move to RTR with <see cref="QpAttributes.DestQpNumber"/>
/// resolves against (the soft devices of one process share one fabric, so numbers are unique process-wide).
/// </summary>
internal static class QpNumberTable
{
    private static readonly Dictionary<uint, QueuePair> s_byNumber = new();

    public static void Add(QueuePair qp)
    {
        lock (s_byNumber) s_byNumber[qp.QpNumber] = qp;
    }

    public static void Remove(QueuePair qp)
    {
        lock (s_byNumber) s_byNumber.Remove(qp.QpNumber);
    }

    public static QueuePair? Find(uint number)
    {
        lock (s_byNumber) return s_byNumber.GetValueOrDefault(number);
    }
}
