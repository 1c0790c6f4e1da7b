namespace PinnedDma;

/// <summary>
/// The drain primitive a DMA engine holds around every access through a pin: <see cref="TryEnter"/> before touching
/// the pinned blocks, <see cref="Exit"/> after. <see cref="Close"/> makes every later TryEnter fail and returns once
/// the accesses already inside have left, so a lease revocation waits for in-flight DMA and then knows that nothing
/// can touch the blocks any more (the same guarantee as an epoch or an SRCU grace period).
/// </summary>
/// <remarks>State: bit 30 is "closed", the low bits count accesses inside. Lock-free on the access path.</remarks>
public sealed class DmaDrain
{
    private const int Closed = 1 << 30;
    private const int CountMask = Closed - 1;
    private int _state;
    private ManualResetEventSlim? _drained; // created only when Close has to wait

    /// <summary>True once <see cref="Close"/> was called.</summary>
    public bool IsClosed => (Volatile.Read(ref _state) & Closed) != 0;

    /// <summary>Accesses currently inside.</summary>
    public int InFlight => Volatile.Read(ref _state) & CountMask;

    /// <summary>Enters an access; false when the drain is closed (the pin was revoked or released).</summary>
    /// <returns>True when entered (pair it with one <see cref="Exit"/>); false when the drain is closed.</returns>
    public bool TryEnter()
    {
        int s = Volatile.Read(ref _state);
        while (true)
        {
            if ((s & Closed) != 0) return false;
            int seen = Interlocked.CompareExchange(ref _state, s + 1, s);
            if (seen == s) return true;
            s = seen;
        }
    }

    /// <summary>Leaves an access entered with <see cref="TryEnter"/>.</summary>
    /// <exception cref="InvalidOperationException">No access is inside (an Exit without a TryEnter).</exception>
    public void Exit()
    {
        int s = Interlocked.Decrement(ref _state);
        if (s == Closed) Volatile.Read(ref _drained)?.Set();
        else if ((s & CountMask) == CountMask) throw new InvalidOperationException("DmaDrain.Exit without TryEnter.");
    }

    /// <summary>
    /// Closes the drain and waits until no access is inside. Idempotent; safe from several threads. An access still
    /// inside after <see cref="StallGrace"/> is one that waits on something outside (a send to a peer that does not
    /// read): its stall handlers run, once, to cut it off, so a revocation is bounded whatever a peer does.
    /// </summary>
    public void Close()
    {
        int s = Interlocked.Or(ref _state, Closed);
        if ((s & CountMask) == 0 || (Volatile.Read(ref _state) & CountMask) == 0) return;
        var spin = new SpinWait();
        for (int i = 0; i < 50 && (Volatile.Read(ref _state) & CountMask) != 0; i++) spin.SpinOnce();
        var ev = LazyInitializer.EnsureInitialized(ref _drained, () => new ManualResetEventSlim(false));
        long cutAt = Environment.TickCount64 + (long)StallGrace.TotalMilliseconds;
        bool cut = false;
        while ((Volatile.Read(ref _state) & CountMask) != 0)
        {
            ev.Wait(1);
            if (!cut && Environment.TickCount64 >= cutAt)
            {
                cut = true;
                Action[] handlers;
                lock (_stallHandlers) handlers = _stallHandlers.ToArray();
                foreach (var h in handlers) h();
            }
        }
    }

    /// <summary>How long <see cref="Close"/> lets an access finish on its own before it runs the stall handlers.</summary>
    internal static readonly TimeSpan StallGrace = TimeSpan.FromMilliseconds(100);

    private readonly List<Action> _stallHandlers = new();

    /// <summary>
    /// Registers, for the time of one access that may wait on the outside world, how to cut it off (close the
    /// connection it waits on). Pair with <see cref="RemoveStallHandler"/> before <see cref="Exit"/>.
    /// </summary>
    internal void AddStallHandler(Action cutOff)
    {
        lock (_stallHandlers) _stallHandlers.Add(cutOff);
    }

    internal void RemoveStallHandler(Action cutOff)
    {
        lock (_stallHandlers) _stallHandlers.Remove(cutOff);
    }
}
