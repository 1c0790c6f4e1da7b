using System.Collections.Concurrent;
using PinnedDma.Interop;
using PinnedDma.Verbs.Internal;

namespace PinnedDma.Transports.Iwarp.Internal;

/// <summary>Something an <see cref="IoLoop"/> watches: a socket's readiness, and optionally a deadline.</summary>
/// <remarks>Every member runs on the loop's thread.</remarks>
internal abstract class IoHandler
{
    internal int Slot = -1;
    internal uint Generation;
    internal uint Interest;

    /// <summary>The descriptor watched.</summary>
    public abstract int Fd { get; }

    /// <summary>The descriptor is ready (epoll event bits).</summary>
    public abstract void OnEvents(uint events);

    /// <summary>When <see cref="OnDeadline"/> is due (<see cref="Environment.TickCount64"/>); long.MaxValue for never.</summary>
    public virtual long Deadline => long.MaxValue;

    /// <summary>The deadline passed.</summary>
    public virtual void OnDeadline(long now)
    {
    }
}

/// <summary>
/// One I/O thread: an epoll instance over many connections, and the DMA engine of their queue pairs, on the same
/// thread. Each turn it runs the work other threads posted, the engine's doorbell (send queues, Read Responses), then
/// waits in <c>epoll_wait</c> for readiness, the nearest deadline, or an eventfd wake-up (a post, a ring from another
/// thread). Nothing on this thread blocks: sockets are non-blocking, a connection whose peer does not read parks its
/// send side and asks for EPOLLOUT, so a slow peer delays only its own queue pairs.
/// </summary>
internal sealed unsafe class IoLoop : IEngineHost
{
    private const int MaxEvents = 256;
    private readonly int _epfd;
    private readonly int _eventFd;
    private readonly Thread _thread;
    private readonly ConcurrentQueue<Action> _posted = new();
    private readonly byte[] _events = GC.AllocateArray<byte>(MaxEvents * 16, pinned: true);
    private readonly List<IoHandler?> _slots = new();
    private readonly List<uint> _generations = new();
    private readonly Stack<int> _free = new();
    private readonly List<int> _freedThisTurn = new();
    private readonly HashSet<IoHandler> _timed = new();
    private readonly List<IoHandler> _due = new();
    private int _sleeping;
    private int _assigned;

    public IoLoop(string name)
    {
        _epfd = EpollInterop.Create();
        _eventFd = EpollInterop.CreateEventFd();
        EpollInterop.Control(_epfd, _eventFd, EpollInterop.EPOLLIN, ulong.MaxValue, add: true);
        Engine = new DmaEngine(this);
        _thread = new Thread(Run) { IsBackground = true, Name = name };
        _thread.Start();
    }

    /// <summary>The engine that executes the send queues of this loop's connections (on this thread).</summary>
    public DmaEngine Engine { get; }

    /// <summary>Connections and handshakes given this loop and not yet released, for spreading new ones.</summary>
    public int Assigned => Volatile.Read(ref _assigned);

    /// <summary>Counts a connection or handshake given this loop (see <see cref="IoLoopGroup.Next"/>).</summary>
    internal void Assign() => Interlocked.Increment(ref _assigned);

    /// <summary>A connection or handshake given this loop has ended.</summary>
    public void Release() => Interlocked.Decrement(ref _assigned);

    /// <summary>Whether the caller is this loop's thread.</summary>
    public bool IsLoopThread => Thread.CurrentThread == _thread;

    /// <summary>Runs <paramref name="work"/> on the loop thread, soon.</summary>
    public void Post(Action work)
    {
        _posted.Enqueue(work);
        Wake();
    }

    /// <summary>Wakes the loop if it sleeps (a ring from another thread).</summary>
    public void Wake()
    {
        // A full fence between the caller's enqueue and this read of the flag (the loop sets the flag, then looks at
        // the queues): one of the two always sees the other's write, so no wake-up is lost.
        Interlocked.MemoryBarrier();
        if (Volatile.Read(ref _sleeping) != 0 && Interlocked.Exchange(ref _sleeping, 0) != 0) EpollInterop.Signal(_eventFd);
    }

    /// <summary>Loop thread: starts watching <paramref name="handler"/> for <paramref name="events"/>; false when its descriptor is gone.</summary>
    public bool Register(IoHandler handler, uint events)
    {
        int slot;
        if (_free.Count > 0)
        {
            slot = _free.Pop();
        }
        else
        {
            slot = _slots.Count;
            _slots.Add(null);
            _generations.Add(0);
        }
        uint generation = ++_generations[slot];
        if (!EpollInterop.Control(_epfd, handler.Fd, events, Key(slot, generation), add: true))
        {
            _free.Push(slot);
            return false;
        }
        _slots[slot] = handler;
        handler.Slot = slot;
        handler.Generation = generation;
        handler.Interest = events;
        return true;
    }

    /// <summary>Loop thread: changes what a registered handler is watched for.</summary>
    public void SetInterest(IoHandler handler, uint events)
    {
        if (handler.Slot < 0 || handler.Interest == events) return;
        handler.Interest = events;
        EpollInterop.Control(_epfd, handler.Fd, events, Key(handler.Slot, handler.Generation), add: false);
    }

    /// <summary>Loop thread: stops watching (before the descriptor closes). Idempotent.</summary>
    public void Unregister(IoHandler handler)
    {
        if (handler.Slot < 0) return;
        EpollInterop.Remove(_epfd, handler.Fd);
        _slots[handler.Slot] = null;
        // Events of this turn may still name the slot: it is reused only from the next turn (the generation tells).
        _freedThisTurn.Add(handler.Slot);
        handler.Slot = -1;
        _timed.Remove(handler);
    }

    /// <summary>Loop thread: whether the loop looks at <paramref name="handler"/>'s <see cref="IoHandler.Deadline"/>.</summary>
    public void Timed(IoHandler handler, bool on)
    {
        if (on) _timed.Add(handler);
        else _timed.Remove(handler);
    }

    private static ulong Key(int slot, uint generation) => ((ulong)generation << 32) | (uint)slot;

    private void Run()
    {
        byte* events = (byte*)System.Runtime.CompilerServices.Unsafe.AsPointer(ref System.Runtime.InteropServices.MemoryMarshal.GetArrayDataReference(_events));
        while (true)
        {
            RunPosted();
            Engine.RunPending();
            RunPosted();
            int timeout = NextTimeout();
            if (timeout != 0)
            {
                // Announce the sleep, then look once more: a ring or post after this sees the flag and signals.
                Interlocked.Exchange(ref _sleeping, 1);
                if (!_posted.IsEmpty || Engine.HasWork) timeout = 0;
            }
            int n = EpollInterop.Wait(_epfd, events, MaxEvents, timeout);
            Volatile.Write(ref _sleeping, 0);
            for (int i = 0; i < n; i++)
            {
                EpollInterop.EventAt(events, i, out uint bits, out ulong data);
                if (data == ulong.MaxValue)
                {
                    EpollInterop.Drain(_eventFd);
                    continue;
                }
                int slot = (int)(uint)data;
                var handler = slot < _slots.Count ? _slots[slot] : null;
                if (handler is null || handler.Generation != (uint)(data >> 32)) continue;
                Dispatch(handler, bits);
            }
            RunDeadlines();
            foreach (int slot in _freedThisTurn) _free.Push(slot);
            _freedThisTurn.Clear();
        }
    }

    private static void Dispatch(IoHandler handler, uint bits)
    {
        try
        {
            handler.OnEvents(bits);
        }
        catch (Exception e)
        {
            // Nothing may end the loop (every connection on it would stop): the handler failed alone.
            Fault(e);
        }
    }

    /// <summary>Faults that escaped a handler or posted work (each one's connection ends on its own; counted for tests).</summary>
    public static long Faults;

    private static void Fault(Exception e)
    {
        Interlocked.Increment(ref Faults);
        System.Diagnostics.Trace.TraceError($"pinneddma I/O loop: unexpected fault: {e}");
    }

    private void RunPosted()
    {
        for (int n = 0; n < 1024 && _posted.TryDequeue(out var work); n++)
        {
            try
            {
                work();
            }
            catch (Exception e)
            {
                Fault(e);
            }
        }
    }

    private int NextTimeout()
    {
        if (!_posted.IsEmpty || Engine.HasWork) return 0;
        long now = Environment.TickCount64;
        long next = Engine.RetryDue;
        foreach (var h in _timed) next = Math.Min(next, h.Deadline);
        if (next == long.MaxValue) return -1;
        return (int)Math.Clamp(next - now, 0, 1000);
    }

    private void RunDeadlines()
    {
        long now = Environment.TickCount64;
        if (Engine.RetryDue <= now) Engine.RetryReceiverNotReady();
        if (_timed.Count == 0) return;
        foreach (var h in _timed)
            if (h.Deadline <= now) _due.Add(h);
        foreach (var h in _due)
        {
            try
            {
                h.OnDeadline(now);
            }
            catch (Exception e)
            {
                Fault(e);
            }
        }
        _due.Clear();
    }
}

/// <summary>
/// The process's I/O loops for iWARP connections: a fixed set per size (by default one per core), created on first use
/// and kept for the process's life (an idle loop sleeps in <c>epoll_wait</c> and costs no CPU).
/// </summary>
internal static class IoLoopGroup
{
    private static readonly ConcurrentDictionary<int, Lazy<IoLoop[]>> s_groups = new();
    private static int s_rotor;

    /// <summary>
    /// The loop a new connection (or handshake) goes on: the one with the fewest assigned, of the group of
    /// <paramref name="threads"/> loops (0: one per core). It counts as assigned at once (the caller releases it when
    /// it ends), and ties are broken from a rotating start, so two connections made at the same moment (the two ends of
    /// one stream in one process) land on different loops.
    /// </summary>
    public static IoLoop Next(int threads)
    {
        if (threads <= 0) threads = Environment.ProcessorCount;
        // Lazy: GetOrAdd may run a factory twice under a race, and a second set of loops would start threads for nothing.
        var loops = s_groups.GetOrAdd(threads, static n => new Lazy<IoLoop[]>(() =>
        {
            var made = new IoLoop[n];
            for (int i = 0; i < n; i++) made[i] = new IoLoop($"pinneddma-io-{n}.{i}");
            return made;
        })).Value;
        int start = Interlocked.Increment(ref s_rotor) & int.MaxValue;
        IoLoop best = loops[start % loops.Length];
        for (int i = 1; i < loops.Length; i++)
        {
            var l = loops[(start + i) % loops.Length];
            if (l.Assigned < best.Assigned) best = l;
        }
        best.Assign();
        return best;
    }
}
