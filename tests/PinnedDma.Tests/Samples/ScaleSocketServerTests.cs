using System.Buffers.Binary;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using Xunit;

namespace PinnedDma.Tests.Samples;

/// <summary>
/// The connection-scale sample's raw-socket servers (samples/ConnectionScale: the raw epoll server, the default
/// baseline, and the runtime's async-Socket server) run as a real child process (<c>ConnectionScale serve socket N</c>)
/// and spoken to over real TCP on 127.0.0.1 by hand: both speak the same protocol (slot on accept, <c>'W'</c> + 4 KiB
/// answered by <c>'A'</c>, <c>'R'</c> answered by the slot's 4 KiB), a write that arrives in pieces is stored whole,
/// a request byte outside the protocol closes that connection only, and <c>drop</c> closes the rest.
/// </summary>
[Trait("Category", "Slow")]
public sealed class ScaleSocketServerTests
{
    private const int Size = 4096;
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(60);

    [Theory]
    [InlineData("epoll")]
    [InlineData("async")]
    public void Serves_the_protocol_and_closes_only_the_connection_that_breaks_it(string server)
    {
        using var child = new ServerChild(server, connections: 2);
        var p = child.Process;
        int port = int.Parse(Values(ReadLine(p, "listening"))["port"], CultureInfo.InvariantCulture);

        using var a = Connect(port);
        int slotA = ReadSlot(a);
        using var b = Connect(port);
        int slotB = ReadSlot(b);
        Assert.Equal(new[] { 0, 1 }, new[] { slotA, slotB }.Order().ToArray());

        // A write in three pieces with pauses between them (each its own segment, Nagle off): the server must
        // keep its place in the 4 KiB across wake-ups and answer once, after the last byte.
        var data = new byte[Size];
        new Random(42).NextBytes(data);
        a.Send("W"u8);
        a.Send(data.AsSpan(0, 1000));
        Thread.Sleep(50);
        a.Send(data.AsSpan(1000, 2000));
        Thread.Sleep(50);
        a.Send(data.AsSpan(3000));
        Assert.Equal((byte)'A', ReceiveExactly(a, 1)[0]);
        a.Send("R"u8);
        Assert.Equal(data, ReceiveExactly(a, Size));

        // A byte outside the protocol: the server closes B (end of stream), and A keeps being served.
        b.Send("X"u8);
        AssertClosed(b);
        var second = new byte[Size];
        new Random(7).NextBytes(second);
        var request = new byte[1 + Size];
        request[0] = (byte)'W';
        second.CopyTo(request, 1);
        a.Send(request);
        Assert.Equal((byte)'A', ReceiveExactly(a, 1)[0]);
        a.Send("R"u8);
        Assert.Equal(second, ReceiveExactly(a, Size));

        Assert.Equal("2", Values(Command(p, "stats", "stats"))["connections"]);
        // B was ended by its own bad request (counted as closed by the peer); drop closes A.
        Assert.Equal("1", Values(Command(p, "drop", "dropped"))["closed_by_peer"]);
        AssertClosed(a);
        Command(p, "quit", "bye");
        Assert.True(p.WaitForExit(Bound), "the server process did not exit after quit");
        Assert.Equal(0, p.ExitCode);
    }

    /// <summary><c>ConnectionScale serve socket N --server S</c> as a child process, killed on dispose if it is still running.</summary>
    private sealed class ServerChild : IDisposable
    {
        public ServerChild(string server, int connections)
        {
            var psi = new ProcessStartInfo("dotnet")
            {
                RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
            };
            psi.ArgumentList.Add(SamplesSmokeTests.SampleDll("ConnectionScale"));
            foreach (var arg in new[] { "serve", "socket", connections.ToString(CultureInfo.InvariantCulture), "--server", server })
                psi.ArgumentList.Add(arg);
            Process = Process.Start(psi)!;
            Process.ErrorDataReceived += (_, _) => { };
            Process.BeginErrorReadLine();
        }

        public Process Process { get; }

        public void Dispose()
        {
            if (!Process.HasExited) Process.Kill(entireProcessTree: true);
            Process.WaitForExit(Bound);
            Process.Dispose();
        }
    }

    private static Socket Connect(int port)
    {
        var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)
        {
            NoDelay = true, ReceiveTimeout = (int)Bound.TotalMilliseconds, SendTimeout = (int)Bound.TotalMilliseconds,
        };
        s.Connect(new IPEndPoint(IPAddress.Loopback, port));
        return s;
    }

    /// <summary>The server closed <paramref name="s"/>: end of stream, or a reset (the runtime's async socket aborts a close with a receive pending).</summary>
    private static void AssertClosed(Socket s)
    {
        try
        {
            Assert.Equal(0, s.Receive(new byte[1]));
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionReset)
        {
        }
    }

    private static int ReadSlot(Socket s) => BinaryPrimitives.ReadInt32LittleEndian(ReceiveExactly(s, 4));

    private static byte[] ReceiveExactly(Socket s, int length)
    {
        var buffer = new byte[length];
        int got = 0;
        while (got < length)
        {
            int n = s.Receive(buffer, got, length - got, SocketFlags.None);
            Assert.True(n > 0, $"the server closed the connection after {got} of {length} bytes");
            got += n;
        }
        return buffer;
    }

    private static string Command(Process p, string command, string reply)
    {
        p.StandardInput.WriteLine(command);
        p.StandardInput.Flush();
        return ReadLine(p, reply);
    }

    private static string ReadLine(Process p, string prefix)
    {
        var read = p.StandardOutput.ReadLineAsync();
        if (!read.Wait(Bound))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail($"the server process did not answer '{prefix}' within {Bound}");
        }
        var line = read.Result;
        Assert.True(line is not null, $"the server process exited before '{prefix}'");
        Assert.StartsWith(prefix, line);
        return line!;
    }

    private static Dictionary<string, string> Values(string line) =>
        line.Split(' ', StringSplitOptions.RemoveEmptyEntries).Where(kv => kv.Contains('=', StringComparison.Ordinal))
            .Select(kv => kv.Split('=', 2)).ToDictionary(kv => kv[0], kv => kv[1]);
}
