using System.Globalization;
using System.Text;
using PinnedDma;
using PinnedDma.CrashChild;
using PinnedDma.Storage;

// The crash child: opens (or creates) a volume and runs generated operations on it until it is killed.
// args: <volume path> <seed> <first op index> [max ops] [durable|fast]
// ("fast" commits without msync/fsync: the same journal writes, for runs that crash the process, not the machine)
// stdout, one flushed line each: "ready <hash of all files>" once the volume is open, "begin <i>" before op i,
// "end <i> <hash of the file op i changed>" after it, "commit <i>" after a commit that followed op i,
// "done" after the last op, "error <message>" when an operation throws.
// "hold <volume>": opens the volume, prints "held", keeps it open until stdin closes, then disposes it and prints
// "released"; when the open fails it prints "refused <PinnedDmaError>" (the exclusive-open tests run this).
if (args.Length == 2 && args[0] == "hold")
{
    var says = new StreamWriter(Console.OpenStandardOutput(), new UTF8Encoding(false)) { AutoFlush = true, NewLine = "\n" };
    Volume held;
    try
    {
        held = Volume.Open(args[1]);
    }
    catch (PinnedDmaException e)
    {
        says.WriteLine($"refused {e.Error}");
        return 3;
    }
    says.WriteLine("held");
    while (Console.In.ReadLine() is not null) { }
    held.Dispose();
    says.WriteLine("released");
    return 0;
}
if (args.Length < 3)
{
    Console.Error.WriteLine("usage: PinnedDma.CrashChild <volume> <seed> <first op index> [max ops] [durable|fast]");
    return 2;
}
string path = args[0];
int seed = int.Parse(args[1], CultureInfo.InvariantCulture);
long first = long.Parse(args[2], CultureInfo.InvariantCulture);
long maxOps = args.Length > 3 ? long.Parse(args[3], CultureInfo.InvariantCulture) : 1_000_000;
bool durable = args.Length <= 4 || args[4] != "fast";
var output = new StreamWriter(Console.OpenStandardOutput(), new UTF8Encoding(false)) { AutoFlush = true, NewLine = "\n" };
long i = first;
try
{
    // Never disposed: the process ends by SIGKILL, or exits without the clean-close checkpoint.
    var volume = File.Exists(path)
        ? Volume.Open(path, new VolumeOptions { DurableCommits = durable })
        : Volume.Create(path, CrashWorkload.Options);
    var lengths = CrashWorkload.Lengths(volume);
    ulong all = CrashWorkload.HashAll(volume.FileNames.Select(n => (n, CrashWorkload.ReadAll(volume.OpenFile(n)))));
    output.WriteLine($"ready {all}");
    var rng = new Random(seed);
    for (; i < first + maxOps; i++)
    {
        var op = CrashWorkload.Next(rng, lengths);
        output.WriteLine($"begin {i}");
        CrashWorkload.Apply(volume, op);
        ulong h = volume.FileExists(op.File) ? CrashWorkload.Hash(CrashWorkload.ReadAll(volume.OpenFile(op.File))) : 0;
        output.WriteLine($"end {i} {h}");
        if (op.Commit)
        {
            volume.Commit();
            output.WriteLine($"commit {i}");
        }
        lengths = CrashWorkload.Lengths(volume);
    }
    output.WriteLine("done");
    return 0;
}
catch (Exception e)
{
    output.WriteLine($"error op {i}: {e.GetType().Name}: {e.Message.ReplaceLineEndings(" ")}");
    Console.Error.WriteLine(e);
    return 1;
}
