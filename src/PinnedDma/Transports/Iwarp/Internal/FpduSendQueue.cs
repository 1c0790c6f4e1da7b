using System.Buffers;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Microsoft.Extensions.ObjectPool;
using PinnedDma.Interop;

namespace PinnedDma.Transports.Iwarp.Internal;

/// <summary>
/// Outgoing bytes of one connection as a gather list: small FPDUs are encoded whole into a pinned staging buffer (many
/// of them leave in one system call), large payloads are referenced where they lie in region memory and only their
/// headers and trailers are staged, so a large RDMA Write or Read Response is never copied in user space. The kernel
/// copies referenced bytes during <see cref="TryFlush"/>; a caller that referenced region memory keeps the region
/// entered until the queue is empty. Sends never block: what the socket does not take now stays queued, and the
/// connection waits for room on its I/O loop. The staging buffer comes from a shared pool while bytes are queued and
/// goes back when the queue empties, so an idle connection holds none. Not thread-safe: the sender serialises writers.
/// </summary>
internal sealed unsafe class FpduSendQueue : IBufferWriter<byte>
{
    /// <summary>Bytes of a staging buffer: a batch, plus room for two maximal FPDUs past it.</summary>
    public const int StageBytes = 256 * 1024 + 2 * (ushort.MaxValue + 16);

    /// <summary>Free iovec entries a caller must see (<see cref="HasRoom"/>) before it encodes one FPDU.</summary>
    private const int IovecsPerFpdu = 48;

    private static readonly ObjectPool<Stage> s_stages = new DefaultObjectPool<Stage>(new StagePolicy(), Environment.ProcessorCount * 4);

    private readonly int _fd;
    private Stage? _stage;
    private int _staged;
    private int _first;
    private int _count;

    /// <summary>A pinned staging buffer and its pinned iovec array.</summary>
    private sealed class Stage
    {
        public readonly byte[] Bytes = GC.AllocateUninitializedArray<byte>(StageBytes, pinned: true);
        public readonly SocketInterop.IoVec[] Iov = GC.AllocateArray<SocketInterop.IoVec>(SocketInterop.MaxIovecs, pinned: true);
        public byte* Base => (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(Bytes));
    }

    private sealed class StagePolicy : PooledObjectPolicy<Stage>
    {
        public override Stage Create() => new();

        public override bool Return(Stage obj) => true;
    }

    /// <param name="fd">The connection's socket descriptor; the caller holds a reference on the handle for the queue's life.</param>
    public FpduSendQueue(int fd) => _fd = fd;

    /// <summary>Bytes queued and not yet handed to the kernel.</summary>
    public long QueuedBytes { get; private set; }

    /// <summary>Whether nothing waits to be sent.</summary>
    public bool IsEmpty => QueuedBytes == 0;

    /// <summary>Whether one more FPDU of at most 64 KiB fits (staging bytes and iovec entries).</summary>
    public bool HasRoom => StageBytes - _staged >= ushort.MaxValue + 16 && _count + IovecsPerFpdu < SocketInterop.MaxIovecs;

    public Span<byte> GetSpan(int sizeHint = 0)
    {
        Reserve(sizeHint);
        return _stage!.Bytes.AsSpan(_staged);
    }

    public Memory<byte> GetMemory(int sizeHint = 0)
    {
        Reserve(sizeHint);
        return _stage!.Bytes.AsMemory(_staged);
    }

    private void Reserve(int sizeHint)
    {
        sizeHint = Math.Max(sizeHint, 1);
        _stage ??= s_stages.Get();
        // Writers check HasRoom before each FPDU, so this never has to wait for the socket.
        if (StageBytes - _staged < sizeHint || _count >= SocketInterop.MaxIovecs - 1)
            throw new InvalidOperationException($"The send stage is full ({_staged} bytes, {_count} iovecs): a writer did not check HasRoom.");
    }

    public void Advance(int count)
    {
        if (_stage is null || (uint)count > (uint)(StageBytes - _staged)) throw new ArgumentOutOfRangeException(nameof(count));
        if (count == 0) return;
        byte* at = _stage.Base + _staged;
        var iov = _stage.Iov;
        if (_count > _first && iov[_count - 1].Base + iov[_count - 1].Length == at)
            iov[_count - 1].Length += (nuint)count;
        else
            iov[_count++] = new SocketInterop.IoVec { Base = at, Length = (nuint)count };
        _staged += count;
        QueuedBytes += count;
    }

    /// <summary>
    /// Queues <paramref name="payload"/> by reference. It must be native memory (a device mapping or a native buffer)
    /// that stays valid and entered until the queue is empty again.
    /// </summary>
    public void Reference(ReadOnlySpan<byte> payload)
    {
        if (payload.IsEmpty) return;
        _stage ??= s_stages.Get();
        if (_count >= SocketInterop.MaxIovecs - 1)
            throw new InvalidOperationException("The send queue's iovecs are full: a writer did not check HasRoom.");
        _stage.Iov[_count++] = new SocketInterop.IoVec { Base = (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(payload)), Length = (nuint)payload.Length };
        QueuedBytes += payload.Length;
    }

    /// <summary>
    /// Hands the kernel what it takes now, without waiting: true when the queue is empty afterwards (the staging buffer
    /// went back to the pool), false when the socket is full. A failed connection throws <see cref="SocketException"/>.
    /// </summary>
    public bool TryFlush()
    {
        if (_count == _first)
        {
            Reset();
            return true;
        }
        var iov = _stage!.Iov;
        nint sent;
        fixed (SocketInterop.IoVec* p = iov) sent = SocketInterop.TrySend(_fd, p + _first, _count - _first);
        if (sent < 0) return false;
        QueuedBytes -= sent;
        while (sent > 0 && _first < _count)
        {
            if ((nint)iov[_first].Length <= sent)
            {
                sent -= (nint)iov[_first].Length;
                _first++;
            }
            else
            {
                iov[_first].Base += sent;
                iov[_first].Length -= (nuint)sent;
                sent = 0;
            }
        }
        while (_first < _count && iov[_first].Length == 0) _first++;
        if (_first < _count) return false;
        Reset();
        return true;
    }

    /// <summary>Forgets everything queued (the connection closed): no referenced byte is touched again.</summary>
    public void Discard() => Reset();

    private void Reset()
    {
        _first = _count = _staged = 0;
        QueuedBytes = 0;
        if (_stage is { } stage)
        {
            _stage = null;
            s_stages.Return(stage);
        }
    }
}
