using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace PinnedDma.Interop;

/// <summary>
/// Gathered sends straight from native memory: <c>sendmsg</c> with an iovec list, which .NET's <see cref="Socket"/> only
/// offers for managed arrays. The socket may be in non-blocking mode (it is once any async operation ran on it), so a
/// full send buffer is waited out with <c>poll</c>.
/// </summary>
internal static unsafe partial class SocketInterop
{
    private const int EINTR = 4;
    private const int EAGAIN = 11;
    private const int MSG_NOSIGNAL = 0x4000;
    private const int MSG_PEEK = 0x2;
    private const int MSG_DONTWAIT = 0x40;
    private const short POLLIN = 0x001;
    private const short POLLOUT = 0x004;

    /// <summary>Linux caps one sendmsg at IOV_MAX (1024) buffers.</summary>
    public const int MaxIovecs = 1024;

    [StructLayout(LayoutKind.Sequential)]
    public struct IoVec
    {
        public byte* Base;
        public nuint Length;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct MsgHdr
    {
        public void* Name;
        public uint NameLength;
        public IoVec* Iov;
        public nuint IovLength;
        public void* Control;
        public nuint ControlLength;
        public int Flags;
    }

    /// <summary>One entry of a <c>poll</c> set (struct pollfd).</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct PollFd
    {
        public int Fd;
        public short Events;
        public short Returned;
    }

    [LibraryImport("libc", EntryPoint = "sendmsg", SetLastError = true)]
    private static partial nint SendMsg(int fd, MsgHdr* message, int flags);

    [LibraryImport("libc", EntryPoint = "recv", SetLastError = true)]
    private static partial nint Recv(int fd, byte* buffer, nuint length, int flags);

    [LibraryImport("libc", EntryPoint = "poll", SetLastError = true)]
    private static partial int Poll(PollFd* fds, nuint count, int timeoutMs);

    /// <summary>
    /// Sends every byte the <paramref name="count"/> iovecs at <paramref name="iov"/> describe (the array is consumed:
    /// entries are advanced as bytes go out). Throws <see cref="SocketException"/> when the connection fails or no
    /// byte could be sent for <paramref name="stallMs"/> milliseconds (<see cref="SocketError.TimedOut"/>), and
    /// <see cref="ObjectDisposedException"/> when the socket is closed meanwhile.
    /// </summary>
    public static void SendAll(Socket socket, IoVec* iov, int count, int stallMs = int.MaxValue)
    {
        var handle = socket.SafeHandle;
        bool added = false;
        handle.DangerousAddRef(ref added); // the descriptor cannot be closed (and reused) while it is in use here
        try
        {
            int fd = (int)handle.DangerousGetHandle();
            var message = new MsgHdr { Iov = iov, IovLength = (nuint)count };
            long progress = Environment.TickCount64;
            while (message.IovLength > 0)
            {
                nint sent = SendMsg(fd, &message, MSG_NOSIGNAL);
                if (sent < 0)
                {
                    int errno = Marshal.GetLastPInvokeError();
                    if (errno == EINTR) continue;
                    if (errno != EAGAIN) throw new SocketException((int)ErrnoToSocketError(errno));
                    if (Environment.TickCount64 - progress > stallMs) throw new SocketException((int)SocketError.TimedOut);
                    // A bounded wait re-checks the socket, so a connection closed meanwhile is noticed.
                    WaitFor(socket, fd, POLLOUT, long.MaxValue, default);
                    continue;
                }
                if (sent > 0) progress = Environment.TickCount64;
                while (sent > 0)
                {
                    if ((nint)message.Iov->Length <= sent)
                    {
                        sent -= (nint)message.Iov->Length;
                        message.Iov++;
                        message.IovLength--;
                    }
                    else
                    {
                        message.Iov->Base += sent;
                        message.Iov->Length -= (nuint)sent;
                        sent = 0;
                    }
                }
                while (message.IovLength > 0 && message.Iov->Length == 0)
                {
                    message.Iov++;
                    message.IovLength--;
                }
            }
        }
        finally
        {
            if (added) handle.DangerousRelease();
        }
    }

    /// <summary>
    /// One non-blocking gathered send of the <paramref name="count"/> iovecs at <paramref name="iov"/>: the bytes the
    /// kernel took (possibly fewer than offered), or -1 when its buffer is full. A failed connection throws
    /// <see cref="SocketException"/>. The caller holds a reference on the socket's handle.
    /// </summary>
    public static nint TrySend(int fd, IoVec* iov, int count)
    {
        var message = new MsgHdr { Iov = iov, IovLength = (nuint)count };
        while (true)
        {
            nint sent = SendMsg(fd, &message, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (sent >= 0) return sent;
            int errno = Marshal.GetLastPInvokeError();
            if (errno == EINTR) continue;
            if (errno == EAGAIN) return -1;
            throw new SocketException((int)ErrnoToSocketError(errno));
        }
    }

    /// <summary>
    /// Receives up to <paramref name="length"/> bytes into <paramref name="buffer"/>; returns 0 at the end of the stream.
    /// Without a deadline a blocking descriptor sleeps in <c>recv</c> and a non-blocking one in <c>poll</c> (either way the
    /// kernel wakes this thread directly, with no event-loop hop). With a <paramref name="deadline"/>
    /// (<see cref="Environment.TickCount64"/>) it waits in <c>poll</c> and throws <see cref="TimeoutException"/> when
    /// the deadline passes. The caller holds a reference on the socket's handle so the descriptor cannot be reused.
    /// </summary>
    public static int Receive(Socket socket, int fd, byte* buffer, int length, long deadline = long.MaxValue, CancellationToken cancellationToken = default)
    {
        bool timed = deadline != long.MaxValue || cancellationToken.CanBeCanceled;
        while (true)
        {
            if (timed && !WaitFor(socket, fd, POLLIN, deadline, cancellationToken)) continue;
            nint got = Recv(fd, buffer, (nuint)length, timed ? MSG_DONTWAIT : 0);
            if (got >= 0) return (int)got;
            int errno = Marshal.GetLastPInvokeError();
            if (errno == EINTR) continue;
            if (errno != EAGAIN) throw new SocketException((int)ErrnoToSocketError(errno));
            if (!timed) WaitFor(socket, fd, POLLIN, deadline, cancellationToken);
        }
    }

    /// <summary>
    /// Receives what is already in the socket, up to <paramref name="length"/> bytes, without waiting: the count,
    /// 0 at the end of the stream, or -1 when nothing is there yet.
    /// </summary>
    public static int ReceiveAvailable(int fd, byte* buffer, int length)
    {
        while (true)
        {
            nint got = Recv(fd, buffer, (nuint)length, MSG_DONTWAIT);
            if (got >= 0) return (int)got;
            int errno = Marshal.GetLastPInvokeError();
            if (errno == EINTR) continue;
            if (errno == EAGAIN) return -1;
            throw new SocketException((int)ErrnoToSocketError(errno));
        }
    }

    /// <summary>Readable (or at the end of the stream, or in error): what a <see cref="PollMany"/> caller asks for.</summary>
    public const short PollReadable = POLLIN;

    /// <summary>
    /// One <c>poll</c> over <paramref name="count"/> descriptors for at most <paramref name="timeoutMs"/>: the number
    /// ready (each entry's <see cref="PollFd.Returned"/> says which), 0 on timeout or an interrupted wait.
    /// </summary>
    public static int PollMany(PollFd* fds, int count, int timeoutMs)
    {
        int ready = Poll(fds, (nuint)count, timeoutMs);
        if (ready >= 0) return ready;
        int errno = Marshal.GetLastPInvokeError();
        if (errno == EINTR) return 0;
        throw new SocketException((int)ErrnoToSocketError(errno));
    }

    /// <summary>One bounded <c>poll</c> for <paramref name="events"/>; true when the descriptor is ready.</summary>
    private static bool WaitFor(Socket socket, int fd, short events, long deadline, CancellationToken cancellationToken)
    {
        long left = deadline == long.MaxValue ? 200 : Math.Min(200, deadline - Environment.TickCount64);
        if (left <= 0) throw new TimeoutException("The peer did not answer in time.");
        var p = new PollFd { Fd = fd, Events = events };
        int ready = Poll(&p, 1, (int)left);
        if (ready < 0 && Marshal.GetLastPInvokeError() != EINTR)
            throw new SocketException((int)ErrnoToSocketError(Marshal.GetLastPInvokeError()));
        cancellationToken.ThrowIfCancellationRequested();
        ObjectDisposedException.ThrowIf(socket.SafeHandle.IsClosed, socket);
        return ready > 0;
    }

    /// <summary>Waits until the socket has bytes to read; false when it reached the end of the stream instead.</summary>
    public static bool WaitReadable(Socket socket, int fd)
    {
        byte one;
        while (true)
        {
            if (!WaitFor(socket, fd, POLLIN, long.MaxValue, default)) continue;
            nint got = Recv(fd, &one, 1, MSG_PEEK | MSG_DONTWAIT);
            if (got > 0) return true;
            if (got == 0) return false;
            int errno = Marshal.GetLastPInvokeError();
            if (errno is not (EAGAIN or EINTR)) throw new SocketException((int)ErrnoToSocketError(errno));
        }
    }

    private static SocketError ErrnoToSocketError(int errno) => errno switch
    {
        32 => SocketError.Shutdown,          // EPIPE
        104 => SocketError.ConnectionReset,  // ECONNRESET
        107 => SocketError.NotConnected,     // ENOTCONN
        110 => SocketError.TimedOut,         // ETIMEDOUT
        9 => SocketError.OperationAborted,   // EBADF
        _ => SocketError.SocketError,
    };
}
