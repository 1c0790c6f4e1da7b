namespace PinnedDma.Verbs;

/// <summary>A work completion (struct ibv_wc).</summary>
public readonly record struct WorkCompletion(ulong WrId, WcStatus Status, WcOpcode Opcode, uint ByteLength, uint QpNumber, WcFlags Flags, uint ImmData, uint InvalidatedRKey)
{
    /// <inheritdoc />
    public override string ToString() => $"wr {WrId} {Opcode} {Status} {ByteLength} bytes qp {QpNumber}";
}
