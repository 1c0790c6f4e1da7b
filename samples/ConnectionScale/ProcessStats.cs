using System.Globalization;
using System.Runtime.InteropServices;

namespace PinnedDma.Samples.ConnectionScale;

/// <summary>The process's thread count and resident set, read from /proc/self/status.</summary>
/// <param name="Threads">The <c>Threads:</c> line: every thread of the process, runtime and native.</param>
/// <param name="RssKiB">The <c>VmRSS:</c> line in KiB.</param>
/// <param name="PoolThreads">Of <paramref name="Threads"/>, the runtime thread pool's workers (<see cref="ThreadPool.ThreadCount"/>):
/// the pool grows under load and retires idle workers on its own, so a leak check counts the threads outside it.</param>
public readonly record struct ProcessStats(int Threads, long RssKiB, int PoolThreads = 0)
{
    /// <summary>Threads outside the runtime's thread pool: the ones a transport owns (and could leak).</summary>
    public int DedicatedThreads => Threads - PoolThreads;

    /// <summary>Reads the current figures.</summary>
    public static ProcessStats Read()
    {
        int threads = 0;
        long rss = 0;
        foreach (var line in File.ReadLines("/proc/self/status"))
        {
            if (line.StartsWith("Threads:", StringComparison.Ordinal)) threads = int.Parse(line.AsSpan(8).Trim(), CultureInfo.InvariantCulture);
            else if (line.StartsWith("VmRSS:", StringComparison.Ordinal)) rss = long.Parse(line.AsSpan(6).Trim().TrimEnd("kB").Trim(), CultureInfo.InvariantCulture);
        }
        return new ProcessStats(threads, rss, ThreadPool.ThreadCount);
    }

    /// <summary>
    /// Raises the soft RLIMIT_NOFILE to the hard limit (1,000 connections need 1,000 descriptors in each process);
    /// returns the soft limit in force afterwards.
    /// </summary>
    public static ulong RaiseFileLimit()
    {
        const int RlimitNofile = 7;
        var limit = default(RLimit);
        if (getrlimit(RlimitNofile, ref limit) != 0) return 0;
        if (limit.Cur < limit.Max)
        {
            var raised = new RLimit { Cur = limit.Max, Max = limit.Max };
            if (setrlimit(RlimitNofile, ref raised) == 0) return raised.Cur;
        }
        return limit.Cur;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct RLimit
    {
        public ulong Cur;
        public ulong Max;
    }

    [DllImport("libc", SetLastError = true)]
    private static extern int getrlimit(int resource, ref RLimit limit);

    [DllImport("libc", SetLastError = true)]
    private static extern int setrlimit(int resource, ref RLimit limit);
}

/// <summary>Samples <see cref="ProcessStats"/> every 50 ms and keeps the peaks (the figures "under load").</summary>
public sealed class PeakSampler : IDisposable
{
    private readonly Timer _timer;
    private int _peakThreads;
    private long _peakRss;

    /// <summary>Starts sampling.</summary>
    public PeakSampler()
    {
        Sample();
        _timer = new Timer(_ => Sample(), null, 50, 50);
    }

    /// <summary>The highest thread count and resident set seen since the start or the last <see cref="Reset"/>.</summary>
    public ProcessStats Peak
    {
        get
        {
            Sample();
            return new ProcessStats(Volatile.Read(ref _peakThreads), Interlocked.Read(ref _peakRss));
        }
    }

    /// <summary>Forgets the peaks: the next ones start from now.</summary>
    public void Reset()
    {
        Volatile.Write(ref _peakThreads, 0);
        Interlocked.Exchange(ref _peakRss, 0);
        Sample();
    }

    private void Sample()
    {
        var s = ProcessStats.Read();
        int t;
        while ((t = Volatile.Read(ref _peakThreads)) < s.Threads && Interlocked.CompareExchange(ref _peakThreads, s.Threads, t) != t)
        {
        }
        long r;
        while ((r = Interlocked.Read(ref _peakRss)) < s.RssKiB && Interlocked.CompareExchange(ref _peakRss, s.RssKiB, r) != r)
        {
        }
    }

    /// <summary>Stops sampling.</summary>
    public void Dispose() => _timer.Dispose();
}
