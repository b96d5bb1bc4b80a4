#!/usr/bin/env bash
# What TLS (with client certificates) costs: put and get at 1 and 64 clients against a local
# cluster (3 nodes + router) started without and with `--tls`, alternating, a few rounds.
#
# For each round and each mode (the order swaps every round): a fresh `raftkv cluster up
# --detach [--tls]`, then `raftkv bench` through the router for each case below; prints one
# tab-separated line per run: round, tls, workload, clients, batching, ops/s, p50, p99 (ms),
# errors.
# Other builds or tests on the machine skew the figures: the load average is printed first.
#
# Usage: bench/tls-overhead.sh
# Environment (all optional):
#   BIN_DIR=target/release  where raftkv, raftkv-node and raftkv-router are
#   ROUNDS=3   DURATION=10s   BASE_PORT=18400
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${BIN_DIR:-$repo/target/release}
rounds=${ROUNDS:-3}
duration=${DURATION:-10s}
port=${BASE_PORT:-18400}
data=$(mktemp -d)
raftkv="$bin/raftkv"
trap '"$raftkv" cluster down --data-dir "$data/cluster" >/dev/null 2>&1 || true; rm -rf "$data"' EXIT

# workload clients batching
cases=(
  "put 1 batched" "put 64 batched" "put 64 unbatched"
  "get 1 batched" "get 64 batched" "get 64 unbatched"
)

echo "# load average: $(cut -d' ' -f1-3 /proc/loadavg)"
printf 'round\ttls\tworkload\tclients\tbatching\tops_per_sec\tp50_ms\tp99_ms\terrors\n'
for round in $(seq "$rounds"); do
  modes=(off on)
  if ((round % 2 == 0)); then modes=(on off); fi
  for mode in "${modes[@]}"; do
    rm -rf "$data/cluster"
    tls_up=()
    tls_cli=()
    if [[ $mode == on ]]; then
      tls_up=(--tls)
      certs="$data/cluster/certs"
      tls_cli=(--cacert "$certs/ca.pem" --cert "$certs/client.pem" --key "$certs/client-key.pem")
    fi
    "$raftkv" cluster up --detach --base-port "$port" --data-dir "$data/cluster" "${tls_up[@]}" >/dev/null
    for case in "${cases[@]}"; do
      read -r workload clients batching <<<"$case"
      unbatched=()
      if [[ $batching == unbatched ]]; then unbatched=(--unbatched); fi
      "$raftkv" --endpoint "127.0.0.1:$port" "${tls_cli[@]}" bench --workload "$workload" \
        --clients "$clients" --duration "$duration" "${unbatched[@]}" --output json >"$data/run.json"
      python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))
print("\t".join(sys.argv[2:] + ["%.0f" % r["ops_per_sec"], "%.2f" % r["p50_ms"], "%.2f" % r["p99_ms"], str(r["errors"])]))' \
        "$data/run.json" "$round" "$mode" "$workload" "$clients" "$batching"
    done
    "$raftkv" cluster down --data-dir "$data/cluster" >/dev/null
  done
done
echo "# load average: $(cut -d' ' -f1-3 /proc/loadavg)"
