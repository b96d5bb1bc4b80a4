#!/usr/bin/env bash
# What a silent leader costs raftkv, next to a dead one.
#
# Three raftkv-node processes, each in its own network namespace on one bridge (10.77.0.0/24:
# node N listens on 0.0.0.0:7001 and advertises 10.77.0.N:7001; the host is 10.77.0.254 on the
# bridge), and a raftkv-router in the host's namespace in front of them. Under a closed-loop put
# load through the router (`raftkv bench --workload put`), the leader is either
#   silent: cut off with `ip link set eth0 down` in its namespace. It keeps running but answers
#           nothing; its peers and the router get no RST or FIN (a host that lost power or its
#           network), or
#   kill:   killed with kill -9 (the kernel closes its sockets: every peer learns at once), or
#   term:   stopped with SIGTERM, as in a rolling restart: it hands leadership over first.
# Each run starts a fresh cluster (new data directories) and prints, in ms from the cut:
#   first    a survivor logs "leader changed: this node leads" (phase a: the election)
#   served   the last such line: the leader that went on to serve (later than `first` when the
#            first new leader's leadership did not hold and more elections followed)
#   routed   the router's last "leader changed: node N" (phase b: new writes go to N)
#   dead     the router declares its connection to the old leader dead ("is unreachable")
#   stall    the longest time without a completed put (bench's longest_stall_ms, 10 ms
#            resolution): how long writes stalled
# then the median of each over the runs.
#
# Usage (as root; it builds nothing: run `cargo build --release` first, it runs
# target/release/{raftkv,raftkv-node,raftkv-router}, or those in $BIN_DIR):
#   bench/silent-leader.sh [--runs N] [--mode silent|kill|term|both|all] [--clients N] [--duration SECS]
#                          [--cut-after SECS] [--rust-log FILTER] [--router-rust-log FILTER]
#                          [--keep DIR] [--router-port PORT] [--ss-at MS]
# Examples:
#   bench/silent-leader.sh --runs 5                      # 5 silent runs, then 5 kill -9 runs
#   bench/silent-leader.sh --runs 10 --mode term         # 10 graceful stops of the leader
#   bench/silent-leader.sh --runs 1 --mode silent --keep /tmp/sl --ss-at 1500 \
#       --rust-log info,openraft=info --router-rust-log info,raftkv_router=debug
#
# --duration is the bench's measured window (default 10 s, after a 1 s warm-up); the cut comes
# about --cut-after seconds into it (default 3). --keep keeps every log, bench report and the
# cut's time (cut-ms) in DIR (default: a temporary directory, deleted on exit). --ss-at MS saves
# `ss -tinp` of the host and of every namespace MS ms after the cut (ss-*.txt). --rust-log and
# --router-rust-log set RUST_LOG of the nodes and of the router (default: their own defaults).
# The router listens on 127.0.0.1:--router-port (default 17100). Everything the script makes
# (namespaces rkvsl-n1..3, bridge rkvsl-br, veths rkvsl-h1..3, processes, the temporary
# directory) is removed on exit, failure and Ctrl-C included. iproute2 is installed with apt-get
# if `ip` is missing; jq is needed.
set -euo pipefail

usage() { sed -n '/^# Usage/,/^#$/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

runs=3 mode=both clients=64 duration=10 cut_after=3 rust_log="" router_rust_log="" keep="" router_port=17100 ss_at=""
while (($#)); do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --mode) mode=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --cut-after) cut_after=$2; shift 2 ;;
    --rust-log) rust_log=$2; shift 2 ;;
    --router-rust-log) router_rust_log=$2; shift 2 ;;
    --keep) keep=$2; shift 2 ;;
    --router-port) router_port=$2; shift 2 ;;
    --ss-at) ss_at=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "error: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "error: --runs must be a positive integer" >&2; exit 2; }
[[ -z $ss_at || $ss_at =~ ^[0-9]+$ ]] || { echo "error: --ss-at is a number of ms" >&2; exit 2; }
[[ $duration =~ ^[0-9]+$ && $cut_after =~ ^[0-9]+$ ]] || { echo "error: --duration and --cut-after are whole seconds" >&2; exit 2; }
((duration - cut_after >= 5)) || { echo "error: leave at least 5 s of the window after the cut" >&2; exit 2; }
case $mode in silent) modes=(silent) ;; kill) modes=(kill) ;; term) modes=(term) ;; both) modes=(silent kill) ;;
  all) modes=(silent kill term) ;;
  *) echo "error: --mode is silent, kill, term, both or all" >&2; exit 2 ;; esac
((EUID == 0)) || { echo "error: run as root (it creates network namespaces)" >&2; exit 2; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${BIN_DIR:-$repo/target/release}
for b in raftkv raftkv-node raftkv-router; do
  [[ -x $bin/$b ]] || { echo "error: $bin/$b is missing; run cargo build --release first" >&2; exit 2; }
done
if ! command -v ip >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null
fi
command -v jq >/dev/null || { echo "error: jq is needed (apt-get install jq)" >&2; exit 2; }
unset RUST_LOG

prefix=rkvsl
bridge=$prefix-br
router=127.0.0.1:$router_port
members=(1 2 3)
cluster=1=10.77.0.1:7001,2=10.77.0.2:7001,3=10.77.0.3:7001
ns_of() { echo "$prefix-n$1"; }

# --- what this script made, undone on exit ---------------------------------------------------
made_ns=()
made_links=()
declare -A pids=() # every process started, so cleanup kills exactly those
node_pid=()       # node id -> pid, for the current run
router_pid=""
if [[ -n $keep ]]; then mkdir -p "$keep"; work=$(cd "$keep" && pwd); else work=$(mktemp -d /tmp/silent-leader.XXXXXX); fi
cleanup() {
  local status=$? pid ns link
  set +e
  for pid in "${!pids[@]}"; do kill -9 "$pid" 2>/dev/null; done
  for pid in "${!pids[@]}"; do wait "$pid" 2>/dev/null; done
  for ns in "${made_ns[@]}"; do ip netns del "$ns"; done
  for link in "${made_links[@]}"; do ip link del "$link" 2>/dev/null; done
  if [[ -z $keep ]]; then rm -rf "$work"; else echo "logs kept in $work"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

die() { echo "error: $*" >&2; exit 1; }
now_ms() { date +%s%3N; }
# Epoch ms of an RFC 3339 timestamp as tracing prints it (2026-01-02T03:04:05.123456Z).
ts_ms() { date -d "$1" +%s%3N; }

# --- network: one namespace per node, all on one bridge with the host -------------------------
setup_network() {
  local n ns
  for n in "${members[@]}"; do
    ! ip netns list | grep -qw "$(ns_of "$n")" || die "namespace $(ns_of "$n") exists (left by another run?); remove it with ip netns del $(ns_of "$n")"
  done
  ! ip link show "$bridge" &>/dev/null || die "link $bridge exists (left by another run?); remove it with ip link del $bridge"
  ! ip -4 -br addr | grep -q ' 10\.77\.0\.' || die "10.77.0.0/24 is already in use on this host: $(ip -4 -br addr | grep ' 10\.77\.0\.')"
  ip link add "$bridge" type bridge && made_links+=("$bridge")
  ip addr add 10.77.0.254/24 dev "$bridge"
  ip link set "$bridge" up
  for n in "${members[@]}"; do
    ns=$(ns_of "$n")
    ip netns add "$ns" && made_ns+=("$ns")
    ip link add "$prefix-h$n" type veth peer name eth0 netns "$ns" && made_links+=("$prefix-h$n")
    ip link set "$prefix-h$n" master "$bridge" up
    ip -n "$ns" addr add "10.77.0.$n/24" dev eth0
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth0 up
  done
}

# --- one cluster -------------------------------------------------------------------------------
start_cluster() { # DIR: fresh data directories and logs
  local dir=$1 n
  for n in "${members[@]}"; do
    ip -n "$(ns_of "$n")" link set eth0 up
    ip netns exec "$(ns_of "$n")" env ${rust_log:+RUST_LOG=$rust_log} "$bin/raftkv-node" --id "$n" \
      --listen 0.0.0.0:7001 --advertise "10.77.0.$n:7001" --data-dir "$dir/node-$n" \
      --initial-cluster "$cluster" >/dev/null 2>"$dir/node-$n.log" &
    node_pid[n]=$!
    pids[$!]=1
  done
  env ${router_rust_log:+RUST_LOG=$router_rust_log} "$bin/raftkv-router" --listen "$router" \
    --nodes 10.77.0.1:7001,10.77.0.2:7001,10.77.0.3:7001 >/dev/null 2>"$dir/router.log" &
  router_pid=$!
  pids[$!]=1
}

stop_cluster() {
  local pid
  for pid in "${node_pid[@]}" "$router_pid"; do
    [[ -n $pid ]] || continue
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "pids[$pid]"
  done
}

status_json() { # ENDPOINT
  "$bin/raftkv" --endpoint "$1" --timeout 1s status --output json 2>/dev/null
}

# Prints "ID TERM" of the leader when all three nodes answer the router's status and exactly
# one of them leads; nothing otherwise.
current_leader() {
  status_json "$router" | jq -r '.nodes | select(length == 3 and all(.reachable))
    | map(select(.role == "leader")) | select(length == 1) | "\(.[0].id) \(.[0].term)"' 2>/dev/null || true
}

# Waits until one leader has held for a second (a fresh cluster may hold a second election
# while its last node starts) and a put through the router succeeds; prints the leader's id.
wait_for_leader() {
  local deadline=$(($(now_ms) + 30000)) seen="" since=0 now
  while (($(now_ms) < deadline)); do
    now=$(current_leader)
    if [[ -z $now || $now != "$seen" ]]; then
      seen=$now since=$(now_ms)
    elif (($(now_ms) - since >= 1000)) &&
      "$bin/raftkv" --endpoint "$router" --timeout 2s put silent-leader/ready 1 >/dev/null 2>&1; then
      echo "${seen% *}"
      return
    fi
    sleep 0.1
  done
  die "no stable leader serving writes within 30 s (logs in $work)"
}

commit_index() { # NODE
  status_json "10.77.0.$1:7001" | jq -r --argjson id "$1" '.nodes[] | select(.id == $id) | .commit_index // 0' 2>/dev/null || echo 0
}

# Prints "MS NODE TERM" for every line of the node logs LOG... saying "this node leads" (a
# node's lines carry its id in their span, node{id=N}).
leads_lines() { # LOG...
  local ts node term
  grep -h 'leader changed: this node leads' "$@" 2>/dev/null \
    | sed -nE 's/^([^ ]+) .*node\{id=([0-9]+)\}.* term=([0-9]+).*/\1 \2 \3/p' \
    | while read -r ts node term; do echo "$(ts_ms "$ts") $node $term"; done | sort -n
}

# Prints the stamp (epoch ms) of every line of LOG matching the extended regexp PATTERN.
log_times() { # LOG PATTERN
  local ts _
  grep -E -- "$2" "$1" 2>/dev/null | while read -r ts _; do ts_ms "$ts"; done
}

median() { tr ' ' '\n' | grep -E '^[0-9]+$' | sort -n | awk '{v[NR]=$1} END {if (!NR) print "-"; else if (NR%2) print v[(NR+1)/2]; else print int((v[NR/2]+v[NR/2+1])/2)}'; }

# --- one run -----------------------------------------------------------------------------------
declare -A results=()
run_once() { # MODE RUN
  local mode=$1 run=$2 dir="$work/$1-$2" leader before bench_pid bench_start t_cut n ss_pid=""
  local stall errors ops
  mkdir -p "$dir"
  start_cluster "$dir"
  leader=$(wait_for_leader)
  before=$(commit_index "$leader")
  "$bin/raftkv" --endpoint "$router" --timeout 10s bench --workload put --clients "$clients" \
    --warmup 1s --duration "${duration}s" --output json >"$dir/bench.json" 2>"$dir/bench.err" &
  bench_pid=$!
  pids[$bench_pid]=1
  bench_start=$(now_ms)
  # Synchronise on writes flowing (the leader's commit index moves), then cut at the planned
  # moment of the measured window.
  local deadline=$((bench_start + 15000))
  until (($(commit_index "$leader") > before + 100)); do
    (($(now_ms) < deadline)) || die "$mode run $run: the bench's puts are not committing (see $dir)"
    sleep 0.1
  done
  local cut_at=$((bench_start + 1000 + cut_after * 1000)) wait_ms
  wait_ms=$((cut_at - $(now_ms)))
  ((wait_ms > 0)) && sleep "$(printf '%d.%03d' $((wait_ms / 1000)) $((wait_ms % 1000)))"

  # The leader may have changed since (it should not under a steady load; if it did, cut the
  # one that leads now).
  local now
  now=$(current_leader)
  [[ -n $now ]] || die "$mode run $run: no leader just before the cut (logs in $dir)"
  leader=${now% *}
  t_cut=$(now_ms)
  if [[ $mode == silent ]]; then
    ip -n "$(ns_of "$leader")" link set eth0 down
  else
    kill "-$([[ $mode == term ]] && echo TERM || echo KILL)" "${node_pid[leader]}"
    { wait "${node_pid[leader]}"; } 2>/dev/null || true
    unset "pids[${node_pid[leader]}]"
    node_pid[leader]=""
  fi
  echo "$t_cut" >"$dir/cut-ms"
  if [[ -n $ss_at ]]; then # a snapshot of every TCP connection, for diagnosis
    (
      sleep "$(printf '%d.%03d' $((ss_at / 1000)) $((ss_at % 1000)))"
      ss -tinp >"$dir/ss-host.txt" 2>&1
      for n in "${members[@]}"; do ip netns exec "$(ns_of "$n")" ss -tinp >"$dir/ss-node-$n.txt" 2>&1; done
    ) &
    ss_pid=$!
    pids[$ss_pid]=1
  fi

  # Synchronise on a survivor taking over (or the deadline), then on the end of the bench;
  # the logs are read once they are complete.
  local survivors=() first settled routed dead
  for n in "${members[@]}"; do ((n == leader)) || survivors+=("$dir/node-$n.log"); done
  deadline=$((t_cut + 20000))
  until [[ -n $(leads_lines "${survivors[@]}" | awk -v t="$t_cut" '$1 >= t') ]]; do
    (($(now_ms) < deadline)) || die "$mode run $run: no survivor became leader within 20 s (logs in $dir)"
    sleep 0.05
  done
  wait "$bench_pid" 2>/dev/null || die "$mode run $run: the bench failed: $(cat "$dir/bench.err")"
  unset "pids[$bench_pid]"
  if [[ -n $ss_pid ]]; then wait "$ss_pid" || true; unset "pids[$ss_pid]"; fi
  # Phase a: the first survivor to lead, and the last (the one that went on to serve; the same
  # unless its leadership did not hold). Phase b: the router's last switch to a leader.
  first=$(leads_lines "${survivors[@]}" | awk -v t="$t_cut" '$1 >= t' | head -1)
  settled=$(leads_lines "${survivors[@]}" | awk -v t="$t_cut" '$1 >= t' | tail -1)
  routed=$(log_times "$dir/router.log" "leader changed: node [0-9]+ at" | awk -v t="$t_cut" '$1 >= t' | tail -1)
  dead=$(log_times "$dir/router.log" "node $leader at 10\.77\.0\.$leader:7001 is unreachable" | awk -v t="$t_cut" '$1 >= t' | head -1)
  stall=$(jq -r '.longest_stall_ms | floor' "$dir/bench.json")
  errors=$(jq -r '.errors' "$dir/bench.json")
  ops=$(jq -r '.ops' "$dir/bench.json")
  stop_cluster

  local f_ms f_node f_term s_ms s_node s_term
  read -r f_ms f_node f_term <<<"$first"
  read -r s_ms s_node s_term <<<"$settled"
  local f=$((f_ms - t_cut)) e=$((s_ms - t_cut)) r=${routed:+$((routed - t_cut))} d=${dead:+$((dead - t_cut))}
  printf '%-6s run %d/%d: node %d %s. First new leader after %d ms (node %d, term %d); the leader that served after %d ms (node %d, term %d); router routed to it after %s ms, declared node %d dead after %s ms; longest write stall %d ms (%d puts, %d errors)\n' \
    "$mode" "$run" "$runs" "$leader" "$(case $mode in silent) echo "cut off" ;; term) echo "stopped" ;; *) echo "killed" ;; esac)" \
    "$f" "$f_node" "$f_term" "$e" "$s_node" "$s_term" "${r:--}" "$leader" "${d:--}" "$stall" "$ops" "$errors"
  if ((stall >= (duration - cut_after) * 1000 - 500)); then
    echo "       (the stall lasted to the end of the window: it was at least this long; raise --duration)"
  fi
  results[$mode,first]+="$f " results[$mode,elected]+="$e " results[$mode,routed]+="${r:-x} "
  results[$mode,dead]+="${d:-x} " results[$mode,stall]+="$stall "
}

echo "command: $0 --runs $runs --mode $mode --clients $clients --duration $duration --cut-after $cut_after" \
  "${rust_log:+--rust-log $rust_log} ${router_rust_log:+--router-rust-log $router_rust_log}"
echo "commit $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
setup_network
for m in "${modes[@]}"; do
  for ((i = 1; i <= runs; i++)); do run_once "$m" "$i"; done
done

echo
echo "Medians over the runs [each run], in ms (all but the stall counted from the cut):"
for m in "${modes[@]}"; do
  for k in first elected routed stall dead; do
    case $k in
      first) what="first: a survivor leads" ;;
      elected) what="served: the leader that served leads" ;;
      routed) what="routed: the router routes to it" ;;
      stall) what="stall: longest write stall" ;;
      dead) what="dead: router drops the old leader" ;;
    esac
    printf '  %-6s %-40s %6s  [%s]\n' "$m" "$what" "$(median <<<"${results[$m,$k]}")" "${results[$m,$k]% }"
  done
done
