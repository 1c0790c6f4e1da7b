using PinnedDma.Internal;
using PinnedDma.Layout;
using PinnedDma.Storage.Internal;

namespace PinnedDma.Storage;

// File operations. Each validates its arguments and finds its conflicts before it changes anything, so a thrown
// error leaves the volume as it was.
public sealed partial class Volume
{
    // ---------------------------------------------------------------- read and write

    internal int Read(Inode inode, long offset, Span<byte> destination)
    {
        ThrowHelper.CheckRange(offset, destination.Length);
        lock (Gate)
        {
            Live(inode);
            if (offset >= inode.Size) return 0;
            int n = (int)Math.Min(destination.Length, inode.Size - offset);
            var dst = destination[..n];
            dst.Clear();
            int shift = BlockShift;
            var (first, end) = _s.Writer.BlockSpan(offset, n);
            foreach (var e in inode.Map.GetRange(first, end - first))
            {
                long s = Math.Max(offset, e.FileBlock << shift), t = Math.Min(offset + n, e.FileEnd << shift);
                if (s >= t) continue;
                _device.GetSpan((e.DeviceBlock << shift) + (s - (e.FileBlock << shift)), (int)(t - s)).CopyTo(dst[(int)(s - offset)..]);
            }
            return n;
        }
    }

    internal void Write(Inode inode, long offset, ReadOnlySpan<byte> data, ConflictPolicy? policy, bool sync)
    {
        _s.Writer.CheckFileRange(offset, data.Length);
        if (data.IsEmpty) return;
        _runner.Mutate(new RemapContext("write", policy), data, (ctx, data) => _s.Writer.WriteBody(ctx, inode, offset, data, sync));
    }

    internal ValueTask WriteAsync(Inode inode, long offset, ReadOnlyMemory<byte> data, ConflictPolicy? policy, CancellationToken cancellationToken)
    {
        _s.Writer.CheckFileRange(offset, data.Length);
        if (data.IsEmpty) return default;
        return OperationRunner.Discard(_runner.MutateAsync(new RemapContext("write", policy), data,
            (ctx, data) => _s.Writer.WriteBody(ctx, inode, offset, data.Span, sync: false), cancellationToken));
    }

    /// <summary>
    /// An 8-byte atomic (compare-and-swap or fetch-and-add) on a file, for ODP regions: read, compute and write in
    /// one hold of the lock, so that no other write to the file comes between. Bytes past EOF read as zeros.
    /// </summary>
    internal ulong Atomic(Inode inode, long offset, bool compareSwap, ulong compareAdd, ulong swap)
    {
        Span<byte> b = stackalloc byte[8];
        lock (Gate)
        {
            int n = Read(inode, offset, b);
            b[n..].Clear();
            ulong old = BitConverter.ToUInt64(b);
            ulong next = compareSwap ? (old == compareAdd ? swap : old) : old + compareAdd;
            BitConverter.TryWriteBytes(b, next);
            Write(inode, offset, b, null, sync: false);
            return old;
        }
    }

    // ---------------------------------------------------------------- compaction

    /// <summary>
    /// Moves file data toward the start of the data area so that free space coalesces, in runs of at most
    /// <paramref name="maxRunBlocks"/>. Blocks a pin or Direct mapping holds are skipped (like the kernel, which
    /// migrates before a long-term pin, never after). Returns the number of blocks moved.
    /// </summary>
    /// <param name="maxRunBlocks">Most blocks moved as one run (at least 1).</param>
    /// <returns>The number of blocks moved.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="maxRunBlocks"/> is less than 1.</exception>
    /// <exception cref="ObjectDisposedException">The volume is disposed.</exception>
    public long Compact(int maxRunBlocks = 256)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxRunBlocks, 1);
        return Run(_s.Compactor.CompactOp(maxRunBlocks));
    }
}
