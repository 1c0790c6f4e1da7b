using System.Buffers.Binary;
using Microsoft.Extensions.ObjectPool;
using PinnedDma.Verbs;
using PinnedDma.Verbs.Internal;

namespace PinnedDma.Transports.Loopback.Internal;

/// <summary>
/// The loopback transport of one queue pair connected by number to a queue pair in this process: the requester's DMA
/// engine thread also plays the responder, copying between the two queue pairs' regions (each inside its drain) and
/// taking the peer's posted receives. Nothing is deferred: every request completes when <see cref="Execute"/> returns.
/// </summary>
internal sealed class LoopbackTransport : QpTransport
{
    private static readonly ObjectPool<byte[]> s_scratch = new DefaultObjectPool<byte[]>(new ScratchPolicy(), 8);
    private readonly QueuePair _qp;
    private readonly QueuePair _peer;

    public LoopbackTransport(QueuePair qp, QueuePair peer)
    {
        _qp = qp;
        _peer = peer;
    }

    /// <summary>The device's engine: loopback queue pairs share it.</summary>
    public override DmaEngine Engine => _qp.Pd.Device.Engine;

    /// <summary>A receive posted here may let the peer's Send or Write with immediate go on (RNR).</summary>
    public override void ReceivePosted()
    {
        _peer.Engine.Ring(_peer);
    }

    public override void CompleteInOrder(in WorkCompletion wc) => _qp.SendCq.Push(wc);

    public override WcStatus Execute(in SendWorkRequest wr, MemoryRegion? local, long localOffset, out TransportOutcome outcome)
    {
        outcome = TransportOutcome.Done;
        var peer = _peer;
        // The responder's gate: a peer in Error (or disposed) serves nothing, and its Modify/Dispose waits for this.
        if (!peer.TryEnterActive()) return WcStatus.RetryExcErr;
        try
        {
            var status = Respond(in wr, local, localOffset, out bool rnr);
            if (rnr) outcome = TransportOutcome.ReceiverNotReady;
            return status;
        }
        finally
        {
            peer.ExitActive();
        }
    }

    private WcStatus Respond(in SendWorkRequest wr, MemoryRegion? lmr, long loff, out bool rnr)
    {
        var peer = _peer;
        rnr = false;
        switch (wr.Opcode)
        {
            case WrOpcode.RdmaWrite:
            case WrOpcode.RdmaWriteWithImm:
                {
                    var rs = Responder.ResolveRemote(peer, wr.RKey, wr.RemoteAddress, wr.Local.Length, AccessFlags.RemoteWrite, out var rmr, out long roff);
                    if (rs != WcStatus.Success) return rs;
                    RecvWorkRequest recv = default;
                    if (wr.Opcode == WrOpcode.RdmaWriteWithImm && !peer.TryTakeRecv(out recv)) { rnr = true; return WcStatus.Success; }
                    var cs = Copy(lmr, loff, rmr, roff, wr.Local.Length, sourceIsLocal: true);
                    if (cs != WcStatus.Success) return cs;
                    if (wr.Opcode == WrOpcode.RdmaWriteWithImm)
                        peer.RecvCq.Push(new WorkCompletion(recv.WrId, WcStatus.Success, WcOpcode.RecvRdmaWithImm, wr.Local.Length, peer.QpNumber, WcFlags.WithImm, wr.ImmData, 0));
                    return WcStatus.Success;
                }
            case WrOpcode.RdmaRead:
                {
                    var rs = Responder.ResolveRemote(peer, wr.RKey, wr.RemoteAddress, wr.Local.Length, AccessFlags.RemoteRead, out var rmr, out long roff);
                    if (rs != WcStatus.Success) return rs;
                    return Copy(rmr, roff, lmr, loff, wr.Local.Length, sourceIsLocal: false);
                }
            case WrOpcode.AtomicCompareSwap:
            case WrOpcode.AtomicFetchAdd:
                {
                    if (wr.Local.Length != 8) return WcStatus.LocLenErr;
                    if ((wr.RemoteAddress & 7) != 0) return WcStatus.RemInvReqErr;
                    var rs = Responder.ResolveRemote(peer, wr.RKey, wr.RemoteAddress, 8, AccessFlags.RemoteAtomic, out var rmr, out long roff);
                    if (rs != WcStatus.Success) return rs;
                    if (!rmr!.TryEnter()) return WcStatus.RemAccessErr;
                    ulong old;
                    try
                    {
                        old = rmr.Atomic(roff, wr.Opcode == WrOpcode.AtomicCompareSwap, wr.CompareAdd, wr.Swap);
                    }
                    finally
                    {
                        rmr.Exit();
                    }
                    if (!lmr!.TryEnter()) return WcStatus.LocProtErr;
                    try
                    {
                        Span<byte> b = stackalloc byte[8];
                        BinaryPrimitives.WriteUInt64LittleEndian(b, old);
                        lmr.WriteAt(loff, b);
                    }
                    finally
                    {
                        lmr.Exit();
                    }
                    return WcStatus.Success;
                }
            case WrOpcode.Send:
            case WrOpcode.SendWithImm:
            case WrOpcode.SendWithInvalidate:
                {
                    MemoryRegion? toInvalidate = null;
                    if (wr.Opcode == WrOpcode.SendWithInvalidate)
                    {
                        toInvalidate = peer.Pd.Device.Keys.Lookup(wr.InvalidateRKey);
                        if (toInvalidate is null || toInvalidate.Pd != peer.Pd) return WcStatus.RemInvReqErr;
                    }
                    if (!peer.TryTakeRecv(out var recv)) { rnr = true; return WcStatus.Success; }
                    var recvSge = recv.Local;
                    var rs = DmaEngine.ResolveLocal(peer, in recvSge, write: true, out var rmr, out long roff);
                    if (rs != WcStatus.Success || recv.Local.Length < wr.Local.Length)
                    {
                        var st = rs != WcStatus.Success ? rs : WcStatus.LocLenErr;
                        peer.FailRequest(peer.RecvCq, new WorkCompletion(recv.WrId, st, WcOpcode.Recv, 0, peer.QpNumber, WcFlags.None, 0, 0));
                        return st == WcStatus.LocLenErr ? WcStatus.RemInvReqErr : WcStatus.RemOpErr;
                    }
                    var cs = Copy(lmr, loff, rmr, roff, wr.Local.Length, sourceIsLocal: true);
                    if (cs != WcStatus.Success) return cs;
                    var flags = WcFlags.None;
                    if (wr.Opcode == WrOpcode.SendWithImm) flags |= WcFlags.WithImm;
                    if (toInvalidate is not null)
                    {
                        toInvalidate.Invalidate();
                        flags |= WcFlags.WithInv;
                    }
                    peer.RecvCq.Push(new WorkCompletion(recv.WrId, WcStatus.Success, WcOpcode.Recv, wr.Local.Length, peer.QpNumber, flags,
                        wr.Opcode == WrOpcode.SendWithImm ? wr.ImmData : 0, toInvalidate is null ? 0 : wr.InvalidateRKey));
                    return WcStatus.Success;
                }
            default:
                return WcStatus.LocQpOpErr;
        }
    }

    /// <summary>Copies <paramref name="length"/> bytes between regions inside both drains.</summary>
    private static WcStatus Copy(MemoryRegion? src, long soff, MemoryRegion? dst, long doff, uint length, bool sourceIsLocal)
    {
        if (length == 0) return WcStatus.Success;
        if (!src!.TryEnter()) return sourceIsLocal ? WcStatus.LocProtErr : WcStatus.RemAccessErr;
        try
        {
            if (!dst!.TryEnter()) return sourceIsLocal ? WcStatus.RemAccessErr : WcStatus.LocProtErr;
            try
            {
                if (!src.IsOnDemand && !dst.IsOnDemand)
                {
                    long done = 0;
                    while (done < length)
                    {
                        var s = src.Piece(soff + done, length - done);
                        var d = dst.Piece(doff + done, s.Length);
                        s[..d.Length].CopyTo(d);
                        done += d.Length;
                    }
                    return WcStatus.Success;
                }
                var buf = s_scratch.Get();
                try
                {
                    long done = 0;
                    while (done < length)
                    {
                        int n = (int)Math.Min(buf.Length, length - done);
                        src.ReadAt(soff + done, buf.AsSpan(0, n));
                        dst.WriteAt(doff + done, buf.AsSpan(0, n));
                        done += n;
                    }
                }
                finally
                {
                    s_scratch.Return(buf);
                }
                return WcStatus.Success;
            }
            catch (PinnedDmaException)
            {
                // An ODP access the volume refused (no space, a conflicting pin): the responder could not complete it.
                return WcStatus.RemOpErr;
            }
            finally
            {
                dst!.Exit();
            }
        }
        finally
        {
            src.Exit();
        }
    }

    private sealed class ScratchPolicy : PooledObjectPolicy<byte[]>
    {
        public override byte[] Create() => GC.AllocateUninitializedArray<byte>(64 * 1024, pinned: true);
        public override bool Return(byte[] obj) => true;
    }
}
