using System.Buffers.Binary;
using PinnedDma.Internal;

namespace PinnedDma.Storage.Internal;

/// <summary>
/// The volume's root record. Two copies (blocks 0 and 1) written alternately, each with a CRC32C: a torn
/// superblock write leaves the other copy, which still names a complete checkpoint and an intact journal.
/// </summary>
internal sealed class Superblock
{
    public const ulong Magic = 0x314C4F56414D4450; // "PDMAVOL1"
    // Version 2: checkpoint headers carry the journal base, journal commits end with an end marker.
    public const uint Version = 2;
    public const int Size = 128;

    public int BlockSize;
    public long BlockCount;
    public long JournalStart, JournalBlocks;
    public long CheckpointStart0, CheckpointStart1, CheckpointBlocks;
    public long DataStart;
    public ulong Sequence;
    public int ActiveCheckpoint;
    public long CheckpointLength;
    public ulong JournalBaseSeq;
    public int CowGranuleBlocks;
    public int MaxFiles;

    /// <summary>True when both describe the same regions (the fields every copy of one volume shares).</summary>
    public bool SameGeometry(Superblock o) =>
        BlockSize == o.BlockSize && BlockCount == o.BlockCount && JournalStart == o.JournalStart && JournalBlocks == o.JournalBlocks &&
        CheckpointStart0 == o.CheckpointStart0 && CheckpointStart1 == o.CheckpointStart1 && CheckpointBlocks == o.CheckpointBlocks &&
        DataStart == o.DataStart && CowGranuleBlocks == o.CowGranuleBlocks && MaxFiles == o.MaxFiles;

    public long CheckpointStart(int slot) => slot == 0 ? CheckpointStart0 : CheckpointStart1;

    public void Write(Span<byte> s)
    {
        s.Slice(0, Size).Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(s, Magic);
        BinaryPrimitives.WriteUInt32LittleEndian(s[8..], Version);
        BinaryPrimitives.WriteInt32LittleEndian(s[12..], BlockSize);
        BinaryPrimitives.WriteInt64LittleEndian(s[16..], BlockCount);
        BinaryPrimitives.WriteInt64LittleEndian(s[24..], JournalStart);
        BinaryPrimitives.WriteInt64LittleEndian(s[32..], JournalBlocks);
        BinaryPrimitives.WriteInt64LittleEndian(s[40..], CheckpointStart0);
        BinaryPrimitives.WriteInt64LittleEndian(s[48..], CheckpointStart1);
        BinaryPrimitives.WriteInt64LittleEndian(s[56..], CheckpointBlocks);
        BinaryPrimitives.WriteInt64LittleEndian(s[64..], DataStart);
        BinaryPrimitives.WriteUInt64LittleEndian(s[72..], Sequence);
        BinaryPrimitives.WriteInt32LittleEndian(s[80..], ActiveCheckpoint);
        BinaryPrimitives.WriteInt64LittleEndian(s[88..], CheckpointLength);
        BinaryPrimitives.WriteUInt64LittleEndian(s[96..], JournalBaseSeq);
        BinaryPrimitives.WriteInt32LittleEndian(s[104..], CowGranuleBlocks);
        BinaryPrimitives.WriteInt32LittleEndian(s[108..], MaxFiles);
        BinaryPrimitives.WriteUInt32LittleEndian(s[124..], Crc32C.Compute(s[..124]));
    }

    /// <summary>Parses and validates one copy; null when the copy is not a valid superblock.</summary>
    public static Superblock? TryRead(ReadOnlySpan<byte> s, out string? why)
    {
        why = null;
        if (s.Length < Size) { why = "too short"; return null; }
        if (BinaryPrimitives.ReadUInt64LittleEndian(s) != Magic) { why = "bad magic"; return null; }
        if (BinaryPrimitives.ReadUInt32LittleEndian(s[124..]) != Crc32C.Compute(s[..124])) { why = "bad checksum"; return null; }
        uint version = BinaryPrimitives.ReadUInt32LittleEndian(s[8..]);
        if (version != Version) { why = $"unsupported version {version}"; return null; }
        var sb = new Superblock
        {
            BlockSize = BinaryPrimitives.ReadInt32LittleEndian(s[12..]),
            BlockCount = BinaryPrimitives.ReadInt64LittleEndian(s[16..]),
            JournalStart = BinaryPrimitives.ReadInt64LittleEndian(s[24..]),
            JournalBlocks = BinaryPrimitives.ReadInt64LittleEndian(s[32..]),
            CheckpointStart0 = BinaryPrimitives.ReadInt64LittleEndian(s[40..]),
            CheckpointStart1 = BinaryPrimitives.ReadInt64LittleEndian(s[48..]),
            CheckpointBlocks = BinaryPrimitives.ReadInt64LittleEndian(s[56..]),
            DataStart = BinaryPrimitives.ReadInt64LittleEndian(s[64..]),
            Sequence = BinaryPrimitives.ReadUInt64LittleEndian(s[72..]),
            ActiveCheckpoint = BinaryPrimitives.ReadInt32LittleEndian(s[80..]),
            CheckpointLength = BinaryPrimitives.ReadInt64LittleEndian(s[88..]),
            JournalBaseSeq = BinaryPrimitives.ReadUInt64LittleEndian(s[96..]),
            CowGranuleBlocks = BinaryPrimitives.ReadInt32LittleEndian(s[104..]),
            MaxFiles = BinaryPrimitives.ReadInt32LittleEndian(s[108..]),
        };
        why = sb.Validate();
        return why is null ? sb : null;
    }

    /// <summary>Geometry sanity: every region inside the device, in order, none overlapping.</summary>
    public string? Validate()
    {
        if (BlockSize < 512 || BlockSize > 65536 || (BlockSize & (BlockSize - 1)) != 0) return $"block size {BlockSize}";
        if (BlockCount < 8 || BlockCount > Storage.Volume.MaxBlockCount) return $"block count {BlockCount}";
        if (JournalStart != 2 || JournalBlocks < 1) return "journal region";
        if (CheckpointStart0 != JournalStart + JournalBlocks || CheckpointBlocks < 1 || CheckpointStart1 != CheckpointStart0 + CheckpointBlocks)
            return "checkpoint regions";
        if (DataStart != CheckpointStart1 + CheckpointBlocks || DataStart >= BlockCount) return "data region";
        if (ActiveCheckpoint is not (0 or 1)) return "active checkpoint slot";
        if (CheckpointLength < 0 || CheckpointLength > CheckpointBlocks * BlockSize) return "checkpoint length";
        if (CowGranuleBlocks < 1 || CowGranuleBlocks > 4096) return "COW granule";
        if (MaxFiles < 1) return "file limit";
        return null;
    }
}
