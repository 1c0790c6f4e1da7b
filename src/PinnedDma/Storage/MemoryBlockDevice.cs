using System.Runtime.InteropServices;

namespace PinnedDma.Storage;

/// <summary>A block device in zeroed, page-aligned native memory. Nothing survives the process.</summary>
public sealed unsafe class MemoryBlockDevice : BlockDevice
{
    /// <summary>Allocates <paramref name="blockCount"/> zeroed blocks of <paramref name="blockSize"/> bytes.</summary>
    /// <param name="blockSize">Bytes per block: a power of two from 512 to 65536.</param>
    /// <param name="blockCount">Blocks: 1 to 2^31 - 1.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="blockSize"/> or <paramref name="blockCount"/> is out of range.</exception>
    /// <exception cref="OutOfMemoryException">The native memory cannot be allocated.</exception>
    public MemoryBlockDevice(int blockSize, long blockCount)
        : base(blockSize, blockCount)
    {
        nuint bytes = checked((nuint)(blockCount * blockSize));
        byte* p = (byte*)NativeMemory.AlignedAlloc(bytes, 4096);
        NativeMemory.Clear(p, bytes);
        SetBase(p);
    }

    /// <inheritdoc />
    public override DeviceMappingMode MappingMode => DeviceMappingMode.Memory;

    private protected override void FlushCore(long offset, long length) { }

    private protected override void ReleaseCore(byte* pointer) => NativeMemory.AlignedFree(pointer);
}
