using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using PinnedDma.Internal;
using PinnedDma.Interop;

namespace PinnedDma.Storage;

/// <summary>
/// A block device over a real file mapped <c>MAP_SHARED</c>. It first asks for
/// <c>MAP_SHARED_VALIDATE | MAP_SYNC</c> (the DAX contract: no page cache between the CPU and the block) and
/// falls back to plain <c>MAP_SHARED</c> when the kernel answers EOPNOTSUPP; <see cref="MappingMode"/> tells
/// which is in force.
/// </summary>
public sealed unsafe class FileBlockDevice : BlockDevice
{
    private readonly SafeFileHandle _file;
    private readonly DeviceMappingMode _mode;
    private readonly int _pageSize;

    private FileBlockDevice(SafeFileHandle file, int blockSize, long blockCount, bool trySync)
        : base(blockSize, blockCount)
    {
        _file = file;
        _pageSize = Libc.GetPageSize();
        int fd = (int)file.DangerousGetHandle();
        nuint len = checked((nuint)Length);
        void* p = Libc.MapFailed;
        if (trySync)
        {
            p = Libc.Mmap(null, len, Libc.PROT_READ | Libc.PROT_WRITE, Libc.MAP_SHARED_VALIDATE | Libc.MAP_SYNC, fd, 0);
            if (p == Libc.MapFailed)
            {
                int errno = Marshal.GetLastPInvokeError();
                // EOPNOTSUPP: not DAX. EINVAL: a kernel that predates MAP_SHARED_VALIDATE. Both mean "no MAP_SYNC here".
                if (errno != Libc.EOPNOTSUPP && errno != Libc.EINVAL && errno != Libc.ENODEV)
                    throw Libc.Error("mmap(MAP_SHARED_VALIDATE|MAP_SYNC)", errno);
            }
            else
            {
                _mode = DeviceMappingMode.MapSync;
            }
        }
        if (p == Libc.MapFailed)
        {
            p = Libc.Mmap(null, len, Libc.PROT_READ | Libc.PROT_WRITE, Libc.MAP_SHARED, fd, 0);
            if (p == Libc.MapFailed) throw Libc.Error("mmap(MAP_SHARED)", Marshal.GetLastPInvokeError());
            _mode = DeviceMappingMode.MapShared;
        }
        SetBase((byte*)p);
    }

    /// <summary>The file behind the device.</summary>
    public string Path { get; private init; } = "";

    /// <inheritdoc />
    public override DeviceMappingMode MappingMode => _mode;

    /// <summary>
    /// Maps <paramref name="path"/>, creating it or resizing it to exactly
    /// <paramref name="blockCount"/> x <paramref name="blockSize"/> bytes when <paramref name="create"/> is true.
    /// An existing file whose length is not a whole number of blocks, or is shorter than asked, is refused.
    /// The device holds an exclusive lock on the file (an open-file-description lock, <c>F_OFD_SETLK</c>) until it
    /// is disposed: a second device over the same file, in this process or another, fails with
    /// <see cref="PinnedDmaError.Busy"/> before anything is changed.
    /// </summary>
    /// <param name="path">The file.</param>
    /// <param name="blockSize">Bytes per block: a power of two from 512 to 65536.</param>
    /// <param name="blockCount">Blocks: 1 to 2^31 - 1.</param>
    /// <param name="create">True to create the file if needed and size it to the device.</param>
    /// <param name="tryMapSync">True to ask for <c>MAP_SYNC</c> first.</param>
    /// <returns>The mapped device, holding the file's lock until disposed.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="path"/> is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="path"/> is empty.</exception>
    /// <exception cref="ArgumentOutOfRangeException">
    /// <paramref name="blockSize"/> or <paramref name="blockCount"/> is out of range. This is found only once the file
    /// is open: with <paramref name="create"/> it may already have been created or resized.
    /// </exception>
    /// <exception cref="OverflowException"><paramref name="blockCount"/> times <paramref name="blockSize"/> overflows 64 bits.</exception>
    /// <exception cref="FileNotFoundException"><paramref name="create"/> is false and there is no file at <paramref name="path"/>.</exception>
    /// <exception cref="DirectoryNotFoundException">A directory on <paramref name="path"/> does not exist.</exception>
    /// <exception cref="UnauthorizedAccessException">No permission to read and write (or create) the file.</exception>
    /// <exception cref="PinnedDmaException">
    /// <see cref="PinnedDmaError.Busy"/>: another device (in this process or another) holds the file, which is left
    /// as it was; <see cref="PinnedDmaError.Corrupt"/>: <paramref name="create"/> is false and the file is shorter than
    /// the device; <see cref="PinnedDmaError.InvalidArgument"/>: <paramref name="path"/> is a directory;
    /// <see cref="PinnedDmaError.NotSupported"/>: not Linux; <see cref="PinnedDmaError.IoError"/>: a system call
    /// (<c>mmap</c>, <c>fcntl</c>) failed.
    /// </exception>
    public static FileBlockDevice Open(string path, int blockSize, long blockCount, bool create, bool tryMapSync = true) =>
        Open(path, blockSize, blockCount, create ? FileMode.OpenOrCreate : FileMode.Open, tryMapSync);

    /// <summary>
    /// <see cref="FileMode.CreateNew"/> refuses an existing file (AlreadyExists), <see cref="FileMode.OpenOrCreate"/>
    /// sizes the file to the device, <see cref="FileMode.Open"/> needs a file at least that long.
    /// </summary>
    internal static FileBlockDevice Open(string path, int blockSize, long blockCount, FileMode mode, bool tryMapSync)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        // The geometry first: a bad one must not open, resize or create anything (it used to cut an existing file to
        // blockCount * blockSize bytes and only then refuse).
        CheckGeometry(blockSize, blockCount);
        if (!OperatingSystem.IsLinux())
            throw new PinnedDmaException(PinnedDmaError.NotSupported, "FileBlockDevice needs Linux mmap.");
        long want = checked(blockCount * blockSize);
        if (Directory.Exists(path))
            throw new PinnedDmaException(PinnedDmaError.InvalidArgument, $"'{path}' is a directory, not a volume file (EISDIR).");
        SafeFileHandle handle;
        try
        {
            handle = File.OpenHandle(path, mode, FileAccess.ReadWrite, FileShare.ReadWrite);
        }
        catch (IOException e) when (mode == FileMode.CreateNew && File.Exists(path))
        {
            throw new PinnedDmaException(PinnedDmaError.AlreadyExists, $"'{path}' exists; pass overwrite: true to format over it.", e);
        }
        bool created = mode == FileMode.CreateNew;
        try
        {
            // Lock before anything changes: a file another volume has open must not be resized or reformatted.
            LockExclusive(handle, path);
            long have = RandomAccess.GetLength(handle);
            if (mode != FileMode.Open && have != want) RandomAccess.SetLength(handle, want);
            else if (mode == FileMode.Open && have < want)
                throw new PinnedDmaException(PinnedDmaError.Corrupt, $"'{path}' is {have} bytes; the device needs {want}.");
            return new FileBlockDevice(handle, blockSize, blockCount, tryMapSync) { Path = path };
        }
        catch
        {
            handle.Dispose();
            if (created) File.Delete(path);
            throw;
        }
    }

    /// <summary>
    /// Takes an exclusive open-file-description lock on the whole file. Such a lock belongs to this open of the file,
    /// not to the process (unlike a classic POSIX record lock), so a second open in the same process conflicts too,
    /// and closing another descriptor of the file does not drop it. The mapping keeps the description alive, so the
    /// lock lasts until the device unmaps and closes the file.
    /// </summary>
    private static unsafe void LockExclusive(SafeFileHandle handle, string path)
    {
        // A process being started (anywhere in this process) shares every open file description between its fork
        // and its exec, so a volume disposed a moment ago can still look held: try a few more times, briefly
        // (about a quarter of a second in all), before calling the file busy.
        for (int attempt = 0; ; attempt++)
        {
            var lk = new Libc.Flock { Type = Libc.F_WRLCK, Whence = Libc.SEEK_SET, Start = 0, Length = 0, Pid = 0 };
            if (Libc.FcntlLock((int)handle.DangerousGetHandle(), Libc.F_OFD_SETLK, &lk) == 0) return;
            int errno = Marshal.GetLastPInvokeError();
            if (errno is not (Libc.EAGAIN or Libc.EACCES)) throw Libc.Error("fcntl(F_OFD_SETLK)", errno);
            if (attempt == 8)
                throw new PinnedDmaException(PinnedDmaError.Busy, $"'{path}' is open as a volume elsewhere (in this process or another); a volume file has one user at a time.");
            Thread.Sleep(1 << attempt);
        }
    }

    /// <summary>Length in bytes of an existing file, to size <see cref="Open(string, int, long, bool, bool)"/> from a superblock.</summary>
    /// <param name="path">The file.</param>
    /// <returns>Its length in bytes.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="path"/> is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="path"/> is empty.</exception>
    /// <exception cref="FileNotFoundException">There is no file at <paramref name="path"/>.</exception>
    /// <exception cref="DirectoryNotFoundException">A directory on <paramref name="path"/> does not exist.</exception>
    /// <exception cref="UnauthorizedAccessException">No permission to read the file.</exception>
    public static long GetFileLength(string path)
    {
        using var h = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        return RandomAccess.GetLength(h);
    }

    private protected override void FlushCore(long offset, long length)
    {
        // msync wants a page-aligned start.
        long start = offset & ~(long)(_pageSize - 1);
        long end = offset + length;
        if (_mode != DeviceMappingMode.MapSync)
        {
            if (Libc.Msync(Base + start, (nuint)(end - start), Libc.MS_SYNC) != 0)
                throw Libc.Error("msync", Marshal.GetLastPInvokeError());
        }
        else
        {
            // With MAP_SYNC the metadata is already durable; msync still writes back CPU caches on platforms
            // without a user-space flush instruction, so call it as well.
            Libc.Msync(Base + start, (nuint)(end - start), Libc.MS_SYNC);
        }
    }

    private protected override void DetachCore(byte* pointer)
    {
        // MAP_FIXED replaces the file pages atomically: a store racing this lands in the file or in the anonymous
        // page, and every store after it in the anonymous page. The file is closed now; the range is unmapped when the
        // last holder goes.
        if (pointer != null)
            Libc.Mmap(pointer, (nuint)Length, Libc.PROT_READ | Libc.PROT_WRITE, Libc.MAP_PRIVATE | Libc.MAP_ANONYMOUS | Libc.MAP_FIXED, -1, 0);
        _file.Dispose();
    }

    private protected override void ReleaseCore(byte* pointer)
    {
        if (pointer != null) Libc.Munmap(pointer, (nuint)Length);
        _file.Dispose();
    }

    /// <summary>fsync on the file: size and allocation metadata of the host file system.</summary>
    /// <exception cref="ObjectDisposedException">The device is disposed.</exception>
    /// <exception cref="PinnedDmaException"><see cref="PinnedDmaError.IoError"/>: <c>fsync</c> failed.</exception>
    public void SyncFile()
    {
        if (IsDisposed) ThrowHelper.ThrowObjectDisposed(this);
        bool added = false;
        try
        {
            // The reference keeps the descriptor from being closed (and its number reused) under the fsync.
            _file.DangerousAddRef(ref added);
            if (Libc.Fsync((int)_file.DangerousGetHandle()) != 0) throw Libc.Error("fsync", Marshal.GetLastPInvokeError());
        }
        catch (ObjectDisposedException)
        {
            ThrowHelper.ThrowObjectDisposed(this);
        }
        finally
        {
            if (added) _file.DangerousRelease();
        }
    }
}
