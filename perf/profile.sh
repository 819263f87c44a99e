#!/usr/bin/env bash
# Where MetaStore's server CPU goes under a workload: `perf record` on the release server while
# metastore-bench drives it, then the top of `perf report` (self time, by symbol).
#
#   perf/profile.sh [WORKLOAD] [CONNS] [CLIENTS] [SECONDS]     (default: put 10 100 10)
#
# Writes perf/results/profile-<workload>.txt. Needs `perf` (Debian: linux-perf) and root or
# kernel.perf_event_paranoid <= 1. The server binds 127.0.0.1:0 in a temporary data dir and is
# stopped by its PID.
set -euo pipefail
cd "$(dirname "$0")/.."
workload=${1:-put}; conns=${2:-10}; clients=${3:-100}; secs=${4:-10}
command -v perf >/dev/null || { echo "perf is missing (apt-get install linux-perf)" >&2; exit 1; }
cargo build --release -p metastore-core -p metastore-bench >&2
target=${CARGO_TARGET_DIR:-target}
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
"$target/release/metastore" --data-dir "$dir/data" --listen-client-urls http://127.0.0.1:0 \
    --experimental-bench-null 2>"$dir/server.log" &
pid=$!
for _ in $(seq 200); do [ -s "$dir/data/client-urls" ] && break; sleep 0.05; done
url=$(head -1 "$dir/data/client-urls")
prefill=()
case "$workload" in range|txn-put|txn-mixed) prefill=(--prefill) ;; esac
# Warm up, then record while the measured run goes.
"$target/release/metastore-bench" "$workload" --endpoints "$url" --conns "$conns" --clients "$clients" \
    --duration 2 --no-progress --json "${prefill[@]}" >/dev/null
perf record -F 999 -g -p "$pid" -o "$dir/perf.data" -- sleep "$secs" 2>/dev/null &
rec=$!
"$target/release/metastore-bench" "$workload" --endpoints "$url" --conns "$conns" --clients "$clients" \
    --duration "$secs" --no-progress --server-pid "$pid" --no-prefill
wait "$rec"
mkdir -p perf/results
out=perf/results/profile-$workload.txt
{
    echo "# perf/profile.sh $workload $conns $clients $secs — $(date -u +%F) — $(nproc) cores, $(uname -r)"
    perf report -i "$dir/perf.data" --stdio --no-children --sort symbol --percent-limit 0.7 2>/dev/null \
        | grep -v '^$' | grep -v '^# ' | head -80
} >"$out"
echo "wrote $out" >&2
