using System.Buffers;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using PinnedDma.Interop;

namespace PinnedDma.Transports.Iwarp.Internal;

/// <summary>
/// Outgoing bytes of one connection as a gather list: small FPDUs are encoded whole into a pinned staging buffer (many
/// of them leave in one system call), large payloads are referenced where they lie in region memory and only their
/// headers and trailers are staged, so a large RDMA Write or Read Response is never copied in user space. The kernel
/// copies referenced bytes during <see cref="Flush"/>; a caller that referenced region memory must flush before it
/// leaves the region's drain. Not thread-safe: the connection serialises writers.
/// </summary>
internal sealed unsafe class FpduSendQueue : IBufferWriter<byte>
{
    private readonly Socket _socket;
    private readonly byte[] _stage;
    private readonly byte* _stageBase;
    private readonly SocketInterop.IoVec[] _iov = GC.AllocateArray<SocketInterop.IoVec>(SocketInterop.MaxIovecs, pinned: true);
    private int _staged;
    private int _count;

    private readonly int _stallMs;

    public FpduSendQueue(Socket socket, int stageBytes, TimeSpan stallTimeout)
    {
        _socket = socket;
        _stallMs = (int)Math.Clamp(stallTimeout.TotalMilliseconds, 1, int.MaxValue);
        // A blocking send returns after this long without room, so a stall is noticed even on a blocking socket.
        socket.SendTimeout = Math.Min(_stallMs, 250);
        _stage = GC.AllocateUninitializedArray<byte>(stageBytes, pinned: true);
        _stageBase = (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_stage));
    }

    /// <summary>Bytes queued and not yet handed to the kernel.</summary>
    public long QueuedBytes { get; private set; }

    public Span<byte> GetSpan(int sizeHint = 0)
    {
        Reserve(sizeHint);
        return _stage.AsSpan(_staged);
    }

    public Memory<byte> GetMemory(int sizeHint = 0)
    {
        Reserve(sizeHint);
        return _stage.AsMemory(_staged);
    }

    private void Reserve(int sizeHint)
    {
        sizeHint = Math.Max(sizeHint, 1);
        if (sizeHint > _stage.Length)
            throw new ArgumentOutOfRangeException(nameof(sizeHint), sizeHint, $"An FPDU part larger than the {_stage.Length}-byte send stage.");
        if (_stage.Length - _staged < sizeHint || _count >= SocketInterop.MaxIovecs - 1) Flush();
    }

    public void Advance(int count)
    {
        if ((uint)count > (uint)(_stage.Length - _staged)) throw new ArgumentOutOfRangeException(nameof(count));
        if (count == 0) return;
        byte* at = _stageBase + _staged;
        ref var last = ref _iov[Math.Max(_count - 1, 0)];
        if (_count > 0 && last.Base + last.Length == at)
            last.Length += (nuint)count;
        else
            _iov[_count++] = new SocketInterop.IoVec { Base = at, Length = (nuint)count };
        _staged += count;
        QueuedBytes += count;
    }

    /// <summary>
    /// Queues <paramref name="payload"/> by reference. It must be native memory (a device mapping or a native buffer)
    /// that stays valid and entered until the next <see cref="Flush"/>.
    /// </summary>
    public void Reference(ReadOnlySpan<byte> payload)
    {
        if (payload.IsEmpty) return;
        if (_count >= SocketInterop.MaxIovecs - 1) Flush();
        _iov[_count++] = new SocketInterop.IoVec { Base = (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(payload)), Length = (nuint)payload.Length };
        QueuedBytes += payload.Length;
    }

    /// <summary>Hands everything queued to the kernel (one gathered send) and empties the queue.</summary>
    public void Flush()
    {
        if (_count == 0) return;
        fixed (SocketInterop.IoVec* iov = _iov)
        {
            try
            {
                SocketInterop.SendAll(_socket, iov, _count, _stallMs);
            }
            finally
            {
                _count = 0;
                _staged = 0;
                QueuedBytes = 0;
            }
        }
    }
}
