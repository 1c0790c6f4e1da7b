// Connection scale: N connections at once, each doing K x (4 KiB RDMA WRITE + 4 KiB RDMA READ back) against one
// server over iWARP, or the same exchanges over raw TCP sockets; threads and resident set of each side.
//
//   dotnet run -c Release --project samples/ConnectionScale -- run [--transport iwarp|socket] [--connections N] [--ops K]
//       [--server epoll|async] [--io-threads T]
//   dotnet run -c Release --project samples/ConnectionScale -- table [--counts 1,64,1000] [--ops K] [--servers epoll,async] [--io-threads T]
//   (internal) ConnectionScale serve iwarp|socket N [--server epoll|async] [--io-threads T]   the server process the two commands above start
//
// The raw-socket server (--transport socket) is by default a raw epoll server of the shape the iWARP transport is
// meant to take: T I/O threads (default: one per processor), each with its own epoll instance over its share of
// non-blocking sockets (--server epoll); --server async is the runtime's async Socket, one receive loop per connection.
// The client side is the same for both.
//
// Exit code 0 when every connection completed every operation with correct data.
using System.Globalization;
using PinnedDma.Samples.ConnectionScale;

string command = args.Length > 0 ? args[0] : "run";
string Option(string name, string fallback)
{
    int i = Array.IndexOf(args, name);
    return i >= 0 && i + 1 < args.Length ? args[i + 1] : fallback;
}
int IntOption(string name, int fallback) => int.Parse(Option(name, fallback.ToString(CultureInfo.InvariantCulture)), CultureInfo.InvariantCulture);

try
{
    return Dispatch(command);
}
catch (Exception e) when (e is ArgumentException or FormatException)
{
    Console.Error.WriteLine($"ConnectionScale: {e.Message}");
    return 2;
}

int Dispatch(string command)
{
    switch (command)
    {
        case "serve":
        {
            ProcessStats.RaiseFileLimit();
            using var server = ScaleServer.Create(args[1], int.Parse(args[2], CultureInfo.InvariantCulture),
                Option("--server", ScaleOptions.EpollServer), IntOption("--io-threads", 0));
            server.Start();
            server.RunCommands(Console.In, Console.Out);
            return 0;
        }
        case "run":
        {
            var options = new ScaleOptions
            {
                Transport = Option("--transport", "iwarp"),
                Connections = IntOption("--connections", 64),
                Ops = IntOption("--ops", 100),
                SocketServer = Option("--server", ScaleOptions.EpollServer),
                IoThreads = IntOption("--io-threads", 0),
                Timeout = TimeSpan.FromSeconds(IntOption("--timeout", 180)),
            };
            var r = ScaleDriver.Run(options);
            Console.WriteLine(r.ToLine());
            ScaleDriver.PrintTable([r], Console.Out);
            return r.Completed == options.Connections && r.ServerVerified == options.Connections ? 0 : 1;
        }
        case "table":
        {
            var counts = Option("--counts", "1,64,1000").Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToArray();
            int ops = IntOption("--ops", 0);
            // Default: about 64 MiB each way per run (1,000 connections: 16 operations each, at least 16).
            var servers = Option("--servers", ScaleOptions.EpollServer).Split(',');
            var results = ScaleDriver.RunTable(counts, n => ops > 0 ? ops : Math.Max(16, 16384 / n), Console.Out, servers, IntOption("--io-threads", 0));
            return results.All(r => r.Completed == r.Options.Connections && r.ServerVerified == r.Options.Connections) ? 0 : 1;
        }
        default:
            Console.Error.WriteLine("usage: ConnectionScale run|table [options] (see the header of Program.cs)");
            return 2;
    }
}
