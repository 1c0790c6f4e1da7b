#!/usr/bin/env bash
# Peer figures for the README and RESULTS rows, on this machine's loopback over TCP, one line per figure:
#   ucx_perftest (UCX over TCP: UCX_TLS=tcp UCX_NET_DEVICES=lo) -t ucp_put_bw -s 1048576 and -t ucp_put_lat -s 8
#   iperf3, one stream on 127.0.0.1 for a few seconds
# Installs ucx-utils and iperf3 with apt-get when missing (needs root). Every step is bounded by `timeout`.
#
#   benchmarks/peers.sh [--bw-iters N] [--lat-iters N] [--iperf-seconds S]
set -euo pipefail

BW_ITERS=2000
LAT_ITERS=100000
IPERF_SECONDS=5
while [[ $# -gt 0 ]]; do
    case "$1" in
        --bw-iters) BW_ITERS="$2"; shift 2 ;;
        --lat-iters) LAT_ITERS="$2"; shift 2 ;;
        --iperf-seconds) IPERF_SECONDS="$2"; shift 2 ;;
        *) echo "usage: $0 [--bw-iters N] [--lat-iters N] [--iperf-seconds S]" >&2; exit 2 ;;
    esac
done

need() {
    local tool="$1" package="$2"
    command -v "$tool" >/dev/null 2>&1 && return 0
    echo "# installing $package for $tool" >&2
    if [[ $(id -u) -ne 0 ]]; then echo "$tool is missing and installing $package needs root" >&2; exit 1; fi
    # Another apt user may hold the lock: wait for it, bounded.
    timeout 600 apt-get -o DPkg::Lock::Timeout=300 install -y -q "$package" >&2 || {
        timeout 300 apt-get -o DPkg::Lock::Timeout=120 update -q >&2
        timeout 600 apt-get -o DPkg::Lock::Timeout=300 install -y -q "$package" >&2
    }
}
need ucx_perftest ucx-utils
need iperf3 iperf3

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()' 2>/dev/null \
        || echo $((20000 + RANDOM % 20000))
}

SERVER_PID=""
cleanup() { if [[ -n "$SERVER_PID" ]]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi; }
trap cleanup EXIT

# One ucx_perftest run: a server in the background, the client prints the "Final:" line.
# Final: iterations, overhead p50 / average / overall (us), bandwidth average / overall (MB/s), message rate average / overall.
ucx_final() {
    local port; port=$(free_port)
    UCX_TLS=tcp UCX_NET_DEVICES=lo timeout 300 ucx_perftest -p "$port" >/dev/null 2>&1 &
    SERVER_PID=$!
    sleep 1
    local final
    final=$(UCX_TLS=tcp UCX_NET_DEVICES=lo timeout 240 ucx_perftest 127.0.0.1 -p "$port" "$@" 2>&1 | grep '^Final:' || true)
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
    [[ -n "$final" ]] || { echo "ucx_perftest $* produced no Final line" >&2; return 1; }
    echo "$final"
}

echo "# peers $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)," \
    "ucx-utils $(dpkg-query -W -f '${Version}' ucx-utils 2>/dev/null || echo '?'), iperf3 $(dpkg-query -W -f '${Version}' iperf3 2>/dev/null || echo '?')"

read -r _ iters p50 avg overall bw_avg bw_overall _ _ <<<"$(ucx_final -t ucp_put_bw -s 1048576 -n "$BW_ITERS")"
echo "ucx_perftest ucp_put_bw 1 MiB tcp/lo: ${bw_overall} MB/s overall, ${bw_avg} MB/s average (${iters} iterations)"

read -r _ iters p50 avg overall _ _ _ _ <<<"$(ucx_final -t ucp_put_lat -s 8 -n "$LAT_ITERS")"
echo "ucx_perftest ucp_put_lat 8 B tcp/lo: typical ${p50} us, overall average ${overall} us, half round trip (${iters} iterations)"

port=$(free_port)
timeout $((IPERF_SECONDS + 30)) iperf3 -s -1 -B 127.0.0.1 -p "$port" >/dev/null 2>&1 &
SERVER_PID=$!
sleep 1
line=$(timeout $((IPERF_SECONDS + 20)) iperf3 -c 127.0.0.1 -p "$port" -t "$IPERF_SECONDS" -f m 2>&1 | grep 'receiver' | tail -1 || true)
wait "$SERVER_PID" 2>/dev/null || true
SERVER_PID=""
[[ -n "$line" ]] || { echo "iperf3 produced no receiver line" >&2; exit 1; }
mbits=$(awk '{for (i = 1; i <= NF; i++) if ($i == "Mbits/sec") print $(i-1)}' <<<"$line")
echo "iperf3 tcp 127.0.0.1 1 stream ${IPERF_SECONDS} s: $(awk -v m="$mbits" 'BEGIN { printf "%.2f Gbit/s (%.0f MB/s)", m / 1000, m / 8 }')"
