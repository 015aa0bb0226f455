#!/usr/bin/env bash
# The user-space stack (lwIP over AF_XDP, or DPDK with NA_STACK_IO=dpdk)
# against bad input, in a CNI container with a kernel peer container:
#   1. malformed frames at its listening port, from a raw packet socket in
#      the peer (tests/stack/frames.py): each kind must end in a specific
#      counter, and the stack must keep serving;
#   2. a flood of 100 000 SYNs from spoofed addresses: no crash, the
#      container's kernel keeps answering beside it, and the port takes
#      connections again once lwIP has let the half-open ones go;
#   3. `netaccel stack` where it cannot run (container not attached, an
#      interface without the classifier, no privileges): exit status != 0,
#      one line on stderr, nothing left behind;
#   4. garbage on the control socket (tests/stack/control_garbage.py):
#      a failure reply (EPROTO) or a closed connection, and the stack serves
#      on; connects to broadcast, multicast, loopback or "any" fail at once;
#   5. SIGKILL of the stack under a program receiving from a kernel socat:
#      the program's receive fails promptly (ECONNRESET), and a restarted
#      stack removes the dead one's steering entries and takes connections.
# shellcheck source-path=SCRIPTDIR source=../integration/lib.sh
source "$(dirname "$(readlink -f "$0")")/../integration/lib.sh"
# Checked before na_init, which would make an unprivileged user root of a
# user namespace: attach, XDP and AF_XDP need the real thing.
((EUID == 0)) || na_skip "needs root (netaccel attach, XDP, AF_XDP, raw sockets)"
na_init "$@"
# shellcheck source-path=SCRIPTDIR source=../bpf/containers.sh
source "$(dirname "$NA_SELF")/../bpf/containers.sh"
na_require_tools socat jq bpftool setpriv pgrep
na_containers_init
# Stacks put their control sockets and counters in /run/netaccel/stack, one
# directory for the host: this test has its own, private to its mount
# namespace, so that other runs (interop.sh, this test in another build)
# neither see nor disturb its stack.
mkdir -p /run/netaccel/stack
mount -t tmpfs -o mode=0755 netaccel-stack /run/netaccel/stack ||
  na_fail "cannot mount a tmpfs on /run/netaccel/stack"

IO=${NA_STACK_IO:-af_xdp}
APP=$NA_BIN_DIR/netaccel-stack-app
[[ -x $APP ]] || na_fail "$APP is not built"
HERE=$(dirname "$NA_SELF")
FRAMES=$HERE/frames.py
GARBAGE=$HERE/control_garbage.py
SOCKET=/run/netaccel/stack/na-bad.sock
COUNTERS=/run/netaccel/stack/na-bad.json
STEERING=/sys/fs/bpf/netaccel/na-bad/steering
ECHO_PORT=7000         # the stack's echo (netaccel-stack-app echo)
KERNEL_ECHO_PORT=7100  # the container's kernel, beside the stack
SINK_PORT=7300         # the stack's receiver in step 5

na_container_add na-bad
na_container_add na-badpeer
na_container_add na-badbare  # never attached
STACK_IP=${NA_IP[na-bad]}
PEER_IP=${NA_IP[na-badpeer]}
STACK_MAC=$(ip -n na-bad -j link show eth0 | jq -r '.[0].address')
na_container_bg na-bad resident-stack sleep "$NA_PROC_TIMEOUT"
na_container_bg na-badpeer resident-peer sleep "$NA_PROC_TIMEOUT"
na_container_bg na-badbare resident-bare sleep "$NA_PROC_TIMEOUT"
until [[ -n $(na_container_pid na-bad) && -n $(na_container_pid na-badbare) ]]; do sleep 0.05; done
"$NETACCEL" attach na-bad >"$NA_TMP/attach.log" 2>&1 || na_fail "attach failed: $(cat "$NA_TMP/attach.log")"

stack_counter() { jq -r "$1" "$COUNTERS"; }
steering_entries() { bpftool map dump pinned "$STEERING" -j | jq length; }
# Whether PORT is steered to the stack (the map carries BTF: bpftool formats it).
steered() { bpftool map dump pinned "$STEERING" -j | jq -e ".[] | select(.formatted.key.port == $1)" >/dev/null; }

# start_stack LOG: `netaccel stack` on na-bad; waits until it serves and
# publishes counters under its own pid (a killed stack's file stays behind).
start_stack() {
  local log=$1 deadline=$((SECONDS + 30))
  na_bg "$log" "$NETACCEL" stack na-bad --io "$IO"
  STACK_TIMEOUT_PID=$NA_LAST_PID
  STACK_LOG=$NA_TMP/$log.log
  while :; do
    STACK_PID=$(jq -r .pid "$COUNTERS" 2>/dev/null) || STACK_PID=
    if [[ -S $SOCKET && -n $STACK_PID && $STACK_PID != "${DEAD_STACK_PID:-}" ]] &&
      [[ $(ps -o comm= -p "$STACK_PID") == netaccel ]]; then
      break
    fi
    kill -0 "$STACK_TIMEOUT_PID" 2>/dev/null || na_fail "the stack exited at start: $(cat "$NA_TMP/$log.log")"
    ((SECONDS < deadline)) || na_fail "the stack did not start: $(cat "$NA_TMP/$log.log")"
    sleep 0.1
  done
  na_log "$(tail -n 1 "$NA_TMP/$log.log") (pid $STACK_PID)"
}

stack_alive() {
  kill -0 "$STACK_PID" 2>/dev/null || na_fail "$1: the stack (pid $STACK_PID) is gone: $(tail -n 5 "$STACK_LOG")"
}

# The stack's echo; waits until its port is steered to the stack.
start_echo() {
  na_bg "$1" "$APP" --stack na-bad echo --port "$ECHO_PORT"
  local deadline=$((SECONDS + 10))
  until steered "$ECHO_PORT"; do
    ((SECONDS < deadline)) || na_fail "the stack's echo did not listen on $ECHO_PORT: $(cat "$NA_TMP/$1.log")"
    sleep 0.05
  done
}

# echo_through PORT TEXT: TEXT to the stack container's PORT from the peer;
# prints the reply (empty when nothing answered within 3 s).
echo_through() {
  na_container_run na-badpeer timeout 5 socat -t 3 - "TCP:$STACK_IP:$1,connect-timeout=3" <<<"$2" 2>/dev/null || true
}

expect_echo() {  # WHAT
  local reply
  reply=$(echo_through "$ECHO_PORT" "echo-$1")
  [[ $reply == "echo-$1" ]] || na_fail "$1: no echo through the stack on $ECHO_PORT (got '$reply')"
  na_log "$1: an echo through the stack works"
}

# ---------------------------------------------------------------------------
na_step "3. where netaccel stack cannot run: one line on stderr, nothing left behind"
# Before any stack runs on na-bad, so that a failure cannot hide behind
# "a stack already serves this container".

# expect_refusal WHAT PATTERN CONTAINER CMD...: CMD fails, with exactly one
# line on stderr matching PATTERN, nothing on stdout, and leaves no socket,
# counters or steering entry of CONTAINER ("-": the caller checks that).
expect_refusal() {
  local what=$1 pattern=$2 container=$3
  shift 3
  local status=0 lines
  # Bounded: a stack that wrongly starts would serve until stopped.
  na_timeout 20 "$@" >"$NA_TMP/refusal.out" 2>"$NA_TMP/refusal.err" || status=$?
  ((status != 0)) || na_fail "$what: exit status 0"
  ((status != 124)) || na_fail "$what: it ran until stopped: $(cat "$NA_TMP/refusal.err")"
  lines=$(wc -l <"$NA_TMP/refusal.err")
  ((lines == 1)) || na_fail "$what: $lines lines on stderr, want 1: $(cat "$NA_TMP/refusal.err")"
  grep -Eq "$pattern" "$NA_TMP/refusal.err" ||
    na_fail "$what: stderr does not say why ('$pattern'): $(cat "$NA_TMP/refusal.err")"
  [[ ! -s $NA_TMP/refusal.out ]] || na_fail "$what: wrote to stdout: $(cat "$NA_TMP/refusal.out")"
  na_log "$what: status $status, '$(cat "$NA_TMP/refusal.err")'"
  [[ $container != - ]] || return 0
  local leftover
  for leftover in "/run/netaccel/stack/$container.sock" "/run/netaccel/stack/$container.json"; do
    [[ ! -e $leftover ]] || na_fail "$what: left $leftover behind"
  done
  if [[ -e /sys/fs/bpf/netaccel/$container/steering ]]; then
    local entries
    entries=$(bpftool map dump pinned "/sys/fs/bpf/netaccel/$container/steering" -j | jq length)
    [[ $entries == 0 ]] || na_fail "$what: left $entries steering entries"
  fi
}

expect_refusal "a container that is not attached" "not attached" na-badbare \
  "$NETACCEL" stack na-badbare --io "$IO"
[[ ! -e /sys/fs/bpf/netaccel/na-badbare ]] || na_fail "a stack on an unattached container pinned something"
expect_refusal "--interface lo (no classifier on it)" "interface lo .*no netaccel XDP classifier" na-bad \
  "$NETACCEL" stack na-bad --io "$IO" --interface lo
# A second veth in the container, added after attach: an address, but no
# XDP classifier, so no frame of it would ever be steered to the stack.
ip -n na-bad link add na-extra type veth peer name na-extra-peer || na_fail "cannot add a second veth"
ip -n na-bad addr add 192.168.77.1/24 dev na-extra
ip -n na-bad link set na-extra up
ip -n na-bad link set na-extra-peer up
expect_refusal "--interface na-extra (a veth without the classifier)" \
  "interface na-extra .*no netaccel XDP classifier" na-bad \
  "$NETACCEL" stack na-bad --io "$IO" --interface na-extra
expect_refusal "as nobody (setpriv)" "root|CAP_" na-bad \
  setpriv --reuid=65534 --regid=65534 --clear-groups "$NETACCEL" stack na-bad --io "$IO"
if unshare -U true 2>/dev/null; then
  # Root of a user namespace of its own: every capability there, none over
  # the container, its pins or its network namespace.
  expect_refusal "in a user namespace without privileges (unshare -U)" "." na-bad \
    unshare -U "$NETACCEL" stack na-bad --io "$IO"
else
  na_log "unshare -U is not allowed here: that case is not checked"
fi

# ---------------------------------------------------------------------------
na_step "start the stack ($IO), its echo on $ECHO_PORT, the kernel's on $KERNEL_ECHO_PORT"
start_stack stack
start_echo echo
na_container_bg na-bad kernel-echo "$APP" --kernel echo --port "$KERNEL_ECHO_PORT"
na_container_wait_listen na-bad "$KERNEL_ECHO_PORT"
expect_echo "before the bad input"

na_step "3b. a second stack on the same container is refused and harms nothing"
entries_before=$(steering_entries)
expect_refusal "a second stack on na-bad" "already serves" - \
  "$NETACCEL" stack na-bad --io "$IO"
# Checked at once: the first stack writes its counters again within 100 ms.
[[ -e $COUNTERS ]] || na_fail "the refused second stack removed the first's counters"
[[ -S $SOCKET && $(steering_entries) == "$entries_before" ]] ||
  na_fail "the refused second stack disturbed the first's socket or steering"
stack_alive "after a second stack was refused"

# ---------------------------------------------------------------------------
na_step "1. malformed frames at $STACK_MAC $STACK_IP:$ECHO_PORT from a raw socket in the peer"
# With br_netfilter loaded the bridge checks IPv4 headers itself and drops
# what fails (a Kubernetes node, for one, runs so); this test wants the
# frames to reach the container, so its bridge (in the test's own network
# namespace) forwards them as they are.
if [[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]]; then
  sysctl -qw net.bridge.bridge-nf-call-iptables=0 || na_fail "cannot turn off br_netfilter's IPv4 checks"
fi

# The counters a frame can move, as one JSON object: the stack's, and the
# classifier's (`netaccel stats`).
counters_now() {
  jq -c --argjson malformed "$(na_stat na-bad xdp malformed)" \
    --argjson to_xsk "$(na_stat na-bad xdp to_xsk)" \
    '{rx: .rx_packets, ring_full: .drops.rx_ring_full, fill_empty: .drops.fill_ring_empty,
      tx: .tx_packets, checksum: .drops.checksum,
      refused: .drops.refused_frames, tcp: .drops.tcp_segments, partial: .partial_checksums,
      opened: .connections_opened, memory: .lwip_memory_errors,
      malformed: $malformed, to_xsk: $to_xsk}' "$COUNTERS"
}

# Settled counters: the stack publishes every 100 ms; waits until two reads
# 250 ms apart agree.
snapshot() {
  local previous current
  current=$(counters_now)
  for _ in $(seq 1 40); do
    sleep 0.25
    previous=$current
    current=$(counters_now)
    [[ $current == "$previous" ]] && break
  done
  echo "$current"
}

# send_kind KIND COUNT EXPECT: EXPECT is a JSON object of counter growths
# (snapshot's names); every counter it does not name must not move, save tx
# where EXPECT says nothing about it.
send_kind() {
  local kind=$1 count=$2 expect=$3 before after delta
  before=$(snapshot)
  SENT=$(na_container_run na-badpeer "$NA_PYTHON" "$FRAMES" send --interface eth0 \
    --dst-mac "$STACK_MAC" --src-ip "$PEER_IP" --dst-ip "$STACK_IP" --port "$ECHO_PORT" \
    --kind "$kind" --count "$count") || na_fail "frames.py $kind failed"
  after=$(snapshot)
  delta=$(jq -nc --argjson a "$after" --argjson b "$before" '$a | with_entries(.value -= $b[.key])')
  # Counters named in EXPECT must have grown by exactly that much; the
  # others not at all.
  local wrong
  wrong=$(jq -nc --argjson d "$delta" --argjson e "$expect" \
    '$d | to_entries | map(select(.value != ($e[.key] // 0))) | from_entries')
  [[ $wrong == "{}" ]] || na_fail "$kind: counters moved by $wrong, want $expect (all changes: $delta; sender: $SENT)"
  stack_alive "after $kind"
  na_log "$kind: $SENT -> $delta"
}

COUNT=50
# A frame the classifier cannot parse goes to the container's kernel, which
# drops it: the stack never sees it.
# A packet socket refuses a frame shorter than an Ethernet header (EINVAL),
# and a veth delivers none: an Ethernet header and nothing else is the
# shortest frame that can reach the classifier.
send_kind empty "$COUNT" '{}'
jq -e ".refused_by_sender == $COUNT" <<<"$SENT" >/dev/null ||
  na_fail "the peer's kernel sent empty frames ($SENT): then they must be counted somewhere"
send_kind ethernet-only "$COUNT" "{\"malformed\": $COUNT}"
send_kind truncated-ip "$COUNT" "{\"malformed\": $COUNT}"
send_kind truncated-tcp "$COUNT" "{\"malformed\": $COUNT}"
# The rest parse as TCP to a steered port: the stack gets them, and drops
# each where its own check or lwIP's catches it.
send_kind ip-length-long "$COUNT" "{\"to_xsk\": $COUNT, \"rx\": $COUNT, \"refused\": $COUNT}"
send_kind ip-length-short "$COUNT" "{\"to_xsk\": $COUNT, \"rx\": $COUNT, \"tcp\": $COUNT}"
send_kind tcp-options-past-end "$COUNT" "{\"to_xsk\": $COUNT, \"rx\": $COUNT, \"tcp\": $COUNT}"
send_kind bad-tcp-checksum "$COUNT" "{\"to_xsk\": $COUNT, \"rx\": $COUNT, \"checksum\": $COUNT}"
send_kind bad-ip-checksum "$COUNT" "{\"to_xsk\": $COUNT, \"rx\": $COUNT, \"checksum\": $COUNT}"
# RFC 793: a segment with RST is ignored in LISTEN; nothing is sent back
# (tx stays) and no connection opens.
send_kind all-flags "$COUNT" "{\"to_xsk\": $COUNT, \"rx\": $COUNT}"
expect_echo "after the malformed frames"

# ---------------------------------------------------------------------------
na_step "2. 100 000 SYNs from spoofed addresses at $ECHO_PORT"
before=$(snapshot)
# The container's kernel, beside the stack, answers throughout the flood.
rm -f "$NA_TMP/flood.done"
# shellcheck disable=SC2016  # expanded by the inner shell
na_container_bg na-badpeer kernel-probe bash -c '
  while [[ ! -e $1 ]]; do
    reply=$(timeout 5 socat -t 2 - "TCP:$2:$3,connect-timeout=2" <<<probe 2>/dev/null)
    if [[ $reply == probe ]]; then echo ok; else echo "failed: $reply"; fi
    sleep 0.1
  done' _ "$NA_TMP/flood.done" "$STACK_IP" "$KERNEL_ECHO_PORT"
PROBE_PID=$NA_LAST_PID
flood=$(na_container_run na-badpeer "$NA_PYTHON" "$FRAMES" flood --interface eth0 \
  --dst-mac "$STACK_MAC" --dst-ip "$STACK_IP" --port "$ECHO_PORT" --count 100000 \
  --spoof-from 10.77.0.0/24 --exclude "$STACK_IP,$PEER_IP,${NA_IP[na-badbare]},10.77.0.1") ||
  na_fail "the flood failed"
flood_end=$SECONDS
touch "$NA_TMP/flood.done"
na_wait_exit "$PROBE_PID" 15 "the kernel probe"
probes_ok=$(grep -c '^ok$' "$NA_TMP/kernel-probe.log")
probes_failed=$(grep -vc '^ok$' "$NA_TMP/kernel-probe.log")
((probes_ok >= 1 && probes_failed == 0)) ||
  na_fail "the container's kernel answered $probes_ok probes on $KERNEL_ECHO_PORT during the flood, $probes_failed failed"
stack_alive "after the flood"
after=$(snapshot)
delta=$(jq -nc --argjson a "$after" --argjson b "$before" '$a | with_entries(.value -= $b[.key])')
na_log "flood: $flood; the kernel answered $probes_ok probes beside it; counters grew by $delta"
# The SYNs were steered to the stack (the bridge and the veths may lose a
# few of a flood on a busy host before the classifier sees them); the ones
# its packet port could not take (a busy worker: its receive ring full, or
# no free buffer) are counted there, each.
jq -e '.to_xsk >= 95000 and .rx + .ring_full + .fill_empty == .to_xsk' <<<"$delta" >/dev/null ||
  na_fail "the stack's port does not account for the SYNs steered to it: $delta"
# Each SYN the stack received either got a half-open connection (at most a
# listener's backlog of them: lwIP's is a byte, 255 at most) or was dropped
# and counted as a dropped TCP segment.
jq -e '.tcp >= .rx - 255 and .tcp < .rx' <<<"$delta" >/dev/null ||
  na_fail "drops.tcp_segments grew by $(jq .tcp <<<"$delta") for $(jq .rx <<<"$delta") SYNs at a listener: want all but its backlog"

# lwIP keeps a half-open connection until TCP_SYN_RCVD_TIMEOUT (20 s) and
# takes no SYN beyond the listener's backlog (128 for netaccel-stack-app)
# meanwhile; the SYN-ACKs to the spoofed addresses (none of them a host)
# are never answered. So a real connection may wait up to 20 s after the
# last SYN, plus the client's SYN retransmission: each try below waits 3 s.
deadline=$((flood_end + 45))
until [[ $(echo_through "$ECHO_PORT" after-flood) == after-flood ]]; do
  ((SECONDS < deadline)) || na_fail "no connection through the stack 45 s after the flood"
  stack_alive "while waiting for the flood's half-open connections to expire"
done
na_log "a connection through the stack works again $((SECONDS - flood_end)) s after the flood ended"

# ---------------------------------------------------------------------------
na_step "4. garbage on the control socket"
listeners_before=$(stack_counter .listeners)
mapfile -t cases < <("$NA_PYTHON" "$GARBAGE" --cases)
for case in "${cases[@]}"; do
  result=$("$NA_PYTHON" "$GARBAGE" "$SOCKET" "$case") || na_fail "control_garbage.py $case failed"
  jq -e '(.reply == "failed" and .error == "EPROTO" and .then == "closed") or .reply == "closed"' \
    <<<"$result" >/dev/null || na_fail "$case: want a failure reply (EPROTO) or a closed connection: $result"
  stack_alive "after control garbage '$case'"
  na_log "$case: $result"
done
# Well formed, but where no SYN should go: answered at once (a 5 s wait
# for the reply), as the kernel answers them, and without a connection.
for address in 0.0.0.0 255.255.255.255 10.77.0.255 224.0.0.1 127.0.0.1; do
  result=$("$NA_PYTHON" "$GARBAGE" "$SOCKET" connect "$address" 7) || na_fail "control_garbage.py connect failed"
  jq -e '.reply == "failed" and .error == "ENETUNREACH"' <<<"$result" >/dev/null ||
    na_fail "a connect to $address: want ENETUNREACH at once: $result"
  na_log "$(jq -r '.case' <<<"$result"): ENETUNREACH"
done
stack_alive "after connects to addresses no SYN should go to"
sleep 0.3  # a listener would show in the next counters
[[ $(stack_counter .listeners) == "$listeners_before" ]] ||
  na_fail "garbage changed the stack's listeners: $listeners_before -> $(stack_counter .listeners)"
expect_echo "after the control socket's garbage"

# ---------------------------------------------------------------------------
na_step "5. SIGKILL of the stack while a program on it receives from a kernel socat"
na_bg sink "$APP" --stack na-bad sink --port "$SINK_PORT"
SINK_TIMEOUT_PID=$NA_LAST_PID
deadline=$((SECONDS + 10))
until steered "$SINK_PORT"; do
  ((SECONDS < deadline)) || na_fail "the sink did not listen: $(cat "$NA_TMP/sink.log")"
  sleep 0.05
done
na_container_bg na-badpeer socat-zero socat -u /dev/zero "TCP:$STACK_IP:$SINK_PORT"
# Mid-transfer: 50 MB through the stack already.
rx_start=$(stack_counter .rx_bytes)
deadline=$((SECONDS + 20))
until (($(stack_counter .rx_bytes) - rx_start > 50000000)); do
  ((SECONDS < deadline)) || na_fail "the transfer to the sink did not get going: $(cat "$NA_TMP/sink.log")"
  sleep 0.1
done
SINK_PID=$(pgrep -P "$SINK_TIMEOUT_PID") || na_fail "cannot find the sink's pid"
# Out of the job table: bash would report the killed job's end in the log.
disown "$STACK_TIMEOUT_PID"
entries_before=$(steering_entries)
# The time from the SIGKILL to the program's exit, measured on a pidfd.
elapsed_ms=$("$NA_PYTHON" - "$STACK_PID" "$SINK_PID" <<'PY'
import os, select, signal, sys, time
stack, program = int(sys.argv[1]), int(sys.argv[2])
pidfd = os.pidfd_open(program)
start = time.monotonic()
os.kill(stack, signal.SIGKILL)
ready, _, _ = select.select([pidfd], [], [], 10)
print(round((time.monotonic() - start) * 1000, 1) if ready else "none")
PY
) || na_fail "could not time the sink's exit"
DEAD_STACK_PID=$STACK_PID
[[ $elapsed_ms != none ]] || na_fail "the program on the stack still runs 10 s after the stack's SIGKILL"
na_wait_exit "$SINK_TIMEOUT_PID" 5 "the sink"
((NA_EXIT != 0)) || na_fail "the sink exited 0: a dead stack passed for an EOF"
grep -q "Connection reset by peer" "$NA_TMP/sink.log" ||
  na_fail "the sink's receive did not end with ECONNRESET: $(cat "$NA_TMP/sink.log")"
na_log "the sink's receive failed with ECONNRESET ${elapsed_ms} ms after the SIGKILL"
# The issue asks for 100 ms (the program sees its lifetime socket hang up).
awk -v ms="$elapsed_ms" 'BEGIN { exit !(ms < 100) }' ||
  na_fail "ECONNRESET took ${elapsed_ms} ms after the SIGKILL, want < 100 ms"
((entries_before >= 2)) || na_fail "only $entries_before steering entries before the SIGKILL"
left=$(steering_entries)
((left == entries_before)) ||
  na_fail "the dead stack's $entries_before steering entries changed to $left before any restart"

na_step "5b. a restarted stack removes the dead one's steering and takes connections"
start_stack stack-again
left=$(steering_entries)
[[ $left == 0 ]] || na_fail "$left of the dead stack's steering entries are left after the restart"
na_log "the dead stack's $entries_before steering entries were removed by the new stack"
start_echo echo-again
expect_echo "on the restarted stack"

na_step "stop the stack"
kill -TERM "$STACK_TIMEOUT_PID"
na_wait_exit "$STACK_TIMEOUT_PID" 10 "the stack"
[[ ! -e $SOCKET && ! -e $COUNTERS ]] || na_fail "the stack left its socket or counters behind"
[[ $(steering_entries) == 0 ]] || na_fail "steering entries left after the stack stopped"
"$NETACCEL" detach na-bad >/dev/null || na_fail "detach failed"
na_pass
