using System.Buffers.Binary;
using PinnedDma.Internal;

namespace PinnedDma.Storage.Internal;

// The write-ahead metadata journal. Every metadata change is one of six primitives (create, delete, set size, map,
// unmap, shift); an operation's primitives form one record, so recovery replays whole operations or none. Records
// are buffered in memory and written at commit, after the data they point to has been flushed (ordered mode):
// a record never reaches the disk before the blocks it maps. Blocks freed by a record stay busy until that record
// is durable. When the journal is full, a checkpoint (the whole metadata, written to the inactive of two slots and
// then named by a new superblock copy) takes its place and the journal starts over.
//
// Recovery never silently takes an older state for the newest one. Each commit ends with an end marker, so a damaged
// record followed by any intact record or marker of a later sequence is damage in the middle of committed history
// (refused), while damage with nothing intact after it is a torn tail (a commit the crash cut short, dropped). Each
// checkpoint header carries its superblock sequence and journal base, so the newest intact checkpoint is found even
// when the superblock copy naming it is damaged (recovery goes forward to it), and a superblock naming a newer
// checkpoint than any intact one means that checkpoint is damaged (refused). VolumeOptions.AllowRollback is the
// explicit repair for both refusals.
//
// Every metadata change goes through the six primitives here (Create ... Shift): each applies the change to the
// in-memory metadata (the inode table, the extent maps, the allocator's references) and, outside replay, appends it
// to the current operation's record. The volume calls EndOp at the end of an operation and holds its lock (Gate)
// around every call; this type has no lock of its own.
internal sealed class MetadataJournal
{
    private readonly BlockDevice _device;
    private readonly Superblock _sb;
    private readonly BlockAllocator _alloc;
    private readonly InodeTable _files;
    private readonly bool _durable;
    private readonly long _maxFileBlocks;

    public MetadataJournal(BlockDevice device, Superblock sb, BlockAllocator alloc, InodeTable files, bool durable, long maxFileBlocks)
    {
        _device = device;
        _sb = sb;
        _alloc = alloc;
        _files = files;
        _durable = durable;
        _maxFileBlocks = maxFileBlocks;
        _journalCapacity = sb.JournalBlocks * sb.BlockSize;
    }

    /// <summary>Formats: an empty journal and a first checkpoint, named by both superblock copies.</summary>
    public void Format()
    {
        _nextSeq = _sb.JournalBaseSeq;
        WriteCheckpoint();
        WriteSuperblockCopy((long)((_sb.Sequence + 1) % 2));
    }

    private const uint RecordMagic = 0x524A4450; // "PDJR"
    private const uint EndMagic = 0x454A4450; // "PDJE": the end of one commit's records
    private const ulong CheckpointMagic = 0x54504B43414D4450; // "PDMACKPT"
    private const int RecordHeader = 32;
    private const int CheckpointHeader = 48;
    public const int ExtentRecordBytes = 32;

    private enum Prim : byte { Create = 1, Delete = 2, SetSize = 3, Map = 4, Unmap = 5, Shift = 6 }

    private readonly long _journalCapacity;
    private readonly MetadataWriter _txn = new();
    private readonly MetadataWriter _pending = new(4096);
    private int _pendingRecords;
    private long _journalPos;
    private ulong _nextSeq;
    private bool _replaying;

    /// <summary>Journal records written since the volume was opened.</summary>
    public long RecordsWritten { get; private set; }

    /// <summary>Checkpoints written since the volume was opened.</summary>
    public long CheckpointsWritten { get; private set; }

    /// <summary>Journal records applied by the last recovery.</summary>
    public int RecordsReplayed { get; private set; }

    /// <summary>Why recovery took an older state than the newest on disk (only with AllowRollback), else null.</summary>
    public string? RollbackReason { get; private set; }

    /// <summary>An operation has recorded primitives not yet ended (<see cref="EndOp"/>) or dropped (<see cref="DropOp"/>).</summary>
    public bool HasOpenOp => _txn.Length != 0;

    /// <summary>Drops the primitives of an operation that must not reach the journal (it stopped, or failed).</summary>
    public void DropOp() => _txn.Clear();

    public static long MaxExtentsFor(long blockCount) => 2 * blockCount + 512;

    // ---------------------------------------------------------------- primitives (shared by operations and replay)

    public Inode Create(long id, string name)
    {
        if (_files.ById.ContainsKey(id) || _files.ByName.ContainsKey(name))
            ThrowHelper.Throw(PinnedDmaError.Corrupt, $"Journal creates inode {id} '{name}' twice.");
        var inode = new Inode(id, name);
        _files.ById.Add(id, inode);
        _files.ByName.Add(name, inode);
        if (id >= _files.NextId) _files.NextId = id + 1;
        if (!_replaying) { _txn.U8((byte)Prim.Create); _txn.I64(id); _txn.Str(name); }
        return inode;
    }

    public void Delete(Inode inode)
    {
        if (!_replaying)
        {
            var removed = new List<Extent>();
            inode.Map.Clear(removed);
            foreach (var e in removed) _alloc.Release(e.DeviceBlock, e.Count);
            _txn.U8((byte)Prim.Delete); _txn.I64(inode.Id);
        }
        _files.ByName.Remove(inode.Name);
        _files.ById.Remove(inode.Id);
        inode.Deleted = true;
    }

    public void SetSize(Inode inode, long size)
    {
        if (inode.Size == size) return;
        inode.Size = size;
        if (!_replaying) { _txn.U8((byte)Prim.SetSize); _txn.I64(inode.Id); _txn.I64(size); }
    }

    /// <summary>Maps a hole. The caller has already given the device blocks their reference.</summary>
    public void Map(Inode inode, Extent e)
    {
        inode.Map.Insert(e);
        if (!_replaying)
        {
            _txn.U8((byte)Prim.Map); _txn.I64(inode.Id); _txn.I64(e.FileBlock); _txn.I64(e.DeviceBlock); _txn.I64(e.Count); _txn.U64(e.Generation);
        }
    }

    /// <summary>Unmaps a range and drops the references its blocks held.</summary>
    public void Unmap(Inode inode, long first, long count, List<Extent>? removedOut = null)
    {
        var removed = removedOut ?? new List<Extent>();
        int before = removed.Count;
        inode.Map.Remove(first, count, removed);
        if (removed.Count == before) return;
        if (!_replaying)
        {
            for (int i = before; i < removed.Count; i++) _alloc.Release(removed[i].DeviceBlock, removed[i].Count);
            _txn.U8((byte)Prim.Unmap); _txn.I64(inode.Id); _txn.I64(first); _txn.I64(count);
        }
    }

    public void Shift(Inode inode, long from, long delta)
    {
        inode.Map.Shift(from, delta); // splits an extent straddling 'from' first, in operations and replay alike
        if (!_replaying) { _txn.U8((byte)Prim.Shift); _txn.I64(inode.Id); _txn.I64(from); _txn.I64(delta); }
    }

    /// <summary>Ends the current operation: its primitives become one pending record.</summary>
    public void EndOp()
    {
        if (_txn.Length == 0) return;
        _pending.U32((uint)_txn.Length);
        _pending.Bytes(_txn.WrittenSpan);
        _pendingRecords++;
        _txn.Clear();
        // Bound what a crash can lose and what busy blocks can hold back.
        if (_pending.Length > _journalCapacity / 4 || _alloc.BusyBlocks > (_sb.BlockCount - _sb.DataStart) / 4) Commit();
    }

    // ---------------------------------------------------------------- commit and checkpoint

    /// <summary>Makes the ended operations durable: data flushed first, then their records and an end marker (or a checkpoint when the journal is full).</summary>
    public void Commit()
    {
        if (_pendingRecords == 0)
        {
            _alloc.ReleaseBusy();
            return;
        }
        if (_durable) FlushData();
        long need = RecordHeader; // the end marker
        var p = _pending.WrittenSpan;
        for (int off = 0; off < p.Length;)
        {
            int len = (int)BinaryPrimitives.ReadUInt32LittleEndian(p[off..]);
            need += RecordHeader + Align8(len);
            off += 4 + len;
        }
        if (_journalPos + need > _journalCapacity)
        {
            WriteCheckpoint(); // the commit goes into a checkpoint instead
            Diagnostics.Telemetry.JournalCommits.Add(1);
            return;
        }
        long start = _journalPos;
        long baseOffset = _sb.JournalStart * _sb.BlockSize;
        for (int off = 0; off < p.Length;)
        {
            int len = (int)BinaryPrimitives.ReadUInt32LittleEndian(p[off..]);
            WriteJournalEntry(baseOffset, RecordMagic, p.Slice(off + 4, len));
            _nextSeq++;
            RecordsWritten++;
            off += 4 + len;
        }
        // The end marker names the next sequence without using it: a damaged record followed by this marker is
        // damage inside a finished commit, not a torn tail.
        WriteJournalEntry(baseOffset, EndMagic, default);
        if (_durable) FlushRange(baseOffset + start, _journalPos - start);
        Diagnostics.Telemetry.JournalCommits.Add(1);
        _pending.Clear();
        _pendingRecords = 0;
        _alloc.ReleaseBusy();
    }

    private void WriteJournalEntry(long baseOffset, uint magic, ReadOnlySpan<byte> payload)
    {
        var rec = _device.GetSpan(baseOffset + _journalPos, RecordHeader + Align8(payload.Length));
        rec.Clear();
        payload.CopyTo(rec[RecordHeader..]);
        BinaryPrimitives.WriteUInt32LittleEndian(rec, magic);
        BinaryPrimitives.WriteUInt32LittleEndian(rec[4..], (uint)payload.Length);
        BinaryPrimitives.WriteUInt64LittleEndian(rec[8..], _nextSeq);
        BinaryPrimitives.WriteUInt32LittleEndian(rec[16..], EntryCrc(magic, _nextSeq, payload));
        _journalPos += rec.Length;
    }

    private static uint EntryCrc(uint magic, ulong seq, ReadOnlySpan<byte> payload)
    {
        Span<byte> h = stackalloc byte[16];
        BinaryPrimitives.WriteUInt32LittleEndian(h, magic);
        BinaryPrimitives.WriteUInt64LittleEndian(h[4..], seq);
        BinaryPrimitives.WriteUInt32LittleEndian(h[12..], (uint)payload.Length);
        return ~Crc32C.Append(Crc32C.Append(0xFFFFFFFFu, h), payload);
    }

    private static int Align8(int n) => (n + 7) & ~7;

    private void FlushData() =>
        FlushRange(_sb.DataStart * _sb.BlockSize, (_sb.BlockCount - _sb.DataStart) * _sb.BlockSize);

    private void FlushRange(long offset, long length)
    {
        long t0 = Diagnostics.Telemetry.FsyncDuration.Enabled ? System.Diagnostics.Stopwatch.GetTimestamp() : 0;
        _device.Flush(offset, length);
        if (t0 != 0) Diagnostics.Telemetry.FsyncDuration.Record(System.Diagnostics.Stopwatch.GetElapsedTime(t0).TotalSeconds);
    }

    /// <summary>
    /// Writes the whole metadata to the inactive checkpoint slot, then a superblock copy naming it; the journal starts
    /// over. Data is flushed first (ordered mode, as for a commit).
    /// </summary>
    public void WriteCheckpoint()
    {
        if (_durable) FlushData();
        var w = new MetadataWriter(4096);
        w.I64(_files.NextId);
        w.U64(_alloc.NextGeneration);
        var files = _files.ByName.Values.OrderBy(i => i.Id).ToList();
        w.U32((uint)files.Count);
        foreach (var f in files)
        {
            w.I64(f.Id);
            w.I64(f.Size);
            w.Str(f.Name);
            w.U32((uint)f.Map.Count);
            foreach (var e in f.Map.Extents) { w.I64(e.FileBlock); w.I64(e.DeviceBlock); w.I64(e.Count); w.U64(e.Generation); }
        }
        long capacity = _sb.CheckpointBlocks * _sb.BlockSize - CheckpointHeader;
        if (w.Length > capacity)
            ThrowHelper.Throw(PinnedDmaError.NoSpace, $"Metadata ({w.Length} bytes) exceeds the checkpoint area ({capacity} bytes); commit failed, the last durable state stands.");
        int slot = 1 - _sb.ActiveCheckpoint;
        ulong sbSeq = _sb.Sequence + 1;
        // Every checkpoint starts the journal at a sequence number no earlier copy names: a superblock copy older
        // than this checkpoint must never replay the records written after it (when no record was committed
        // between two checkpoints, both would otherwise name the same base and the older one would build a state
        // that never existed).
        ulong journalBase = _nextSeq + 1;
        long at = _sb.CheckpointStart(slot) * _sb.BlockSize;
        var region = _device.GetSpan(at, CheckpointHeader + w.Length);
        w.WrittenSpan.CopyTo(region[CheckpointHeader..]);
        BinaryPrimitives.WriteUInt64LittleEndian(region, CheckpointMagic);
        BinaryPrimitives.WriteUInt64LittleEndian(region[8..], sbSeq);
        BinaryPrimitives.WriteInt64LittleEndian(region[16..], w.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(region[28..], 0);
        BinaryPrimitives.WriteUInt64LittleEndian(region[32..], journalBase);
        BinaryPrimitives.WriteUInt64LittleEndian(region[40..], 0);
        BinaryPrimitives.WriteUInt32LittleEndian(region[24..], CheckpointCrc(region));
        if (_durable) FlushRange(at, region.Length);

        _sb.Sequence = sbSeq;
        _sb.ActiveCheckpoint = slot;
        _sb.CheckpointLength = w.Length;
        _nextSeq = journalBase;
        _sb.JournalBaseSeq = journalBase;
        WriteSuperblockCopy((long)(sbSeq % 2));
        _journalPos = 0;
        _pending.Clear();
        _pendingRecords = 0;
        _txn.Clear();
        _alloc.ReleaseBusy();
        CheckpointsWritten++;
    }

    public void WriteSuperblockCopy(long copy)
    {
        long sbAt = copy * _sb.BlockSize;
        _sb.Write(_device.GetSpan(sbAt, Superblock.Size));
        if (_durable)
        {
            FlushRange(sbAt, Superblock.Size);
            if (_device is FileBlockDevice f) f.SyncFile();
        }
    }

    /// <summary>CRC32C of a checkpoint header's fields (sequence, length, journal base, reserved) and its body.</summary>
    private static uint CheckpointCrc(ReadOnlySpan<byte> region)
    {
        long len = BinaryPrimitives.ReadInt64LittleEndian(region[16..]);
        uint c = Crc32C.Append(0xFFFFFFFFu, region[8..24]);
        c = Crc32C.Append(c, region[28..CheckpointHeader]);
        return ~Crc32C.Append(c, region.Slice(CheckpointHeader, (int)len));
    }

    // ---------------------------------------------------------------- recovery

    public void Recover(ulong namedSequence, bool allowRollback)
    {
        _replaying = true;
        try
        {
            ChooseCheckpoint(namedSequence, allowRollback);
            LoadCheckpoint();
            ReplayJournal(allowRollback);
        }
        finally
        {
            _replaying = false;
        }
        _alloc.Reset();
        ulong nextGen = _alloc.NextGeneration;
        foreach (var inode in _files.ById.Values)
        {
            if (inode.Size < 0) ThrowHelper.Throw(PinnedDmaError.Corrupt, $"File '{inode.Name}' has a negative size.");
            foreach (var e in inode.Map.Extents) _alloc.Claim(e.DeviceBlock, e.Count, e.Generation);
        }
        if (_alloc.NextGeneration < nextGen) _alloc.NextGeneration = nextGen;
        foreach (var inode in _files.ById.Values) ZeroPastEof(inode);
        // A repair is made durable at once: the new checkpoint and journal base replace the damaged newer state, so
        // that the next open finds an intact newest state.
        if (RollbackReason is not null) WriteCheckpoint();
    }

    private readonly record struct CheckpointHead(int Slot, ulong Sequence, long Length, ulong JournalBase);

    /// <summary>The header of the checkpoint in <paramref name="slot"/> when it and its body are intact; else null and why.</summary>
    private CheckpointHead? ReadCheckpointHead(int slot, out string why)
    {
        long at = _sb.CheckpointStart(slot) * _sb.BlockSize;
        var head = _device.GetSpan(at, CheckpointHeader);
        long len = BinaryPrimitives.ReadInt64LittleEndian(head[16..]);
        why = "";
        if (BinaryPrimitives.ReadUInt64LittleEndian(head) != CheckpointMagic) { why = "no checkpoint"; return null; }
        if (len < 0 || len > _sb.CheckpointBlocks * _sb.BlockSize - CheckpointHeader) { why = $"length {len} out of range"; return null; }
        var region = _device.GetSpan(at, CheckpointHeader + (int)len);
        if (BinaryPrimitives.ReadUInt32LittleEndian(head[24..]) != CheckpointCrc(region)) { why = "bad checksum"; return null; }
        return new CheckpointHead(slot, BinaryPrimitives.ReadUInt64LittleEndian(head[8..]), len, BinaryPrimitives.ReadUInt64LittleEndian(head[32..]));
    }

    /// <summary>
    /// Picks the newest intact checkpoint. A superblock copy is written only after its checkpoint is durable, so a
    /// checkpoint newer than every intact copy is one whose superblock write was cut short or later damaged: its
    /// state is complete, and recovery goes forward to it. A copy naming a newer checkpoint than any intact one means
    /// that checkpoint is damaged: refused, or (repair) the older one is taken.
    /// </summary>
    private void ChooseCheckpoint(ulong namedSequence, bool allowRollback)
    {
        var c0 = ReadCheckpointHead(0, out var why0);
        var c1 = ReadCheckpointHead(1, out var why1);
        var best = c0 is null ? c1 : c1 is null ? c0 : (c1.Value.Sequence > c0.Value.Sequence ? c1 : c0);
        if (best is null)
            ThrowHelper.Throw(PinnedDmaError.Corrupt, $"No intact checkpoint (slot 0: {why0}; slot 1: {why1}).");
        var b = best.Value;
        if (b.Sequence < namedSequence)
        {
            string what = $"The superblock names checkpoint {namedSequence}, which is damaged (slot 0: {why0}; slot 1: {why1}); the newest intact checkpoint is the older {b.Sequence}";
            if (!allowRollback)
                ThrowHelper.Throw(PinnedDmaError.Corrupt, what + ". Open with VolumeOptions.AllowRollback to repair the volume to that older state.");
            RollbackReason = what + ": the volume was rolled back to it.";
        }
        _sb.Sequence = Math.Max(b.Sequence, namedSequence);
        _sb.ActiveCheckpoint = b.Slot;
        _sb.CheckpointLength = b.Length;
        _sb.JournalBaseSeq = b.JournalBase;
    }

    /// <summary>
    /// Zeroes the mapped bytes past a recovered file's EOF. Data writes go to private blocks in place and are not
    /// journaled, so a write that extended the file before a crash can leave its bytes past the EOF that recovery
    /// restored (the size change was lost with the uncommitted record); growing the file again must read zeros
    /// there, not those bytes. Past-EOF bytes of a block shared by clones lie past every sharer's committed data.
    /// </summary>
    private void ZeroPastEof(Inode inode)
    {
        int shift = _device.BlockShift;
        long eofBlock = inode.Size >> shift;
        long tail = inode.Size & (_sb.BlockSize - 1);
        if (eofBlock >= _maxFileBlocks) return;
        foreach (var e in inode.Map.GetRange(eofBlock, _maxFileBlocks - eofBlock))
        {
            long db = e.DeviceBlock, n = e.Count;
            if (e.FileBlock == eofBlock && tail != 0)
            {
                _device.GetSpan((db << shift) + tail, (int)(_sb.BlockSize - tail)).Clear();
                db++;
                n--;
            }
            if (n > 0) _device.ZeroBlocks(db, n);
        }
    }

    private void LoadCheckpoint()
    {
        long at = _sb.CheckpointStart(_sb.ActiveCheckpoint) * _sb.BlockSize;
        var body = _device.GetSpan(at + CheckpointHeader, (int)_sb.CheckpointLength);
        var r = new MetadataReader(body, "checkpoint");
        _files.NextId = r.NonNegative("next inode");
        _alloc.NextGeneration = r.U64();
        uint files = r.U32();
        if (files > _sb.MaxFiles) ThrowHelper.Throw(PinnedDmaError.Corrupt, $"Checkpoint lists {files} files; the volume holds at most {_sb.MaxFiles}.");
        for (uint i = 0; i < files; i++)
        {
            long id = r.NonNegative("inode");
            long size = r.NonNegative("size");
            string name = r.Str();
            var inode = Create(id, name);
            inode.Size = size;
            uint n = r.U32();
            for (uint k = 0; k < n; k++)
                MapChecked(inode, r.NonNegative("file block"), r.NonNegative("device block"), r.NonNegative("count"), r.U64());
        }
        if (!r.End) ThrowHelper.Throw(PinnedDmaError.Corrupt, "Checkpoint has trailing bytes.");
    }

    private void MapChecked(Inode inode, long fb, long db, long count, ulong gen)
    {
        if (count <= 0 || db < _sb.DataStart || db + count > _sb.BlockCount || fb > _maxFileBlocks - count)
            ThrowHelper.Throw(PinnedDmaError.Corrupt, $"Extent [{fb}, +{count}) -> {db} of '{inode.Name}' is out of bounds.");
        if (!inode.Map.IsHole(fb, count))
            ThrowHelper.Throw(PinnedDmaError.Corrupt, $"Extent at file block {fb} of '{inode.Name}' overlaps another.");
        Map(inode, new Extent(fb, db, count, gen));
    }

    private enum Entry { Record, End, Bad }

    /// <summary>Reads the journal entry at <paramref name="pos"/> if it is intact and carries <paramref name="seq"/> (any sequence when null).</summary>
    private Entry ReadEntry(long pos, ulong? seq, out ulong entrySeq, out ReadOnlySpan<byte> payload)
    {
        long baseOffset = _sb.JournalStart * _sb.BlockSize;
        entrySeq = 0;
        payload = default;
        if (pos + RecordHeader > _journalCapacity) return Entry.Bad;
        var head = _device.GetSpan(baseOffset + pos, RecordHeader);
        uint magic = BinaryPrimitives.ReadUInt32LittleEndian(head);
        if (magic is not (RecordMagic or EndMagic)) return Entry.Bad;
        long len = BinaryPrimitives.ReadUInt32LittleEndian(head[4..]);
        entrySeq = BinaryPrimitives.ReadUInt64LittleEndian(head[8..]);
        if (seq is { } want && entrySeq != want) return Entry.Bad;
        if (len > _journalCapacity - pos - RecordHeader || (magic == EndMagic && len != 0)) return Entry.Bad;
        payload = _device.GetSpan(baseOffset + pos + RecordHeader, (int)len);
        if (BinaryPrimitives.ReadUInt32LittleEndian(head[16..]) != EntryCrc(magic, entrySeq, payload)) return Entry.Bad;
        return magic == RecordMagic ? Entry.Record : Entry.End;
    }

    /// <summary>The first intact entry after <paramref name="pos"/> whose sequence is at least <paramref name="seq"/>: proof of committed history past <paramref name="pos"/>.</summary>
    private (long Pos, ulong Seq)? FindLaterEntry(long pos, ulong seq)
    {
        for (long q = pos + 8; q + RecordHeader <= _journalCapacity; q += 8)
        {
            if (ReadEntry(q, null, out ulong s, out _) != Entry.Bad && s >= seq) return (q, s);
        }
        return null;
    }

    private void ReplayJournal(bool allowRollback)
    {
        long pos = 0;
        ulong seq = _sb.JournalBaseSeq;
        while (true)
        {
            var kind = ReadEntry(pos, seq, out _, out var payload);
            if (kind == Entry.Record)
            {
                ApplyRecord(payload, seq);
                RecordsReplayed++;
                pos += RecordHeader + Align8(payload.Length);
                seq++;
                continue;
            }
            if (kind == Entry.End)
            {
                pos += RecordHeader;
                continue;
            }
            // Nothing intact here. Past a torn tail nothing later is intact; anything intact and later means the
            // damage is inside committed history.
            var later = FindLaterEntry(pos, seq);
            if (later is null) break;
            var (at, found) = later.Value;
            // A damaged end marker carries no metadata: when the entry right after it is the one expected, skip it
            // (a damaged record would have a payload, so its successor could not start one header later).
            if (at == pos + RecordHeader && found == seq) { pos = at; continue; }
            string what = $"Journal entry {seq} at journal offset {pos} is damaged, but intact committed entry {found} at offset {at} follows it";
            if (!allowRollback)
                ThrowHelper.Throw(PinnedDmaError.Corrupt, what + ". Open with VolumeOptions.AllowRollback to repair the volume to the state before the damage.");
            RollbackReason = (RollbackReason is null ? "" : RollbackReason + " ") + what + ": the records from there on were dropped.";
            // New records must never be confused with what is left of the dropped ones.
            for (long q = pos; q + RecordHeader <= _journalCapacity; q += 8)
                if (ReadEntry(q, null, out ulong s, out _) != Entry.Bad && s >= seq) seq = s + 1;
            break;
        }
        _journalPos = pos;
        _nextSeq = seq;
    }

    private void ApplyRecord(ReadOnlySpan<byte> payload, ulong seq)
    {
        var r = new MetadataReader(payload, $"journal record {seq}");
        while (!r.End)
        {
            var op = (Prim)r.U8();
            long id = r.NonNegative("inode");
            if (op == Prim.Create)
            {
                Create(id, r.Str());
                continue;
            }
            if (!_files.ById.TryGetValue(id, out var inode))
                ThrowHelper.Throw(PinnedDmaError.Corrupt, $"Journal record {seq} names unknown inode {id}.");
            switch (op)
            {
                case Prim.Delete: Delete(inode); break;
                case Prim.SetSize: SetSize(inode, r.NonNegative("size")); break;
                case Prim.Map: MapChecked(inode, r.NonNegative("file block"), r.NonNegative("device block"), r.NonNegative("count"), r.U64()); break;
                case Prim.Unmap:
                    {
                        long first = r.NonNegative("file block"), count = r.NonNegative("count");
                        if (first > _maxFileBlocks - count) ThrowHelper.Throw(PinnedDmaError.Corrupt, $"Journal record {seq}: unmap out of range.");
                        Unmap(inode, first, count);
                        break;
                    }
                case Prim.Shift:
                    {
                        long from = r.NonNegative("file block"), delta = r.I64();
                        if (Math.Abs(delta) > _maxFileBlocks || from + delta < 0 || !inode.Map.CanShift(from, delta))
                            ThrowHelper.Throw(PinnedDmaError.Corrupt, $"Journal record {seq}: impossible shift.");
                        Shift(inode, from, delta);
                        break;
                    }
                default:
                    ThrowHelper.Throw(PinnedDmaError.Corrupt, $"Journal record {seq} has unknown primitive {(byte)op}.");
                    break;
            }
        }
    }
}
