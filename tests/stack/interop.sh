#!/usr/bin/env bash
# The user-space stack (lwIP over AF_XDP, or DPDK with NA_STACK_IO=dpdk)
# against the real Linux TCP stack: two containers on Debian's CNI bridge,
# the stack in one (driven by netaccel-stack-app), unmodified kernel
# programs (nginx, curl, socat) in the other, both directions; then the same
# with loss, reordering and delay on the bridge. Every transfer is checked
# by digest, and the stack's and the classifier's counters must show that
# the stack carried it while the container's kernel kept serving the rest.
# shellcheck source-path=SCRIPTDIR source=../integration/lib.sh
source "$(dirname "$(readlink -f "$0")")/../integration/lib.sh"
na_init "$@"
# shellcheck source-path=SCRIPTDIR source=../bpf/containers.sh
source "$(dirname "$NA_SELF")/../bpf/containers.sh"
na_require_tools socat nginx curl jq sha256sum tc ping
na_containers_init

IO=${NA_STACK_IO:-af_xdp}
APP=$NA_BIN_DIR/netaccel-stack-app
[[ -x $APP ]] || na_fail "$APP is not built"

na_container_add na-stack
na_container_add na-peer
STACK_IP=${NA_IP[na-stack]}
PEER_IP=${NA_IP[na-peer]}
na_container_bg na-stack resident-stack sleep "$NA_PROC_TIMEOUT"
na_container_bg na-peer resident-peer sleep "$NA_PROC_TIMEOUT"

na_step "attach the stack's container and start its stack ($IO)"
until [[ -n $(na_container_pid na-stack) ]]; do sleep 0.05; done
"$NETACCEL" attach na-stack >"$NA_TMP/attach.log" 2>&1 || na_fail "attach failed: $(cat "$NA_TMP/attach.log")"
na_bg stack "$NETACCEL" stack na-stack --io "$IO"
STACK_PID=$NA_LAST_PID
SOCKET=/run/netaccel/stack/na-stack.sock
COUNTERS=/run/netaccel/stack/na-stack.json
deadline=$((SECONDS + 20))
until [[ -S $SOCKET && -s $COUNTERS ]]; do
  ((SECONDS < deadline)) || na_fail "the stack did not start: $(cat "$NA_TMP/stack.log")"
  sleep 0.1
done
na_log "$(tail -n 1 "$NA_TMP/stack.log")"

stack_counter() { jq -r "$1" "$COUNTERS"; }

# Files to move: 10 MiB of random bytes.
WWW=$NA_TMP/www
mkdir -p "$WWW"
head -c $((10 * 1024 * 1024)) /dev/urandom >"$WWW/file"
WANT=$(sha256sum <"$WWW/file" | cut -d' ' -f1)

# The peer's nginx serves $WWW on 8080.
cat >"$NA_TMP/nginx.conf" <<CONF
daemon off;
user root;
worker_processes 1;
pid $NA_TMP/nginx.pid;
error_log $NA_TMP/nginx-error.log;
events { worker_connections 256; }
http {
  access_log off;
  server { listen 8080; root $WWW; }
}
CONF
na_container_bg na-peer nginx nginx -c "$NA_TMP/nginx.conf" -p "$NA_TMP"
na_container_wait_listen na-peer 8080
# And echoes on 7000.
na_container_bg na-peer echo "$APP" --kernel echo --port 7000
na_container_wait_listen na-peer 7000

check_digest() {  # WHAT FILE
  local got
  got=$(sha256sum <"$2" | cut -d' ' -f1)
  [[ $got == "$WANT" ]] || na_fail "$1: sha256 $got, want $WANT ($(stat -c %s "$2") bytes)"
  na_log "$1: 10 MiB, sha256 matches"
}

transfers() {  # LABEL
  local label=$1 port
  na_step "$label: stack fetches the file from the kernel's nginx"
  na_timeout 60 "$APP" --stack na-stack get --to "$PEER_IP" --port 8080 --path /file \
    >"$NA_TMP/got-nginx" || na_fail "$label: GET from nginx failed"
  check_digest "$label: nginx -> stack" "$NA_TMP/got-nginx"

  na_step "$label: curl in the kernel container fetches the file from the stack"
  port=$((8100 + RANDOM % 100))
  na_bg "serve-$label" "$APP" --stack na-stack serve-http --port "$port" --root "$WWW"
  sleep 0.3
  na_container_run na-peer curl -sS --max-time 60 -o "$NA_TMP/got-curl" \
    "http://$STACK_IP:$port/file" || na_fail "$label: curl from the stack failed"
  check_digest "$label: stack -> curl" "$NA_TMP/got-curl"

  na_step "$label: bulk stack -> kernel socat"
  port=$((8200 + RANDOM % 100))
  na_container_bg na-peer "socat-in-$label" socat -u "TCP-LISTEN:$port,reuseaddr" "OPEN:$NA_TMP/got-socat,creat,trunc"
  na_container_wait_listen na-peer "$port"
  na_timeout 60 "$APP" --stack na-stack send --to "$PEER_IP" --port "$port" <"$WWW/file" ||
    na_fail "$label: send to socat failed"
  sleep 0.2
  check_digest "$label: stack -> socat" "$NA_TMP/got-socat"

  na_step "$label: bulk kernel socat -> stack"
  port=$((8300 + RANDOM % 100))
  na_bg "receive-$label" "$APP" --stack na-stack receive --port "$port"
  local receiver=$NA_LAST_PID
  sleep 0.3
  na_container_run na-peer socat -u "OPEN:$WWW/file" "TCP:$STACK_IP:$port" ||
    na_fail "$label: socat to the stack failed"
  na_wait_exit "$receiver" 30 "$label: the stack's receiver"
  ((NA_EXIT == 0)) || na_fail "$label: the stack's receiver failed ($NA_EXIT)"
  check_digest "$label: socat -> stack" "$NA_TMP/receive-$label.log"

  na_step "$label: 64-byte ping-pong with the kernel's echo"
  na_timeout 60 "$APP" --stack na-stack pingpong --to "$PEER_IP" --port 7000 --count 2000 \
    >"$NA_TMP/pingpong-$label" || na_fail "$label: ping-pong failed"
  na_log "$label: $(cat "$NA_TMP/pingpong-$label")"
}

transfers "clean link"

na_step "the container's kernel still serves what the stack does not own"
na_container_bg na-stack kernel-echo "$APP" --kernel echo --port 7100
na_container_wait_listen na-stack 7100
reply=$(na_container_run na-peer bash -c "echo kernel-path | socat - TCP:$STACK_IP:7100")
[[ $reply == kernel-path ]] || na_fail "the container's kernel did not answer on 7100: '$reply'"
na_container_run na-peer ping -c 2 -W 2 "$STACK_IP" >/dev/null || na_fail "ping to the stack's container failed"
na_log "kernel TCP on 7100 and ICMP answered beside the stack"

opened=$(stack_counter .connections_opened)
((opened >= 5)) || na_fail "the stack counts $opened connections, want at least 5"
to_xsk=$(na_stat na-stack xdp to_xsk)
((to_xsk > 10000)) || na_fail "the classifier steered only $to_xsk packets to the stack"
na_log "stack: $opened connections, $(stack_counter .rx_packets) frames in, $(stack_counter .tx_packets) out; classifier: $to_xsk to the AF_XDP socket"

# sch_netem where the kernel has it; else the same impairments in user
# space (tests/stack/lossy_link.py) between the two containers' bridge ports.
na_step "loss 1%, reordering 5%, 1 ms delay between the containers"
mapfile -t ports < <(ip -o link show master na-br0 | awk -F': ' '{print $2}' | cut -d@ -f1)
((${#ports[@]} == 2)) || na_fail "expected the two containers' ports on na-br0, found: ${ports[*]}"
if tc qdisc add dev "${ports[0]}" root netem loss 1% reorder 5% delay 1ms 2>/dev/null; then
  tc qdisc add dev "${ports[1]}" root netem loss 1% reorder 5% delay 1ms || na_fail "netem on ${ports[1]} failed"
  na_log "sch_netem on ${ports[*]}"
else
  # A packet socket forwards frames as they are: the kernel peer must put
  # finished checksums and no GSO super-frames on its link.
  nsenter --net=/run/netns/na-peer ethtool -K eth0 tx off tso off gso off >/dev/null ||
    na_fail "cannot turn off the peer's checksum and segmentation offloads"
  for port in "${ports[@]}"; do ip link set "$port" nomaster || na_fail "cannot take $port off the bridge"; done
  na_bg lossy-link "$NA_PYTHON" "$(dirname "$NA_SELF")/lossy_link.py" "${ports[@]}" \
    --loss 0.01 --reorder 0.05 --delay-ms 1
  LOSSY_PID=$NA_LAST_PID
  sleep 0.3
  na_log "this kernel has no sch_netem: tests/stack/lossy_link.py links ${ports[*]}"
fi
transfers "impaired link"
retransmissions=$(stack_counter .tcp_retransmissions)
((retransmissions > 0)) || na_fail "1% loss but the stack counts no retransmission"
na_log "stack retransmitted $retransmissions segments"
if [[ -n ${LOSSY_PID:-} ]]; then
  kill -TERM "$LOSSY_PID"
  na_wait_exit "$LOSSY_PID" 10 "the lossy link"
  na_log "lossy link: $(tail -n 1 "$NA_TMP/lossy-link.log")"
fi

na_step "stop the stack: its steering goes with it"
kill -TERM "$STACK_PID"
deadline=$((SECONDS + 10))
while [[ -S $SOCKET ]] && ((SECONDS < deadline)); do sleep 0.1; done
[[ ! -S $SOCKET ]] || na_fail "the stack's socket is still there after SIGTERM"
entries=$(bpftool map dump pinned /sys/fs/bpf/netaccel/na-stack/steering -j | jq length)
[[ $entries == 0 ]] || na_fail "$entries steering entries left after the stack stopped"

na_step "two workers: each container on a stack process of its own, stack to stack"
if [[ -n ${LOSSY_PID:-} ]]; then  # the bridge again, without the impairments
  for port in "${ports[@]}"; do ip link set "$port" master na-br0 || na_fail "cannot put $port back"; done
fi
"$NETACCEL" attach na-peer >/dev/null 2>&1 || na_fail "attach na-peer failed"
na_bg workers "$NETACCEL" stack na-stack na-peer --workers 2 --io "$IO"
WORKERS_PID=$NA_LAST_PID
deadline=$((SECONDS + 20))
until [[ -S $SOCKET && -S /run/netaccel/stack/na-peer.sock && -s $COUNTERS &&
  -s /run/netaccel/stack/na-peer.json ]]; do
  ((SECONDS < deadline)) || na_fail "the two workers did not start: $(cat "$NA_TMP/workers.log")"
  sleep 0.1
done
[[ $(jq .pid "$COUNTERS") != $(jq .pid /run/netaccel/stack/na-peer.json) ]] ||
  na_fail "--workers 2 served both containers from one process"
na_bg stack-echo "$APP" --stack na-peer echo --port 7300
sleep 0.3
na_timeout 60 "$APP" --stack na-stack pingpong --to "$PEER_IP" --port 7300 --count 1000 \
  >"$NA_TMP/pingpong-workers" || na_fail "stack-to-stack ping-pong across two workers failed"
na_log "two workers, stack to stack: $(cat "$NA_TMP/pingpong-workers")"
kill -TERM "$WORKERS_PID"
na_wait_exit "$WORKERS_PID" 10 "the workers' parent"
[[ ! -S $SOCKET && ! -S /run/netaccel/stack/na-peer.sock ]] || na_fail "a worker's socket outlived SIGTERM"
"$NETACCEL" detach na-stack >/dev/null || na_fail "detach failed"
"$NETACCEL" detach na-peer >/dev/null || na_fail "detach na-peer failed"
na_pass
