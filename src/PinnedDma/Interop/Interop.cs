using System.Runtime.InteropServices;

namespace PinnedDma.Interop;

/// <summary>libc entry points, source-generated; errno is read with <see cref="Marshal.GetLastPInvokeError"/>.</summary>
internal static unsafe partial class Libc
{
    private const string Lib = "libc";

    public const int PROT_READ = 0x1;
    public const int PROT_WRITE = 0x2;
    public const int MAP_SHARED = 0x01;
    public const int MAP_SHARED_VALIDATE = 0x03;
    public const int MAP_PRIVATE = 0x02;
    public const int MAP_FIXED = 0x10;
    public const int MAP_ANONYMOUS = 0x20;
    public const int MAP_SYNC = 0x80000;
    public const int MS_SYNC = 4;
    public const int EOPNOTSUPP = 95;
    public const int EINVAL = 22;
    public const int ENODEV = 19;
    public const int EAGAIN = 11;
    public const int EACCES = 13;

    /// <summary>fcntl command: set an open-file-description lock, failing at once on a conflict (Linux 3.15+).</summary>
    public const int F_OFD_SETLK = 37;
    public const short F_WRLCK = 1;
    public const short SEEK_SET = 0;

    /// <summary><c>struct flock</c> of 64-bit Linux (x86-64 and arm64 lay it out alike).</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct Flock
    {
        public short Type;
        public short Whence;
        public long Start;
        public long Length;
        public int Pid;
    }

    [LibraryImport(Lib, EntryPoint = "mmap", SetLastError = true)]
    public static partial void* Mmap(void* addr, nuint length, int prot, int flags, int fd, long offset);

    [LibraryImport(Lib, EntryPoint = "munmap", SetLastError = true)]
    public static partial int Munmap(void* addr, nuint length);

    [LibraryImport(Lib, EntryPoint = "msync", SetLastError = true)]
    public static partial int Msync(void* addr, nuint length, int flags);

    [LibraryImport(Lib, EntryPoint = "fsync", SetLastError = true)]
    public static partial int Fsync(int fd);

    /// <summary><c>fcntl(fd, cmd, struct flock *)</c>: the lock commands only.</summary>
    [LibraryImport(Lib, EntryPoint = "fcntl", SetLastError = true)]
    public static partial int FcntlLock(int fd, int cmd, Flock* lk);

    [LibraryImport(Lib, EntryPoint = "getpagesize")]
    public static partial int GetPageSize();

    public static readonly void* MapFailed = (void*)-1;

    /// <summary>errno as a typed error, in one place.</summary>
    public static PinnedDmaException Error(string call, int errno) => errno switch
    {
        EOPNOTSUPP => new PinnedDmaException(PinnedDmaError.NotSupported, $"{call}: operation not supported (errno {errno})."),
        EINVAL => new PinnedDmaException(PinnedDmaError.InvalidArgument, $"{call}: invalid argument (errno {errno})."),
        _ => new PinnedDmaException(PinnedDmaError.IoError, $"{call} failed: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno})."),
    };
}
