using System.Runtime.InteropServices;

namespace PinnedDma.Storage;

/// <summary>A block device in zeroed, page-aligned native memory. Nothing survives the process.</summary>
public sealed unsafe class MemoryBlockDevice : BlockDevice
{
    /// <summary>Allocates <paramref name="blockCount"/> zeroed blocks of <paramref name="blockSize"/> bytes.</summary>
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
