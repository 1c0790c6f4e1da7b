using PinnedDma.Verbs;
using Xunit;

namespace PinnedDma.Tests.Architecture;

/// <summary>
/// The library's layers, checked on the compiled assembly (what the code names, not what its text says): Storage and
/// Layout know nothing above them, and Verbs knows no transport by name (it reaches them through its internal
/// transport contract). A file is placed by its path in the source tree (from the PDB); a named type by its namespace.
/// </summary>
public sealed class LayeringTests
{
    private static readonly Lazy<List<TypeUse>> s_uses = new(() => AssemblyReferenceReader.Read(typeof(QueuePair).Assembly.Location));

    public static TheoryData<string, string> Rules => new()
    {
        { "Storage", "PinnedDma.Transports" },
        { "Layout", "PinnedDma.Transports" },
        { "Verbs", "PinnedDma.Transports" },
        { "Storage", "PinnedDma.Verbs" },
        { "Layout", "PinnedDma.Verbs" },
    };

    [Theory]
    [MemberData(nameof(Rules))]
    public void A_layer_names_nothing_above_it(string folder, string forbiddenNamespace)
    {
        var files = FilesUnder(folder);
        Assert.NotEmpty(files); // the folder exists in the PDB: the rule checks something
        var violations = s_uses.Value
            .Where(u => IsUnder(u.SourceFile, folder) && InNamespace(u.NamedType, forbiddenNamespace))
            .Select(u => $"{Path.GetFileName(u.SourceFile)}: {u.Member} names {u.NamedType}")
            .Distinct()
            .Order()
            .ToList();
        Assert.True(violations.Count == 0, $"src/PinnedDma/{folder} names {forbiddenNamespace}:\n" + string.Join("\n", violations));
    }

    /// <summary>The reader sees what it must: a transport's use of Verbs types is found, in IL and in declarations.</summary>
    [Theory]
    [InlineData("Transports/Loopback", "PinnedDma.Verbs.QueuePair")]              // fields, IL
    [InlineData("Transports/Loopback", "PinnedDma.Verbs.Internal.QpTransport")]   // base type
    [InlineData("Transports/Loopback", "PinnedDma.Verbs.Internal.TransportOutcome")] // out parameter of an override
    [InlineData("Transports/Iwarp", "PinnedDma.Verbs.Internal.DmaEngine")]
    [InlineData("Verbs", "PinnedDma.Verbs.Internal.QpTransport")]
    public void The_reader_finds_known_uses(string folder, string namedType)
    {
        Assert.Contains(s_uses.Value, u => IsUnder(u.SourceFile, folder) && u.NamedType == namedType);
    }

    private static List<string> FilesUnder(string folder) =>
        s_uses.Value.Select(u => u.SourceFile).Where(f => IsUnder(f, folder)).Distinct().ToList();

    private static bool IsUnder(string sourceFile, string folder) =>
        sourceFile.Replace('\\', '/').Contains($"/src/PinnedDma/{folder}/", StringComparison.Ordinal);

    private static bool InNamespace(string typeName, string ns) =>
        typeName.StartsWith(ns + ".", StringComparison.Ordinal);
}
