#!/usr/bin/env bash
# System calls per request on the data path, kernel against netaccel:
# redis-server serving `redis-benchmark -c 1 GET`, once on the kernel's
# loopback and once with both ends under `netaccel run`. The counts come from
# the processes themselves (perf's raw_syscalls:sys_enter tracepoint, and one
# tracepoint per call named below) over steady windows of a running
# benchmark, so they do not depend on what a system call costs on this
# machine. Each round runs with server and client pinned to separate cores
# and once placed by the scheduler.
#
#   bash scripts/count_syscalls.sh [--seconds S] [--rounds N]
#                                  [--baseline LIBRARY [--baseline-label TEXT]] [--write]
#
# --baseline adds a column for another build of the preload library (for
# example one built from an older commit), run the same way, titled by
# --baseline-label (what it was built from). --write puts
# the tables into docs/benchmarks.md (section syscalls). Runs as root, inside
# a fresh network namespace with only loopback up.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
arguments=("$@")
seconds=3
rounds=3
baseline=
baseline_label=baseline
write=0
while (($#)); do
  case $1 in
    --seconds) seconds=$2; shift ;;
    --rounds) rounds=$2; shift ;;
    --baseline) baseline=$(realpath "$2"); shift ;;
    --baseline-label) baseline_label=$2; shift ;;
    --write) write=1 ;;
    -h | --help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "count_syscalls.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

NETACCEL=${NETACCEL:-$repo/build/bin/netaccel}
for tool in "$NETACCEL" redis-server redis-benchmark redis-cli perf taskset unshare ip python3; do
  command -v "$tool" >/dev/null || { echo "count_syscalls.sh: $tool not found" >&2; exit 1; }
done
[[ -z $baseline || -r $baseline ]] || { echo "count_syscalls.sh: no $baseline" >&2; exit 1; }

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
  local pid=$1 i child
  for ((i = 0; i < 100; i++)); do
    child=$(pgrep -P "$pid" | head -n 1 || true)
    [[ -n $child ]] && { echo "$child"; return; }
    sleep 0.02
  done
  echo "count_syscalls.sh: no child of $pid" >&2
  exit 1
}

# The calls named in the tables; the rest count as "other".
named_calls=(epoll_wait epoll_pwait epoll_ctl poll ppoll sched_yield read write recvfrom sendto
  futex membarrier getpid fcntl close)
events=raw_syscalls:sys_enter
for call in "${named_calls[@]}"; do events+=",syscalls:sys_enter_$call"; done
# count_window PORT SERVER CLIENT: the calls of both processes, "side name count"
# lines in $tmp/counts, and in $tmp/requests the requests served meanwhile.
# The counters run while a command reads the server's request count, sleeps
# and reads it again, so the requests counted fall within the window.
count_window() {
  local port=$1 server=$2 client=$3
  local server_tasks
  server_tasks=$(ls "/proc/$server/task" | tr '\n' ' ')
  perf stat --per-thread -x, -e "$events" -p "$server,$client" -- bash -c "
    redis-cli -p $port info stats >$tmp/before; sleep $seconds; redis-cli -p $port info stats >$tmp/after
  " 2>"$tmp/perf.out" >/dev/null
  awk -F, -v server_tasks=" $server_tasks" '$4 ~ /sys_enter/ {
      tid = $1; sub(/.*-/, "", tid)
      side = index(server_tasks, " " tid " ") ? "server" : "client"
      name = $4; sub(/.*sys_enter_?/, "", name)
      count[side " " (name == "" ? "all" : name)] += ($2 ~ /^[0-9]+$/ ? $2 : 0)
    }
    END { for (key in count) print key, count[key] }' "$tmp/perf.out" >"$tmp/counts"
  local before after
  before=$(tr -d '\r' <"$tmp/before" | sed -n 's/^total_commands_processed://p')
  after=$(tr -d '\r' <"$tmp/after" | sed -n 's/^total_commands_processed://p')
  # Less the INFO that read the count.
  echo $((after - before - 1)) >"$tmp/requests"
}

"$NETACCEL" daemon --socket "$sock" </dev/null >"$tmp/monitor.log" 2>&1 &
pids+=($!)
for ((i = 0; i < 200; i++)); do
  "$NETACCEL" status --socket "$sock" --json >/dev/null 2>&1 && break
  sleep 0.05
done
redis_args=(--save '' --appendonly no --protected-mode no --daemonize no)

# One server per path. A path is "kernel", "netaccel" or "baseline".
declare -A port server_pid
prefix_of() {  # the command prefix that puts a process on the path
  case $1 in
    kernel) ;;
    netaccel) echo "$NETACCEL run --socket $sock --" ;;
    baseline) echo "env NETACCEL_PRELOAD=$baseline $NETACCEL run --socket $sock --" ;;
  esac
}
paths=(kernel netaccel)
[[ -n $baseline ]] && paths+=(baseline)
next_port=7301
for path in "${paths[@]}"; do
  port[$path]=$next_port
  next_port=$((next_port + 1))
  # shellcheck disable=SC2046 # the prefix is words
  bg "redis-$path" $(prefix_of "$path") taskset -c 0 redis-server --port "${port[$path]}" "${redis_args[@]}"
  server_pid[$path]=$(child_of "$last")
  wait_listen "${port[$path]}"
done

# measure PATH PLACEMENT ROUND: one window; appends to $tmp/results.
measure() {
  local path=$1 placement=$2 round=$3 client_cpu=1
  if [[ $placement == scheduler ]]; then
    client_cpu=0-$(($(nproc) - 1))
    taskset -a -p -c "$client_cpu" "${server_pid[$path]}" >/dev/null
  else
    taskset -a -p -c 0 "${server_pid[$path]}" >/dev/null
  fi
  # shellcheck disable=SC2046
  bg "bench-$path" $(prefix_of "$path") taskset -c "$client_cpu" \
    redis-benchmark -p "${port[$path]}" -c 1 -n 100000000 -t get -q
  local client
  client=$(child_of "$last")
  sleep 1  # past the connection and the first requests
  count_window "${port[$path]}" "${server_pid[$path]}" "$client"
  kill -TERM "$client" 2>/dev/null || true
  wait "$last" 2>/dev/null || true
  awk -v path="$path" -v placement="$placement" -v round="$round" -v requests="$(cat "$tmp/requests")" \
    -v seconds="$seconds" '{ print path, placement, round, $1, $2, $3, requests, seconds }' \
    "$tmp/counts" >>"$tmp/results"
}

: >"$tmp/results"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for ((round = 1; round <= rounds; round++)); do
  for placement in pinned scheduler; do
    for path in "${paths[@]}"; do
      measure "$path" "$placement" "$round"
    done
  done
  echo "round $round of $rounds done" >&2
done

tables=$(python3 - "$tmp/results" "$baseline_label" "${paths[@]}" <<'EOF'
import collections, sys
results, baseline_label, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
titles = {"kernel": "kernel", "netaccel": "netaccel", "baseline": f"netaccel ({baseline_label})"}
# (path, placement, side) -> round -> {call: count}; requests and seconds per round
calls = collections.defaultdict(lambda: collections.defaultdict(dict))
requests = {}
for line in open(results):
    path, placement, round_, side, call, count, reqs, seconds = line.split()
    calls[(path, placement, side)][round_][call] = int(count) if count.isdigit() else 0
    requests[(path, placement, round_)] = (int(reqs), float(seconds))

def span(values, digits=2):
    low, high = min(values), max(values)
    text = lambda v: f"{v:.{digits}f}"
    return text(low) if text(low) == text(high) else f"{text(low)}–{text(high)}"

for placement, heading in (("pinned", "server and client pinned to separate cores"),
                           ("scheduler", "placed by the scheduler")):
    print(f"redis -c 1 GET, {heading}:\n")
    print("| | " + " | ".join(titles[p] for p in paths) + " |")
    print("|---" * (len(paths) + 1) + "|")
    rate = []
    for p in paths:
        rounds = [r for (q, pl, r) in requests if q == p and pl == placement]
        rate.append(span([requests[(p, placement, r)][0] / requests[(p, placement, r)][1] / 1000
                          for r in rounds], 1) + " k")
    print("| requests/s while counted | " + " | ".join(rate) + " |")
    for side in ("server", "client"):
        row = []
        for p in paths:
            per_round = calls[(p, placement, side)]
            row.append(span([per_round[r].get("all", 0) / requests[(p, placement, r)][0]
                             for r in per_round]))
        print(f"| {side}: system calls per request | " + " | ".join(row) + " |")
        # The calls that make up at least 0.01 per request on some path, largest first.
        names = collections.Counter()
        for p in paths:
            for r, counts in calls[(p, placement, side)].items():
                for call, count in counts.items():
                    if call != "all":
                        names[call] = max(names[call], count / requests[(p, placement, r)][0])
        for call, most in names.most_common():
            if most < 0.01:
                continue
            row = []
            for p in paths:
                per_round = calls[(p, placement, side)]
                row.append(span([per_round[r].get(call, 0) / requests[(p, placement, r)][0]
                                 for r in per_round]))
            print(f"| &nbsp;&nbsp;{side} `{call}` | " + " | ".join(row) + " |")
    print()
EOF
)
echo
echo "$tables"

if [[ $write == 1 ]]; then
  {
    echo "## System calls per request on the data path"
    echo
    echo "redis-server serving \`redis-benchmark -c 1 -t get\`, both ends on the"
    echo "kernel's loopback or both under \`netaccel run\`, counted from the processes"
    echo "(perf: \`raw_syscalls:sys_enter\` and one \`syscalls:sys_enter_*\` tracepoint per"
    echo "named call, ${seconds} s windows of a running benchmark, $rounds rounds, ranges over"
    echo "the rounds; \`scripts/count_syscalls.sh --write\`). These counts do not"
    echo "depend on what a system call costs on the machine; the request rates do"
    echo "(load average $load_before on $(nproc) CPUs when the run began)."
    if [[ -n $baseline ]]; then
      echo "\"netaccel ($baseline_label)\" is another build of the preload library"
      echo "(\`--baseline\`), run the same way."
    fi
    echo
    echo "Where the scheduler puts server and client on one core (a busy machine"
    echo "does), a \`sched_yield\` is the turn handed to the peer: at most one per"
    echo "request on each side, where the kernel's path sleeps and wakes."
    echo
    echo "$tables"
  } | python3 "$repo/scripts/replace_section.py" "$repo/docs/benchmarks.md" syscalls
  echo "docs/benchmarks.md: section syscalls written"
fi
