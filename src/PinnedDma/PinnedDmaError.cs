namespace PinnedDma;

/// <summary>What went wrong, in the words of the errno or verbs status a storage or RDMA engineer expects.</summary>
public enum PinnedDmaError
{
    /// <summary>No error.</summary>
    None = 0,
    /// <summary>An argument is outside what the operation accepts (EINVAL): alignment, overlap, range.</summary>
    InvalidArgument,
    /// <summary>The file or volume object does not exist (ENOENT).</summary>
    NotFound,
    /// <summary>A file with that name already exists (EEXIST).</summary>
    AlreadyExists,
    /// <summary>The volume has no free block or no metadata room left (ENOSPC).</summary>
    NoSpace,
    /// <summary>The operation would remap a range that a pin or a Direct mapping holds (ETXTBSY), or the volume file is held by another open volume (EWOULDBLOCK on its lock).</summary>
    Busy,
    /// <summary>The volume file or a journal record failed validation (EUCLEAN): the bytes on disk are not a valid volume.</summary>
    Corrupt,
    /// <summary>Pinning would exceed the owner's memlock limit (ENOMEM under RLIMIT_MEMLOCK).</summary>
    MemlockLimitExceeded,
    /// <summary>The pin's lease was revoked: DMA through it no longer works.</summary>
    Revoked,
    /// <summary>The pin was released or its owner disposed.</summary>
    Released,
    /// <summary>The platform or the file system does not support the request (EOPNOTSUPP).</summary>
    NotSupported,
    /// <summary>The contents of two ranges differ, so a dedupe shared nothing (FILE_DEDUPE_RANGE_DIFFERS).</summary>
    RangesDiffer,
    /// <summary>An I/O system call failed.</summary>
    IoError,
    /// <summary>Access outside what a pin, mapping or memory region allows.</summary>
    AccessDenied,
    /// <summary>The peer rejected the connection (an MPA reply with the R flag).</summary>
    ConnectionRejected,
    /// <summary>The peer broke the wire protocol.</summary>
    ProtocolError,
}
