#!/usr/bin/env bash
# Attach and detach around running servers, under load: 20 cycles of
# attaching both containers and detaching both (the last detach frees the
# shared maps each time) while, between the two containers, redis-benchmark
# runs again and again (a new connection per request, so connections are
# made in every state), iperf3 streams run one after another, and one
# connection made while attached exchanges PINGs throughout. No connection
# may break, be refused or lose a byte, every request must be processed,
# and the counters must be consistent while attached. Then one container
# is detached and attached again while the other stays: a stream between
# them must arrive in order.
# shellcheck source-path=SCRIPTDIR source=../integration/lib.sh
source "$(dirname "$(readlink -f "$0")")/../integration/lib.sh"
na_init "$@"
# shellcheck source-path=SCRIPTDIR source=containers.sh
source "$(dirname "$NA_SELF")/containers.sh"
na_require_tools redis-server redis-benchmark redis-cli iperf3 jq
na_containers_init

readonly REDIS_PORT=6396 IPERF_PORT=5216 CYCLES=${NA_ATTACH_CYCLES:-20} REQUESTS=2000
na_container_add na-client
na_container_add na-server
SERVER=${NA_IP[na-server]}
STOP=$NA_TMP/stop

# A connection per request: the client reuses its ports in TIME_WAIT rather
# than run out of them (per-namespace settings).
nsenter --net=/run/netns/na-client sysctl -q -w net.ipv4.tcp_tw_reuse=1 \
  net.ipv4.ip_local_port_range="10000 65000" || na_fail "cannot tune the client's ports"
na_container_bg na-server redis-server redis-server --port "$REDIS_PORT" --bind 0.0.0.0 \
  --protected-mode no --save '' --appendonly no
na_container_bg na-server iperf3-server iperf3 -s -B "$SERVER" -p "$IPERF_PORT"
na_container_wait_listen na-server "$REDIS_PORT"
na_container_wait_listen na-server "$IPERF_PORT"

commands_processed() {
  na_container_run na-client redis-cli -h "$SERVER" -p "$REDIS_PORT" info stats |
    tr -d '\r' | awk -F: '$1 == "total_commands_processed" {print $2}'
}
attach_both() {
  local name
  for name in "$@"; do
    na_timeout 60 "$NETACCEL" attach "$name" >/dev/null 2>"$NA_TMP/attach.err" ||
      na_fail "attach $name failed: $(cat "$NA_TMP/attach.err")"
  done
}
detach_both() {
  local name
  for name in "$@"; do
    na_timeout 60 "$NETACCEL" detach "$name" >/dev/null 2>"$NA_TMP/detach.err" ||
      na_fail "detach $name failed: $(cat "$NA_TMP/detach.err")"
  done
}

before=$(commands_processed)
# The loads, each until $STOP exists; a failure is written to its log as
# a line starting with FAILED.
# shellcheck disable=SC2016  # expanded by the inner shell
na_container_bg na-client redis-load bash -c '
  while [[ ! -e $1 ]]; do
    out=$(redis-benchmark -h "$2" -p "$3" -c 4 -n "$4" -k 0 -t set,get --csv 2>&1) ||
      { echo "FAILED: redis-benchmark exited $?: $out"; exit 1; }
    grep -qi error <<<"$out" && { echo "FAILED: $out"; exit 1; }
    echo "run $(grep -c "^\"\(SET\|GET\)\"" <<<"$out")"
  done' _ "$STOP" "$SERVER" "$REDIS_PORT" "$REQUESTS"
REDIS_LOAD=$NA_LAST_PID
# shellcheck disable=SC2016
na_container_bg na-client iperf-load bash -c '
  while [[ ! -e $1 ]]; do
    iperf3 -c "$2" -p "$3" -t 2 -J >"$4" 2>&1 || { echo "FAILED: iperf3: $(cat "$4")"; exit 1; }
    echo "run $(jq -r .end.sum_received.bytes "$4")"
    sleep 0.2  # the server takes the next test once it has closed this one
  done' _ "$STOP" "$SERVER" "$IPERF_PORT" "$NA_TMP/iperf.json"
IPERF_LOAD=$NA_LAST_PID

na_step "$CYCLES attach/detach cycles under load"
attach_both na-client na-server
# A connection made while attached: it enters the sockhash, and lives
# through every later detach (the last one frees the sockhash) and attach.
na_container_bg na-client pinger "$NA_PYTHON" -u -c '
import os, socket, sys
connection = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
pings = 0
while not os.path.exists(sys.argv[3]):
    connection.sendall(b"PING\r\n")
    reply = b""
    while not reply.endswith(b"\r\n"):
        chunk = connection.recv(64)
        if not chunk:
            sys.exit("FAILED: the connection closed after %d pings" % pings)
        reply += chunk
    if reply != b"+PONG\r\n":
        sys.exit("FAILED: reply %r after %d pings" % (reply, pings))
    pings += 1
print("pings", pings)
' "$SERVER" "$REDIS_PORT" "$STOP"
PINGER=$NA_LAST_PID
sleep 0.3
carried=0
for cycle in $(seq "$CYCLES"); do
  ((cycle == 1)) || attach_both na-client na-server
  sleep 0.3
  "$NETACCEL" stats --json >"$NA_TMP/stats.json" || na_fail "cycle $cycle: stats failed"
  jq -e '[.containers[].sockmap | .sockets <= .sockets_added and .redirected_bytes >= .redirected_msgs] | all and length == 2' \
    "$NA_TMP/stats.json" >/dev/null || na_fail "cycle $cycle: inconsistent counters: $(cat "$NA_TMP/stats.json")"
  redirected=$(jq '[.containers[].sockmap.redirected_bytes] | add' "$NA_TMP/stats.json")
  ((redirected > 0)) && carried=$((carried + 1))
  # Either container may be the last one, whose detach frees the shared maps.
  if ((cycle % 2)); then detach_both na-client na-server; else detach_both na-server na-client; fi
  [[ ! -e /sys/fs/bpf/netaccel ]] || na_fail "cycle $cycle: pins left: $(find /sys/fs/bpf/netaccel)"
  for pid in "$REDIS_LOAD" "$IPERF_LOAD" "$PINGER"; do
    kill -0 "$pid" 2>/dev/null || na_fail "cycle $cycle: a load stopped: $(grep -h FAILED "$NA_TMP"/*-load.log "$NA_TMP/pinger.log")"
  done
  sleep 0.2
done
((carried == CYCLES)) || na_fail "the sockmap carried bytes in only $carried of $CYCLES cycles"

na_step "the loads end cleanly"
touch "$STOP"
for pid in "$REDIS_LOAD" "$IPERF_LOAD" "$PINGER"; do
  na_wait_exit "$pid" 60 "load $pid"
  ((NA_EXIT == 0)) || na_fail "a load failed: $(cat "$NA_TMP/redis-load.log" "$NA_TMP/iperf-load.log" "$NA_TMP/pinger.log")"
done
runs=$(grep -c '^run 2$' "$NA_TMP/redis-load.log")
iperf_runs=$(grep -c '^run [1-9]' "$NA_TMP/iperf-load.log")
pings=$(awk '$1 == "pings" {print $2}' "$NA_TMP/pinger.log")
after=$(commands_processed)
# Each run: REQUESTS SETs and REQUESTS GETs (and redis-benchmark's own
# CONFIG queries); the pinger's PINGs; INFO for the count itself.
((after - before >= runs * 2 * REQUESTS + pings)) ||
  na_fail "the server processed $((after - before)) commands, expected >= $((runs * 2 * REQUESTS + pings))"
((runs >= 2 && iperf_runs >= 2 && pings > 0)) ||
  na_fail "too little load ran: $runs redis-benchmark runs, $iperf_runs iperf3 runs, $pings pings"
na_log "$CYCLES cycles (the sockmap carried bytes in each): $runs redis-benchmark runs of $((2 * REQUESTS)) requests (a connection each), $iperf_runs iperf3 streams, $pings PINGs on one connection, none lost or refused"

na_step "one container detached and attached again while the other stays: a stream stays in order"
# The stream's bytes go over TCP while na-server is detached; had its
# sockets been redirected again after the attach, the bytes redirected then
# would have overtaken those still unread (found so, and fixed: a socket
# keeps the generation of the attachment it entered under).
readonly STREAM_PORT=7796
na_container_bg na-server stream-receiver "$NA_PYTHON" -u -c '
import socket, struct, sys
listener = socket.create_server(("0.0.0.0", int(sys.argv[1])))
connection, _ = listener.accept()
expected, pending = 0, b""
while True:
    data = connection.recv(65536)
    if not data:
        break
    pending += data
    whole = len(pending) // 8
    for i in range(whole):
        value = struct.unpack_from("<Q", pending, 8 * i)[0]
        if value != expected:
            sys.exit("FAILED: counter %d where %d was due" % (value, expected))
        expected += 1
    pending = pending[8 * whole:]
print("counters", expected)
' "$STREAM_PORT"
RECEIVER=$NA_LAST_PID
na_container_wait_listen na-server "$STREAM_PORT"
attach_both na-client na-server
rm -f "$STOP"
na_container_bg na-client stream-sender "$NA_PYTHON" -u -c '
import os, socket, struct, sys
connection = socket.create_connection((sys.argv[1], int(sys.argv[2])))
counter = 0
while not os.path.exists(sys.argv[3]):
    connection.sendall(b"".join(struct.pack("<Q", counter + i) for i in range(512)))
    counter += 512
connection.close()
' "$SERVER" "$STREAM_PORT" "$STOP"
SENDER=$NA_LAST_PID
sleep 0.5
for cycle in $(seq 5); do
  detach_both na-server
  sleep 0.3
  attach_both na-server
  sleep 0.3
done
touch "$STOP"
na_wait_exit "$SENDER" 30 "stream sender"
((NA_EXIT == 0)) || na_fail "the stream sender failed: $(cat "$NA_TMP/stream-sender.log")"
na_wait_exit "$RECEIVER" 30 "stream receiver"
((NA_EXIT == 0)) || na_fail "the stream arrived out of order: $(cat "$NA_TMP/stream-receiver.log")"
redirected=$(na_stat na-client sockmap redirected_bytes)
((redirected > 0)) || na_fail "the sockmap carried none of the stream: the check proved nothing"
na_log "stream intact: $(cat "$NA_TMP/stream-receiver.log") through 5 re-attaches of na-server ($redirected bytes redirected before the first)"
detach_both na-client na-server
na_pass
