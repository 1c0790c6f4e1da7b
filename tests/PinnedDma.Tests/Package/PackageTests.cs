using System.Diagnostics;
using System.IO.Compression;
using System.Text;
using Xunit;

namespace PinnedDma.Tests.Package;

/// <summary>
/// Two clones of this repository at different paths (git clones of HEAD with the working tree's tracked and untracked,
/// not ignored, files laid over them, and no git remote: the repository has no public one yet), each packed with
/// <c>dotnet pack -c Release</c> exactly as the README says. Built once for the tests of <see cref="PackageCollection"/>.
/// </summary>
public sealed class TwoClonesFixture : IDisposable
{
    private static readonly TimeSpan Bound = TimeSpan.FromMinutes(10);

    /// <summary>The repository root (holds PinnedDma.sln).</summary>
    public string Root { get; }

    /// <summary>Scratch directory holding both clones, the consumer and a throwaway NuGet packages folder.</summary>
    public string Scratch { get; }

    /// <summary>The two clones: the second one deeper and under another name, so every path differs.</summary>
    public string[] Clones { get; }

    /// <summary>The output of each clone's <c>dotnet pack</c>.</summary>
    public string[] PackOutputs { get; }

    /// <summary>The package version both packs produced (the file name of the .nupkg).</summary>
    public string Version { get; }

    /// <summary>The HEAD commit the clones are at.</summary>
    public string Commit { get; }

    /// <summary>Clones and packs (each pack bounded by ten minutes).</summary>
    public TwoClonesFixture()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "PinnedDma.sln"))) dir = dir.Parent;
        Root = dir?.FullName ?? throw new InvalidOperationException("no PinnedDma.sln above the test assembly");
        Scratch = Directory.CreateTempSubdirectory("pinneddma-package-").FullName;
        Clones = [Path.Combine(Scratch, "a"), Path.Combine(Scratch, "second", "clone-b")];
        Commit = Tool.Run("git", Root, Bound, "rev-parse", "HEAD").Output.Trim();
        PackOutputs = new string[Clones.Length];
        for (int i = 0; i < Clones.Length; i++)
        {
            Tool.Check(Tool.Run("git", Scratch, Bound, "clone", "--quiet", "--no-hardlinks", Root, Clones[i]), "git clone");
            Tool.Check(Tool.Run("git", Clones[i], Bound, "remote", "remove", "origin"), "git remote remove");
            OverlayWorkingTree(Root, Clones[i]);
            var pack = Tool.Run("dotnet", Clones[i], Bound, "pack", "src/PinnedDma/PinnedDma.csproj", "-c", "Release", "-o", "feed",
                "-nodeReuse:false", "-p:UseSharedCompilation=false");
            Tool.Check(pack, "dotnet pack");
            PackOutputs[i] = pack.Output;
        }
        var nupkg = Directory.GetFiles(Path.Combine(Clones[0], "feed"), "PinnedDma.*.nupkg").Single(f => !f.EndsWith(".symbols.nupkg", StringComparison.Ordinal));
        Version = Path.GetFileNameWithoutExtension(nupkg)["PinnedDma.".Length..];
    }

    /// <summary>The file at a path relative to a clone.</summary>
    public byte[] Bytes(int clone, string relative) => File.ReadAllBytes(Path.Combine(Clones[clone], relative));

    // The clone has HEAD; lay the working tree's files over it so uncommitted work is what gets tested.
    private static void OverlayWorkingTree(string root, string clone)
    {
        var list = Tool.Run("git", root, Bound, "ls-files", "-z", "--cached", "--others", "--exclude-standard");
        Tool.Check(list, "git ls-files");
        foreach (var relative in list.Output.Split('\0', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            string source = Path.Combine(root, relative);
            if (!File.Exists(source)) continue; // deleted in the working tree
            string target = Path.Combine(clone, relative);
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            File.Copy(source, target, overwrite: true);
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        try { Directory.Delete(Scratch, recursive: true); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }
}

/// <summary>The package tests share one pair of packed clones.</summary>
[CollectionDefinition(Name)]
public sealed class PackageCollection : ICollectionFixture<TwoClonesFixture>
{
    /// <summary>The collection name.</summary>
    public const string Name = "Package";
}

/// <summary>
/// The package as a user gets it: reproducible across checkouts, with symbols and a version that moves per commit,
/// and usable from a project outside the solution through the README's route (a local feed and a nuget.config with
/// package source mapping).
/// </summary>
[Collection(PackageCollection.Name)]
[Trait("Category", "Slow")]
public sealed class PackageTests(TwoClonesFixture clones)
{
    private static readonly TimeSpan Bound = TimeSpan.FromMinutes(10);

    [Fact]
    public void Two_clones_at_different_paths_build_byte_identical_dll_pdb_and_packages()
    {
        foreach (var output in clones.PackOutputs)
            Assert.DoesNotMatch(@"(?i)\bwarning\b", output); // a clone without a remote packs without warnings

        string dll = Path.Combine("src", "PinnedDma", "bin", "Release", "net10.0", "PinnedDma.dll");
        string pdb = Path.ChangeExtension(dll, ".pdb");
        byte[] dllA = clones.Bytes(0, dll);
        Assert.True(dllA.AsSpan().SequenceEqual(clones.Bytes(1, dll)), "PinnedDma.dll differs between the two clones");
        Assert.True(clones.Bytes(0, pdb).AsSpan().SequenceEqual(clones.Bytes(1, pdb)), "PinnedDma.pdb differs between the two clones");
        foreach (var clone in clones.Clones)
        {
            // No absolute path of either checkout (the obj/ path of the PDB was one) is left in the dll.
            Assert.Equal(-1, dllA.AsSpan().IndexOf(Encoding.UTF8.GetBytes(clone)));
            Assert.Equal(-1, dllA.AsSpan().IndexOf(Encoding.Unicode.GetBytes(clone)));
        }

        foreach (var ext in new[] { "nupkg", "snupkg" })
        {
            string package = Path.Combine("feed", $"PinnedDma.{clones.Version}.{ext}");
            Assert.True(clones.Bytes(0, package).AsSpan().SequenceEqual(clones.Bytes(1, package)), $"{package} differs between the two clones");
        }
    }

    [Fact]
    public void Package_holds_the_library_docs_readme_and_symbols_with_embedded_sources()
    {
        // Version: the prefix plus alpha.<commit height> of the clone.
        string height = Tool.Run("git", clones.Clones[0], Bound, "rev-list", "--count", "HEAD").Output.Trim();
        Assert.Equal($"0.2.0-alpha.{height}", clones.Version);

        string feed = Path.Combine(clones.Clones[0], "feed");
        using (var nupkg = ZipFile.OpenRead(Path.Combine(feed, $"PinnedDma.{clones.Version}.nupkg")))
        {
            var names = nupkg.Entries.Select(e => e.FullName).ToHashSet();
            Assert.Contains("lib/net10.0/PinnedDma.dll", names);
            Assert.Contains("lib/net10.0/PinnedDma.xml", names);
            Assert.Contains("README.md", names);
            string nuspec = Read(nupkg, "PinnedDma.nuspec");
            Assert.Contains("<license type=\"expression\">MIT</license>", nuspec);
            Assert.Contains("<readme>README.md</readme>", nuspec);
            Assert.Contains($"commit=\"{clones.Commit}\"", nuspec);
            Assert.Contains("id=\"Microsoft.Extensions.ObjectPool\"", nuspec);

            // The package README works on a package page: no relative links or images into the repository.
            string readme = Read(nupkg, "README.md");
            foreach (System.Text.RegularExpressions.Match link in System.Text.RegularExpressions.Regex.Matches(readme, @"\]\(([^)\s]+)"))
                Assert.StartsWith("https://", link.Groups[1].Value);
            Assert.DoesNotContain("<img", readme, StringComparison.OrdinalIgnoreCase);
        }

        using var snupkg = ZipFile.OpenRead(Path.Combine(feed, $"PinnedDma.{clones.Version}.snupkg"));
        var pdbEntry = snupkg.GetEntry("lib/net10.0/PinnedDma.pdb");
        Assert.NotNull(pdbEntry);
        using var pdbStream = new MemoryStream();
        using (var s = pdbEntry!.Open()) s.CopyTo(pdbStream);
        using var provider = System.Reflection.Metadata.MetadataReaderProvider.FromPortablePdbStream(new MemoryStream(pdbStream.ToArray()));
        var reader = provider.GetMetadataReader();
        var embeddedSource = new Guid("0E8A571B-6926-466E-B4AD-8AB04611F5FE");
        int documents = 0, embedded = 0;
        foreach (var handle in reader.Documents)
        {
            var doc = reader.GetDocument(handle);
            string name = reader.GetString(doc.Name);
            if (!name.EndsWith(".cs", StringComparison.Ordinal) || name.Contains("/obj/", StringComparison.Ordinal)) continue;
            documents++;
            Assert.StartsWith("/_/src/PinnedDma/", name); // deterministic source paths
            foreach (var cdi in reader.GetCustomDebugInformation(handle))
                if (reader.GetGuid(reader.GetCustomDebugInformation(cdi).Kind) == embeddedSource) embedded++;
        }
        Assert.True(documents > 10, $"only {documents} source documents in the PDB");
        Assert.Equal(documents, embedded);
    }

    [Fact]
    public void Consumer_outside_the_solution_restores_the_packed_package_through_source_mapping_and_runs()
    {
        // The consumer project as committed (its csproj, Program.cs and nuget.config), in a directory of its own.
        string consumer = Path.Combine(clones.Scratch, "consumer");
        string committed = Path.Combine(clones.Root, "tests", "PackageConsumer");
        Directory.CreateDirectory(consumer);
        foreach (var file in Directory.GetFiles(committed))
            File.Copy(file, Path.Combine(consumer, Path.GetFileName(file)), overwrite: true);
        Assert.True(File.Exists(Path.Combine(consumer, "nuget.config")));
        Assert.DoesNotContain(File.ReadLines(Path.Combine(clones.Root, "PinnedDma.sln")), l => l.Contains("PackageConsumer", StringComparison.Ordinal));

        // The README's route: the package in ./feed, then `dotnet add package PinnedDma` (no -s: the nuget.config maps
        // PinnedDma to the feed and its dependencies to nuget.org), with a NuGet packages folder that starts empty.
        Directory.CreateDirectory(Path.Combine(consumer, "feed"));
        foreach (var file in Directory.GetFiles(Path.Combine(clones.Clones[0], "feed")))
            File.Copy(file, Path.Combine(consumer, "feed", Path.GetFileName(file)));
        string packages = Path.Combine(clones.Scratch, "nuget-packages");
        var env = new Dictionary<string, string> { ["NUGET_PACKAGES"] = packages };

        var add = Tool.Run("dotnet", consumer, Bound, env, "add", "package", "PinnedDma", "--version", clones.Version);
        Tool.Check(add, "dotnet add package");
        Assert.DoesNotContain("incompatible", add.Output, StringComparison.OrdinalIgnoreCase);
        Assert.True(File.Exists(Path.Combine(packages, "pinneddma", clones.Version, $"pinneddma.{clones.Version}.nupkg")),
            "the package was not restored into the throwaway packages folder");
        Assert.True(Directory.Exists(Path.Combine(packages, "microsoft.extensions.objectpool")), "the dependency did not come from nuget.org");

        var build = Tool.Run("dotnet", consumer, Bound, env, "build", "-c", "Release", "-nodeReuse:false", "-p:UseSharedCompilation=false");
        Tool.Check(build, "dotnet build");
        // The built consumer runs against the packed dll (same bytes as the clone's build), not a project reference.
        byte[] packed = File.ReadAllBytes(Path.Combine(packages, "pinneddma", clones.Version, "lib", "net10.0", "PinnedDma.dll"));
        byte[] used = File.ReadAllBytes(Path.Combine(consumer, "bin", "Release", "net10.0", "PinnedDma.dll"));
        Assert.True(packed.AsSpan().SequenceEqual(used));

        var run = Tool.Run("dotnet", consumer, Bound, env, Path.Combine("bin", "Release", "net10.0", "PackageConsumer.dll"));
        Tool.Check(run, "the consumer");
        string o = run.Output;
        Assert.Contains($"package PinnedDma {clones.Version}+{clones.Commit}", o);
        Assert.Contains("loopback RDMA WRITE Success: file[0..] = \"written over loopback\"", o);
        Assert.Contains("iwarp RDMA WRITE Success: file[8192..] = \"written over iWARP\"", o);
        Assert.Contains("lease   broken by truncate; region valid False; file 4096 B; memlock 0 B", o);
        Assert.Contains("consumer ok", o);
    }

    [Fact]
    public void A_copy_without_git_packs_the_documented_fallback_version_with_mapped_paths_and_no_warnings()
    {
        // A source archive: the repository's files without .git (so no commit height and no git source root).
        string copy = Path.Combine(clones.Scratch, "no-git", "PinnedDma-src");
        var list = Tool.Run("git", clones.Clones[0], Bound, "ls-files", "-z");
        Tool.Check(list, "git ls-files");
        foreach (var relative in list.Output.Split('\0', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            string target = Path.Combine(copy, relative);
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            File.Copy(Path.Combine(clones.Clones[0], relative), target);
        }
        Assert.False(Directory.Exists(Path.Combine(copy, ".git")));

        var pack = Tool.Run("dotnet", copy, Bound, new Dictionary<string, string> { ["GIT_CEILING_DIRECTORIES"] = Path.GetDirectoryName(copy)! },
            "pack", "src/PinnedDma/PinnedDma.csproj", "-c", "Release", "-o", "feed", "-nodeReuse:false", "-p:UseSharedCompilation=false");
        Tool.Check(pack, "dotnet pack without git");
        Assert.DoesNotMatch(@"(?i)\bwarning\b", pack.Output);
        Assert.True(File.Exists(Path.Combine(copy, "feed", "PinnedDma.0.2.0-alpha.0.nogit.nupkg")), pack.Output);
        byte[] dll = File.ReadAllBytes(Path.Combine(copy, "src", "PinnedDma", "bin", "Release", "net10.0", "PinnedDma.dll"));
        Assert.Equal(-1, dll.AsSpan().IndexOf(Encoding.UTF8.GetBytes(copy)));
    }

    private static string Read(ZipArchive zip, string name)
    {
        using var reader = new StreamReader(zip.GetEntry(name)!.Open());
        return reader.ReadToEnd();
    }
}

/// <summary>Runs a tool as a child process, bounded, with the test host's MSBuild variables left out.</summary>
internal static class Tool
{
    public readonly record struct Result(int ExitCode, string Output, string Command);

    public static Result Run(string file, string workingDirectory, TimeSpan bound, params string[] args) =>
        Run(file, workingDirectory, bound, new Dictionary<string, string>(), args);

    public static Result Run(string file, string workingDirectory, TimeSpan bound, IReadOnlyDictionary<string, string> env, params string[] args)
    {
        var psi = new ProcessStartInfo(file)
        {
            WorkingDirectory = workingDirectory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in args) psi.ArgumentList.Add(a);
        // The test host runs under `dotnet test`: its MSBuild settings must not leak into a separate build.
        foreach (var key in psi.Environment.Keys.ToList())
            if (key.StartsWith("MSBuild", StringComparison.OrdinalIgnoreCase) || key.StartsWith("VSTEST", StringComparison.OrdinalIgnoreCase))
                psi.Environment.Remove(key);
        psi.Environment["MSBUILDDISABLENODEREUSE"] = "1";
        psi.Environment["DOTNET_CLI_USE_MSBUILD_SERVER"] = "0";
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        psi.Environment["DOTNET_NOLOGO"] = "1";
        foreach (var (k, v) in env) psi.Environment[k] = v;

        string command = $"{file} {string.Join(' ', args)} (in {workingDirectory})";
        using var p = Process.Start(psi)!;
        var output = new StringBuilder();
        var gate = new object();
        p.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (gate) output.AppendLine(e.Data); };
        p.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (gate) output.AppendLine(e.Data); };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        if (!p.WaitForExit(bound))
        {
            p.Kill(entireProcessTree: true);
            p.WaitForExit(TimeSpan.FromSeconds(30));
            lock (gate) throw new TimeoutException($"{command} did not finish within {bound}:\n{output}");
        }
        p.WaitForExit(); // the process has exited: this returns once its output is drained
        lock (gate) return new Result(p.ExitCode, output.ToString(), command);
    }

    public static void Check(Result r, string what) =>
        Assert.True(r.ExitCode == 0, $"{what} failed (exit {r.ExitCode}): {r.Command}\n{r.Output}");
}
