using PinnedDma.Internal;
using PinnedDma.Storage.Internal;

namespace PinnedDma.Storage;

/// <summary>
/// The file system: files with extent maps over a <see cref="BlockDevice"/>, a reference-counted block allocator
/// (reflink clones share blocks), a write-ahead metadata journal with checksums, checkpoints, crash recovery and an
/// fsck. Every remapping operation consults the seals that pins and Direct mappings put on a file, so the layout
/// layer is the only door through which a mapping can change under a pin.
/// </summary>
/// <remarks>
/// One lock guards all metadata. Data copies of <see cref="VolumeFile.Read"/> and <see cref="VolumeFile.Write"/> run
/// under it; DMA through a pin does not take it (the pin's frozen translation cannot change while the pin lives).
/// </remarks>
public sealed partial class Volume : IDisposable
{
    internal readonly object Gate = new();
    private readonly BlockDevice _device;
    private readonly bool _ownsDevice;
    private readonly Superblock _sb;
    private readonly BlockAllocator _alloc;
    private readonly InodeTable _files = new();

    /// <summary>The seals of pins and Direct mappings; its own lock, taken after <see cref="Gate"/> (see <see cref="SealTable"/>).</summary>
    private readonly SealTable _seals = new();
    private readonly MetadataJournal _journal;

    /// <summary>What the internal parts share, and the parts (extent writer, space, sharing, compaction, checks).</summary>
    private readonly VolumeState _s;
    private readonly bool _durable;
    private int _disposed;

    private Volume(BlockDevice device, bool ownsDevice, Superblock sb, VolumeOptions options)
    {
        _device = device;
        _ownsDevice = ownsDevice;
        _sb = sb;
        _durable = options.DurableCommits;
        _log = Diagnostics.Log.For(options.LoggerFactory, Diagnostics.Log.VolumeCategory);
        _alloc = new BlockAllocator(sb.DataStart, sb.BlockCount);
        _journal = new MetadataJournal(device, sb, _alloc, _files, _durable, MaxFileSize >> device.BlockShift);
        _s = new VolumeState(device, sb, _alloc, _files, _journal, _seals, options.DefaultConflictPolicy);
        _runner = new OperationRunner(Gate, _journal, _log, ThrowIfDisposed);
    }

    /// <summary>The mutate loop every remapping operation runs in.</summary>
    private readonly OperationRunner _runner;

    private readonly Microsoft.Extensions.Logging.ILogger _log;

    /// <summary>Journal records applied by the last recovery (open or mount).</summary>
    internal int JournalRecordsReplayed => _journal.RecordsReplayed;

    /// <summary>The device under the volume.</summary>
    public BlockDevice Device => _device;

    /// <summary>Bytes per block.</summary>
    public int BlockSize => _sb.BlockSize;

    internal int BlockShift => _device.BlockShift;

    /// <summary>Blocks of the data area (what files can use).</summary>
    public long DataBlocks => _sb.BlockCount - _sb.DataStart;

    /// <summary>First device block of the data area.</summary>
    public long DataStartBlock => _sb.DataStart;

    /// <summary>Free data blocks (busy blocks, freed since the last commit, are not counted).</summary>
    public long FreeBlocks { get { lock (Gate) return _alloc.FreeBlocks; } }

    /// <summary>The COW granule in blocks.</summary>
    public int CowGranuleBlocks => _sb.CowGranuleBlocks;

    /// <summary>The most files the volume holds.</summary>
    public int MaxFiles => _sb.MaxFiles;

    /// <summary>Policy for operations that conflict with pins, unless a file or the operation overrides it.</summary>
    public ConflictPolicy DefaultConflictPolicy
    {
        get => _s.DefaultPolicy;
        set => _s.DefaultPolicy = value;
    }

    /// <summary>Names of the live files, sorted.</summary>
    public IReadOnlyList<string> FileNames
    {
        get { lock (Gate) return _files.ByName.Keys.Order(StringComparer.Ordinal).ToArray(); }
    }

    /// <summary>
    /// Why recovery opened the volume at an older state than the newest one on disk (and what it dropped), or null when
    /// it recovered the newest state exactly. Only <see cref="VolumeOptions.AllowRollback"/> can make it non-null.
    /// </summary>
    public string? RollbackReason => _journal.RollbackReason;

    /// <summary>True once disposed.</summary>
    public bool IsDisposed => Volatile.Read(ref _disposed) != 0;

    // ---------------------------------------------------------------- lifecycle

    /// <summary>The largest <see cref="VolumeOptions.BlockCount"/>: 2^28 blocks (1 TiB at 4 KiB); the allocator keeps about 12 bytes of memory per block.</summary>
    public const long MaxBlockCount = 1L << 28;

    /// <summary>
    /// Creates a volume in a new file at <paramref name="path"/>, sized from <paramref name="options"/>, and holds the
    /// file exclusively until disposed. An existing file is refused with <see cref="PinnedDmaError.AlreadyExists"/>
    /// unless <paramref name="overwrite"/> is true (then it is resized and reformatted: whatever it held is lost); a
    /// file another volume holds is refused with <see cref="PinnedDmaError.Busy"/> either way. Options are validated
    /// before the file is touched: bad ones throw <see cref="ArgumentOutOfRangeException"/> and nothing is created.
    /// </summary>
    /// <param name="path">The volume file to create (or to reformat, with <paramref name="overwrite"/>).</param>
    /// <param name="options">Geometry and behaviour; null for the defaults.</param>
    /// <param name="overwrite">True to reformat an existing file instead of refusing it.</param>
    /// <returns>The new, empty, mounted volume; dispose it to commit, checkpoint and release the file.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="path"/> is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="path"/> is empty.</exception>
    /// <exception cref="ArgumentOutOfRangeException">
    /// An option is out of range (<see cref="VolumeOptions.BlockSize"/> not a power of two from 512 to 65536,
    /// <see cref="VolumeOptions.BlockCount"/> not from 1 to <see cref="MaxBlockCount"/>, <see cref="VolumeOptions.MaxFiles"/>,
    /// <see cref="VolumeOptions.CowGranuleBlocks"/> or <see cref="VolumeOptions.JournalBlocks"/> out of range, or no
    /// room for data after the metadata); the file is not touched.
    /// </exception>
    /// <exception cref="PinnedDmaException">
    /// <see cref="PinnedDmaError.AlreadyExists"/>: the file exists and <paramref name="overwrite"/> is false;
    /// <see cref="PinnedDmaError.Busy"/>: another open volume (in this process or another) holds the file, which is
    /// left as it was; <see cref="PinnedDmaError.InvalidArgument"/>: <paramref name="path"/> is a directory;
    /// <see cref="PinnedDmaError.NotSupported"/>: not Linux; <see cref="PinnedDmaError.IoError"/>: a system call
    /// (<c>mmap</c>, <c>fcntl</c>) failed.
    /// </exception>
    /// <exception cref="IOException">The host file system refused the file (a missing directory, say), as <see cref="File.OpenHandle"/> reports it.</exception>
    /// <exception cref="UnauthorizedAccessException">No permission to create or write the file.</exception>
    /// <example>
    /// Create a 16 MiB volume (4096 blocks of 4 KiB) in a file, write a file on it, and reopen it later:
    /// <code>
    /// using (var volume = Volume.Create("data.img", new VolumeOptions { BlockCount = 4096 }, overwrite: true))
    /// {
    ///     VolumeFile file = volume.CreateFile("log");
    ///     file.Write(0, "hello"u8);
    ///     volume.Commit();                       // durable from here on
    /// }                                          // Dispose checkpoints and releases the file
    /// </code>
    /// </example>
    public static Volume Create(string path, VolumeOptions? options = null, bool overwrite = false)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        options ??= new VolumeOptions();
        _ = VolumeGeometry.Plan(options.BlockSize, options.BlockCount, options);
        var device = FileBlockDevice.Open(path, options.BlockSize, options.BlockCount, overwrite ? FileMode.OpenOrCreate : FileMode.CreateNew, options.TryMapSync);
        try
        {
            return Format(device, options, ownsDevice: true);
        }
        catch
        {
            device.Dispose();
            if (!overwrite) File.Delete(path);
            throw;
        }
    }

    /// <summary>Creates a volume in native memory (nothing persists).</summary>
    /// <param name="options">Geometry and behaviour; null for the defaults.</param>
    /// <returns>The new, empty volume.</returns>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of range (as for <see cref="Create"/>).</exception>
    /// <exception cref="OutOfMemoryException">The native memory for <see cref="VolumeOptions.BlockCount"/> blocks cannot be allocated.</exception>
    public static Volume CreateInMemory(VolumeOptions? options = null)
    {
        options ??= new VolumeOptions();
        _ = VolumeGeometry.Plan(options.BlockSize, options.BlockCount, options);
        var device = new MemoryBlockDevice(options.BlockSize, options.BlockCount);
        return Format(device, options, ownsDevice: true);
    }

    /// <summary>Formats <paramref name="device"/> as an empty volume.</summary>
    /// <param name="device">The device; whatever it held is lost.</param>
    /// <param name="options">Geometry (which must match the device's) and behaviour.</param>
    /// <param name="ownsDevice">True to dispose <paramref name="device"/> with the volume.</param>
    /// <returns>The new, empty, mounted volume.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="device"/> or <paramref name="options"/> is null.</exception>
    /// <exception cref="ArgumentException">The options' block size or block count differs from the device's.</exception>
    /// <exception cref="ArgumentOutOfRangeException">Another option is out of range (as for <see cref="Create"/>).</exception>
    /// <exception cref="ObjectDisposedException"><paramref name="device"/> is disposed.</exception>
    public static Volume Format(BlockDevice device, VolumeOptions options, bool ownsDevice)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(options);
        if (options.BlockSize != device.BlockSize || options.BlockCount != device.BlockCount)
            throw new ArgumentException("Options geometry differs from the device.", nameof(options));
        var sb = VolumeGeometry.Plan(device.BlockSize, device.BlockCount, options);
        var v = new Volume(device, ownsDevice, sb, options);
        lock (v.Gate)
        {
            // Invalidate whatever was there: both superblock copies, the journal, and both checkpoint headers (recovery
            // takes the newest intact checkpoint, so an old volume's must not survive a reformat).
            device.ZeroBlocks(0, 2 + sb.JournalBlocks);
            device.ZeroBlocks(sb.CheckpointStart0, 1);
            device.ZeroBlocks(sb.CheckpointStart1, 1);
            // The first checkpoint, named by both superblock copies, so that one damaged copy still leaves the geometry.
            v._journal.Format();
        }
        return v;
    }

    /// <summary>
    /// Opens the volume in the file at <paramref name="path"/>: reads the superblock, loads the newest checkpoint,
    /// replays the journal; the file is held exclusively until the volume is disposed (a second open anywhere fails
    /// with <see cref="PinnedDmaError.Busy"/>). Recovery never silently picks an older state: when the newest state
    /// on disk is damaged it throws <see cref="PinnedDmaError.Corrupt"/>, unless <see cref="VolumeOptions.AllowRollback"/>
    /// asks for the newest intact state instead (see <see cref="RollbackReason"/>).
    /// </summary>
    /// <param name="path">The volume file.</param>
    /// <param name="options">
    /// Behaviour (the geometry comes from the file: <see cref="VolumeOptions.BlockSize"/>,
    /// <see cref="VolumeOptions.BlockCount"/> and the other layout options are ignored); null for the defaults.
    /// </param>
    /// <returns>The recovered, mounted volume; dispose it to commit, checkpoint and release the file.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="path"/> is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="path"/> is empty.</exception>
    /// <exception cref="PinnedDmaException">
    /// <see cref="PinnedDmaError.NotFound"/>: no file at <paramref name="path"/>;
    /// <see cref="PinnedDmaError.InvalidArgument"/>: <paramref name="path"/> is a directory;
    /// <see cref="PinnedDmaError.Busy"/>: another open volume (in this process or another) holds the file;
    /// <see cref="PinnedDmaError.Corrupt"/>: the file is too short or truncated, has no valid superblock, or its
    /// newest state is damaged (an unreadable checkpoint or journal record) and <see cref="VolumeOptions.AllowRollback"/>
    /// is false; <see cref="PinnedDmaError.NotSupported"/>: not Linux; <see cref="PinnedDmaError.IoError"/>: a system
    /// call (<c>mmap</c>, <c>fcntl</c>) failed.
    /// </exception>
    /// <exception cref="UnauthorizedAccessException">No permission to read and write the file.</exception>
    /// <example>
    /// Reopen a volume after a restart or a crash (recovery replays the journal) and read a file back:
    /// <code>
    /// using var volume = Volume.Open("data.img");
    /// VolumeFile file = volume.OpenFile("log");
    /// var buffer = new byte[file.Length];
    /// int read = file.Read(0, buffer);
    /// FsckReport report = volume.Fsck();         // report.IsClean after a clean recovery
    /// </code>
    /// </example>
    public static Volume Open(string path, VolumeOptions? options = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        options ??= new VolumeOptions();
        if (Directory.Exists(path)) throw new PinnedDmaException(PinnedDmaError.InvalidArgument, $"'{path}' is a directory, not a volume file (EISDIR).");
        if (!File.Exists(path)) throw new PinnedDmaException(PinnedDmaError.NotFound, $"No volume file at '{path}'.");
        long length = FileBlockDevice.GetFileLength(path);
        var sb = VolumeGeometry.ReadFromFile(path, length);
        var device = FileBlockDevice.Open(path, sb.BlockSize, sb.BlockCount, FileMode.Open, options.TryMapSync);
        try
        {
            return Mount(device, options, ownsDevice: true);
        }
        catch
        {
            device.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Mounts an existing volume on <paramref name="device"/>: the geometry comes from either intact superblock copy,
    /// the state from the newest intact checkpoint and the journal after it (see <see cref="Open"/>).
    /// </summary>
    /// <param name="device">The device holding the volume.</param>
    /// <param name="options">Behaviour (the geometry comes from the superblock); null for the defaults.</param>
    /// <param name="ownsDevice">True to dispose <paramref name="device"/> with the volume.</param>
    /// <returns>The recovered, mounted volume.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="device"/> is null.</exception>
    /// <exception cref="ObjectDisposedException"><paramref name="device"/> is disposed.</exception>
    /// <exception cref="PinnedDmaException">
    /// <see cref="PinnedDmaError.Corrupt"/>: no valid superblock, the two copies disagree on the geometry, the geometry
    /// does not fit the device, or the newest state is damaged and <see cref="VolumeOptions.AllowRollback"/> is false.
    /// </exception>
    public static Volume Mount(BlockDevice device, VolumeOptions? options = null, bool ownsDevice = false)
    {
        ArgumentNullException.ThrowIfNull(device);
        options ??= new VolumeOptions();
        var geometry = VolumeGeometry.ReadFromDevice(device, out ulong named);
        var v = new Volume(device, ownsDevice, geometry, options);
        using var activity = Diagnostics.Telemetry.Source.StartActivity("pinneddma.volume.open");
        long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
        lock (v.Gate) v._journal.Recover(named, options.AllowRollback);
        string where = device is FileBlockDevice f ? f.Path : "memory";
        activity?.SetTag("pinneddma.volume.path", where);
        activity?.SetTag("pinneddma.journal.replayed", v.JournalRecordsReplayed);
        if (v.RollbackReason is { } why)
        {
            activity?.SetTag("pinneddma.volume.rollback", why);
            Diagnostics.Log.RecoveryFinding(v._log, where, "rolled back: " + why);
        }
        Diagnostics.Log.VolumeOpened(v._log, where, v.JournalRecordsReplayed, System.Diagnostics.Stopwatch.GetElapsedTime(t0).TotalMilliseconds);
        return v;
    }

    /// <summary>
    /// Opens the volume file, checks it and closes it again: the offline fsck. A volume that is open (here or in
    /// another process) is <see cref="PinnedDmaError.Busy"/>: check it with <see cref="Fsck"/> on that volume instead.
    /// </summary>
    /// <param name="path">The volume file.</param>
    /// <returns>What the check found (see <see cref="FsckReport.IsClean"/>).</returns>
    /// <exception cref="ArgumentNullException"><paramref name="path"/> is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="path"/> is empty.</exception>
    /// <exception cref="PinnedDmaException">
    /// As for <see cref="Open"/>: <see cref="PinnedDmaError.NotFound"/>, <see cref="PinnedDmaError.Busy"/>,
    /// <see cref="PinnedDmaError.Corrupt"/> (a volume that cannot even be recovered),
    /// <see cref="PinnedDmaError.InvalidArgument"/>, <see cref="PinnedDmaError.NotSupported"/> or
    /// <see cref="PinnedDmaError.IoError"/>; and, from the final checkpoint,
    /// <see cref="PinnedDmaError.IoError"/> or <see cref="PinnedDmaError.NoSpace"/>.
    /// </exception>
    /// <exception cref="UnauthorizedAccessException">No permission to read and write the file.</exception>
    public static FsckReport Check(string path)
    {
        using var v = Open(path, new VolumeOptions { TryMapSync = false });
        return v.Fsck();
    }

    /// <summary>
    /// Commits, writes a checkpoint and releases the device. Pins still held are revoked (their in-flight DMA drains
    /// first). From the moment Dispose begins no pin, mapping or operation can start; once it returns no byte moves on
    /// the device. A Direct mapping still open keeps its address range valid, but its stores no longer reach the
    /// device. A second caller waits for the first to finish.
    /// </summary>
    /// <exception cref="PinnedDmaException">
    /// The final checkpoint failed: <see cref="PinnedDmaError.IoError"/> (<c>msync</c>) or
    /// <see cref="PinnedDmaError.NoSpace"/> (the metadata does not fit the checkpoint area). An owned device is released
    /// all the same and the volume counts as disposed; the last committed state stands on disk.
    /// </exception>
    public void Dispose()
    {
        List<Seal> seals;
        lock (Gate)
        {
            if (Interlocked.Exchange(ref _disposed, 1) != 0)
            {
                seals = null!;
            }
            else
            {
                // Every operation (pins included) checks the flag under this lock, so the snapshot holds every seal
                // that will ever exist on this volume.
                seals = _seals.Attached().Concat(_seals.Detached()).ToList();
            }
        }
        if (seals is null)
        {
            _disposeDone.Task.Wait();
            return;
        }
        try
        {
            foreach (var s in seals) s.Revoke("volume disposed");
            lock (Gate)
            {
                try
                {
                    _journal.WriteCheckpoint();
                }
                finally
                {
                    if (_ownsDevice) _device.Dispose();
                }
            }
        }
        finally
        {
            _disposeDone.TrySetResult();
        }
    }

    private readonly TaskCompletionSource _disposeDone = new(TaskCreationOptions.RunContinuationsAsynchronously);

    internal void ThrowIfDisposed()
    {
        if (Volatile.Read(ref _disposed) != 0) ThrowHelper.ThrowObjectDisposed(this);
    }

    // ---------------------------------------------------------------- journal

    /// <summary>Journal records written since the volume was opened (for tests and benchmarks).</summary>
    public long JournalRecordsWritten { get { lock (Gate) return _journal.RecordsWritten; } }

    /// <summary>Checkpoints written since the volume was opened.</summary>
    public long CheckpointsWritten { get { lock (Gate) return _journal.CheckpointsWritten; } }

    /// <summary>
    /// Makes every completed operation durable (fsync for the whole volume): flushes data, then writes and flushes
    /// the journal records that point at it. Blocks freed by those records become reusable.
    /// </summary>
    /// <exception cref="ObjectDisposedException">The volume is disposed.</exception>
    /// <exception cref="PinnedDmaException">
    /// The last durable state stands. <see cref="PinnedDmaError.IoError"/>: flushing the device (<c>msync</c>) failed;
    /// <see cref="PinnedDmaError.NoSpace"/>: the journal is full and the metadata does not fit the checkpoint area.
    /// </exception>
    public void Commit()
    {
        lock (Gate)
        {
            ThrowIfDisposed();
            _journal.Commit();
        }
    }

    /// <summary>Writes a checkpoint now: the journal starts over empty.</summary>
    /// <exception cref="ObjectDisposedException">The volume is disposed.</exception>
    /// <exception cref="PinnedDmaException">
    /// The last durable state stands. <see cref="PinnedDmaError.IoError"/>: flushing the device (<c>msync</c>) failed;
    /// <see cref="PinnedDmaError.NoSpace"/>: the metadata does not fit the checkpoint area.
    /// </exception>
    public void Checkpoint()
    {
        lock (Gate)
        {
            ThrowIfDisposed();
            _journal.WriteCheckpoint();
        }
    }

    // ---------------------------------------------------------------- namespace

    /// <summary>Creates an empty file.</summary>
    /// <param name="name">1 to 255 UTF-8 bytes, no NUL.</param>
    /// <returns>The new file.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="name"/> is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="name"/> is empty, longer than 255 UTF-8 bytes or holds a NUL.</exception>
    /// <exception cref="ObjectDisposedException">The volume is disposed.</exception>
    /// <exception cref="PinnedDmaException">
    /// <see cref="PinnedDmaError.AlreadyExists"/>: a file has that name; <see cref="PinnedDmaError.NoSpace"/>: the
    /// volume holds <see cref="MaxFiles"/> files already.
    /// </exception>
    public VolumeFile CreateFile(string name)
    {
        CheckName(name);
        lock (Gate)
        {
            ThrowIfDisposed();
            if (_files.ByName.ContainsKey(name)) ThrowHelper.Throw(PinnedDmaError.AlreadyExists, $"File '{name}' exists.");
            if (_files.ByName.Count >= _sb.MaxFiles) ThrowHelper.Throw(PinnedDmaError.NoSpace, $"The volume holds at most {_sb.MaxFiles} files.");
            var inode = _journal.Create(_files.NextId, name);
            _journal.EndOp();
            return new VolumeFile(this, inode);
        }
    }

    /// <summary>Opens an existing file.</summary>
    /// <param name="name">The file's name.</param>
    /// <returns>A handle to the file.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="name"/> is null.</exception>
    /// <exception cref="ObjectDisposedException">The volume is disposed.</exception>
    /// <exception cref="PinnedDmaException"><see cref="PinnedDmaError.NotFound"/>: no file has that name.</exception>
    public VolumeFile OpenFile(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        lock (Gate)
        {
            ThrowIfDisposed();
            return _files.ByName.TryGetValue(name, out var inode)
                ? new VolumeFile(this, inode)
                : ThrowHelper.Throw<VolumeFile>(PinnedDmaError.NotFound, $"No file '{name}'.");
        }
    }

    /// <summary>Opens a file, creating it if it does not exist.</summary>
    /// <param name="name">1 to 255 UTF-8 bytes, no NUL.</param>
    /// <returns>A handle to the existing or new file.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="name"/> is null.</exception>
    /// <exception cref="ArgumentException">No file has that name, and the name is empty, longer than 255 UTF-8 bytes or holds a NUL.</exception>
    /// <exception cref="ObjectDisposedException">The volume is disposed.</exception>
    /// <exception cref="PinnedDmaException"><see cref="PinnedDmaError.NoSpace"/>: the file does not exist and the volume holds <see cref="MaxFiles"/> files already.</exception>
    public VolumeFile OpenOrCreateFile(string name)
    {
        lock (Gate) return FileExists(name) ? OpenFile(name) : CreateFile(name);
    }

    /// <summary>True when a file of that name exists.</summary>
    /// <param name="name">The file's name.</param>
    /// <returns>True when a live file has that name.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="name"/> is null.</exception>
    public bool FileExists(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        lock (Gate) return _files.ByName.ContainsKey(name);
    }

    /// <summary>
    /// Deletes a file. Pinned ranges never conflict: their blocks stay allocated, owned by the pins, until the last
    /// pin goes (an orphan, like an open file descriptor).
    /// </summary>
    /// <param name="name">The file's name.</param>
    /// <exception cref="ArgumentNullException"><paramref name="name"/> is null.</exception>
    /// <exception cref="ObjectDisposedException">The volume is disposed.</exception>
    /// <exception cref="PinnedDmaException">
    /// <see cref="PinnedDmaError.NotFound"/>: no file has that name; <see cref="PinnedDmaError.NoSpace"/>: no metadata room.
    /// </exception>
    public void DeleteFile(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        lock (Gate)
        {
            ThrowIfDisposed();
            if (!_files.ByName.TryGetValue(name, out var inode)) ThrowHelper.Throw(PinnedDmaError.NotFound, $"No file '{name}'.");
            _s.Writer.CheckMetadataRoom(0);
            foreach (var s in _seals.Of(inode)) _s.Writer.DetachSeal(s);
            _seals.Forget(inode);
            _journal.Delete(inode);
            _journal.EndOp();
        }
    }

    private static void CheckName(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        if (name.Length == 0 || System.Text.Encoding.UTF8.GetByteCount(name) > 255 || name.Contains('\0'))
            throw new ArgumentException("A file name is 1 to 255 UTF-8 bytes without NUL.", nameof(name));
    }

    internal Inode Live(Inode inode)
    {
        ThrowIfDisposed();
        if (inode.Deleted) ThrowHelper.Throw(PinnedDmaError.NotFound, $"File '{inode.Name}' was deleted.");
        return inode;
    }
}
