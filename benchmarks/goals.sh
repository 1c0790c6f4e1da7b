#!/usr/bin/env bash
# The iWARP transport's scale and latency goals, each against a baseline measured in the same run, back to back:
#   1. connection scale: 1, 64 and 1,000 connections doing 4 KiB RDMA WRITE + READ, against the raw epoll server of
#      the same shape (samples/ConnectionScale through `PinnedDma.Benchmarks scale`): aggregate MB/s, p50/p99,
#      threads and RSS per connection
#   2. PerfTest write_lat 8 B over iWARP (polling, as perftest) against the raw TCP socket ping-pong of the same size
#      and iteration count that PerfTest runs right after it
#   3. 1 MiB RDMA WRITE and READ, CRC32c on and off, against the raw socket stream (BenchmarkDotNet's
#      IwarpBandwidthBenchmarks at Size = 1 MiB: Socket, WriteCrc, ReadCrc, WriteNoCrc, ReadNoCrc)
#   4. peers: benchmarks/peers.sh (ucx_perftest over TCP on loopback, iperf3; installs them with apt-get when missing)
# and prints one Markdown report: machine and date, a table (figure, its same-run baseline, the ratio, the goal, met or
# not), then the raw output of every step. Run it on a quiet machine: the figures are ratios within one run, but the
# tails (p99) move with anything else that wants the cores.
#
#   benchmarks/goals.sh [--out FILE] [--counts 1,64,1000] [--lat-iters N] [--skip scale,lat,bw,peers] [--quiet-load L]
#
# --quiet-load L waits (at most 10 minutes) for the 1-minute load average to drop below L before measuring.
# Every step is bounded by `timeout`; a step that fails leaves its rows as "n/a" and the report says why.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=""
COUNTS="1,64,1000"
LAT_ITERS=10000
SKIP=""
QUIET_LOAD=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) OUT="$2"; shift 2 ;;
        --counts) COUNTS="$2"; shift 2 ;;
        --lat-iters) LAT_ITERS="$2"; shift 2 ;;
        --skip) SKIP="$2"; shift 2 ;;
        --quiet-load) QUIET_LOAD="$2"; shift 2 ;;
        *) echo "usage: $0 [--out FILE] [--counts 1,64,1000] [--lat-iters N] [--skip scale,lat,bw,peers] [--quiet-load L]" >&2; exit 2 ;;
    esac
done
skipped() { [[ ",$SKIP," == *",$1,"* ]]; }

WORK=$(mktemp -d -t pinneddma-goals.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cd "$ROOT" || exit 1

log() { echo "# $(date -u '+%H:%M:%S') $*" >&2; }

log "building (Release)"
if ! timeout 900 dotnet build -c Release -v q -nologo benchmarks/PinnedDma.Benchmarks/PinnedDma.Benchmarks.csproj >"$WORK/build.log" 2>&1 \
    || ! timeout 900 dotnet build -c Release -v q -nologo samples/PerfTest/PerfTest.csproj >>"$WORK/build.log" 2>&1; then
    cat "$WORK/build.log" >&2
    echo "build failed" >&2
    exit 1
fi

if [[ -n "$QUIET_LOAD" ]]; then
    for _ in $(seq 60); do
        awk -v l="$QUIET_LOAD" '{ exit !($1 < l) }' /proc/loadavg && break
        log "load average $(cut -d' ' -f1 /proc/loadavg), waiting for < $QUIET_LOAD"
        sleep 10
    done
fi

{
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "nproc=$(nproc)"
    echo "cpu=$( (lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1) || true)"
    echo "kernel=$(uname -r)"
    echo "dotnet=$(dotnet --version 2>/dev/null || echo '?')"
    echo "commit=$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo ' (with local changes)')"
    echo "load_start=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "mem=$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
} >"$WORK/machine"

# step NAME SECONDS COMMAND...: runs one step bounded, its output (stdout and stderr) in $WORK/NAME.out, its exit code in $WORK/NAME.rc.
step() {
    local name="$1" seconds="$2"
    shift 2
    if skipped "$name"; then echo skipped >"$WORK/$name.rc"; return; fi
    log "$name: $*"
    timeout "$seconds" "$@" >"$WORK/$name.out" 2>&1
    echo $? >"$WORK/$name.rc"
    log "$name: exit code $(cat "$WORK/$name.rc")"
}

step scale 2400 dotnet run --no-build -c Release --project benchmarks/PinnedDma.Benchmarks -- scale --counts "$COUNTS"
step lat 600 dotnet samples/PerfTest/bin/Release/net10.0/PerfTest.dll write_lat --transport iwarp --size 8 --iters "$LAT_ITERS"
step bw 1800 dotnet run --no-build -c Release --project benchmarks/PinnedDma.Benchmarks -- \
    --filter '*IwarpBandwidthBenchmarks.Socket(Size: 1048576)*' '*IwarpBandwidthBenchmarks.*Crc(Size: 1048576)*' \
    --artifacts "$WORK/bdn"
cp "$WORK"/bdn/results/*IwarpBandwidthBenchmarks-report.csv "$WORK/bw.csv" 2>/dev/null || true
step peers 1200 benchmarks/peers.sh
echo "load_end=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$WORK/machine"

log "report"
python3 - "$WORK" "$COUNTS" <<'PY' | if [[ -n "$OUT" ]]; then tee "$OUT"; else cat; fi
import csv, os, re, sys

work, counts = sys.argv[1], [int(c) for c in sys.argv[2].split(",")]

def read(name):
    path = os.path.join(work, name)
    return open(path, encoding="utf-8", errors="replace").read() if os.path.exists(path) else ""

machine = dict(line.split("=", 1) for line in read("machine").splitlines() if "=" in line)
nproc = int(machine.get("nproc", "0") or 0)
rows = []  # (section, what, figure, baseline, ratio, goal, met)

def fmt(x, unit="", digits=1):
    return "n/a" if x is None else f"{x:,.{digits}f}{unit}"

def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b

def row(section, what, figure, baseline, r, goal="", met=None):
    rows.append((section, what, figure, baseline, "n/a" if r is None else f"{r:.2f}x", goal or "(reported)",
                 "" if met is None else ("n/a" if r is None and met != "n/a" and goal else met)))

def judge(r, goal_op, goal):
    if r is None:
        return "n/a"
    return "met" if (r >= goal if goal_op == ">=" else r <= goal) else "not met"

def status(name):
    rc = read(name + ".rc").strip()
    return "skipped" if rc == "skipped" else ("not run" if rc == "" else ("ok" if rc == "0" else f"failed (exit code {rc})"))

# 1. Connection scale: the driver's key=value lines.
scale = {}
for line in read("scale.out").splitlines():
    if not line.startswith("scale "):
        continue
    kv = dict(p.split("=", 1) for p in line.split() if "=" in p)
    key = "iwarp" if kv["transport"] == "iwarp" else kv.get("server", "epoll")
    scale[(key, int(kv["connections"]))] = kv

def f(kv, key):
    return None if kv is None or key not in kv else float(kv[key])

def added(kv, side):
    if kv is None:
        return None
    return max(int(kv[f"{side}_threads_idle"]), int(kv[f"{side}_threads_load"])) - int(kv[f"{side}_threads_start"])

def rss_per_conn(kv, side):
    if kv is None:
        return None
    return (int(kv[f"{side}_rss_kb_load"]) - int(kv[f"{side}_rss_kb_start"])) / int(kv["connections"])

S = "connection scale"
for n in counts:
    i, b = scale.get(("iwarp", n)), scale.get(("epoll", n))
    ok = "" if i is None else f" ({i['completed']}/{n} ok)"
    mb_i, mb_b = f(i, "mbps"), f(b, "mbps")
    r = ratio(mb_i, mb_b)
    if n == 64:
        row(S, f"{n} conns, 4 KiB WRITE+READ aggregate MB/s{ok}", fmt(mb_i), fmt(mb_b) + " raw epoll", r, ">= 0.80x raw epoll", judge(r, ">=", 0.8))
    else:
        row(S, f"{n} conns, 4 KiB WRITE+READ aggregate MB/s{ok}", fmt(mb_i), fmt(mb_b) + " raw epoll", r)
    for q in ("p50", "p99"):
        li, lb = f(i, f"{q}_us"), f(b, f"{q}_us")
        row(S, f"{n} conns, {q} per operation (us)", fmt(li), fmt(lb) + " raw epoll", ratio(li, lb))
big = max(counts)
i, b = scale.get(("iwarp", big)), scale.get(("epoll", big))
bound = 2 * nproc + 2
for side in ("server", "client"):
    ti, tb = added(i, side), added(b, side)
    met = "n/a" if ti is None else ("met" if ti <= bound else "not met")
    rows.append((S, f"{big} conns, {side} threads added (open, idle or load)", "n/a" if ti is None else str(ti),
                 ("n/a" if tb is None else str(tb)) + (" raw epoll" if side == "server" else " raw-socket client"),
                 "n/a" if ti is None or not tb else f"{ti / tb:.2f}x", f"<= 2 x cores + 2 = {bound}", met))
    if ti is not None:
        row(S, f"{big} conns, {side} threads per connection", f"{ti / big:.3f}", "n/a" if tb is None else f"{tb / big:.3f}", None)
    ri, rb = rss_per_conn(i, side), rss_per_conn(b, side)
    row(S, f"{big} conns, {side} RSS per connection under load (KiB)", fmt(ri), fmt(rb), ratio(ri, rb))

# 2. write_lat 8 B: the iWARP block, then the baseline block, each a perftest row and maybe a modes line.
def lat_block(text, marker):
    lines = text.splitlines()
    for k, line in enumerate(lines):
        if line.startswith(marker):
            row_vals, modes = None, None
            for nxt in lines[k + 1:]:
                if nxt.startswith("# "):
                    break
                if row_vals is None and len(nxt) > 1 and nxt[0] == " " and nxt[1].isdigit():
                    row_vals = [float(x) for x in nxt.split()]
                elif "modes:" in nxt:
                    mm = re.search(r"modes: ([0-9.]+) us .*?, ([0-9.]+) us", nxt)
                    modes = [float(mm.group(1)), float(mm.group(2))] if mm else None
            if row_vals:
                keys = ["bytes", "iters", "t_min", "t_max", "t_typical", "t_avg", "t_stdev", "p99", "p999"]
                d = dict(zip(keys, row_vals))
                d["modes"] = modes
                return d
    return None

lat = read("lat.out")
li, lb = lat_block(lat, "# write_lat over iwarp"), lat_block(lat, "# write_lat baseline")
S = "8 B half round trip"
g = lambda d, k: None if d is None else d.get(k)
iters = "" if li is None else f", {int(li['iters'])} iterations"
r = ratio(g(li, "t_typical"), g(lb, "t_typical"))
row(S, f"write_lat 8 B t_typical (median, us){iters}", fmt(g(li, "t_typical"), digits=2), fmt(g(lb, "t_typical"), digits=2) + " socket ping-pong", r,
    "<= 1.20x socket", judge(r, "<=", 1.2))
if lb is not None and lb["modes"]:
    for k, m in enumerate(lb["modes"][:2]):
        rm = ratio(g(li, "t_typical"), m)
        row(S, f"write_lat 8 B t_typical vs socket mode {k + 1} (us)", fmt(g(li, "t_typical"), digits=2), f"{m:.1f} socket mode {k + 1}", rm,
            "<= 1.20x socket", judge(rm, "<=", 1.2))
if li is not None and li["modes"]:
    row(S, "write_lat 8 B iWARP modes (us)", " / ".join(f"{m:.1f}" for m in li["modes"]), "", None)
for k, label in (("t_avg", "t_avg"), ("p99", "99th percentile"), ("p999", "99.9th percentile"), ("t_min", "t_min")):
    row(S, f"write_lat 8 B {label} (us)", fmt(g(li, k), digits=2), fmt(g(lb, k), digits=2) + " socket ping-pong", ratio(g(li, k), g(lb, k)))
r = ratio(g(li, "p99"), g(li, "t_typical"))
row(S, "write_lat 8 B tail: iWARP p99 / iWARP t_typical", fmt(g(li, "p99"), digits=2), fmt(g(li, "t_typical"), digits=2) + " iWARP t_typical", r,
    "<= 3.00x typical", judge(r, "<=", 3.0))
rb = ratio(g(lb, "p99"), g(lb, "t_typical"))
row(S, "socket ping-pong tail: p99 / t_typical (reference)", fmt(g(lb, "p99"), digits=2), fmt(g(lb, "t_typical"), digits=2) + " socket t_typical", rb)

# 3. 1 MiB bandwidth from the BenchmarkDotNet CSV: per-message Mean (OperationsPerInvoke) -> MB/s (10^6 B).
UNITS = {"ns": 1e-9, "us": 1e-6, "μs": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0}
def seconds(header, cell):
    cell = cell.strip().replace(",", "")
    m = re.match(r"^([0-9.eE+-]+)\s*([a-zμµ]*)$", cell)
    if not m:
        return None
    unit = m.group(2) or (re.search(r"\[([^\]]+)\]", header) or [None, "ns"])[1]
    return float(m.group(1)) * UNITS.get(unit, 1e-9)

bw = {}
if os.path.exists(os.path.join(work, "bw.csv")):
    with open(os.path.join(work, "bw.csv"), newline="", encoding="utf-8-sig") as fh:
        for rec in csv.DictReader(fh):
            if rec.get("Size", "").replace(",", "") != "1048576":
                continue
            mean_col = next((c for c in rec if c.split(" ")[0] == "Mean"), None)
            s = seconds(mean_col, rec[mean_col]) if mean_col else None
            if s:
                bw[rec["Method"]] = 1048576 / s / 1e6
S = "1 MiB bandwidth"
sock = bw.get("Socket")
for method, label, goal in (("WriteCrc", "RDMA WRITE, CRC32c", 0.9), ("ReadCrc", "RDMA READ, CRC32c", 0.9),
                            ("WriteNoCrc", "RDMA WRITE, no CRC", 1.0), ("ReadNoCrc", "RDMA READ, no CRC", 1.0)):
    r = ratio(bw.get(method), sock)
    row(S, f"1 MiB {label} (MB/s)", fmt(bw.get(method)), fmt(sock) + " raw socket", r, f">= {goal:.2f}x raw socket", judge(r, ">=", goal))

# 4. Peers: peers.sh's lines.
peers = read("peers.out")
S = "peers (same run)"
m = re.search(r"ucp_put_bw 1 MiB tcp/lo: ([0-9.]+) MB/s overall", peers)
ucx_bw = float(m.group(1)) * 1.048576 if m else None  # ucx_perftest's MB is 2^20 bytes
row(S, "ucx_perftest ucp_put_bw 1 MiB, TCP on lo (MB/s, 10^6 B)", fmt(ucx_bw), fmt(sock) + " raw socket", ratio(ucx_bw, sock))
if "WriteCrc" in bw or ucx_bw is not None:
    row(S, "iWARP 1 MiB RDMA WRITE CRC32c vs ucx_perftest put_bw (MB/s)", fmt(bw.get("WriteCrc")), fmt(ucx_bw) + " ucx_perftest", ratio(bw.get("WriteCrc"), ucx_bw))
m = re.search(r"ucp_put_lat 8 B tcp/lo: typical ([0-9.]+) us, overall average ([0-9.]+) us", peers)
ucx_typ, ucx_avg = (float(m.group(1)), float(m.group(2))) if m else (None, None)
row(S, "ucx_perftest ucp_put_lat 8 B typical (us)", fmt(ucx_typ, digits=2), fmt(g(lb, "t_typical"), digits=2) + " socket ping-pong", ratio(ucx_typ, g(lb, "t_typical")))
row(S, "iWARP write_lat 8 B t_typical vs ucx_perftest put_lat typical (us)", fmt(g(li, "t_typical"), digits=2), fmt(ucx_typ, digits=2) + " ucx_perftest", ratio(g(li, "t_typical"), ucx_typ))
row(S, "ucx_perftest ucp_put_lat 8 B overall average (us)", fmt(ucx_avg, digits=2), fmt(g(lb, "t_avg"), digits=2) + " socket t_avg", ratio(ucx_avg, g(lb, "t_avg")))
m = re.search(r"iperf3 tcp 127.0.0.1 1 stream .*\(([0-9.]+) MB/s\)", peers)
iperf = float(m.group(1)) * 1e6 / 1e6 if m else None
row(S, "iperf3 one stream on 127.0.0.1 (MB/s)", fmt(iperf, digits=0), fmt(sock) + " raw socket (1 MiB messages)", ratio(iperf, sock))

print(f"# iWARP goals against same-run baselines, {machine.get('date', '?')}")
print()
print(f"Machine: {machine.get('nproc', '?')} cores ({machine.get('cpu', '?') or '?'}), {machine.get('mem', '?')} RAM, Linux {machine.get('kernel', '?')}, "
      f".NET SDK {machine.get('dotnet', '?')}; commit {machine.get('commit', '?')}. Load average (1/5/15 min) "
      f"{machine.get('load_start', '?')} at the start, {machine.get('load_end', '?')} at the end.")
print()
print("Steps: " + ", ".join(f"{n} {status(n)}" for n in ("scale", "lat", "bw", "peers")) +
      ". Ratios are figure / baseline: above 1 is faster for bandwidth, slower for latency and more for threads and memory.")
print()
print("| area | figure | value | same-run baseline | ratio | goal | met |")
print("|---|---|---:|---:|---:|---|---|")
for sec, what, val, base, r, goal, met in rows:
    print(f"| {sec} | {what} | {val} | {base} | {r} | {goal} | {met} |")
print()
print("Notes: connection scale runs the server in a child process, each connection one 4 KiB RDMA WRITE then one 4 KiB RDMA READ")
print("back at a time (or 'W' + 4 KiB / 'R' over TCP to the raw epoll server: one epoll instance per I/O thread, one I/O thread")
print("per core); threads added are the most threads seen with every connection open (idle or under load) minus those at the")
print("start. write_lat is PerfTest's RDMA WRITE ping-pong, polling, half the round trip; its baseline is a blocking TCP")
print("ping-pong of the same size and iteration count run right after it. 1 MiB figures are BenchmarkDotNet means per message")
print("(IwarpBandwidthBenchmarks: 128 messages per invocation, 64 outstanding; the socket baseline receives into per-message slots).")

def raw(title, name, keep=None):
    text = read(name + ".out")
    if keep:
        text = "\n".join(l for l in text.splitlines() if keep(l))
    print()
    print(f"## {title} ({status(name)})")
    print()
    print("```")
    print(text.strip() or "(no output)")
    print("```")

raw("Connection scale", "scale", keep=lambda l: not l.startswith("scale "))
raw("PerfTest write_lat 8 B and the socket ping-pong", "lat")
raw("BenchmarkDotNet IwarpBandwidthBenchmarks, 1 MiB (summary)", "bw", keep=lambda l: l.startswith("|") or l.startswith("BenchmarkDotNet") or "Job=" in l or l.startswith("  ["))
raw("Peers", "peers")
PY
