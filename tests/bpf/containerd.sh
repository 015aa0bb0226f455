#!/usr/bin/env bash
# netaccel-cni under a real runtime: Debian's containerd (private root, state
# and socket) and `ctr run --cni`, whose conflist chains bridge + host-local
# + netaccel-cni. Two containers on a root filesystem built from the host's
# binaries: unmodified redis-server in one, redis-benchmark in the other.
# The runtime's ADD attaches each namespace, the sockmap carries redis's
# bytes (counters grow); two more containers with the preload library in
# their root filesystem and the monitor's socket mounted in (LD_PRELOAD and
# NETACCEL_SOCKET in their environment) talk over tier 0, shared memory
# across the two containers (the monitor's connections grow); and `ctr task
# kill` + container removal (the runtime's DEL, once the namespace is gone)
# leaves no pin, link, map or veth behind.
# shellcheck source-path=SCRIPTDIR source=../integration/lib.sh
source "$(dirname "$(readlink -f "$0")")/../integration/lib.sh"
na_init "$@"
# shellcheck source-path=SCRIPTDIR source=containers.sh
source "$(dirname "$NA_SELF")/containers.sh"
na_require_tools containerd ctr runc redis-server redis-benchmark jq ldd
na_containers_init

PLUGIN=$NA_BIN_DIR/netaccel-cni
[[ -x $PLUGIN ]] || na_fail "$PLUGIN does not exist: build first"
readonly PORT=6395 REQUESTS=20000 CLIENTS=10 NETWORK=netaccel-containerd
CTR_DIR=$NA_TMP/containerd
CTR_NS=$(basename "$NA_TMP" | tr -c 'A-Za-z0-9\n' -)
CTR=(ctr --address "$CTR_DIR/containerd.sock" --namespace "$CTR_NS")
readonly CNI_CONF_DIR=/etc/cni/net.d CNI_BIN_DIR=/opt/cni/bin
CREATED_DIRS=()

# ctr run --cni reads its conflist from /etc/cni/net.d and its plugins from
# /opt/cni/bin (go-cni's defaults, no option): tmpfs mounts private to this
# test's mount namespace stand in for them.
private_directory() {
  local directory=$1 parent
  if [[ ! -d $directory ]]; then
    parent=$directory
    while [[ ! -d $(dirname "$parent") ]]; do parent=$(dirname "$parent"); done
    mkdir -p "$directory" || na_fail "cannot create $directory"
    CREATED_DIRS+=("$parent")
  fi
  mount -t tmpfs -o mode=0755 netaccel-test "$directory" || na_fail "cannot mount a tmpfs on $directory"
}

# shellcheck disable=SC2317  # called from the EXIT trap
containerd_cleanup() {
  local id
  if [[ -S $CTR_DIR/containerd.sock ]]; then
    for id in $("${CTR[@]}" task ls -q 2>/dev/null); do
      "${CTR[@]}" task kill -s KILL "$id" >/dev/null 2>&1
      "${CTR[@]}" task rm -f "$id" >/dev/null 2>&1
    done
    for id in $("${CTR[@]}" container ls -q 2>/dev/null); do "${CTR[@]}" container rm "$id" >/dev/null 2>&1; done
  fi
  # runc's cgroups of this namespace (v1 controllers and v2), now empty.
  find /sys/fs/cgroup -maxdepth 3 -type d -name "$CTR_NS" -exec rmdir {} + 2>/dev/null
  umount "$CNI_CONF_DIR" "$CNI_BIN_DIR" /run/containerd 2>/dev/null
  local directory
  for directory in "${CREATED_DIRS[@]}"; do rm -r "$directory" 2>/dev/null; done
  return 0
}
# shellcheck disable=SC2154  # assigned inside the trap itself
trap 'containerd_status=$?; containerd_cleanup; na_containers_cleanup; (exit $containerd_status); na_cleanup' EXIT

na_step "containerd with a private root, state and socket; a conflist ending in netaccel-cni"
private_directory "$CNI_CONF_DIR"
private_directory "$CNI_BIN_DIR"
# The shims' sockets and runc's state (containerd's fixed paths) too.
private_directory /run/containerd
ln -s "$NA_CNI_PATH/bridge" "$NA_CNI_PATH/host-local" "$PLUGIN" "$CNI_BIN_DIR/"
cat >"$CNI_CONF_DIR/10-netaccel.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "$NETWORK", "plugins": [
  {"type": "bridge", "bridge": "na-ctr0", "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "dataDir": "$NA_TMP/ctr-ipam", "ranges": [[{"subnet": "10.78.0.0/24"}]]}},
  {"type": "netaccel-cni"}]}
JSON
mkdir -p "$CTR_DIR/fifo"
cat >"$CTR_DIR/config.toml" <<TOML
version = 2
root = "$CTR_DIR/root"
state = "$CTR_DIR/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$CTR_DIR/containerd.sock"
[ttrpc]
  address = "$CTR_DIR/containerd.sock.ttrpc"
TOML
na_bg containerd containerd --config "$CTR_DIR/config.toml"
deadline=$((SECONDS + 20))
until "${CTR[@]}" version >/dev/null 2>&1; do
  ((SECONDS < deadline)) || na_fail "containerd did not answer on $CTR_DIR/containerd.sock"
  sleep 0.1
done

# A root filesystem from the host's binaries and the libraries they load.
build_rootfs() {
  local rootfs=$1 binary library
  mkdir -p "$rootfs"
  for binary in "$@"; do
    [[ $binary == "$rootfs" ]] && continue
    cp --parents -L "$binary" "$rootfs/" || na_fail "cannot copy $binary"
    for library in $(ldd "$binary" | grep -o '/[^ ]*'); do
      cp --parents -L "$library" "$rootfs/" || na_fail "cannot copy $library"
    done
  done
}
build_rootfs "$NA_TMP/rootfs-server" "$(command -v redis-server)"
build_rootfs "$NA_TMP/rootfs-client" "$(command -v redis-benchmark)" "$(command -v sleep)"

# run_container ID ROOTFS CMD...: `ctr run --cni` in the background, as a
# foreground ctr: when the task ends, ctr removes its network (CNI DEL).
# RUN_OPTIONS: more `ctr run` options for the containers started next.
declare -A TASK_PID CTR_PID
RUN_OPTIONS=()
run_container() {
  local id=$1 rootfs=$2
  shift 2
  na_bg "ctr-$id" "${CTR[@]}" run --cni --rm "${RUN_OPTIONS[@]}" --fifo-dir "$CTR_DIR/fifo" \
    --rootfs "$rootfs" "$id" "$@"
  CTR_PID[$id]=$NA_LAST_PID
  local deadline=$((SECONDS + 30)) pid
  while :; do
    pid=$("${CTR[@]}" task ls 2>/dev/null | awk -v id="$id" '$1 == id && $3 == "RUNNING" {print $2}')
    [[ -n $pid ]] && nsenter -t "$pid" -n ip -4 -o addr show eth0 2>/dev/null | grep -q inet && break
    kill -0 "${CTR_PID[$id]}" 2>/dev/null || na_fail "ctr run $id exited: $(cat "$NA_TMP/ctr-$id.log")"
    ((SECONDS < deadline)) || na_fail "container $id did not start within 30 s: $(cat "$NA_TMP/ctr-$id.log")"
    sleep 0.1
  done
  TASK_PID[$id]=$pid
  na_log "container $id: task pid $pid, $(nsenter -t "$pid" -n ip -4 -o addr show eth0 | awk '{print $4}')"
}
# attachment_of ID: the name netaccel-cni attached the container under.
attachment_of() {
  local record
  for record in /sys/fs/bpf/netaccel/*/container_record; do
    [[ -e $record ]] || continue
    bpftool map dump pinned "$record" | jq -r --arg id "$CTR_NS-$1" \
      '.[0].value | select(.cni_container_id == $id) | .name'
  done
}

na_step "two containers: redis-server and a client"
run_container server "$NA_TMP/rootfs-server" "$(command -v redis-server)" --port "$PORT" \
  --bind 0.0.0.0 --protected-mode no --save '' --appendonly no
run_container client "$NA_TMP/rootfs-client" "$(command -v sleep)" 600
SERVER_IP=$(nsenter -t "${TASK_PID[server]}" -n ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)
deadline=$((SECONDS + 10))
until [[ -n $(nsenter -t "${TASK_PID[server]}" -n ss -Hltn "sport = :$PORT") ]]; do
  ((SECONDS < deadline)) || na_fail "redis-server does not listen: $(cat "$NA_TMP/ctr-server.log")"
  sleep 0.1
done
server_name=$(attachment_of server)
client_name=$(attachment_of client)
[[ -n $server_name && -n $client_name ]] ||
  na_fail "the runtime's ADD did not attach both containers: $(find /sys/fs/bpf/netaccel)"
na_log "attached by the runtime: server as $server_name, client as $client_name"
link_id=$(na_sock_ops_link_id)

na_step "redis-benchmark in the client container against the server container"
na_timeout "$NA_COMMAND_TIMEOUT" "${CTR[@]}" task exec --fifo-dir "$CTR_DIR/fifo" --exec-id bench client \
  "$(command -v redis-benchmark)" -h "$SERVER_IP" -p "$PORT" -c "$CLIENTS" -n "$REQUESTS" -t set,get --csv \
  >"$NA_TMP/bench.csv" 2>&1 || na_fail "redis-benchmark failed: $(cat "$NA_TMP/bench.csv")"
cat "$NA_TMP/bench.csv"
[[ $(grep -c '^"\(SET\|GET\)"' "$NA_TMP/bench.csv") == 2 ]] || na_fail "redis-benchmark reported no SET and GET rates"
for name in "$server_name" "$client_name"; do
  redirected=$(na_stat "$name" sockmap redirected_bytes)
  added=$(na_stat "$name" sockmap sockets_added)
  ((redirected >= REQUESTS && added >= CLIENTS)) ||
    na_fail "$name: the sockmap carried $redirected bytes over $added sockets"
  na_log "$name: the sockmap carried $redirected bytes, $added sockets entered the sockhash"
done

na_step "tier 0 inside containers: the preload and the monitor's socket given to two more"
# What a runtime's configuration gives a container (Kubernetes: a hostPath
# volume for the socket's directory, env for the two variables; the library
# here sits in the image at its host path, with the libraries it loads).
PRELOAD=$(readlink -f "$NA_BIN_DIR/../lib/netaccel/libnetaccel_preload.so")
[[ -f $PRELOAD ]] || na_fail "no preload library at $PRELOAD"
NA_SOCK=$NA_TMP/monitor/monitor.sock
na_start_monitor
readonly CONTAINER_SOCKET_DIR=/run/netaccel
RUN_OPTIONS=(--env "LD_PRELOAD=$PRELOAD" --env "NETACCEL_SOCKET=$CONTAINER_SOCKET_DIR/monitor.sock"
  --mount "type=bind,src=$NA_TMP/monitor,dst=$CONTAINER_SOCKET_DIR,options=rbind:rw")
build_rootfs "$NA_TMP/rootfs-server0" "$(command -v redis-server)" "$PRELOAD"
build_rootfs "$NA_TMP/rootfs-client0" "$(command -v redis-benchmark)" "$(command -v sleep)" "$PRELOAD"
run_container server0 "$NA_TMP/rootfs-server0" "$(command -v redis-server)" --port "$PORT" \
  --bind 0.0.0.0 --protected-mode no --save '' --appendonly no
run_container client0 "$NA_TMP/rootfs-client0" "$(command -v sleep)" 600
SERVER0_IP=$(nsenter -t "${TASK_PID[server0]}" -n ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)
deadline=$((SECONDS + 10))
until [[ -n $(nsenter -t "${TASK_PID[server0]}" -n ss -Hltn "sport = :$PORT") ]]; do
  ((SECONDS < deadline)) || na_fail "preloaded redis-server does not listen: $(cat "$NA_TMP/ctr-server0.log")"
  sleep 0.1
done
na_wait_counter containers 4 10
na_connections_total
before=$NA_TOTAL
na_timeout "$NA_COMMAND_TIMEOUT" "${CTR[@]}" task exec --fifo-dir "$CTR_DIR/fifo" --exec-id bench0 client0 \
  "$(command -v redis-benchmark)" -h "$SERVER0_IP" -p "$PORT" -c "$CLIENTS" -n "$REQUESTS" -t set,get --csv \
  >"$NA_TMP/bench0.csv" 2>&1 || na_fail "preloaded redis-benchmark failed: $(cat "$NA_TMP/bench0.csv")"
cat "$NA_TMP/bench0.csv"
[[ $(grep -c '^"\(SET\|GET\)"' "$NA_TMP/bench0.csv") == 2 ]] || na_fail "redis-benchmark reported no SET and GET rates"
na_expect_connections "$before" "$CLIENTS" "redis-benchmark between two containers of the runtime"

na_step "ctr task kill and container removal leave nothing behind"
for id in client0 server0 client server; do
  "${CTR[@]}" task kill -s KILL "$id" || na_fail "ctr task kill $id failed"
  na_wait_exit "${CTR_PID[$id]}" 30 "ctr run $id"
done
for id in client0 server0 client server; do
  if "${CTR[@]}" container info "$id" >/dev/null 2>&1; then
    "${CTR[@]}" container rm "$id" || na_fail "ctr container rm $id failed"
  fi
done
[[ -z $("${CTR[@]}" container ls -q) ]] || na_fail "containers left: $("${CTR[@]}" container ls)"
[[ ! -e /sys/fs/bpf/netaccel ]] || na_fail "pins left: $(find /sys/fs/bpf/netaccel)"
na_expect_link_gone "$link_id"
veths=$(ip -o link show type veth)
[[ -z $veths ]] || na_fail "veths left: $veths"
for dispatcher in /sys/fs/bpf/xdp/dispatch-*; do
  [[ -e $dispatcher ]] && na_fail "an XDP dispatcher is left: $dispatcher"
done
na_pass
