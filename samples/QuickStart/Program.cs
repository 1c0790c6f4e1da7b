using PinnedDma.Storage;

// A volume in a local file: no setup, no privileges.
string path = args.Length > 0 ? args[0] : Path.Combine(Path.GetTempPath(), "pinneddma-quickstart.img");
using var volume = Volume.Create(path, new VolumeOptions { BlockCount = 4096 });
Console.WriteLine($"volume {path}: {volume.DataBlocks} data blocks of {volume.BlockSize} bytes, mapped {volume.Device.MappingMode}");

var file = volume.CreateFile("data");
file.Write(0, new byte[64 * 1024]);
var clone = volume.CreateFile("snapshot");
clone.CloneRangeFrom(file, 0, 0, file.Length);
foreach (var e in file.GetExtents())
    Console.WriteLine($"  extent file {e.FileOffset,8} -> device {e.DeviceOffset,10} len {e.Length,7} gen {e.Generation} {e.Flags}");
volume.Commit();
Console.WriteLine($"fsck: {volume.Fsck()}");
