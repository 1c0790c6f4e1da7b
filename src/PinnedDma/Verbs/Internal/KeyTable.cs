using System.Security.Cryptography;
using PinnedDma.Internal;

namespace PinnedDma.Verbs.Internal;

/// <summary>
/// The NIC's translation-table index: key = index (24 bits) and a key byte (8 bits), as mlx5 and rxe do. Each index
/// starts at a random key byte and advances it on every reuse, so a stale key names nothing for the next 255
/// registrations at that index (a random byte per reuse could repeat one from two registrations back). Freed indexes
/// are reused oldest first. Lookups are lock-free reads of an array that only grows. Slots hold their regions weakly,
/// so that a region the application drops without Dispose can be finalized (giving back its pin and memlock charge,
/// as a leaked pin does); its finalizer frees the slot.
/// </summary>
internal sealed class KeyTable
{
    private readonly object _sync = new();
    private WeakReference<MemoryRegion>?[] _slots = new WeakReference<MemoryRegion>?[64];
    private byte[] _lastKeyByte = new byte[64]; // the key byte last handed out at each index, 0 = never (under _sync)
    private readonly Queue<int> _free = new();
    private int _next = 1; // index 0 is never used, so key 0 is never valid

    public uint Add(MemoryRegion mr)
    {
        lock (_sync)
        {
            int index;
            if (_free.Count > 0) index = _free.Dequeue();
            else
            {
                if (_next >= 1 << 24) ThrowHelper.Throw(PinnedDmaError.NoSpace, "No memory region keys left.");
                index = _next++;
                if (index >= _slots.Length)
                {
                    Array.Resize(ref _slots, _slots.Length * 2);
                    Array.Resize(ref _lastKeyByte, _slots.Length);
                }
            }
            // Advance the index's key byte (skipping 0, which marks "never used"); random for a fresh index.
            byte keyByte = _lastKeyByte[index] == 0
                ? (byte)RandomNumberGenerator.GetInt32(1, 256)
                : (byte)(_lastKeyByte[index] == 255 ? 1 : _lastKeyByte[index] + 1);
            _lastKeyByte[index] = keyByte;
            uint key = ((uint)index << 8) | keyByte;
            mr.LKey = key;
            Volatile.Write(ref _slots[index], mr.Weak);
            return key;
        }
    }

    public MemoryRegion? Lookup(uint key)
    {
        var slots = Volatile.Read(ref _slots);
        uint index = key >> 8;
        if (index >= (uint)slots.Length) return null;
        var weak = Volatile.Read(ref slots[index]);
        return weak is not null && weak.TryGetTarget(out var mr) && mr.LKey == key ? mr : null;
    }

    public void Remove(MemoryRegion mr)
    {
        lock (_sync)
        {
            int index = (int)(mr.LKey >> 8);
            if (index < _slots.Length && ReferenceEquals(_slots[index], mr.Weak))
            {
                Volatile.Write(ref _slots[index], null);
                _free.Enqueue(index);
            }
        }
    }
}
