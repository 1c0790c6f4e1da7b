using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;

/// <summary>The result rows, in perftest's columns.</summary>
static class Report
{
    public static void Header(bool lat)
    {
        Console.WriteLine(new string('-', 95));
        Console.WriteLine(lat
            ? " #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]    t_avg[usec]    t_stdev[usec]   99% percentile[usec]   99.9% percentile[usec]"
            : " #bytes     #iterations    BW peak[MB/sec]    BW average[MB/sec]   MsgRate[Mpps]");
    }

    public static void Footer() => Console.WriteLine(new string('-', 95));

    /// <summary>
    /// One latency row from every iteration's half round trip (microseconds): t_typical is the median, as perftest's;
    /// then, when the 1 us histogram has two peaks, a line with both (see <see cref="Modes"/>).
    /// </summary>
    public static void Latency(int size, int iters, double[] us)
    {
        Array.Sort(us);
        double avg = us.Average();
        double sd = Math.Sqrt(us.Select(x => (x - avg) * (x - avg)).Average());
        Console.WriteLine($" {size,-6} {iters,-11} {us[0],-14:F2} {us[^1],-12:F2} {us[us.Length / 2],-18:F2} {avg,-14:F2} {sd,-15:F2} {us[(int)(us.Length * 0.99)],-22:F2} {us[(int)(us.Length * 0.999)],-22:F2}");
        if (Modes(us) is { } m)
            Console.WriteLine($"   modes: {m.First:F1} us ({m.FirstShare:P0} of iterations), {m.Second:F1} us ({m.SecondShare:P0}); bimodal 1 us histogram");
    }

    public static void Bandwidth(int size, int iters, double peak, double avg) =>
        Console.WriteLine($" {size,-10} {iters,-14} {peak,-18:F2} {avg,-20:F2} {avg * 1e6 / size / 1e6,-12:F6}");

    /// <summary>
    /// The two highest peaks of the 1 us histogram of <paramref name="sorted"/> (ascending, microseconds) when it has
    /// two: bins up to the 99.9th percentile; a second peak is a local maximum at least 2 us from the highest bin,
    /// holding at least 2% of the iterations (and 5 of them), with a valley between the two below half its height.
    /// The shares are of the iterations on each side of that valley. Null when the histogram has one peak.
    /// </summary>
    public static (double First, double FirstShare, double Second, double SecondShare)? Modes(double[] sorted)
    {
        if (sorted.Length < 50) return null;
        int bins = (int)Math.Ceiling(sorted[(int)(sorted.Length * 0.999)]) + 2;
        var h = new int[bins];
        foreach (double x in sorted) if (x < bins) h[(int)x]++;
        int first = 0;
        for (int i = 1; i < bins; i++) if (h[i] > h[first]) first = i;
        int minCount = Math.Max(5, sorted.Length / 50);
        int second = -1, valley = -1;
        for (int i = 0; i < bins; i++)
        {
            if (Math.Abs(i - first) < 2 || h[i] < minCount) continue;
            if ((i > 0 && h[i - 1] > h[i]) || (i + 1 < bins && h[i + 1] > h[i])) continue;
            int lo = Math.Min(i, first) + 1, hi = Math.Max(i, first);
            int v = lo;
            for (int j = lo; j < hi; j++) if (h[j] < h[v]) v = j;
            if (h[v] * 2 >= h[i]) continue;
            if (second < 0 || h[i] > h[second]) (second, valley) = (i, v);
        }
        if (second < 0) return null;
        int below = 0;
        foreach (double x in sorted) if (x < valley + 0.5) below++;
        double belowShare = below / (double)sorted.Length, aboveShare = 1 - belowShare;
        return first < second
            ? (first + 0.5, belowShare, second + 0.5, aboveShare)
            : (first + 0.5, aboveShare, second + 0.5, belowShare);
    }
}

/// <summary>
/// The raw-socket baselines measured in the same run as the RDMA tests: a TCP connection over 127.0.0.1 with Nagle
/// off and blocking calls on both ends (no runtime async machinery), each end on its own thread.
/// </summary>
static unsafe class SocketBaseline
{
    private const int Region = 8 << 20;
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(120);

    /// <summary>
    /// The ping-pong of <paramref name="size"/> bytes each way, <paramref name="iters"/> times: the client sends, the
    /// echo thread receives all of it and sends it back, the client receives all of it; half of each round trip in
    /// microseconds (ib_write_lat's figure). Every echo is checked to carry the iteration's tag.
    /// </summary>
    public static double[] PingPong(int size, int iters)
    {
        var (client, server) = Pair();
        using var c = client;
        using var s = server;
        var echo = new Thread(() =>
        {
            var b = new byte[size];
            try
            {
                while (ReceiveAll(s, b)) SendAll(s, b);
            }
            catch (SocketException)
            {
            }
            catch (ObjectDisposedException)
            {
            }
        }) { IsBackground = true, Name = "socket-echo" };
        echo.Start();
        var result = new double[iters];
        var ping = new byte[size];
        var pong = new byte[size];
        long deadline = Environment.TickCount64 + (long)Bound.TotalMilliseconds;
        for (int i = 0; i < iters; i++)
        {
            ping[size - 1] = (byte)(i + 1);
            long t0 = Stopwatch.GetTimestamp();
            SendAll(c, ping);
            if (!ReceiveAll(c, pong)) throw new IOException("the echo side closed");
            result[i] = Stopwatch.GetElapsedTime(t0).TotalMicroseconds / 2;
            if (pong[size - 1] != (byte)(i + 1)) throw new InvalidDataException($"echo {i} carried the wrong tag");
            if (Environment.TickCount64 > deadline) throw new TimeoutException($"{i} of {iters} round trips in {Bound}");
        }
        c.Shutdown(SocketShutdown.Both);
        echo.Join(TimeSpan.FromSeconds(10));
        return result;
    }

    /// <summary>
    /// <paramref name="iters"/> messages of <paramref name="size"/> bytes, one blocking send each, into a receiver
    /// thread that puts message k in slot k of an 8 MiB native region (the work an RDMA WRITE does: the bytes end up at
    /// their place); from the first send until the receiver holds the last byte. Peak is the best 20 ms window.
    /// </summary>
    public static (double PeakMBs, double AvgMBs) Stream(int size, int iters)
    {
        var (client, server) = Pair();
        using var c = client;
        using var s = server;
        byte* src = (byte*)NativeMemory.AlignedAlloc(Region, 4096);
        byte* dst = (byte*)NativeMemory.AlignedAlloc(Region, 4096);
        try
        {
            new Span<byte>(src, Region).Fill(0x5A);
            new Span<byte>(dst, Region).Clear();
            long slots = Region / size;
            long received = 0;
            Exception? failure = null;
            var receiver = new Thread(() =>
            {
                try
                {
                    for (long i = 0; i < iters; i++)
                    {
                        if (!ReceiveAll(s, new Span<byte>(dst + (i % slots) * size, size))) throw new IOException($"the sender closed after {i} messages");
                        Volatile.Write(ref received, i + 1);
                    }
                }
                catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
                {
                    failure = e;
                }
            }) { IsBackground = true, Name = "socket-receiver" };
            receiver.Start();
            var sw = Stopwatch.StartNew();
            double peak = 0;
            long windowStart = 0, windowDone = 0;
            for (long i = 0; i < iters; i++)
            {
                SendAll(c, new ReadOnlySpan<byte>(src + (i % slots) * size, size));
                Window(sw, ref peak, ref windowStart, ref windowDone, Volatile.Read(ref received), size);
            }
            long deadline = Environment.TickCount64 + (long)Bound.TotalMilliseconds;
            var spin = new SpinWait();
            while (Volatile.Read(ref received) < iters && receiver.IsAlive)
            {
                if (Environment.TickCount64 > deadline) throw new TimeoutException($"the receiver took {Volatile.Read(ref received)} of {iters} messages in {Bound}");
                spin.SpinOnce(sleep1Threshold: -1);
                Window(sw, ref peak, ref windowStart, ref windowDone, Volatile.Read(ref received), size);
            }
            double secs = sw.Elapsed.TotalSeconds;
            receiver.Join(TimeSpan.FromSeconds(10));
            if (failure is not null || Volatile.Read(ref received) < iters) throw new IOException($"the socket stream failed after {Volatile.Read(ref received)} of {iters} messages", failure);
            if (new Span<byte>(dst, (int)Math.Min((long)iters * size, Region)).ContainsAnyExcept((byte)0x5A))
                throw new InvalidDataException("the receiver's region does not hold the messages sent");
            double avg = (double)iters * size / secs / 1e6;
            return (Math.Max(peak, avg), avg);
        }
        finally
        {
            NativeMemory.AlignedFree(src);
            NativeMemory.AlignedFree(dst);
        }
    }

    private static void Window(Stopwatch sw, ref double peak, ref long windowStart, ref long windowDone, long done, int size)
    {
        long now = sw.ElapsedTicks;
        if (now - windowStart > Stopwatch.Frequency / 50 && done > windowDone)
        {
            peak = Math.Max(peak, (done - windowDone) * (double)size / ((now - windowStart) / (double)Stopwatch.Frequency) / 1e6);
            windowStart = now;
            windowDone = done;
        }
    }

    /// <summary>A connected pair over 127.0.0.1, Nagle off, blocking.</summary>
    private static (Socket Client, Socket Server) Pair()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(1);
        var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        client.Connect(listener.LocalEndPoint!);
        var server = listener.Accept();
        server.NoDelay = true;
        return (client, server);
    }

    private static bool ReceiveAll(Socket s, Span<byte> into)
    {
        while (!into.IsEmpty)
        {
            int n = s.Receive(into, SocketFlags.None);
            if (n == 0) return false;
            into = into[n..];
        }
        return true;
    }

    private static void SendAll(Socket s, ReadOnlySpan<byte> data)
    {
        while (!data.IsEmpty) data = data[s.Send(data, SocketFlags.None)..];
    }
}
