#!/usr/bin/python3
"""Plots bandwidth (MB/s) against message size from BenchmarkDotNet CSV reports.

Reads the reports of LoopbackVerbsBandwidthBenchmarks and IwarpBandwidthBenchmarks and writes bandwidth.png next to
this script (or to --out). Needs matplotlib (Debian: apt-get install python3-matplotlib).

    /usr/bin/python3 benchmarks/plot.py [RESULTS_DIR] [--out PATH]   (Debian's python3, which has python3-matplotlib)

RESULTS_DIR defaults to BenchmarkDotNet.Artifacts/results in the current directory. Per-message bandwidth is
Size / Mean (the benchmarks use OperationsPerInvoke, so Mean is per message); MB = 10^6 bytes, as perftest reports.
"""
import argparse
import csv
import glob
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TIME_UNITS = {"ns": 1e-9, "us": 1e-6, "μs": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0}

# (report class, method) -> series label
SERIES = [
    ("LoopbackVerbsBandwidthBenchmarks", "Memcpy", "memcpy (Buffer.MemoryCopy)"),
    ("LoopbackVerbsBandwidthBenchmarks", "RdmaWrite", "loopback verbs RDMA WRITE"),
    ("LoopbackVerbsBandwidthBenchmarks", "RdmaRead", "loopback verbs RDMA READ"),
    ("IwarpBandwidthBenchmarks", "Socket", "raw TCP socket (127.0.0.1), into per-message slots"),
    ("IwarpBandwidthBenchmarks", "SocketDiscard", "raw TCP socket, reused 1 MiB buffer (reference)"),
    ("IwarpBandwidthBenchmarks", "WriteCrc", "iWARP RDMA WRITE, CRC32c"),
    ("IwarpBandwidthBenchmarks", "WriteNoCrc", "iWARP RDMA WRITE, no CRC"),
    ("IwarpBandwidthBenchmarks", "ReadCrc", "iWARP RDMA READ, CRC32c"),
    ("IwarpBandwidthBenchmarks", "ReadNoCrc", "iWARP RDMA READ, no CRC"),
]


def parse_seconds(header, value):
    """A Mean cell in seconds; the unit is in the header ('Mean [ns]') or in the cell ('1,234.5 ns')."""
    value = value.strip().replace(",", "")
    if not value or value in ("NA", "-", "?"):
        return None
    m = re.match(r"^([0-9.eE+-]+)\s*([a-zμµ]*)$", value)
    if not m:
        return None
    number, unit = float(m.group(1)), m.group(2)
    if not unit:
        hm = re.search(r"\[([^\]]+)\]", header)
        unit = hm.group(1) if hm else "ns"
    return number * TIME_UNITS[unit]


def load(results_dir):
    data = {}
    for path in sorted(glob.glob(os.path.join(results_dir, "*-report.csv"))):
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            continue
        mean_col = next((c for c in rows[0] if c == "Mean" or c.startswith("Mean [")), None)
        if mean_col is None or "Size" not in rows[0]:
            continue
        cls = os.path.basename(path).split("-report")[0].split(".")[-1]
        for r in rows:
            secs = parse_seconds(mean_col, r[mean_col])
            if secs is None or secs <= 0:
                continue
            size = int(r["Size"].replace(",", ""))
            data.setdefault((cls, r["Method"]), []).append((size, size / secs / 1e6))
    return data


def human(n):
    for unit, k in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= k and n % k == 0:
            return f"{n // k} {unit}"
    return f"{n} B"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="?", default=os.path.join("BenchmarkDotNet.Artifacts", "results"))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "bandwidth.png"))
    args = ap.parse_args()

    data = load(args.results)
    fig, ax = plt.subplots(figsize=(9, 6))
    sizes = set()
    plotted = 0
    for cls, method, label in SERIES:
        points = sorted(data.get((cls, method), []))
        if not points:
            continue
        xs, ys = zip(*points)
        sizes.update(xs)
        style = "--" if "READ" in label else "-"
        ax.plot(xs, ys, style, marker="o", label=label)
        plotted += 1
        print(f"{label:34s} " + "  ".join(f"{human(s)}: {mbs:,.0f} MB/s" for s, mbs in points))
    if plotted == 0:
        print(f"no bandwidth reports found in {args.results}", file=sys.stderr)
        return 1
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sorted(sizes))
    ax.set_xticklabels([human(s) for s in sorted(sizes)])
    ax.set_xlabel("message size")
    ax.set_ylabel("bandwidth per message stream (MB/s, 10^6 B/s)")
    ax.set_title("PinnedDma: soft RDMA verbs vs memcpy and TCP (BenchmarkDotNet means)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
