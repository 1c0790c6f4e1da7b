using BenchmarkDotNet.Running;

namespace PinnedDma.Benchmarks;

/// <summary>
/// Runs the benchmarks: <c>dotnet run -c Release --project benchmarks/PinnedDma.Benchmarks -- --filter '*'</c>;
/// <c>-- scale [--counts 1,64,1000] [--ops K]</c> runs the connection-scale report instead (see Scale/ConnectionScaleReport.cs).
/// </summary>
public static class Program
{
    public static int Main(string[] args)
    {
        if (args.Length > 0 && args[0] == "scale") return Scale.ConnectionScaleReport.Run(args[1..]);
        BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
        return 0;
    }
}
