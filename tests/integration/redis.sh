#!/usr/bin/env bash
# redis-server and redis-benchmark / redis-cli, both ends under netaccel:
# every benchmark request completes (-c 1 and -c 50, SET and GET), as it
# does on the kernel in the same run, and a 1 MiB value written with
# redis-cli reads back byte for byte.
set -uo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
na_require_tools redis-server redis-benchmark redis-cli
na_init "$@"

port_netaccel=16379 port_kernel=16380 requests=20000

na_start_monitor

redis_args=(--save '' --appendonly no --daemonize no --protected-mode no --loglevel notice)
na_bg redis-netaccel "${NA_RUN[@]}" redis-server --port "$port_netaccel" "${redis_args[@]}"
na_bg redis-kernel redis-server --port "$port_kernel" "${redis_args[@]}"
na_wait_listen "$port_netaccel"
na_wait_listen "$port_kernel"

# commands_processed PORT [netaccel]: sets COMMANDS from INFO stats.
commands_processed() {
  local port=$1 mode=${2:-kernel} info
  if [[ $mode == netaccel ]]; then
    info=$(na_timeout 20 "${NA_RUN[@]}" redis-cli -p "$port" INFO stats) || na_fail "redis-cli INFO on port $port failed"
  else
    info=$(na_timeout 20 redis-cli -p "$port" INFO stats) || na_fail "redis-cli INFO on port $port failed"
  fi
  COMMANDS=$(tr -d '\r' <<<"$info" | sed -n 's/^total_commands_processed://p')
  [[ $COMMANDS =~ ^[0-9]+$ ]] || na_fail "no total_commands_processed in INFO of port $port"
}

# benchmark MODE PORT CLIENTS: runs redis-benchmark, checks that SET and
# GET completed every request; sets RPS_SET and RPS_GET.
benchmark() {
  local mode=$1 port=$2 clients=$3
  local csv=$NA_TMP/bench-$mode-c$clients.csv err=$NA_TMP/bench-$mode-c$clients.err
  local -a cmd=(redis-benchmark -p "$port" -c "$clients" -n "$requests" -t "set,get" --csv)
  commands_processed "$port" "$mode"
  local before=$COMMANDS
  local rc=0
  if [[ $mode == netaccel ]]; then
    na_timeout 180 "${NA_RUN[@]}" "${cmd[@]}" >"$csv" 2>"$err" || rc=$?
  else
    na_timeout 180 "${cmd[@]}" >"$csv" 2>"$err" || rc=$?
  fi
  if [[ $rc -ne 0 ]]; then
    cat "$csv" "$err" >&2
    na_fail "$mode: redis-benchmark -c $clients exited with $rc"
  fi
  local rates
  rates=$(python3 - "$csv" <<'EOF'
import csv, sys
rows = {row["test"]: row for row in csv.DictReader(open(sys.argv[1]))}
out = []
for test in ("SET", "GET"):
    if test not in rows:
        sys.exit("no %s row in the CSV" % test)
    rps = float(rows[test]["rps"])
    if rps <= 0:
        sys.exit("%s: %s requests per second" % (test, rps))
    out.append("%.0f" % rps)
print(" ".join(out))
EOF
  ) || { cat "$csv" "$err" >&2; na_fail "$mode: redis-benchmark -c $clients: incomplete CSV"; }
  read -r RPS_SET RPS_GET <<<"$rates"
  # The server's own count is the proof that every request arrived: SET and
  # GET each sent $requests, plus a few CONFIG GETs and our INFO.
  commands_processed "$port" "$mode"
  local done=$((COMMANDS - before))
  if ((done < 2 * requests)); then
    na_fail "$mode: redis-server processed $done commands for -c $clients, expected at least $((2 * requests))"
  fi
  na_log "$mode -c $clients: SET $RPS_SET req/s, GET $RPS_GET req/s, server processed $done commands"
}

for clients in 1 50; do
  na_step "redis-benchmark -c $clients -n $requests -t set,get"
  benchmark kernel "$port_kernel" "$clients"
  kernel_set=$RPS_SET kernel_get=$RPS_GET
  na_connections_total
  before=$NA_TOTAL
  benchmark netaccel "$port_netaccel" "$clients"
  # Every benchmark opens CLIENTS connections for SET and again for GET.
  na_expect_connections "$before" $((2 * clients)) "redis-benchmark -c $clients"
  na_log "-c $clients  kernel: SET $kernel_set GET $kernel_get | netaccel: SET $RPS_SET GET $RPS_GET (req/s)"
done

na_step "redis-cli SET / GET of a 1 MiB value"
value=$NA_TMP/value
head -c 786432 /dev/urandom | base64 -w 0 >"$value"  # 1 MiB of text, no newline
na_connections_total
before=$NA_TOTAL
reply=$(na_timeout 30 "${NA_RUN[@]}" redis-cli -p "$port_netaccel" -x SET netaccel:value <"$value") ||
  na_fail "redis-cli SET failed"
[[ $(tr -d '\r' <<<"$reply") == OK ]] || na_fail "redis-cli SET answered: $reply"
na_timeout 30 "${NA_RUN[@]}" redis-cli -p "$port_netaccel" --raw GET netaccel:value >"$NA_TMP/got" ||
  na_fail "redis-cli GET failed"
# --raw prints the value and one newline.
if ! cmp -s <(cat "$value"; echo) "$NA_TMP/got"; then
  na_fail "GET returned $(wc -c <"$NA_TMP/got") bytes that differ from the $(wc -c <"$value") bytes SET"
fi
strlen=$(na_timeout 30 "${NA_RUN[@]}" redis-cli -p "$port_netaccel" STRLEN netaccel:value) || na_fail "redis-cli STRLEN failed"
[[ $strlen == "$(wc -c <"$value")" ]] || na_fail "STRLEN says $strlen"
na_expect_connections "$before" 3 "redis-cli SET/GET/STRLEN"

na_pass
