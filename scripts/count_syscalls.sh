#!/usr/bin/env bash
# System calls per request on the data path, kernel against netaccel:
# redis-server serving `redis-benchmark -c 1 GET`, once on the kernel's
# loopback and once with both ends under `netaccel run`. The counts come from
# the processes themselves (perf's raw_syscalls:sys_enter tracepoint) over a
# steady window of a running benchmark, so they do not depend on how dear a
# system call is on this machine. `perf trace -s` then names the calls.
#
#   bash scripts/count_syscalls.sh [--seconds S] [--rounds N] [--write]
#
# --write puts the table into docs/benchmarks.md (section syscalls). Runs as
# root, inside a fresh network namespace with only loopback up.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
arguments=("$@")
seconds=3
rounds=3
write=0
while (($#)); do
  case $1 in
    --seconds) seconds=$2; shift ;;
    --rounds) rounds=$2; shift ;;
    --write) write=1 ;;
    -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "count_syscalls.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

NETACCEL=${NETACCEL:-$repo/build/bin/netaccel}
for tool in "$NETACCEL" redis-server redis-benchmark redis-cli perf unshare ip python3; do
  command -v "$tool" >/dev/null || { echo "count_syscalls.sh: $tool not found" >&2; exit 1; }
done

if [[ ${NETACCEL_COUNT_INSIDE:-} != 1 ]]; then
  exec unshare --net --pid --fork --kill-child --mount-proc \
    env NETACCEL_COUNT_INSIDE=1 NETACCEL="$NETACCEL" bash "$0" "${arguments[@]}"
fi
ip link set lo up

tmp=$(mktemp -d /tmp/netaccel-syscalls.XXXXXX)
sock=$tmp/monitor.sock
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  sleep 0.2
  rm -rf "$tmp"
}
trap cleanup EXIT

bg() {  # bg NAME CMD...: a background process, bounded, logged; its pid in $last
  local name=$1
  shift
  timeout -k 5 900 "$@" </dev/null >"$tmp/$name.log" 2>&1 &
  last=$!
  pids+=("$last")
}
wait_listen() {
  local port=$1 i
  for ((i = 0; i < 200; i++)); do
    [[ -n $(ss -Hltn "sport = :$port") ]] && return 0
    sleep 0.05
  done
  echo "count_syscalls.sh: nothing listens on port $port" >&2
  cat "$tmp"/*.log >&2
  exit 1
}
# The process that `timeout` started (netaccel run execs into its command).
child_of() {
  local pid=$1 i
  for ((i = 0; i < 100; i++)); do
    local child
    child=$(pgrep -P "$pid" | head -n 1 || true)
    [[ -n $child ]] && { echo "$child"; return; }
    sleep 0.02
  done
  echo "count_syscalls.sh: no child of $pid" >&2
  exit 1
}
commands_processed() {
  redis-cli -p "$1" info stats | tr -d '\r' | sed -n 's/^total_commands_processed://p'
}
# syscalls PID: system calls the process made during the window.
syscalls_in_window() {
  perf stat -x, -e raw_syscalls:sys_enter -p "$1" -- sleep "$seconds" 2>&1 >/dev/null |
    awk -F, '/raw_syscalls/ { print $1 }'
}

"$NETACCEL" daemon --socket "$sock" </dev/null >"$tmp/monitor.log" 2>&1 &
pids+=($!)
for ((i = 0; i < 200; i++)); do
  "$NETACCEL" status --socket "$sock" --json >/dev/null 2>&1 && break
  sleep 0.05
done
run=("$NETACCEL" run --socket "$sock" --)
redis_args=(--save '' --appendonly no --protected-mode no --daemonize no)

# measure PATH PORT PREFIX...: one round; prints "server client" calls per request.
measure() {
  local path=$1 port=$2
  shift 2
  bg "bench-$path" "$@" redis-benchmark -p "$port" -c 1 -n 100000000 -t get -q
  local client
  client=$(child_of "$last")
  sleep 1  # past the connection and the first requests
  local before after server_calls client_calls
  before=$(commands_processed "$port")
  syscalls_in_window "$server" >"$tmp/server.count" &
  local perf_server=$!
  client_calls=$(syscalls_in_window "$client")
  wait "$perf_server"
  server_calls=$(cat "$tmp/server.count")
  after=$(commands_processed "$port")
  kill -TERM "$client" 2>/dev/null || true
  wait "$last" 2>/dev/null || true
  # The window's requests, less the INFO that read the count.
  local requests=$((after - before - 1))
  python3 -c "import sys; r=$requests; print('%.3f %.3f %d' % ($server_calls / r, $client_calls / r, r))"
}

# breakdown PATH PORT PREFIX...: which calls the server and client make.
breakdown() {
  local path=$1 port=$2
  shift 2
  bg "trace-$path" "$@" redis-benchmark -p "$port" -c 1 -n 100000000 -t get -q
  local client
  client=$(child_of "$last")
  sleep 1
  local before after
  before=$(commands_processed "$port")
  perf trace -s -p "$server" -o "$tmp/server.trace" -- sleep "$seconds" >/dev/null 2>&1 &
  local perf_server=$!
  perf trace -s -p "$client" -o "$tmp/client.trace" -- sleep "$seconds" >/dev/null 2>&1
  wait "$perf_server" || true
  after=$(commands_processed "$port")
  kill -TERM "$client" 2>/dev/null || true
  wait "$last" 2>/dev/null || true
  local requests=$((after - before - 1))
  for side in server client; do
    # perf trace -s: "   syscall  calls  errors  total ..." rows per thread.
    awk -v r="$requests" -v side="$side" '
      $1 ~ /^[a-z_0-9]+$/ && $2 ~ /^[0-9]+$/ && $1 != "syscall" { n[$1] += $2 }
      END { for (c in n) printf "%s %s %.3f\n", side, c, n[c] / r }' "$tmp/$side.trace"
  done | sort -k1,1 -k3,3nr
}

kernel_port=7301 netaccel_port=7302
bg redis-kernel redis-server --port "$kernel_port" "${redis_args[@]}"
kernel_server=$last
bg redis-netaccel "${run[@]}" redis-server --port "$netaccel_port" "${redis_args[@]}"
netaccel_server=$(child_of "$last")
kernel_server=$(child_of "$kernel_server")
wait_listen "$kernel_port"
wait_listen "$netaccel_port"

results=$tmp/results
: >"$results"
for ((round = 1; round <= rounds; round++)); do
  server=$kernel_server
  read -r ks kc kr < <(measure kernel "$kernel_port")
  server=$netaccel_server
  read -r ns nc nr < <(measure netaccel "$netaccel_port" "${run[@]}")
  echo "round $round: kernel server $ks client $kc ($kr requests); netaccel server $ns client $nc ($nr requests)"
  echo "$ks $kc $ns $nc $kr $nr" >>"$results"
done

echo "calls per request by name (perf trace -s, one window each):"
server=$kernel_server
breakdown kernel "$kernel_port" | sed 's/^/  kernel   /'
server=$netaccel_server
breakdown netaccel "$netaccel_port" "${run[@]}" | sed 's/^/  netaccel /' | tee "$tmp/netaccel.breakdown"

table=$(python3 - "$results" "$seconds" <<'EOF'
import sys
rows = [list(map(float, line.split())) for line in open(sys.argv[1]) if line.strip()]
def span(column):
    values = [row[column] for row in rows]
    return "%.2f" % min(values) if min(values) == max(values) else "%.2f–%.2f" % (min(values), max(values))
def rate(column):
    values = [row[column] / float(sys.argv[2]) / 1000 for row in rows]
    return "%.1f–%.1f k" % (min(values), max(values))
print("| redis -c 1 GET | kernel | netaccel |")
print("|---|---|---|")
print("| server: system calls per request | %s | %s |" % (span(0), span(2)))
print("| client: system calls per request | %s | %s |" % (span(1), span(3)))
print("| requests/s while counted | %s | %s |" % (rate(4), rate(5)))
EOF
)
echo
echo "$table"

if [[ $write == 1 ]]; then
  {
    echo "## System calls per request on the data path"
    echo
    echo "redis-server serving \`redis-benchmark -c 1 -t get\`, both ends on the"
    echo "kernel's loopback or both under \`netaccel run\`, counted from the processes"
    echo "(perf \`raw_syscalls:sys_enter\`, ${seconds} s windows of a running benchmark,"
    echo "$rounds rounds, ranges over the rounds; \`scripts/count_syscalls.sh --write\`)."
    echo "These counts do not depend on what a system call costs on the machine."
    echo
    echo "$table"
    echo
    echo "netaccel's calls by name, per request (\`perf trace -s\`, one window; the"
    echo "tracer slows the run, so rare calls weigh a little more than above):"
    echo
    echo '```'
    cat "$tmp/netaccel.breakdown"
    echo '```'
  } | python3 "$repo/scripts/replace_section.py" "$repo/docs/benchmarks.md" syscalls
  echo "docs/benchmarks.md: section syscalls written"
fi
