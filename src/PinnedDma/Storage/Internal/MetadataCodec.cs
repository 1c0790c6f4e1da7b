using System.Buffers.Binary;
using System.Text;
using PinnedDma.Internal;

namespace PinnedDma.Storage.Internal;

/// <summary>A growable little-endian buffer for journal records and checkpoints.</summary>
internal sealed class MetadataWriter
{
    private byte[] _buf;
    private int _len;

    public MetadataWriter(int capacity = 256) => _buf = new byte[capacity];

    public int Length => _len;
    public ReadOnlySpan<byte> WrittenSpan => _buf.AsSpan(0, _len);
    public void Clear() => _len = 0;

    private Span<byte> Grab(int n)
    {
        if (_len + n > _buf.Length) Array.Resize(ref _buf, Math.Max(_buf.Length * 2, _len + n));
        var s = _buf.AsSpan(_len, n);
        _len += n;
        return s;
    }

    public void U8(byte v) => Grab(1)[0] = v;
    public void U16(ushort v) => BinaryPrimitives.WriteUInt16LittleEndian(Grab(2), v);
    public void U32(uint v) => BinaryPrimitives.WriteUInt32LittleEndian(Grab(4), v);
    public void I64(long v) => BinaryPrimitives.WriteInt64LittleEndian(Grab(8), v);
    public void U64(ulong v) => BinaryPrimitives.WriteUInt64LittleEndian(Grab(8), v);

    public void Str(string s)
    {
        int n = Encoding.UTF8.GetByteCount(s);
        U16((ushort)n);
        Encoding.UTF8.GetBytes(s, Grab(n));
    }

    public void Bytes(ReadOnlySpan<byte> b) => b.CopyTo(Grab(b.Length));
}

/// <summary>Bounds-checked reader: running off the end is corruption, never an out-of-range read.</summary>
internal ref struct MetadataReader
{
    private readonly ReadOnlySpan<byte> _data;
    private int _pos;
    private readonly string _what;

    public MetadataReader(ReadOnlySpan<byte> data, string what)
    {
        _data = data;
        _what = what;
        _pos = 0;
    }

    public bool End => _pos >= _data.Length;

    private ReadOnlySpan<byte> Take(int n)
    {
        if (n < 0 || _pos + n > _data.Length)
            ThrowHelper.Throw(PinnedDmaError.Corrupt, $"{_what} is truncated at byte {_pos}.");
        var s = _data.Slice(_pos, n);
        _pos += n;
        return s;
    }

    public byte U8() => Take(1)[0];
    public ushort U16() => BinaryPrimitives.ReadUInt16LittleEndian(Take(2));
    public uint U32() => BinaryPrimitives.ReadUInt32LittleEndian(Take(4));
    public long I64() => BinaryPrimitives.ReadInt64LittleEndian(Take(8));
    public ulong U64() => BinaryPrimitives.ReadUInt64LittleEndian(Take(8));

    public long NonNegative(string field)
    {
        long v = I64();
        if (v < 0) ThrowHelper.Throw(PinnedDmaError.Corrupt, $"{_what}: {field} is negative ({v}).");
        return v;
    }

    public string Str()
    {
        int n = U16();
        try
        {
            return new UTF8Encoding(false, true).GetString(Take(n));
        }
        catch (DecoderFallbackException)
        {
            return ThrowHelper.Throw<string>(PinnedDmaError.Corrupt, $"{_what}: a file name is not valid UTF-8.");
        }
    }
}
