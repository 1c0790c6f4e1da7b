// Measures how long a well-behaved iWARP client takes to connect (TCP connect + MPA exchange + accept) while a flood
// of silent and half-handshake connections sits on the listener.
//
//   dotnet run -c Release --project samples/HandshakeFlood -- [silent-connections] [rounds]
//
// The silent connections come from 127.0.0.2 and 127.0.0.3 (every loopback address works on Linux), half of them
// sending the first 10 bytes of an MPA request and then nothing. The listener keeps its default options.
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using PinnedDma.Transports.Iwarp;
using PinnedDma.Verbs;

int silent = args.Length > 0 ? int.Parse(args[0], System.Globalization.CultureInfo.InvariantCulture) : 400;
int rounds = args.Length > 1 ? int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture) : 5;

using var server = new RdmaDevice("flood-server");
using var client = new RdmaDevice("flood-client");
using var listener = new IwarpListener(new IPEndPoint(IPAddress.Loopback, 0));
var port = listener.LocalEndPoint.Port;
using var stop = new CancellationTokenSource();
var spd = server.AllocatePd();
var acceptLoop = Task.Run(async () =>
{
    try
    {
        while (true)
        {
            var request = await listener.AcceptAsync(stop.Token);
            var cq = server.CreateCompletionQueue(4);
            request.Accept(spd.CreateQueuePair(new QueuePairOptions { SendCq = cq, RecvCq = cq }));
        }
    }
    catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException)
    {
    }
});

var cpd = client.AllocatePd();
var times = new List<double>();
for (int round = 0; round < rounds; round++)
{
    var flood = new List<Socket>();
    var connects = new List<Task>();
    for (int i = 0; i < silent; i++)
    {
        var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        s.Bind(new IPEndPoint(IPAddress.Parse(i % 2 == 0 ? "127.0.0.2" : "127.0.0.3"), 0));
        flood.Add(s);
        bool half = i % 4 == 1;
        connects.Add(Task.Run(async () =>
        {
            try
            {
                await s.ConnectAsync(IPAddress.Loopback, port).WaitAsync(TimeSpan.FromSeconds(2));
                if (half) s.Send("MPA ID Req"u8);
            }
            catch (Exception e) when (e is SocketException or TimeoutException or ObjectDisposedException)
            {
            }
        }));
    }
    await Task.WhenAll(connects);
    var ccq = client.CreateCompletionQueue(4);
    var qp = cpd.CreateQueuePair(new QueuePairOptions { SendCq = ccq, RecvCq = ccq });
    var clock = Stopwatch.StartNew();
    await IwarpConnector.ConnectAsync(qp, listener.LocalEndPoint, options: new IwarpOptions { SetupTimeout = TimeSpan.FromSeconds(60) });
    times.Add(clock.Elapsed.TotalMilliseconds);
    Console.WriteLine($"round {round}: connected in {clock.Elapsed.TotalMilliseconds:F1} ms with {silent} silent connections");
    qp.Dispose();
    foreach (var s in flood) s.Dispose();
}
times.Sort();
Console.WriteLine($"median {times[times.Count / 2]:F1} ms, max {times[^1]:F1} ms over {rounds} rounds");
stop.Cancel();
await acceptLoop;
