using System.Net;
using System.Net.Sockets;
using PinnedDma.Benchmarks.Verbs;
using PinnedDma.Transports.Iwarp;
using PinnedDma.Verbs;

namespace PinnedDma.Benchmarks.Iwarp;

/// <summary>
/// Two soft devices connected over iWARP/TCP on 127.0.0.1: the client's native buffer region and the server's pinned
/// file region (and a server buffer region for latency replies).
/// </summary>
public sealed class IwarpPair : IDisposable
{
    private readonly IwarpListener _listener;

    private IwarpPair(VerbsBench.FileTarget target, RdmaDevice clientDev, RdmaDevice serverDev, IwarpListener listener,
        QueuePair client, QueuePair server, CompletionQueue clientCq, CompletionQueue serverCq,
        MemoryRegion clientMr, MemoryRegion serverMr, MemoryRegion serverBuffer)
    {
        Target = target;
        ClientDevice = clientDev;
        ServerDevice = serverDev;
        _listener = listener;
        Client = client;
        Server = server;
        ClientCq = clientCq;
        ServerCq = serverCq;
        ClientMr = clientMr;
        ServerMr = serverMr;
        ServerBuffer = serverBuffer;
    }

    public VerbsBench.FileTarget Target { get; }
    public RdmaDevice ClientDevice { get; }
    public RdmaDevice ServerDevice { get; }
    public QueuePair Client { get; }
    public QueuePair Server { get; }
    public CompletionQueue ClientCq { get; }
    public CompletionQueue ServerCq { get; }

    /// <summary>Client buffer region (local and remote write, for READ sinks and latency replies).</summary>
    public MemoryRegion ClientMr { get; }

    /// <summary>Server pinned file region: the RDMA target.</summary>
    public MemoryRegion ServerMr { get; }

    /// <summary>Server buffer region: the source of latency replies.</summary>
    public MemoryRegion ServerBuffer { get; }

    /// <summary>Connects a fresh pair with MPA revision 1 and the given CRC setting (64 KiB FPDUs).</summary>
    public static IwarpPair Create(bool crc, int depth, bool bufferTarget = false)
    {
        var target = new VerbsBench.FileTarget();
        var serverDev = new RdmaDevice("bench-iwarp-server");
        var clientDev = new RdmaDevice("bench-iwarp-client");
        var spd = serverDev.AllocatePd();
        var cpd = clientDev.AllocatePd();
        var scq = serverDev.CreateCompletionQueue(1024);
        var ccq = clientDev.CreateCompletionQueue(1024);
        var server = spd.CreateQueuePair(new QueuePairOptions { SendCq = scq, RecvCq = scq, MaxSendWr = depth, MaxRecvWr = 16 });
        var client = cpd.CreateQueuePair(new QueuePairOptions { SendCq = ccq, RecvCq = ccq, MaxSendWr = depth, MaxRecvWr = 16 });
        var serverMr = bufferTarget
            ? spd.RegisterBuffer(VerbsBench.Region, AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteRead)
            : target.Register(spd);
        var serverBuffer = spd.RegisterBuffer(4096, AccessFlags.LocalWrite);
        var clientMr = cpd.RegisterBuffer(VerbsBench.Region, AccessFlags.LocalWrite | AccessFlags.RemoteWrite);
        // The conformant wire as a user gets it: MPA rev 2, every FPDU with its CRC field (zero when CRC is off), FPDUs
        // sized to the connection's TCP segment (on loopback about 64 KiB).
        var options = new IwarpOptions { Crc = crc };
        var listener = new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0), options);
        var accept = Task.Run(async () =>
        {
            var request = await listener.AcceptAsync();
            server.Modify(new QpAttributes { State = QpState.Init, AccessFlags = AccessFlags.RemoteRead | AccessFlags.RemoteWrite });
            request.Accept(server);
        });
        var connect = IwarpConnector.ConnectAsync(client, listener.LocalEndPoint, default, options);
        if (!Task.WaitAll([accept, connect], TimeSpan.FromSeconds(30))) throw new TimeoutException("iWARP connection setup took over 30 s");
        return new IwarpPair(target, clientDev, serverDev, listener, client, server, ccq, scq, clientMr, serverMr, serverBuffer);
    }

    public void Dispose()
    {
        _listener.Dispose();
        Client.Dispose();
        Server.Dispose();
        ClientMr.Dispose();
        ServerMr.Dispose();
        ServerBuffer.Dispose();
        ClientDevice.Dispose();
        ServerDevice.Dispose();
        Target.Dispose();
    }
}

/// <summary>A connected TCP pair on 127.0.0.1 with Nagle off on both ends, as the iWARP sockets are.</summary>
public sealed class LoopbackSocketPair : IDisposable
{
    public LoopbackSocketPair()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(1);
        Client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        Client.Connect(listener.LocalEndPoint!);
        Server = listener.Accept();
        Server.NoDelay = true;
    }

    public Socket Client { get; }

    public Socket Server { get; }

    /// <summary>Sends all of <paramref name="data"/>.</summary>
    public static void SendAll(Socket s, ReadOnlySpan<byte> data)
    {
        while (!data.IsEmpty) data = data[s.Send(data, SocketFlags.None)..];
    }

    /// <summary>Receives exactly <paramref name="into"/>.Length bytes; false if the peer closed first.</summary>
    public static bool ReceiveAll(Socket s, Span<byte> into)
    {
        while (!into.IsEmpty)
        {
            int n = s.Receive(into, SocketFlags.None);
            if (n == 0) return false;
            into = into[n..];
        }
        return true;
    }

    public void Dispose()
    {
        try { Client.Shutdown(SocketShutdown.Both); } catch (SocketException) { }
        try { Server.Shutdown(SocketShutdown.Both); } catch (SocketException) { }
        Client.Dispose();
        Server.Dispose();
    }
}
