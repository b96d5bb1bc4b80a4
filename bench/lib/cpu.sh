# shellcheck shell=bash
# Shared by the bench scripts that measure what the servers spend (source it).

# User + system CPU clock ticks the processes PIDS have used so far (a process that is gone
# counts 0). The fields are read after the command name, which may hold spaces.
cpu_ticks() {
  local pid total=0 stat fields
  for pid in "$@"; do
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    stat=${stat##*) } # from the state (field 3) on
    read -r -a fields <<<"$stat"
    total=$((total + fields[11] + fields[12]))
  done
  echo "$total"
}
