using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace PinnedDma.Interop;

/// <summary>
/// epoll and eventfd (Linux): what an I/O loop waits on. Level-triggered registrations; the 64-bit user word of each
/// event names the registration (see <see cref="Transports.Iwarp.Internal.IoLoop"/>).
/// </summary>
internal static unsafe partial class EpollInterop
{
    public const uint EPOLLIN = 0x001;
    public const uint EPOLLOUT = 0x004;
    public const uint EPOLLERR = 0x008;
    public const uint EPOLLHUP = 0x010;
    public const uint EPOLLRDHUP = 0x2000;
    private const int EPOLL_CTL_ADD = 1;
    private const int EPOLL_CTL_DEL = 2;
    private const int EPOLL_CTL_MOD = 3;
    private const int EPOLL_CLOEXEC = 0x80000;
    private const int EFD_CLOEXEC = 0x80000;
    private const int EFD_NONBLOCK = 0x800;
    private const int EINTR = 4;

    /// <summary>struct epoll_event: packed on x86-64 (12 bytes), naturally aligned elsewhere (16 bytes).</summary>
    [StructLayout(LayoutKind.Sequential, Pack = 4)]
    public struct EpollEventPacked
    {
        public uint Events;
        public ulong Data;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct EpollEventAligned
    {
        public uint Events;
        public ulong Data;
    }

    /// <summary>x86-64 packs struct epoll_event; every other Linux ABI aligns its 64-bit field.</summary>
    public static readonly bool Packed = RuntimeInformation.ProcessArchitecture == Architecture.X64;

    [LibraryImport("libc", EntryPoint = "epoll_create1", SetLastError = true)]
    private static partial int EpollCreate1(int flags);

    [LibraryImport("libc", EntryPoint = "epoll_ctl", SetLastError = true)]
    private static partial int EpollCtl(int epfd, int op, int fd, void* ev);

    [LibraryImport("libc", EntryPoint = "epoll_wait", SetLastError = true)]
    private static partial int EpollWaitRaw(int epfd, void* events, int maxEvents, int timeoutMs);

    [LibraryImport("libc", EntryPoint = "eventfd", SetLastError = true)]
    private static partial int EventFdRaw(uint initval, int flags);

    [LibraryImport("libc", EntryPoint = "read", SetLastError = true)]
    private static partial nint Read(int fd, void* buffer, nuint count);

    [LibraryImport("libc", EntryPoint = "write", SetLastError = true)]
    private static partial nint Write(int fd, void* buffer, nuint count);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    public static partial int Close(int fd);

    public static int Create()
    {
        int fd = EpollCreate1(EPOLL_CLOEXEC);
        if (fd < 0) throw new SocketException(Marshal.GetLastPInvokeError());
        return fd;
    }

    public static int CreateEventFd()
    {
        int fd = EventFdRaw(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (fd < 0) throw new SocketException(Marshal.GetLastPInvokeError());
        return fd;
    }

    /// <summary>Adds (<paramref name="add"/>) or modifies a registration; false when the descriptor is gone (closed).</summary>
    public static bool Control(int epfd, int fd, uint events, ulong data, bool add)
    {
        int r;
        if (Packed)
        {
            var ev = new EpollEventPacked { Events = events, Data = data };
            r = EpollCtl(epfd, add ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, &ev);
        }
        else
        {
            var ev = new EpollEventAligned { Events = events, Data = data };
            r = EpollCtl(epfd, add ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, &ev);
        }
        return r == 0;
    }

    public static void Remove(int epfd, int fd)
    {
        var ev = default(EpollEventAligned);
        _ = EpollCtl(epfd, EPOLL_CTL_DEL, fd, &ev);
    }

    /// <summary>Size of one event in the buffer <see cref="Wait"/> fills.</summary>
    public static int EventSize => Packed ? sizeof(EpollEventPacked) : sizeof(EpollEventAligned);

    /// <summary>Waits for events into <paramref name="buffer"/> (room for <paramref name="max"/>); 0 on timeout or interruption.</summary>
    public static int Wait(int epfd, byte* buffer, int max, int timeoutMs)
    {
        int n = EpollWaitRaw(epfd, buffer, max, timeoutMs);
        if (n >= 0) return n;
        int errno = Marshal.GetLastPInvokeError();
        if (errno == EINTR) return 0;
        throw new SocketException(errno);
    }

    /// <summary>The <paramref name="index"/>th event of a <see cref="Wait"/> buffer.</summary>
    public static void EventAt(byte* buffer, int index, out uint events, out ulong data)
    {
        if (Packed)
        {
            var e = ((EpollEventPacked*)buffer)[index];
            events = e.Events;
            data = e.Data;
        }
        else
        {
            var e = ((EpollEventAligned*)buffer)[index];
            events = e.Events;
            data = e.Data;
        }
    }

    /// <summary>Wakes whoever waits on the eventfd.</summary>
    public static void Signal(int eventFd)
    {
        ulong one = 1;
        _ = Write(eventFd, &one, 8);
    }

    /// <summary>Resets the eventfd (non-blocking).</summary>
    public static void Drain(int eventFd)
    {
        ulong value;
        _ = Read(eventFd, &value, 8);
    }
}
