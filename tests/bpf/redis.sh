#!/usr/bin/env bash
# Unmodified redis-server and redis-benchmark, NOT preloaded, in two
# containers made by the CNI bridge plugin: attached, the sockmap path must
# carry their bytes (its counters say so) and the data must come back
# intact; detached, the same must work over the bridge with nothing left.
# The server runs before attach, in a cgroup of its own: sock_ops at the
# cgroup v2 root serves it all the same.
# shellcheck source-path=SCRIPTDIR source=../integration/lib.sh
source "$(dirname "$(readlink -f "$0")")/../integration/lib.sh"
na_init "$@"
# shellcheck source-path=SCRIPTDIR source=containers.sh
source "$(dirname "$NA_SELF")/containers.sh"
na_require_tools redis-server redis-benchmark redis-cli jq sha256sum
na_containers_init

readonly PORT=6391 REQUESTS=20000 CLIENTS=20 VALUE_BYTES=262144
na_container_add na-client
na_container_add na-server
SERVER=${NA_IP[na-server]}

na_step "containers running before attach"
na_container_bg na-server redis-server redis-server --port "$PORT" --bind 0.0.0.0 :: \
  --protected-mode no --save '' --appendonly no
# The client container's resident process, as a runtime's pause container.
na_container_bg na-client resident sleep "$NA_PROC_TIMEOUT"
na_container_wait_listen na-server "$PORT"
head -c "$VALUE_BYTES" /dev/urandom | base64 -w 0 >"$NA_TMP/value"

commands_processed() {
  na_container_run na-client redis-cli -h "$SERVER" -p "$PORT" info stats |
    tr -d '\r' | awk -F: '$1 == "total_commands_processed" {print $2}'
}

# run_workload LABEL: a large SET/GET checked byte for byte, then
# redis-benchmark whose requests the server must have processed.
run_workload() {
  local label=$1 before after
  na_container_run na-client redis-cli -h "$SERVER" -p "$PORT" -x set "big-$label" \
    <"$NA_TMP/value" >/dev/null || na_fail "$label: SET failed"
  na_container_run na-client redis-cli -h "$SERVER" -p "$PORT" --raw get "big-$label" |
    head -c "$(stat -c %s "$NA_TMP/value")" >"$NA_TMP/got" || na_fail "$label: GET failed"
  [[ $(sha256sum <"$NA_TMP/got") == $(sha256sum <"$NA_TMP/value") ]] ||
    na_fail "$label: the value read back differs from the one written"
  before=$(commands_processed)
  na_container_run na-client redis-benchmark -h "$SERVER" -p "$PORT" -c "$CLIENTS" \
    -n "$REQUESTS" -t set,get,lpush,lpop --csv >"$NA_TMP/bench-$label.csv" ||
    na_fail "$label: redis-benchmark failed"
  after=$(commands_processed)
  ((after - before >= 4 * REQUESTS)) ||
    na_fail "$label: the server processed $((after - before)) commands, expected >= $((4 * REQUESTS))"
  na_log "$label: value intact; $((after - before)) commands processed"
  cat "$NA_TMP/bench-$label.csv"
}

# A client connection that lives through attach and detach: one line in,
# one PING round trip, the reply out, through two FIFOs.
declare -A PINGER_IN PINGER_OUT
start_pinger() {
  local name=$1
  mkfifo "$NA_TMP/$name.in" "$NA_TMP/$name.out"
  na_container_run na-client "$NA_PYTHON" -u -c '
import socket, sys
connection = socket.create_connection((sys.argv[1], int(sys.argv[2])))
for _ in sys.stdin:
    connection.sendall(b"PING\r\n")
    print(connection.recv(64).decode().strip())
' "$SERVER" "$PORT" <"$NA_TMP/$name.in" >"$NA_TMP/$name.out" 2>&1 &
  NA_PIDS+=("$!")
  local in out
  exec {in}>"$NA_TMP/$name.in" {out}<"$NA_TMP/$name.out"
  PINGER_IN[$name]=$in
  PINGER_OUT[$name]=$out
}
# ping NAME: the pinger's connection still answers.
ping() {
  local reply=
  echo >&"${PINGER_IN[$1]}"
  read -r -t 10 -u "${PINGER_OUT[$1]}" reply || true
  [[ $reply == +PONG ]] || na_fail "$1: the connection opened earlier got '$reply' instead of +PONG"
}
start_pinger BEFORE_ATTACH
ping BEFORE_ATTACH

na_step "attach both (one by netns name, one by PID)"
"$NETACCEL" attach na-server || na_fail "attach na-server failed"
"$NETACCEL" attach "$(na_container_pid na-client)" || na_fail "attach by PID failed"
"$NETACCEL" status >"$NA_TMP/status.txt" 2>&1
cat "$NA_TMP/status.txt"
for name in na-client na-server; do
  grep -q "^  $name .*XDP native" "$NA_TMP/status.txt" || na_fail "status does not list $name"
done
grep -q 'sock_ops_link .*cgroup program sockops_track' "$NA_TMP/status.txt" ||
  na_fail "status shows no sock_ops link"
# One link at the cgroup v2 root serves both containers.
link_id=$(na_sock_ops_link_id)
cgroup_root=$(findmnt -n -t cgroup2 -o TARGET | head -n 1)
bpftool cgroup show "$cgroup_root" | grep -q "sock_ops .*sockops_track" ||
  na_fail "no sock_ops program at the cgroup v2 root $cgroup_root"
[[ $(bpftool map dump pinned /sys/fs/bpf/netaccel/attached_netns | jq length) == 2 ]] ||
  na_fail "attached_netns does not hold both namespaces"

ping BEFORE_ATTACH
start_pinger WHILE_ATTACHED
ping WHILE_ATTACHED

na_step "status --json keeps the monitor's fields and adds the containers"
na_start_monitor
na_status_json >"$NA_TMP/status.json" || na_fail "status --json failed"
jq -e '(.connections_total | type) == "number" and ([.bpf.containers[].name] | sort) == ["na-client", "na-server"]' \
  "$NA_TMP/status.json" >/dev/null || na_fail "status --json: $(cat "$NA_TMP/status.json")"

na_step "pinned maps carry BTF: bpftool prints named fields"
bpftool map dump pinned /sys/fs/bpf/netaccel/na-server/container_record | tee "$NA_TMP/record.json"
jq -e --arg ip "$SERVER" '.[0].value | .name == "na-server" and .netns_inode > 0 and .ifname[0] == "eth0"' \
  "$NA_TMP/record.json" >/dev/null || na_fail "container_record lacks named fields"
bpftool map dump pinned /sys/fs/bpf/netaccel/local_endpoints | grep -q '"container_id":' ||
  na_fail "local_endpoints shows no container_id field"
bpftool map dump pinned /sys/fs/bpf/netaccel/na-client/container_stats | grep -q '"packets":' ||
  na_fail "container_stats shows no packets field"

na_step "redis across the containers on the sockmap path"
run_workload attached
ping BEFORE_ATTACH
ping WHILE_ATTACHED
reports=$(na_timeout 10 "$NETACCEL" stats --watch --json --interval 0.2 | head -n 3 | jq -c '.containers | length')
[[ $reports == $'2\n2\n2' ]] || na_fail "stats --watch --json gave: $reports"
"$NETACCEL" stats
for name in na-client na-server; do
  redirected=$(na_stat "$name" sockmap redirected_bytes)
  added=$(na_stat "$name" sockmap sockets_added)
  packets=$(na_stat "$name" xdp packets)
  na_log "$name: sockmap redirected $redirected bytes, $added sockets; XDP saw $packets packets"
  ((redirected >= VALUE_BYTES)) || na_fail "$name: the sockmap carried $redirected bytes, expected >= $VALUE_BYTES"
  ((added >= CLIENTS)) || na_fail "$name: $added sockets entered the sockhash, expected >= $CLIENTS"
  ((packets > 0)) || na_fail "$name: the XDP classifier counted no packets"
done

na_step "the XDP classifier saw the flows and its steering map drops by policy"
bpftool map dump pinned /sys/fs/bpf/netaccel/na-server/flow_stats >"$NA_TMP/flows.json"
jq -e --argjson port "$PORT" 'any(.[]; .key.destination_port == $port and .key.protocol == 6 and .value.packets > 0)' \
  "$NA_TMP/flows.json" >/dev/null || na_fail "na-server's flow_stats has no flow to port $PORT"
can_connect() {
  # shellcheck disable=SC2016  # expanded by the inner shell
  na_container_run na-client timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$SERVER" "$PORT" 2>/dev/null
}
can_connect || na_fail "cannot connect before steering"
# (destination port, TCP) -> drop; the key and value layouts of netaccel_bpf.h, little-endian.
steer_key=(hex "$(printf '%02x' $((PORT & 0xff)))" "$(printf '%02x' $((PORT >> 8)))" 06 00)
bpftool map update pinned /sys/fs/bpf/netaccel/na-server/steering key "${steer_key[@]}" \
  value hex 02 00 00 00 00 00 00 00 || na_fail "cannot fill the steering map"
can_connect && na_fail "connected although the steering map drops port $PORT"
dropped=$(na_stat na-server xdp dropped)
((dropped > 0)) || na_fail "the classifier counted no drop"
bpftool map delete pinned /sys/fs/bpf/netaccel/na-server/steering key "${steer_key[@]}"
can_connect || na_fail "cannot connect once the steering entry is gone"
na_log "flows counted; steering dropped $dropped packets, then let them through again"

na_step "IPv6 between the containers on the sockmap path"
before=$(na_stat na-server sockmap redirected_bytes)
na_container_run na-client redis-cli -h "${NA_IP6[na-server]}" -p "$PORT" --raw get big-attached |
  head -c "$(stat -c %s "$NA_TMP/value")" >"$NA_TMP/got6" || na_fail "GET over IPv6 failed"
[[ $(sha256sum <"$NA_TMP/got6") == $(sha256sum <"$NA_TMP/value") ]] ||
  na_fail "the value read over IPv6 differs from the one written"
after=$(na_stat na-server sockmap redirected_bytes)
((after - before >= VALUE_BYTES)) ||
  na_fail "IPv6: the sockmap carried $((after - before)) bytes of the reply, expected >= $VALUE_BYTES"
na_log "IPv6: value intact, the sockmap carried $((after - before)) bytes of the reply"

na_step "detach (one by cgroup, one by name): nothing left"
"$NETACCEL" detach "${NA_CGROUP[na-client]}" || na_fail "detach by cgroup failed"
"$NETACCEL" detach na-server || na_fail "detach na-server failed"
[[ ! -e /sys/fs/bpf/netaccel ]] || na_fail "pins left behind: $(find /sys/fs/bpf/netaccel)"
state=$(na_bpf_state)
grep -q 'prog/xdp' <<<"$state" && na_fail "XDP still attached: $state"
grep -q 'sockops' <<<"$state" && na_fail "sock_ops still attached: $state"
na_expect_link_gone "$link_id"

ping BEFORE_ATTACH
ping WHILE_ATTACHED

na_step "redis again over the plain bridge"
run_workload detached
[[ $("$NETACCEL" stats) == "no container attached" ]] || na_fail "stats still lists containers"
na_pass
