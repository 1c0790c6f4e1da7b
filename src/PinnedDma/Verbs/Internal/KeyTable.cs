using System.Security.Cryptography;
using PinnedDma.Internal;

namespace PinnedDma.Verbs.Internal;

/// <summary>
/// The NIC's translation-table index: key = index (24 bits) and a random key byte (8 bits), as mlx5 and rxe do, so a
/// reused index with a stale key byte does not name the new region. Lookups are lock-free reads of an array that
/// only grows.
/// </summary>
internal sealed class KeyTable
{
    private readonly object _sync = new();
    private MemoryRegion?[] _slots = new MemoryRegion?[64];
    private byte[] _lastKeyByte = new byte[64]; // the key byte last handed out at each index (under _sync)
    private readonly Stack<int> _free = new();
    private int _next = 1; // index 0 is never used, so key 0 is never valid

    public uint Add(MemoryRegion mr)
    {
        lock (_sync)
        {
            int index;
            if (_free.Count > 0) index = _free.Pop();
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
            // Never hand out the key byte the index carried last: the stale key would name the new region.
            byte keyByte;
            do keyByte = (byte)RandomNumberGenerator.GetInt32(256);
            while ((mr.LKey != 0 && keyByte == (byte)mr.LKey) || (_lastKeyByte[index] != 0 && keyByte == _lastKeyByte[index]) || keyByte == 0);
            _lastKeyByte[index] = keyByte;
            uint key = ((uint)index << 8) | keyByte;
            mr.LKey = key;
            Volatile.Write(ref _slots[index], mr);
            return key;
        }
    }

    public MemoryRegion? Lookup(uint key)
    {
        var slots = Volatile.Read(ref _slots);
        uint index = key >> 8;
        if (index >= (uint)slots.Length) return null;
        var mr = Volatile.Read(ref slots[index]);
        return mr is not null && mr.LKey == key ? mr : null;
    }

    public void Remove(MemoryRegion mr)
    {
        lock (_sync)
        {
            int index = (int)(mr.LKey >> 8);
            if (index < _slots.Length && _slots[index] == mr)
            {
                Volatile.Write(ref _slots[index], null);
                _free.Push(index);
            }
        }
    }
}
