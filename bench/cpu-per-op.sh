#!/usr/bin/env bash
# CPU time per operation of a local raftkv cluster (3 nodes + router), the figure that bounds
# throughput on a small machine where the cluster, the router and the load share the cores.
#
# For each round: starts a fresh cluster from the binaries in BIN_DIR, runs one closed-loop
# `raftkv bench` workload against the router, and divides the CPU time the nodes and the router
# used (user + system, from /proc) by the operations done. Comparing two builds: run it with
# BIN_DIR pointing at each, alternating, a few rounds each: one run is noisy (BENCHMARKS.md).
#
# Usage: bench/cpu-per-op.sh [put|get|mixed]
# Environment (all optional):
#   BIN_DIR=target/release  where raftkv, raftkv-node and raftkv-router are
#   ROUNDS=2   SECS=8   CLIENTS=64   BASE_PORT=18300
set -euo pipefail

workload=${1:-put}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${BIN_DIR:-$repo/target/release}
rounds=${ROUNDS:-2}
secs=${SECS:-8}
clients=${CLIENTS:-64}
port=${BASE_PORT:-18300}
data=$(mktemp -d)
raftkv="$bin/raftkv"
trap '"$raftkv" cluster down --data-dir "$data/cluster" >/dev/null 2>&1 || true; rm -rf "$data"' EXIT

# shellcheck source=bench/lib/cpu.sh
source "$repo/bench/lib/cpu.sh"

hz=$(getconf CLK_TCK)
for round in $(seq "$rounds"); do
  rm -rf "$data/cluster"
  "$raftkv" cluster up --detach --base-port "$port" --data-dir "$data/cluster" >/dev/null
  pids=$(python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); print(c["router"]["pid"], *[n["pid"] for n in c["nodes"]])' \
    "$data/cluster/cluster.json")
  before=$(cpu_ticks $pids)
  report=$("$raftkv" --endpoint "127.0.0.1:$port" bench --workload "$workload" --clients "$clients" \
    --duration "${secs}s" --warmup 0s --keys 1000 --output json)
  after=$(cpu_ticks $pids)
  REPORT=$report python3 - "$round" "$workload" "$((after - before))" "$hz" "$secs" <<'EOF'
import json, os, sys
round_, workload, ticks, hz, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
r = json.loads(os.environ["REPORT"])
cpu_s = ticks / hz
print(f"round {round_} {workload}: {r['ops_per_sec']:.0f} ops/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
      f"nodes+router {cpu_s / secs:.2f} cores, {cpu_s * 1e6 / r['ops']:.0f} us CPU per op, "
      f"load generator {r['load_generator_cpu_cores']:.2f} cores")
EOF
  "$raftkv" cluster down --data-dir "$data/cluster" >/dev/null
done
