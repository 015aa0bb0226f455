#!/usr/bin/env bash
# netaccel against the kernel, side by side, on real applications:
#   1. redis-server + redis-benchmark (-c 1 and -c 50, SET and GET), once on
#      the kernel's loopback and once with both ends under `netaccel run`;
#   2. nginx (Debian's default settings) + wrk, with and without keep-alive;
#   3. `netaccel bench`, which measures message rate, round-trip latency,
#      throughput and connection setup on both paths and writes
#      docs/benchmarks.md;
#   4. between two containers on Debian's CNI bridge: the kernel bridge, the
#      sockmap short-circuit and tier 0 (shared memory across containers),
#      scripts/bench_bpf.sh;
#   5. between two containers on Debian's CNI bridge, kernel TCP against the
#      user-space stack (lwIP over AF_XDP), scripts/bench_stack.sh.
# Everything runs inside a fresh network namespace with only loopback up.
#
#   bash scripts/demo.sh [--quick]      # after scripts/setup.sh, as root
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
quick=0
for arg in "$@"; do
  case $arg in
    --quick) quick=1 ;;
    -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "demo.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

if [[ -z ${NETACCEL:-} ]]; then
  NETACCEL=$(command -v netaccel || echo "$repo/build/bin/netaccel")
fi
export NETACCEL
for tool in "$NETACCEL" redis-server redis-benchmark nginx wrk unshare ip python3; do
  command -v "$tool" >/dev/null || { echo "demo.sh: $tool not found: run scripts/setup.sh first" >&2; exit 1; }
done

# A private network namespace (the root one's default route leads nowhere,
# and the demo must not meet other servers), as PID 1 of a PID namespace so
# that nothing it starts outlives it.
if [[ ${NETACCEL_DEMO_INSIDE:-} != 1 ]]; then
  exec unshare --net --pid --fork --kill-child --mount-proc \
    env NETACCEL_DEMO_INSIDE=1 bash "$0" "$@"
fi
ip link set lo up

tmp=$(mktemp -d /tmp/netaccel-demo.XXXXXX)
sock=$tmp/monitor.sock
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  sleep 0.2
  rm -rf "$tmp"
}
trap cleanup EXIT

section() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
bg() {  # bg NAME CMD...: a background process, bounded, logged
  local name=$1
  shift
  timeout -k 5 3600 "$@" </dev/null >"$tmp/$name.log" 2>&1 &
  pids+=($!)
}
wait_listen() {
  local port=$1 i
  for ((i = 0; i < 200; i++)); do
    [[ -n $(ss -Hltn "sport = :$port") ]] && return 0
    sleep 0.05
  done
  echo "demo.sh: nothing listens on port $port; log:" >&2
  cat "$tmp"/*.log >&2
  exit 1
}
connections_total() {
  "$NETACCEL" status --socket "$sock" --json 2>/dev/null | python3 -c '
import json, sys
def find(node):
    if isinstance(node, dict):
        if "connections_total" in node:
            return node["connections_total"]
        node = list(node.values())
    if isinstance(node, list):
        for child in node:
            found = find(child)
            if found is not None:
                return found
    return None
try:
    print(int(find(json.load(sys.stdin)) or 0))
except Exception:
    print(0)'
}

section "netaccel monitor"
bg monitor "$NETACCEL" daemon --socket "$sock"
for ((i = 0; i < 200; i++)); do
  "$NETACCEL" status --socket "$sock" --json >/dev/null 2>&1 && break
  sleep 0.05
done
"$NETACCEL" status --socket "$sock" --json >/dev/null || { cat "$tmp/monitor.log" >&2; exit 1; }
echo "monitor on $sock"
run=("$NETACCEL" run --socket "$sock" --)

# ---------------------------------------------------------------------------
section "redis-server + redis-benchmark: kernel loopback vs netaccel"
requests=100000
if [[ $quick == 1 ]]; then requests=20000; fi
kernel_port=7001 netaccel_port=7002
redis_args=(--save '' --appendonly no --protected-mode no --daemonize no)
bg redis-kernel redis-server --port "$kernel_port" "${redis_args[@]}"
bg redis-netaccel "${run[@]}" redis-server --port "$netaccel_port" "${redis_args[@]}"
wait_listen "$kernel_port"
wait_listen "$netaccel_port"

# bench_csv PORT CLIENTS [prefix...]: prints "SET rps p50 / GET rps p50".
bench_csv() {
  local port=$1 clients=$2
  shift 2
  timeout 600 "$@" redis-benchmark -p "$port" -c "$clients" -n "$requests" -t "set,get" --csv </dev/null |
    python3 -c '
import csv, sys
rows = {r["test"]: r for r in csv.DictReader(sys.stdin)}
print(" ".join("%s %s" % (rows[t]["rps"], rows[t]["p50_latency_ms"]) for t in ("SET", "GET")))'
}

before=$(connections_total)
redis_markdown=$tmp/redis.md  # its own section of docs/benchmarks.md, below
{
  echo "## Real applications: redis-server + redis-benchmark"
  echo
  echo "Measured by \`scripts/demo.sh\` in the same run as the table above: Debian's"
  echo "unmodified redis-server and redis-benchmark (-n $requests, SET and GET), both on"
  echo "the kernel's loopback, then both under \`netaccel run\`."
  echo
  echo "| clients | test | kernel req/s | netaccel req/s | ratio | kernel p50 ms | netaccel p50 ms |"
  echo "|---|---|---|---|---|---|---|"
} >"$redis_markdown"
printf '%-10s %-5s %16s %16s %8s   %14s %14s\n' "clients" "test" "kernel req/s" "netaccel req/s" "ratio" "kernel p50 ms" "netaccel p50"
for clients in 1 50; do
  kernel_result=$(bench_csv "$kernel_port" "$clients")
  netaccel_result=$(bench_csv "$netaccel_port" "$clients" "${run[@]}")
  read -r k_set k_set_p50 k_get k_get_p50 <<<"$kernel_result"
  read -r n_set n_set_p50 n_get n_get_p50 <<<"$netaccel_result"
  for t in SET GET; do
    if [[ $t == SET ]]; then k=$k_set n=$n_set kp=$k_set_p50 np=$n_set_p50; else k=$k_get n=$n_get kp=$k_get_p50 np=$n_get_p50; fi
    ratio=$(python3 -c "print('%.1fx' % ($n / $k))")
    printf '%-10s %-5s %16s %16s %8s   %14s %14s\n' "-c $clients" "$t" "$k" "$n" "$ratio" "$kp" "$np"
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$clients" "$t" "$k" "$n" "$ratio" "$kp" "$np" >>"$redis_markdown"
  done
done
after=$(connections_total)
echo "(-n $requests each; netaccel carried $((after - before)) connections during the netaccel runs)"
if ((after - before < 4)); then
  echo "WARNING: connections_total did not grow: the 'netaccel' column went through the kernel" >&2
fi

# ---------------------------------------------------------------------------
section "nginx + wrk: kernel loopback vs netaccel"
# Debian's nginx with Debian's default settings, twice: on the kernel and
# under netaccel; wrk -c 50 on each, with keep-alive and with one request per
# connection, the two modes alternating over the rounds.
nginx_seconds=5 nginx_rounds=3
if [[ $quick == 1 ]]; then nginx_seconds=2 nginx_rounds=1; fi
www=$tmp/www
mkdir -p "$www"
seq 1 200 | sed 's/^/line /' >"$www/index.txt"
chmod -R a+rX "$tmp"
nginx_conf=$repo/tests/integration/apps/nginx_conf.sh
mkdir -p "$tmp/nginx-kernel" "$tmp/nginx-netaccel"
"$nginx_conf" "$tmp/nginx-kernel" 7101 "$www" >"$tmp/nginx-kernel.conf"
"$nginx_conf" "$tmp/nginx-netaccel" 7102 "$www" >"$tmp/nginx-netaccel.conf"
# The load generator and the server on separate cores, as benchmarks place
# them, for both paths alike: on two cores the scheduler otherwise mixes
# four busy threads differently from run to run (a last row shows that).
server_cpu=() client_cpu=()
if (($(nproc) >= 2)); then server_cpu=(taskset -c 1) client_cpu=(taskset -c 0); fi
"${server_cpu[@]}" nginx -c "$tmp/nginx-kernel.conf"
"${server_cpu[@]}" "${run[@]}" nginx -c "$tmp/nginx-netaccel.conf"
wait_listen 7101
wait_listen 7102
# wrk_rate PORT [ARGS...] [-- PREFIX...]: requests/s, or 0 with errors.
wrk_rate() {
  local port=$1 header=$2
  shift 2
  local -a args=(-t 2 -c 50 -d "${nginx_seconds}s")
  if [[ $header == close ]]; then args+=(-H "Connection: close"); fi
  timeout 120 "${client_cpu[@]}" "$@" wrk "${args[@]}" "http://127.0.0.1:$port/index.txt" </dev/null 2>&1 | python3 -c '
import re, sys
text = sys.stdin.read()
errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
errors += sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", text))
rate = re.search(r"Requests/sec:\s+([0-9.]+)", text)
print("%s %d" % (rate.group(1) if rate else "0", errors))'
}
median() { python3 -c 'import statistics, sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
nginx_before=$(connections_total)
nginx_markdown=$tmp/nginx.md
{
  echo "## Real applications: nginx + wrk"
  echo
  echo "Measured by \`scripts/demo.sh\`: Debian's nginx with Debian's default settings"
  echo "(\`tests/integration/apps/nginx_conf.sh\`: master + \`worker_processes auto\`, sendfile on),"
  echo "serving a 1.3 KB file to \`wrk -t 2 -c 50 -d ${nginx_seconds}s\`, both on the kernel's loopback,"
  echo "then both under \`netaccel run\`; median of $nginx_rounds rounds, the modes alternating."
  if ((${#server_cpu[@]} > 0)); then
    echo "wrk runs on CPU 0 and nginx on CPU 1 for both paths (load generator and server apart),"
    echo "but in the last row, where the scheduler places all of them: on two cores that figure"
    echo "varies most from run to run, as four busy threads land differently each time."
  fi
  echo
  echo "| connections | kernel req/s | netaccel req/s | ratio | failed requests (kernel / netaccel) |"
  echo "|---|---|---|---|---|"
} >"$nginx_markdown"
printf '%-28s %14s %14s %8s %s\n' "connections" "kernel req/s" "netaccel req/s" "ratio" "failed (kernel/netaccel)"
# compare_rates LABEL HEADER: one row, both paths, median of the rounds.
compare_rates() {
  local label=$1 header=$2 k n ratio rate failed
  local -a kernel_rates=() netaccel_rates=()
  local kernel_failed=0 netaccel_failed=0
  for ((round = 0; round < nginx_rounds; round++)); do
    read -r rate failed <<<"$(wrk_rate 7101 "$header")"
    kernel_rates+=("$rate") kernel_failed=$((kernel_failed + failed))
    read -r rate failed <<<"$(wrk_rate 7102 "$header" "${run[@]}")"
    netaccel_rates+=("$rate") netaccel_failed=$((netaccel_failed + failed))
  done
  k=$(median "${kernel_rates[@]}") n=$(median "${netaccel_rates[@]}")
  ratio=$(python3 -c "print('%.2fx' % ($n / $k) if $k > 0 else 'n/a')")
  printf '%-28s %14.0f %14.0f %8s %s / %s\n' "$label" "$k" "$n" "$ratio" "$kernel_failed" "$netaccel_failed"
  printf '| %s | %.0f | %.0f | %s | %s / %s |\n' "$label" "$k" "$n" "$ratio" "$kernel_failed" "$netaccel_failed" >>"$nginx_markdown"
}
compare_rates keep-alive keep-alive
compare_rates "one request per connection" close
# The same load while `nginx -s reload` replaces the workers three times: the
# kernel's shared accept queue loses nothing, and neither may netaccel.
reload_rate() {
  local conf=$1 port=$2 out=$tmp/reload-rate
  shift 2
  wrk_rate "$port" close "$@" >"$out" &
  local wrk_pid=$!
  for _ in 1 2 3; do
    sleep "$(python3 -c "print($nginx_seconds / 4)")"
    nginx -c "$conf" -s reload 2>/dev/null
  done
  wait "$wrk_pid"
  cat "$out"
}
read -r k kernel_failed <<<"$(reload_rate "$tmp/nginx-kernel.conf" 7101)"
read -r n netaccel_failed <<<"$(reload_rate "$tmp/nginx-netaccel.conf" 7102 "${run[@]}")"
ratio=$(python3 -c "print('%.2fx' % ($n / $k) if $k > 0 else 'n/a')")
label="one per connection, 3 reloads"
printf '%-28s %14.0f %14.0f %8s %s / %s\n' "$label" "$k" "$n" "$ratio" "$kernel_failed" "$netaccel_failed"
printf '| one request per connection, three `nginx -s reload` during the run | %.0f | %.0f | %s | %s / %s |\n' \
  "$k" "$n" "$ratio" "$kernel_failed" "$netaccel_failed" >>"$nginx_markdown"
if ((${#server_cpu[@]} > 0)); then
  # Both nginx instances (their masters and current workers) may now run
  # anywhere, and so may wrk.
  for instance in nginx-kernel nginx-netaccel; do
    master=$(cat "$tmp/$instance/nginx.pid")
    for pid in "$master" $(pgrep -P "$master"); do
      taskset -a -p -c "0-$(($(nproc) - 1))" "$pid" >/dev/null
    done
  done
  client_cpu=()
  compare_rates "keep-alive, any CPU" keep-alive
fi
nginx_after=$(connections_total)
echo "(netaccel carried $((nginx_after - nginx_before)) connections during the netaccel nginx runs)"
nginx -c "$tmp/nginx-kernel.conf" -s stop || true
nginx -c "$tmp/nginx-netaccel.conf" -s stop || true

# ---------------------------------------------------------------------------
section "netaccel bench (kernel TCP loopback vs netaccel)"
bench_args=(--output "$repo/docs/benchmarks.md" --plot "$repo/docs/bench.svg")
if [[ $quick == 1 ]]; then bench_args+=(--quick); fi
stamp=$tmp/bench-started
touch "$stamp"
NETACCEL_SOCKET=$sock "$NETACCEL" bench "${bench_args[@]}"
if [[ $repo/docs/benchmarks.md -nt $stamp ]]; then
  echo "(netaccel carried $((after - before)) connections during the netaccel redis runs.)" >>"$redis_markdown"
  python3 "$repo/scripts/replace_section.py" "$repo/docs/benchmarks.md" redis <"$redis_markdown"
  echo "(netaccel carried $((nginx_after - nginx_before)) connections during the netaccel nginx runs.)" >>"$nginx_markdown"
  python3 "$repo/scripts/replace_section.py" "$repo/docs/benchmarks.md" nginx <"$nginx_markdown"
  printf '\nfigures written to docs/benchmarks.md\n'
fi

# run_container_bench SCRIPT WHAT [QUICK_ENV...]: a container benchmark that
# writes its own section of docs/benchmarks.md; a skip (77) is said, not fatal.
run_container_bench() {
  local script=$1 what=$2 status=0
  shift 2
  local -a quick_env=()
  if [[ $quick == 1 ]]; then quick_env=("$@"); fi
  env "${quick_env[@]}" NA_BENCH_OUTPUT="$repo/docs/benchmarks.md" \
    bash "$repo/scripts/$script" "$(dirname "$NETACCEL")" || status=$?
  if [[ $status == 77 ]]; then
    echo "(the $what comparison was skipped: see its reason above)"
  elif [[ $status != 0 ]]; then
    exit "$status"
  fi
}

# ---------------------------------------------------------------------------
section "containers: kernel bridge vs sockmap vs tier 0 (shared memory across containers)"
run_container_bench bench_bpf.sh container NA_BENCH_ROUNDS=1 NA_BENCH_SECONDS=2

# ---------------------------------------------------------------------------
section "containers: kernel TCP vs the user-space stack (lwIP over AF_XDP)"
run_container_bench bench_stack.sh "user-space stack" \
  NA_BENCH_ROUNDS=1 NA_BENCH_EXCHANGES=5000 NA_BENCH_BULK_MIB=64
