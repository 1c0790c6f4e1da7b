using System.Diagnostics;
using System.Runtime.InteropServices;
using PinnedDma.Interop;
using Xunit;

namespace PinnedDma.Tests.Storage;

/// <summary>The lock's syscall constants and <c>struct flock</c> layout, checked against the C headers of this machine.</summary>
public sealed class LockInteropTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("pdma-flock-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void FlockLayoutAndConstants_MatchTheCHeaders()
    {
        string cc = new[] { "/usr/bin/cc", "/usr/bin/gcc", "/usr/local/bin/cc" }.FirstOrDefault(File.Exists)
            ?? throw new InvalidOperationException("No C compiler (cc/gcc) to check the fcntl constants against the headers.");
        string src = Path.Combine(_dir, "flock.c"), exe = Path.Combine(_dir, "flock");
        File.WriteAllText(src, """
            #define _GNU_SOURCE
            #include <fcntl.h>
            #include <errno.h>
            #include <stddef.h>
            #include <stdio.h>
            int main(void) {
                printf("%zu %zu %zu %zu %zu %zu %d %d %d %d %d\n", sizeof(struct flock), offsetof(struct flock, l_type),
                    offsetof(struct flock, l_whence), offsetof(struct flock, l_start), offsetof(struct flock, l_len),
                    offsetof(struct flock, l_pid), F_OFD_SETLK, F_WRLCK, SEEK_SET, EAGAIN, EACCES);
                return 0;
            }
            """);
        Assert.Equal("", Run(cc, "-o", exe, src));
        string expected = Run(exe).Trim();
        string actual = string.Join(' ',
            Marshal.SizeOf<Libc.Flock>(),
            Marshal.OffsetOf<Libc.Flock>(nameof(Libc.Flock.Type)),
            Marshal.OffsetOf<Libc.Flock>(nameof(Libc.Flock.Whence)),
            Marshal.OffsetOf<Libc.Flock>(nameof(Libc.Flock.Start)),
            Marshal.OffsetOf<Libc.Flock>(nameof(Libc.Flock.Length)),
            Marshal.OffsetOf<Libc.Flock>(nameof(Libc.Flock.Pid)),
            Libc.F_OFD_SETLK, Libc.F_WRLCK, Libc.SEEK_SET, Libc.EAGAIN, Libc.EACCES);
        Assert.Equal(expected, actual);
    }

    private static string Run(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        string output = p.StandardOutput.ReadToEnd();
        string error = p.StandardError.ReadToEnd();
        Assert.True(p.WaitForExit(60_000), $"{file} did not finish");
        Assert.True(p.ExitCode == 0, $"{file} failed ({p.ExitCode}): {error}");
        return output;
    }
}
