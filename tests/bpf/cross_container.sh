#!/usr/bin/env bash
# Tier 0 between containers: two containers made by the CNI bridge plugin,
# both attached, programs in each under `netaccel run` against one monitor.
# A connect from one to the other's address must become a shared-memory
# connection (connections_total grows) that shows exactly the addresses the
# kernel shows over the bridge, for IPv4 and IPv6, with unmodified
# redis-server and redis-benchmark; the isolation policy must refuse a
# denied connect with ECONNREFUSED when the client is preloaded (the engine
# refuses it) and stop a client that is not on the server's interface (the
# XDP classifier answers its SYN with a reset), only root may set it, and it
# must survive a monitor restart; a detached container goes back to the
# bridge.
# shellcheck source-path=SCRIPTDIR source=../integration/lib.sh
source "$(dirname "$(readlink -f "$0")")/../integration/lib.sh"
na_init "$@"
# shellcheck source-path=SCRIPTDIR source=containers.sh
source "$(dirname "$NA_SELF")/containers.sh"
na_require_tools redis-server redis-benchmark redis-cli jq setpriv
na_containers_init

readonly REDIS_PORT=6392 ECHO_PORT=7411 REQUESTS=3000
na_container_add na-a
na_container_add na-b
na_start_monitor

# Who-are-we server: for each connection, the addresses as the server sees
# them, then close. Dual-stack, as most servers listen.
cat >"$NA_TMP/addresses_server.py" <<'PY'
import socket, sys
server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("::", int(sys.argv[1])))
server.listen(16)
while True:
    connection, peer = server.accept()
    local = connection.getsockname()
    connection.sendall(("server sees peer %s local %s:%d\n" % (peer[0], local[0], local[1])).encode())
    connection.close()
PY
# The client's view plus the server's, ephemeral port left out; or the
# error name of a refused connect.
cat >"$NA_TMP/addresses_client.py" <<'PY'
import errno, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
client = socket.socket(family, socket.SOCK_STREAM)
client.settimeout(5)
try:
    client.connect((host, port))
except socket.timeout:
    print("connect: timed out")
    sys.exit(0)
except OSError as error:
    print("connect: %s" % errno.errorcode[error.errno])
    sys.exit(0)
client.settimeout(None)
local, peer = client.getsockname(), client.getpeername()
print("client local %s peer %s:%d" % (local[0], peer[0], peer[1]))
print(client.makefile().readline().strip())
PY

na_step "servers in na-b under netaccel, both containers attached"
na_container_bg na-b redis "${NA_RUN[@]}" redis-server --port "$REDIS_PORT" --bind 0.0.0.0 :: \
  --protected-mode no --save '' --appendonly no
na_container_bg na-b addresses "${NA_RUN[@]}" "$NA_PYTHON" -u "$NA_TMP/addresses_server.py" "$ECHO_PORT"
na_container_bg na-a resident sleep "$NA_PROC_TIMEOUT"
na_container_wait_listen na-b "$REDIS_PORT"
na_container_wait_listen na-b "$ECHO_PORT"
for name in na-a na-b; do
  "$NETACCEL" attach "$name" >"$NA_TMP/attach-$name.log" 2>&1 ||
    na_fail "attach $name failed: $(cat "$NA_TMP/attach-$name.log")"
done
na_wait_counter containers 2 5

# addresses_via PATH HOST: the client's transcript, preloaded or on the kernel.
addresses_via() {
  local path=$1 host=$2
  local -a prefix=()
  [[ $path == netaccel ]] && prefix=("${NA_RUN[@]}")
  na_container_run na-a "${prefix[@]}" "$NA_PYTHON" "$NA_TMP/addresses_client.py" "$host" "$ECHO_PORT"
}

for family in 4 6; do
  if [[ $family == 4 ]]; then server=${NA_IP[na-b]}; else server=${NA_IP6[na-b]}; fi
  na_step "IPv$family: the addresses each side sees, kernel and netaccel"
  kernel=$(addresses_via kernel "$server")
  na_connections_total
  before=$NA_TOTAL
  accelerated=$(addresses_via netaccel "$server")
  na_expect_connections "$before" 1 "IPv$family address check"
  na_log "kernel:   $kernel"
  na_log "netaccel: $accelerated"
  [[ $kernel == *"client local"* && $kernel == "$accelerated" ]] ||
    na_fail "IPv$family: the addresses differ from the kernel's"

  na_step "IPv$family: unmodified redis-benchmark -c 1 from na-a to redis-server in na-b"
  na_connections_total
  before=$NA_TOTAL
  na_container_run na-a "${NA_RUN[@]}" redis-benchmark -h "$server" -p "$REDIS_PORT" -c 1 \
    -n "$REQUESTS" -t set,get --csv >"$NA_TMP/bench-$family.csv" ||
    na_fail "redis-benchmark over IPv$family failed"
  cat "$NA_TMP/bench-$family.csv"
  na_expect_connections "$before" 1 "redis-benchmark over IPv$family"
  value=$(na_container_run na-a "${NA_RUN[@]}" redis-cli -h "$server" -p "$REDIS_PORT" \
    set "key-$family" "value-$family")
  [[ $value == OK ]] || na_fail "SET over IPv$family answered '$value'"
  value=$(na_container_run na-a "${NA_RUN[@]}" redis-cli -h "$server" -p "$REDIS_PORT" get "key-$family")
  [[ $value == "value-$family" ]] || na_fail "GET over IPv$family answered '$value'"
done

na_step "policy: only root may change it"
chmod o+x "$NA_TMP"  # the monitor's socket, for the unprivileged user
if setpriv --reuid=nobody --regid=nogroup --clear-groups "$NETACCEL" policy deny na-a na-b \
  --socket "$NA_SOCK" >"$NA_TMP/nobody.log" 2>&1; then
  na_fail "an unprivileged user changed the isolation policy"
fi
grep -q 'only root' "$NA_TMP/nobody.log" || na_fail "unexpected refusal: $(cat "$NA_TMP/nobody.log")"
if "$NETACCEL" policy deny na-a na-typo --socket "$NA_SOCK" >"$NA_TMP/typo.log" 2>&1; then
  na_fail "a rule naming no attached container was accepted"
fi
na_log "refused: $(cat "$NA_TMP/nobody.log") / $(cat "$NA_TMP/typo.log")"

na_step "policy: deny na-a -> na-b port $ECHO_PORT refuses the preloaded client"
"$NETACCEL" policy deny na-a na-b --port "$ECHO_PORT" --socket "$NA_SOCK" || na_fail "deny failed"
na_counter policy_denials
denials=$NA_COUNTER
for server in "${NA_IP[na-b]}" "${NA_IP6[na-b]}"; do
  refused=$(addresses_via netaccel "$server")
  [[ $refused == "connect: ECONNREFUSED" ]] || na_fail "denied connect to $server gave: $refused"
done
na_counter policy_denials
((NA_COUNTER == denials + 2)) || na_fail "policy_denials went from $denials to $NA_COUNTER, expected +2"
na_step "policy: the same rule stops a client that is not preloaded on na-b's interface"
# The classifier answers the SYN with a reset (XDP_TX). A veth sends what
# XDP_TX returns only when its peer runs XDP too (it needs NAPI there), so
# over this bridge the reset is lost and the client times out instead of
# being refused; either way the kernel path does not carry the connection.
for server in "${NA_IP[na-b]}" "${NA_IP6[na-b]}"; do
  refused=$(addresses_via kernel "$server")
  [[ $refused == "connect: ECONNREFUSED" || $refused == "connect: timed out" ]] ||
    na_fail "denied kernel connect to $server gave: $refused"
done
rejected=$(na_stat na-b xdp rejected)
((rejected >= 2)) || na_fail "the classifier of na-b counted $rejected rejected SYNs, expected >= 2"
na_log "the classifier of na-b answered $rejected SYNs with resets"

na_step "every tier's counters for Prometheus"
"$NETACCEL" stats --prometheus --socket "$NA_SOCK" >"$NA_TMP/metrics.txt" || na_fail "stats --prometheus failed"
grep -vE '^(# (HELP|TYPE) netaccel_[a-z0-9_]+ .+|netaccel_[a-z0-9_]+(\{container="[^"]+"\})? -?[0-9]+)$' \
  "$NA_TMP/metrics.txt" && na_fail "lines above are not Prometheus text format"
grep -qxF "netaccel_xdp_rejected_total{container=\"na-b\"} $rejected" "$NA_TMP/metrics.txt" ||
  na_fail "the rejected SYNs are not exported: $(grep rejected "$NA_TMP/metrics.txt")"
grep -qE '^netaccel_monitor_connections_total [1-9][0-9]*$' "$NA_TMP/metrics.txt" ||
  na_fail "the monitor's connections are not exported"
grep -qE '^netaccel_monitor_policy_denials [1-9]' "$NA_TMP/metrics.txt" ||
  na_fail "the policy denials are not exported"
na_log "$(wc -l <"$NA_TMP/metrics.txt") lines of metrics"
# Other ports and the other direction stay open.
value=$(na_container_run na-a "${NA_RUN[@]}" redis-cli -h "${NA_IP[na-b]}" -p "$REDIS_PORT" ping)
[[ $value == PONG ]] || na_fail "a port the rule does not name was refused: '$value'"
"$NETACCEL" policy list --socket "$NA_SOCK" | tee "$NA_TMP/policy.txt"
grep -q "deny na-a -> na-b port $ECHO_PORT" "$NA_TMP/policy.txt" || na_fail "policy list lacks the rule"

na_step "policy: the rule survives a monitor restart"
kill "$NA_MONITOR_PID"
na_wait_exit "$NA_MONITOR_PID" 10 "the monitor"
na_start_monitor
na_wait_counter containers 2 5
rules=$("$NETACCEL" policy list --json --socket "$NA_SOCK")
[[ $(jq -r '.rules[0] | "\(.from) \(.to) \(.port) \(.enforced)"' <<<"$rules") == "na-a na-b $ECHO_PORT true" ]] ||
  na_fail "after a restart the policy is: $rules"

na_step "policy: allow removes the rule"
"$NETACCEL" policy allow na-a na-b --port "$ECHO_PORT" --socket "$NA_SOCK" || na_fail "allow failed"
kernel=$(addresses_via kernel "${NA_IP[na-b]}")
[[ $kernel == *"client local"* ]] || na_fail "after allow the kernel path is still refused: $kernel"
# The servers registered with the old monitor: restart them under the new one.
na_container_bg na-b addresses2 "${NA_RUN[@]}" "$NA_PYTHON" -u "$NA_TMP/addresses_server.py" $((ECHO_PORT + 1))
na_container_wait_listen na-b $((ECHO_PORT + 1))
na_connections_total
before=$NA_TOTAL
reply=$(na_container_run na-a "${NA_RUN[@]}" "$NA_PYTHON" "$NA_TMP/addresses_client.py" \
  "${NA_IP[na-b]}" $((ECHO_PORT + 1)))
[[ $reply == *"server sees peer ::ffff:${NA_IP[na-a]}"* ]] || na_fail "after allow: $reply"
na_expect_connections "$before" 1 "a connect after allow"

na_step "detached, na-b is reached over the bridge again"
"$NETACCEL" detach na-b >/dev/null || na_fail "detach na-b failed"
na_wait_counter containers 1 5
na_connections_total
before=$NA_TOTAL
reply=$(na_container_run na-a "${NA_RUN[@]}" "$NA_PYTHON" "$NA_TMP/addresses_client.py" \
  "${NA_IP[na-b]}" $((ECHO_PORT + 1)))
[[ $reply == *"server sees peer ::ffff:${NA_IP[na-a]}"* ]] || na_fail "after detach: $reply"
na_counter connections_total
((NA_COUNTER == before)) || na_fail "a connect to a detached container went over shared memory"
"$NETACCEL" detach na-a >/dev/null || na_fail "detach na-a failed"
na_pass "tier 0 between containers: addresses as the kernel's, redis over IPv4 and IPv6, policy enforced and persistent"
