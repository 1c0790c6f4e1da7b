using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace PinnedDma.Interop;

/// <summary>
/// Gathered sends straight from native memory (<c>sendmsg</c> with an iovec list, which .NET's <see cref="Socket"/> only
/// offers for managed arrays), receives into native memory and <c>poll</c>, none of which waits: the callers (the I/O
/// loops, the listener's handshake thread) wait in <c>epoll</c> or <c>poll</c> themselves.
/// </summary>
internal static unsafe partial class SocketInterop
{
    private const int EINTR = 4;
    private const int EAGAIN = 11;
    private const int MSG_NOSIGNAL = 0x4000;
    private const int MSG_DONTWAIT = 0x40;
    private const short POLLIN = 0x001;

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
