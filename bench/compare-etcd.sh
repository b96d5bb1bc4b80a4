#!/usr/bin/env bash
# Side-by-side benchmark of raftkv and etcd 3.4 on this machine, in one run.
#
# Starts a local 3-node etcd and a local 3-node raftkv cluster with its router (both with
# their default, durable settings: every acknowledged write is fsynced), then runs the same
# closed-loop workloads against each with `raftkv-bench` (the load generator of `raftkv bench`,
# with etcd's client too: one load generator, one histogram for both), alternating the two
# systems, and prints two tables: ops/s, p50 and p99 of each system, and the ratios (raftkv
# through its router, and in the "members" rows with its client given the nodes' addresses,
# as etcd's client is given its members'); then the CPU each system's servers and the load
# generator spent per operation, which says what bounds a run on a small machine. Machine
# facts (cores, CPU model, fsync latency of the disk the data is on, load) are printed first.
# Everything it starts is stopped on exit.
#
# Usage: bench/compare-etcd.sh
# Environment (all optional):
#   BENCH_SECS=10          measured seconds per run (after a 1 s warm-up)
#   BENCH_KEYS=10000       keyspace size;  BENCH_VALUE_SIZE=256  value bytes
#   RAFTKV_BASE_PORT=17700 router on this port, node i on BASE+i (their metrics 100 above)
#   ETCD_BASE_PORT=23790   etcd member i: clients on BASE+i, peers on BASE+100+i
#   BENCH_DIR=...          where the data and logs go (default: a new temporary directory,
#                          removed at exit unless KEEP_BENCH_DIR=1)
#   SKIP_BUILD=1           use the binaries already in target/release
#   BENCH_RESULTS=...      where the raw JSON reports go (default target/bench-results/...)
#   BENCH_ONLY=REGEX       run only the workloads whose name matches (grep -E), e.g. 'members'
#   BENCH_ROUNDS=1         run each workload this many times (a row per round, "#2", ...; the
#                          two systems alternate which goes first): ratios on this machine move
#                          by ±0.3 from one run to the next, so compare a few rounds
set -euo pipefail

BENCH_SECS=${BENCH_SECS:-10}
BENCH_KEYS=${BENCH_KEYS:-10000}
BENCH_VALUE_SIZE=${BENCH_VALUE_SIZE:-256}
BENCH_ONLY=${BENCH_ONLY:-}
BENCH_ROUNDS=${BENCH_ROUNDS:-1}
[[ "$BENCH_ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "compare-etcd: BENCH_ROUNDS must be a positive whole number, not '$BENCH_ROUNDS'" >&2; exit 2; }
RAFTKV_BASE_PORT=${RAFTKV_BASE_PORT:-17700}
ETCD_BASE_PORT=${ETCD_BASE_PORT:-23790}
# How long a cluster may take to elect a leader and answer.
READY_TIMEOUT_SECS=30

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib/cpu.sh
source "$repo/bench/lib/cpu.sh"
raftkv="$repo/target/release/raftkv"
bench_bin="$repo/target/release/raftkv-bench"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
results=${BENCH_RESULTS:-"$repo/target/bench-results/compare-etcd-$stamp.jsonl"}

log() { printf '%s\n' "$*" >&2; }
die() { log "compare-etcd: $*"; exit 1; }

# ---------------------------------------------------------------- etcd installed?
install_etcd() {
    if command -v etcd >/dev/null && command -v etcdctl >/dev/null; then
        return
    fi
    command -v apt-get >/dev/null || die "etcd is not installed and there is no apt-get: install etcd 3.4 (etcd, etcdctl) yourself"
    [ "$(id -u)" = 0 ] || die "etcd is not installed: run as root, or: sudo apt-get install -y etcd-server etcd-client"
    log "installing etcd from the OS packages (etcd-server, etcd-client)"
    apt-get update -qq
    apt-cache policy etcd-server | sed -n '1,3p' >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null
    # The package may start a system-wide etcd on 2379 (where a service manager runs); ours
    # uses other ports, so they do not collide.
}

# ---------------------------------------------------------------- cleanup
etcd_pids=()
raftkv_started=0
work=""
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ "$raftkv_started" = 1 ]; then
        "$raftkv" cluster down --data-dir "$work/raftkv" >/dev/null 2>&1 || log "warning: raftkv cluster down failed"
    fi
    for pid in "${etcd_pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${etcd_pids[@]}"; do
        # Bounded wait, then SIGKILL.
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [ -n "$work" ] && [ -z "${BENCH_DIR:-}" ] && [ "${KEEP_BENCH_DIR:-0}" != 1 ]; then
        rm -rf "$work"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- helpers
# field NAME JSON: a number or string field of a one-line JSON report.
field() {
    printf '%s' "$2" | sed -E -n "s/.*\"$1\":\"?([^,\"}]*)\"?[,}].*/\1/p"
}

# wait_for SECONDS DESCRIPTION COMMAND...: runs COMMAND until it succeeds or time is up.
wait_for() {
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || die "timed out waiting for $what"
        sleep 0.2
    done
}

# fsync latency of the disk under $work: 4 KiB overwrite + fsync, 500 times; median and p99 in ms.
fsync_probe() {
    local file="$work/fsync-probe"
    if command -v python3 >/dev/null; then
        python3 - "$file" <<'EOF'
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)
block = b"x" * 4096
samples = []
for _ in range(500):
    os.pwrite(fd, block, 0)
    start = time.perf_counter()
    os.fsync(fd)
    samples.append((time.perf_counter() - start) * 1000)
os.close(fd)
samples.sort()
print(f"median {samples[len(samples) // 2]:.3f} ms, p99 {samples[len(samples) * 99 // 100]:.3f} ms (500 x 4 KiB write + fsync)")
EOF
    else
        local start end
        start=$(date +%s%N)
        dd if=/dev/zero of="$file" bs=4k count=500 oflag=dsync status=none
        end=$(date +%s%N)
        echo "mean $(( (end - start) / 500000 ))e-3 ms per 4 KiB O_DSYNC write (dd, 500 writes)"
    fi
    rm -f "$file"
}

# ---------------------------------------------------------------- start
install_etcd
etcd --version 2>/dev/null | grep -q "etcd Version: 3\.4\." || log "warning: this is not etcd 3.4: $(etcd --version | head -1)"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "building raftkv and raftkv-bench (release)"
    (cd "$repo" && cargo build --release --quiet -p raftkv-cli -p raftkv-bench -p raftkv-node -p raftkv-router)
fi
[ -x "$raftkv" ] || die "no $raftkv: build it, or unset SKIP_BUILD"
[ -x "$bench_bin" ] || die "no $bench_bin: build it (cargo build --release -p raftkv-bench), or unset SKIP_BUILD"

if [ -n "${BENCH_DIR:-}" ]; then
    work=$BENCH_DIR
    mkdir -p "$work"
else
    work=$(mktemp -d "${TMPDIR:-/tmp}/raftkv-vs-etcd.XXXXXX")
fi
mkdir -p "$(dirname "$results")"
: >"$results"

etcd_cluster=""
etcd_endpoints=""
for i in 1 2 3; do
    etcd_cluster+="${etcd_cluster:+,}e$i=http://127.0.0.1:$((ETCD_BASE_PORT + 100 + i))"
    etcd_endpoints+="${etcd_endpoints:+,}127.0.0.1:$((ETCD_BASE_PORT + i))"
done
for i in 1 2 3; do
    client="http://127.0.0.1:$((ETCD_BASE_PORT + i))"
    peer="http://127.0.0.1:$((ETCD_BASE_PORT + 100 + i))"
    etcd --name "e$i" --data-dir "$work/etcd-$i" \
        --listen-client-urls "$client" --advertise-client-urls "$client" \
        --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
        --initial-cluster "$etcd_cluster" --initial-cluster-state new \
        --initial-cluster-token raftkv-bench --logger zap --log-outputs stderr \
        >>"$work/etcd-$i.log" 2>&1 &
    etcd_pids+=("$!")
done
wait_for "$READY_TIMEOUT_SECS" "etcd to become healthy" \
    env ETCDCTL_API=3 etcdctl --endpoints "$etcd_endpoints" --command-timeout 2s endpoint health

raftkv_started=1
"$raftkv" cluster up --detach --base-port "$RAFTKV_BASE_PORT" --data-dir "$work/raftkv" \
    --ready-timeout "${READY_TIMEOUT_SECS}s" >"$work/raftkv-up.log" 2>&1 \
    || { cat "$work/raftkv-up.log" >&2; die "raftkv cluster up failed"; }
raftkv_endpoint="127.0.0.1:$RAFTKV_BASE_PORT"
# The router's and the nodes' pids, for the CPU they use during each run.
read -r -a raftkv_pids <<<"$(grep -o '"pid": *[0-9]*' "$work/raftkv/cluster.json" | grep -o '[0-9]*$' | tr '\n' ' ')"
[ ${#raftkv_pids[@]} -eq 4 ] || die "expected 4 pids (router and 3 nodes) in $work/raftkv/cluster.json, found ${#raftkv_pids[@]}"
clock_hz=$(getconf CLK_TCK)
raftkv_members=""
for i in 1 2 3; do raftkv_members+="${raftkv_members:+,}127.0.0.1:$((RAFTKV_BASE_PORT + i))"; done

# ---------------------------------------------------------------- machine facts
etcd_leader=$(ETCDCTL_API=3 etcdctl --endpoints "$etcd_endpoints" endpoint status 2>/dev/null \
    | awk -F', ' '$5 == "true" { print $1 }')
echo "# raftkv vs etcd, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "- machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, Linux $(uname -r)"
echo "- disk under the data: $(df -hT "$work" | awk 'NR == 2 { print $1 " (" $2 ")" }'); fsync latency: $(fsync_probe)"
echo "- load average before the runs: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- etcd: $(etcd --version | head -1 | sed 's/etcd Version: //'), 3 members on $etcd_endpoints (leader $etcd_leader), default settings"
echo "- raftkv: $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$repo" diff --quiet 2>/dev/null || echo ' + uncommitted changes'), 3 nodes + router on $raftkv_endpoint"
echo "- each run: ${BENCH_SECS} s measured after a 1 s warm-up, $BENCH_KEYS keys, $BENCH_VALUE_SIZE-byte values; load from one \`raftkv-bench\` process (1 thread)"
echo "- etcd clients are spread over its 3 members (client i -> member i mod 3; a follower forwards writes to the leader); raftkv clients go through its router, except in the \"members\" rows: there raftkv's client library is given the 3 nodes' addresses, as etcd's client is, and sends each call to the leader itself (a follower answers with the leader's address)"
echo "- raftkv's client library sends the requests of its tasks that are ready together as one call (etcd's client sends one call per request); the \"unbatched\" rows turn that off (\`--unbatched\`; etcd runs the same workload again)"
echo

# ---------------------------------------------------------------- runs
# name | bench flags
runs=(
    "put, 1 client|--workload put --clients 1"
    "put, 16 clients|--workload put --clients 16"
    "put, 64 clients|--workload put --clients 64"
    "put, 256 clients|--workload put --clients 256"
    "linearizable get, 64 clients|--workload get --consistency linearizable --clients 64"
    "stale get, 64 clients|--workload get --consistency stale --clients 64"
    "put, 64 clients, unbatched|--workload put --clients 64 --unbatched"
    "lin. get, 64 clients, unbatched|--workload get --consistency linearizable --clients 64 --unbatched"
    "put, 1 client, members|members --workload put --clients 1"
    "put, 64, unbatched, members|members --workload put --clients 64 --unbatched"
    "lin. get, 64, unb., members|members --workload get --consistency linearizable --clients 64 --unbatched"
)

# bench SYSTEM [members] FLAGS...: one run; prints its JSON report (one line) and appends it to
# $results. With "members", raftkv's client is given its nodes' addresses instead of the router's.
bench() {
    local system=$1
    shift
    local endpoint=$raftkv_endpoint
    if [ "$1" = members ]; then
        endpoint=$raftkv_members
        shift
    fi
    [ "$system" = etcd ] && endpoint=$etcd_endpoints
    local json pids ticks_before ticks_after
    if [ "$system" = etcd ]; then pids=("${etcd_pids[@]}"); else pids=("${raftkv_pids[@]}"); fi
    ticks_before=$(cpu_ticks "${pids[@]}")
    # A run in which nothing succeeded exits non-zero but still reports (with its errors).
    json=$("$bench_bin" --endpoint "$endpoint" --target "$system" --output json \
        --duration "${BENCH_SECS}s" --warmup 1s --keys "$BENCH_KEYS" --value-size "$BENCH_VALUE_SIZE" "$@" 2>>"$work/bench.log") \
        || [ -n "$json" ] || die "raftkv-bench against $system failed: $(tail -1 "$work/bench.log")"
    ticks_after=$(cpu_ticks "${pids[@]}")
    # The servers' CPU over the warm-up and the measured window (the same load throughout), in
    # cores, added to the report.
    json="${json%\}},\"servers_cpu_cores\":$(awk -v t=$((ticks_after - ticks_before)) -v hz="$clock_hz" \
        -v s=$((BENCH_SECS + 1)) 'BEGIN { printf "%.3f", t / hz / s }')}"
    printf '%s\n' "$json" >>"$results"
    printf '%s' "$json"
}

selected=()
for run in "${runs[@]}"; do
    if [ -z "$BENCH_ONLY" ] || grep -Eq -- "$BENCH_ONLY" <<<"${run%%|*}"; then
        for round in $(seq "$BENCH_ROUNDS"); do
            suffix=""
            [ "$BENCH_ROUNDS" -gt 1 ] && suffix=" #$round"
            selected+=("${run%%|*}$suffix|${run#*|}")
        done
    fi
done
[ ${#selected[@]} -gt 0 ] || die "BENCH_ONLY='$BENCH_ONLY' matches no workload"
runs=("${selected[@]}")

rows=()
index=0
for run in "${runs[@]}"; do
    name=${run%%|*}
    read -r -a flags <<<"${run#*|}"
    # Alternate which system goes first, so neither always runs on a warmer (or more
    # fragmented) machine.
    if [ $((index % 2)) = 0 ]; then order=(raftkv etcd); else order=(etcd raftkv); fi
    declare -A report=()
    for system in "${order[@]}"; do
        log "[$((index + 1))/${#runs[@]}] $name: $system"
        report[$system]=$(bench "$system" "${flags[@]}")
    done
    rows+=("$name|${report[raftkv]}|${report[etcd]}")
    unset report
    index=$((index + 1))
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

printf '| %-28s | %12s | %12s | %6s | %10s | %10s | %10s | %10s | %6s | %s |\n' \
    workload "raftkv ops/s" "etcd ops/s" ratio "raftkv p50" "etcd p50" "raftkv p99" "etcd p99" "p99 ×" errors
printf '|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n' ------------------------------ -------------: -------------: -------: \
    -----------: -----------: -----------: -----------: -------: ----------------------
for row in "${rows[@]}"; do
    IFS='|' read -r name raftkv_report etcd_report <<<"$row"
    r_ops=$(field ops_per_sec "$raftkv_report"); e_ops=$(field ops_per_sec "$etcd_report")
    r_p50=$(field p50_ms "$raftkv_report"); e_p50=$(field p50_ms "$etcd_report")
    r_p99=$(field p99_ms "$raftkv_report"); e_p99=$(field p99_ms "$etcd_report")
    r_err=$(field errors "$raftkv_report"); e_err=$(field errors "$etcd_report")
    printf '| %-28s | %12s | %12s | %6s | %10s | %10s | %10s | %10s | %6s | %s |\n' \
        "$name" "$r_ops" "$e_ops" "$(ratio "$r_ops" "$e_ops")" "${r_p50} ms" "${e_p50} ms" \
        "${r_p99} ms" "${e_p99} ms" "$(ratio "$r_p99" "$e_p99")" "raftkv $r_err, etcd $e_err"
done
echo
echo "ratio = raftkv ops/s ÷ etcd ops/s (higher is better for raftkv); p99 × = raftkv p99 ÷ etcd p99 (lower is better)."
echo
echo "CPU per operation, in µs (user + system): \"servers\" are raftkv's router and three nodes, or"
echo "etcd's three members; \"load\" is the raftkv-bench process. \"cores\" is what the two took"
echo "together, of the machine's $(nproc): near $(nproc), the run was bound by CPU."
echo
printf '| %-28s | %14s | %12s | %11s | %9s | %12s | %10s |\n' \
    workload "raftkv servers" "etcd servers" "raftkv load" "etcd load" "raftkv cores" "etcd cores"
printf '|%s|%s|%s|%s|%s|%s|%s|\n' ------------------------------ ---------------: -------------: \
    ------------: ----------: -------------: -----------:
per_op() { awk -v c="$1" -v o="$2" 'BEGIN { if (o > 0) printf "%.0f", c * 1e6 / o; else print "-" }'; }
sum() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a + b }'; }
for row in "${rows[@]}"; do
    IFS='|' read -r name raftkv_report etcd_report <<<"$row"
    r_ops=$(field ops_per_sec "$raftkv_report"); e_ops=$(field ops_per_sec "$etcd_report")
    r_srv=$(field servers_cpu_cores "$raftkv_report"); e_srv=$(field servers_cpu_cores "$etcd_report")
    r_load=$(field load_generator_cpu_cores "$raftkv_report"); e_load=$(field load_generator_cpu_cores "$etcd_report")
    printf '| %-28s | %14s | %12s | %11s | %9s | %12s | %10s |\n' "$name" \
        "$(per_op "$r_srv" "$r_ops")" "$(per_op "$e_srv" "$e_ops")" \
        "$(per_op "$r_load" "$r_ops")" "$(per_op "$e_load" "$e_ops")" \
        "$(sum "$r_srv" "$r_load")" "$(sum "$e_srv" "$e_load")"
done
echo
echo "load average after the runs: $(cut -d' ' -f1-3 /proc/loadavg); raw reports: $results"
