using System.Collections.Concurrent;
using System.Runtime.InteropServices;

namespace PinnedDma.Samples.ConnectionScale;

/// <summary>
/// The raw-socket baseline in the shape the iWARP transport is meant to take: a fixed number of I/O threads (default
/// <see cref="Environment.ProcessorCount"/>), each with its own level-triggered epoll instance over its share of
/// non-blocking sockets, plain <c>recv</c>/<c>send</c> system calls and an eventfd to wake it for commands (new
/// connection, drop, stop). No runtime socket machinery and no thread pool: what a C server of the same design costs.
/// <para>
/// The protocol is <see cref="SocketScaleServer"/>'s, so the same client drives both: on accept the server sends the
/// connection's slot (4 bytes, little-endian); request <c>'W'</c> + 4 KiB is stored in the slot and answered with
/// <c>'A'</c>; request <c>'R'</c> is answered with the slot's 4 KiB; any other byte closes the connection.
/// </para>
/// <para>
/// I/O thread 0 also owns the listening socket: it accepts (accept4, non-blocking) and hands each connection to
/// thread <c>slot % threads</c> through that thread's queue and eventfd; from then on only that thread touches it.
/// </para>
/// </summary>
public sealed unsafe class EpollScaleServer : ScaleServer
{
    private readonly int _listenFd;
    private readonly int _port;
    private readonly byte* _slots;
    private readonly IoThread[] _threads;
    private readonly Connection?[] _connections;
    private int _closedByPeer;
    private bool _disposed;

    /// <summary>Creates the server with <paramref name="ioThreads"/> I/O threads (0: one per processor); it accepts after <see cref="Start"/>.</summary>
    public EpollScaleServer(int connections, int ioThreads = 0) : base(connections)
    {
        if (ioThreads < 0) throw new ArgumentOutOfRangeException(nameof(ioThreads), "I/O threads must be zero (one per processor) or positive");
        IoThreads = ioThreads == 0 ? Environment.ProcessorCount : ioThreads;
        _slots = (byte*)NativeMemory.AlignedAlloc((nuint)connections * Pattern.Size, 4096);
        new Span<byte>(_slots, connections * Pattern.Size).Clear();
        _connections = new Connection?[connections];
        _listenFd = Native.ListenLoopback(1024, out _port);
        _threads = new IoThread[IoThreads];
        for (int i = 0; i < IoThreads; i++) _threads[i] = new IoThread(this, i);
    }

    /// <summary>The number of I/O threads (each with its own epoll instance).</summary>
    public int IoThreads { get; }

    /// <inheritdoc/>
    public override int Port => _port;

    /// <inheritdoc/>
    protected override Span<byte> Slots => new(_slots, Connections * Pattern.Size);

    /// <inheritdoc/>
    public override void Start()
    {
        _threads[0].WatchListener(_listenFd);
        foreach (var t in _threads) t.Start();
    }

    /// <inheritdoc/>
    public override int Drop()
    {
        foreach (var t in _threads) t.Request(IoThread.Command.Drop);
        foreach (var t in _threads) t.WaitDropped(TimeSpan.FromSeconds(30));
        return Interlocked.Exchange(ref _closedByPeer, 0);
    }

    /// <inheritdoc/>
    public override void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        base.Dispose(); // cancels Stop and drops every connection
        foreach (var t in _threads) t.Request(IoThread.Command.Stop);
        foreach (var t in _threads) t.Dispose();
        Native.Close(_listenFd);
        NativeMemory.AlignedFree(_slots);
    }

    /// <summary>One connection's state; touched only by its I/O thread once handed over.</summary>
    private sealed class Connection(int fd, int slot)
    {
        public readonly int Fd = fd;
        public readonly int Slot = slot;
        public Phase Phase = Phase.Hello;
        public int Offset;
        public bool WantsOutput;
        public readonly byte[] Small = new byte[4];
    }

    private enum Phase
    {
        /// <summary>Sending the 4-byte slot number.</summary>
        Hello,

        /// <summary>Waiting for a request byte.</summary>
        Request,

        /// <summary>Receiving a write's 4 KiB into the slot.</summary>
        WriteData,

        /// <summary>Sending the write's one-byte answer.</summary>
        Ack,

        /// <summary>Sending the slot's 4 KiB.</summary>
        ReadData,
    }

    /// <summary>What one step of a connection's state machine came to.</summary>
    private enum Step
    {
        Progress,
        WouldBlockIn,
        WouldBlockOut,
        Closed,
    }

    private sealed class IoThread : IDisposable
    {
        public enum Command
        {
            Drop = 1,
            Stop = 2,
        }

        private const ulong WakeToken = ulong.MaxValue;
        private const ulong ListenToken = ulong.MaxValue - 1;
        private readonly EpollScaleServer _server;
        private readonly int _index;
        private readonly int _epoll;
        private readonly int _wake;
        private readonly Thread _thread;
        private readonly ConcurrentQueue<Connection> _incoming = new();
        private readonly List<Connection> _mine = [];
        private readonly ManualResetEventSlim _dropped = new(false);
        private int _commands;
        private int _listenFd = -1;

        public IoThread(EpollScaleServer server, int index)
        {
            _server = server;
            _index = index;
            _epoll = Native.EpollCreate();
            _wake = Native.EventFd();
            Native.EpollAdd(_epoll, _wake, Native.EpollIn, WakeToken);
            _thread = new Thread(Run) { IsBackground = true, Name = $"epoll-io-{index}" };
        }

        public void WatchListener(int fd)
        {
            _listenFd = fd;
            Native.EpollAdd(_epoll, fd, Native.EpollIn, ListenToken);
        }

        public void Start() => _thread.Start();

        public void Hand(Connection c)
        {
            _incoming.Enqueue(c);
            Native.Signal(_wake);
        }

        public void Request(Command command)
        {
            if (command == Command.Drop) _dropped.Reset();
            int old, now;
            do
            {
                old = Volatile.Read(ref _commands);
                now = old | (int)command;
            }
            while (Interlocked.CompareExchange(ref _commands, now, old) != old);
            Native.Signal(_wake);
        }

        public void WaitDropped(TimeSpan bound)
        {
            if (_thread.IsAlive && !_dropped.Wait(bound)) throw new TimeoutException($"I/O thread {_index} did not drop its connections within {bound}");
        }

        private void Run()
        {
            const int MaxEvents = 256;
            int stride = Native.EpollEventSize;
            byte* events = stackalloc byte[MaxEvents * 16];
            while (true)
            {
                int n = Native.EpollWait(_epoll, events, MaxEvents, -1);
                for (int i = 0; i < n; i++)
                {
                    uint flags = *(uint*)(events + i * stride);
                    ulong token = *(ulong*)(events + i * stride + Native.EpollDataOffset);
                    if (token == WakeToken)
                    {
                        Native.Drain(_wake);
                        while (_incoming.TryDequeue(out var c)) Adopt(c);
                        int commands = Interlocked.Exchange(ref _commands, 0);
                        if ((commands & (int)Command.Drop) != 0)
                        {
                            CloseAll();
                            _dropped.Set();
                        }
                        if ((commands & (int)Command.Stop) != 0)
                        {
                            CloseAll();
                            _dropped.Set();
                            return;
                        }
                    }
                    else if (token == ListenToken)
                    {
                        AcceptReady();
                    }
                    else
                    {
                        var c = _server._connections[(int)token];
                        if (c is null) continue; // closed earlier in this batch
                        if ((flags & (Native.EpollErr | Native.EpollHup)) != 0 && (flags & (Native.EpollIn | Native.EpollOut)) == 0)
                        {
                            Close(c, byPeer: false);
                            continue;
                        }
                        Serve(c);
                    }
                }
            }
        }

        private void AcceptReady()
        {
            while (_server.Accepted < _server.Connections)
            {
                int fd = Native.Accept(_listenFd);
                if (fd < 0) return; // nothing more pending (or a transient accept error): epoll reports the next one
                Native.SetNoDelay(fd);
                int slot = _server.CountAccepted();
                var c = new Connection(fd, slot);
                _server._connections[slot] = c;
                var owner = _server._threads[slot % _server._threads.Length];
                if (owner == this) Adopt(c);
                else owner.Hand(c);
            }
            // Sized for Connections: later connects wait in the backlog, as the async server leaves them.
            Native.EpollDelete(_epoll, _listenFd);
        }

        private void Adopt(Connection c)
        {
            _mine.Add(c);
            BitConverter.TryWriteBytes(c.Small, c.Slot); // little-endian on every platform this runs on
            Native.EpollAdd(_epoll, c.Fd, Native.EpollIn, (ulong)c.Slot);
            Serve(c);
        }

        /// <summary>Runs the connection's state machine until it would block or closes; sets the epoll interest to match.</summary>
        private void Serve(Connection c)
        {
            while (true)
            {
                var step = Advance(c);
                if (step == Step.Progress) continue;
                if (step == Step.Closed) return;
                bool wantsOutput = step == Step.WouldBlockOut;
                if (wantsOutput != c.WantsOutput)
                {
                    Native.EpollModify(_epoll, c.Fd, wantsOutput ? Native.EpollOut : Native.EpollIn, (ulong)c.Slot);
                    c.WantsOutput = wantsOutput;
                }
                return;
            }
        }

        private Step Advance(Connection c)
        {
            byte* slot = _server._slots + (long)c.Slot * Pattern.Size;
            long n;
            switch (c.Phase)
            {
                case Phase.Hello:
                    fixed (byte* p = c.Small) n = Native.Send(c.Fd, p + c.Offset, 4 - c.Offset);
                    if (n < 0) return Failed(c, n, Step.WouldBlockOut);
                    c.Offset += (int)n;
                    if (c.Offset == 4) Next(c, Phase.Request);
                    return Step.Progress;
                case Phase.Request:
                    byte request;
                    n = Native.Recv(c.Fd, &request, 1);
                    if (n <= 0) return n == 0 ? Close(c, byPeer: true) : Failed(c, n, Step.WouldBlockIn);
                    if (request == (byte)'W') Next(c, Phase.WriteData);
                    else if (request == (byte)'R') Next(c, Phase.ReadData);
                    else return Close(c, byPeer: true); // not this protocol: the async server ends the connection the same way
                    return Step.Progress;
                case Phase.WriteData:
                    n = Native.Recv(c.Fd, slot + c.Offset, Pattern.Size - c.Offset);
                    if (n <= 0) return n == 0 ? Close(c, byPeer: true) : Failed(c, n, Step.WouldBlockIn);
                    c.Offset += (int)n;
                    if (c.Offset == Pattern.Size)
                    {
                        c.Small[0] = (byte)'A';
                        Next(c, Phase.Ack);
                    }
                    return Step.Progress;
                case Phase.Ack:
                    fixed (byte* p = c.Small) n = Native.Send(c.Fd, p, 1);
                    if (n < 0) return Failed(c, n, Step.WouldBlockOut);
                    if (n == 1) Next(c, Phase.Request);
                    return Step.Progress;
                case Phase.ReadData:
                    n = Native.Send(c.Fd, slot + c.Offset, Pattern.Size - c.Offset);
                    if (n < 0) return Failed(c, n, Step.WouldBlockOut);
                    c.Offset += (int)n;
                    if (c.Offset == Pattern.Size) Next(c, Phase.Request);
                    return Step.Progress;
                default:
                    throw new InvalidOperationException($"connection {c.Slot} in phase {c.Phase}");
            }
        }

        private static void Next(Connection c, Phase phase)
        {
            c.Phase = phase;
            c.Offset = 0;
        }

        /// <summary>A negative system-call result: would block (wait for <paramref name="wouldBlock"/>), interrupted (retry), or an error (close).</summary>
        private Step Failed(Connection c, long result, Step wouldBlock)
        {
            int errno = (int)-result;
            if (errno is Native.EAGAIN) return wouldBlock;
            if (errno is Native.EINTR) return Step.Progress;
            return Close(c, byPeer: false);
        }

        private Step Close(Connection c, bool byPeer)
        {
            if (byPeer) Interlocked.Increment(ref _server._closedByPeer);
            Native.EpollDelete(_epoll, c.Fd);
            Native.Close(c.Fd);
            _server._connections[c.Slot] = null;
            _mine.Remove(c);
            return Step.Closed;
        }

        private void CloseAll()
        {
            foreach (var c in _mine.ToArray()) Close(c, byPeer: false);
        }

        public void Dispose()
        {
            if (_thread.IsAlive && !_thread.Join(TimeSpan.FromSeconds(30))) throw new TimeoutException($"I/O thread {_index} did not stop");
            Native.Close(_epoll);
            Native.Close(_wake);
            _dropped.Dispose();
        }
    }

    /// <summary>The system calls, Linux x86-64 and arm64 (epoll_event is packed to 12 bytes on x86-64 only).</summary>
    private static class Native
    {
        public const int EAGAIN = 11;
        public const int EINTR = 4;
        public const uint EpollIn = 0x001;
        public const uint EpollOut = 0x004;
        public const uint EpollErr = 0x008;
        public const uint EpollHup = 0x010;
        private const int AfInet = 2;
        private const int SockStream = 1;
        private const int SockNonBlock = 0x800;
        private const int SockCloExec = 0x80000;
        private const int SolSocket = 1;
        private const int SoReuseAddr = 2;
        private const int IpProtoTcp = 6;
        private const int TcpNoDelay = 1;
        private const int MsgNoSignal = 0x4000;
        private const int EpollCtlAdd = 1;
        private const int EpollCtlDel = 2;
        private const int EpollCtlMod = 3;

        public static readonly bool PackedEvents = RuntimeInformation.ProcessArchitecture == Architecture.X64;
        public static readonly int EpollEventSize = PackedEvents ? 12 : 16;
        public static readonly int EpollDataOffset = PackedEvents ? 4 : 8;

        /// <summary>A non-blocking listening socket on 127.0.0.1 and an ephemeral port.</summary>
        public static int ListenLoopback(int backlog, out int port)
        {
            int fd = Check(socket(AfInet, SockStream | SockNonBlock | SockCloExec, 0), "socket");
            try
            {
                int one = 1;
                Check(setsockopt(fd, SolSocket, SoReuseAddr, &one, sizeof(int)), "setsockopt(SO_REUSEADDR)");
                var address = new SockAddrIn { Family = AfInet, Port = 0, Address = 0x0100007F }; // 127.0.0.1, network order
                Check(bind(fd, &address, sizeof(SockAddrIn)), "bind");
                Check(listen(fd, backlog), "listen");
                int length = sizeof(SockAddrIn);
                Check(getsockname(fd, &address, &length), "getsockname");
                port = (ushort)((address.Port >> 8) | (address.Port << 8));
                return fd;
            }
            catch
            {
                close(fd);
                throw;
            }
        }

        /// <summary>A non-blocking accepted socket, or -1 when none is pending.</summary>
        public static int Accept(int listenFd)
        {
            while (true)
            {
                int fd = accept4(listenFd, null, null, SockNonBlock | SockCloExec);
                if (fd >= 0) return fd;
                if (Marshal.GetLastPInvokeError() != EINTR) return -1;
            }
        }

        public static void SetNoDelay(int fd)
        {
            int one = 1;
            setsockopt(fd, IpProtoTcp, TcpNoDelay, &one, sizeof(int));
        }

        /// <summary>Bytes received, 0 at end of stream, or minus errno.</summary>
        public static long Recv(int fd, byte* buffer, int length)
        {
            long n = recv(fd, buffer, (nuint)length, 0);
            return n >= 0 ? n : -Marshal.GetLastPInvokeError();
        }

        /// <summary>Bytes sent, or minus errno.</summary>
        public static long Send(int fd, byte* buffer, int length)
        {
            long n = send(fd, buffer, (nuint)length, MsgNoSignal);
            return n >= 0 ? n : -Marshal.GetLastPInvokeError();
        }

        public static int EpollCreate() => Check(epoll_create1(SockCloExec), "epoll_create1");

        public static void EpollAdd(int epoll, int fd, uint events, ulong token) => Check(Ctl(epoll, EpollCtlAdd, fd, events, token), "epoll_ctl(ADD)");

        public static void EpollModify(int epoll, int fd, uint events, ulong token) => Check(Ctl(epoll, EpollCtlMod, fd, events, token), "epoll_ctl(MOD)");

        public static void EpollDelete(int epoll, int fd) => Ctl(epoll, EpollCtlDel, fd, 0, 0);

        private static int Ctl(int epoll, int op, int fd, uint events, ulong token)
        {
            byte* ev = stackalloc byte[16];
            *(uint*)ev = events;
            *(ulong*)(ev + EpollDataOffset) = token;
            return epoll_ctl(epoll, op, fd, ev);
        }

        /// <summary>Waits for events; 0 when interrupted by a signal.</summary>
        public static int EpollWait(int epoll, byte* events, int max, int timeoutMs)
        {
            int n = epoll_wait(epoll, events, max, timeoutMs);
            if (n >= 0) return n;
            int errno = Marshal.GetLastPInvokeError();
            if (errno == EINTR) return 0;
            throw new IOException($"epoll_wait failed: errno {errno}");
        }

        public static int EventFd() => Check(eventfd(0, SockNonBlock | SockCloExec), "eventfd");

        public static void Signal(int fd)
        {
            ulong one = 1;
            write(fd, &one, 8);
        }

        public static void Drain(int fd)
        {
            ulong value;
            read(fd, &value, 8);
        }

        public static void Close(int fd)
        {
            if (fd >= 0) close(fd);
        }

        private static int Check(int result, string call) =>
            result >= 0 ? result : throw new IOException($"{call} failed: errno {Marshal.GetLastPInvokeError()}");

        [StructLayout(LayoutKind.Sequential)]
        private struct SockAddrIn
        {
            public ushort Family;
            public ushort Port;
            public uint Address;
            public ulong Zero;
        }

        [DllImport("libc", SetLastError = true)]
        private static extern int socket(int domain, int type, int protocol);

        [DllImport("libc", SetLastError = true)]
        private static extern int setsockopt(int fd, int level, int name, void* value, int length);

        [DllImport("libc", SetLastError = true)]
        private static extern int bind(int fd, SockAddrIn* address, int length);

        [DllImport("libc", SetLastError = true)]
        private static extern int listen(int fd, int backlog);

        [DllImport("libc", SetLastError = true)]
        private static extern int getsockname(int fd, SockAddrIn* address, int* length);

        [DllImport("libc", SetLastError = true)]
        private static extern int accept4(int fd, SockAddrIn* address, int* length, int flags);

        [DllImport("libc", SetLastError = true)]
        private static extern nint recv(int fd, byte* buffer, nuint length, int flags);

        [DllImport("libc", SetLastError = true)]
        private static extern nint send(int fd, byte* buffer, nuint length, int flags);

        [DllImport("libc", SetLastError = true)]
        private static extern int close(int fd);

        [DllImport("libc", SetLastError = true)]
        private static extern int epoll_create1(int flags);

        [DllImport("libc", SetLastError = true)]
        private static extern int epoll_ctl(int epoll, int op, int fd, byte* ev);

        [DllImport("libc", SetLastError = true)]
        private static extern int epoll_wait(int epoll, byte* events, int max, int timeout);

        [DllImport("libc", SetLastError = true)]
        private static extern int eventfd(uint initial, int flags);

        [DllImport("libc", SetLastError = true)]
        private static extern nint read(int fd, void* buffer, nuint length);

        [DllImport("libc", SetLastError = true)]
        private static extern nint write(int fd, void* buffer, nuint length);
    }
}
