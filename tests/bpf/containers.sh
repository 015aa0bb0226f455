# shellcheck shell=bash
# shellcheck disable=SC2034  # globals set here are read by the scripts
# Containers made the way a container runtime makes them, for the eBPF
# tests and the benchmark. After lib.sh's na_init (private network, PID and
# mount namespaces):
#
#   source "$(dirname "${BASH_SOURCE[0]}")/containers.sh"
#   na_containers_init
#   na_container_add NAME          # netns + Debian's CNI bridge/host-local, cgroup v2
#   na_container_bg NAME LOG CMD   # CMD inside NAME's netns and cgroup (as na_bg)
#
# The "host" of the containers is the test's own network namespace, so the
# bridge, veths and netns die with it; /run/netns and /sys/fs/bpf are
# private mounts of the test; the cgroups are removed on exit.

NA_CNI_PATH=${NA_CNI_PATH:-/usr/lib/cni}
NA_CONTAINERS=()

na_containers_init() {
  na_require_tools nsenter bpftool findmnt
  local plugin
  for plugin in bridge host-local; do
    [[ -x $NA_CNI_PATH/$plugin ]] ||
      na_skip "CNI plugin $NA_CNI_PATH/$plugin missing (containernetworking-plugins)"
  done
  local cgroup2
  cgroup2=$(findmnt -n -t cgroup2 -o TARGET | head -n 1)
  [[ -n $cgroup2 ]] || na_skip "no cgroup v2 hierarchy is mounted"
  # Private to this test's mount namespace: nothing of it shows outside.
  mkdir -p /run/netns
  mount -t tmpfs -o mode=0755 netaccel-netns /run/netns || na_fail "cannot mount a tmpfs on /run/netns"
  mount -t bpf -o mode=0700 bpf /sys/fs/bpf || na_fail "cannot mount the BPF filesystem"
  NA_CGROUP_PARENT=$cgroup2/netaccel-tests/$(basename "$NA_TMP")
  mkdir -p "$NA_CGROUP_PARENT" || na_fail "cannot create cgroup $NA_CGROUP_PARENT"
  NA_CNI_CONFIG=$NA_TMP/cni.json
  cat >"$NA_CNI_CONFIG" <<JSON
{"cniVersion": "1.0.0", "name": "netaccel-test", "type": "bridge", "bridge": "na-br0",
 "isGateway": true, "ipMasq": false,
 "ipam": {"type": "host-local", "dataDir": "$NA_TMP/ipam",
          "ranges": [[{"subnet": "10.77.0.0/24"}], [{"subnet": "fd77::/64"}]]}}
JSON
  # shellcheck disable=SC2154  # assigned inside the trap itself
  trap 'na_containers_status=$?; na_containers_cleanup; (exit $na_containers_status); na_cleanup' EXIT
}

# na_cni COMMAND NAME: runs the bridge plugin as a runtime does.
na_cni() {
  CNI_COMMAND=$1 CNI_CONTAINERID=$2 CNI_NETNS=/run/netns/$2 CNI_IFNAME=eth0 CNI_PATH=$NA_CNI_PATH \
    "$NA_CNI_PATH/bridge" <"$NA_CNI_CONFIG"
}

# na_container_add NAME: sets NA_IP[NAME], NA_IP6[NAME] and NA_CGROUP[NAME].
declare -A NA_IP NA_IP6 NA_CGROUP
na_container_add() {
  local name=$1 result
  ip netns add "$name" || na_fail "ip netns add $name failed"
  NA_CONTAINERS+=("$name")
  ip -n "$name" link set lo up
  result=$(na_cni ADD "$name") || na_fail "CNI ADD for $name failed: $result"
  NA_IP[$name]=$(jq -r '.ips[] | .address | select(startswith("10."))' <<<"$result" | cut -d/ -f1)
  NA_IP6[$name]=$(jq -r '.ips[] | .address | select(startswith("fd77:"))' <<<"$result" | cut -d/ -f1)
  [[ ${NA_IP[$name]} =~ ^10\.77\. && ${NA_IP6[$name]} =~ ^fd77: ]] ||
    na_fail "CNI gave $name no IPv4 and IPv6 address: $result"
  NA_CGROUP[$name]=$NA_CGROUP_PARENT/$name
  mkdir "${NA_CGROUP[$name]}" || na_fail "cannot create cgroup ${NA_CGROUP[$name]}"
  na_log "container $name: netns /run/netns/$name, ${NA_IP[$name]} and ${NA_IP6[$name]}, cgroup ${NA_CGROUP[$name]}"
}

# na_container_bg NAME LOG CMD...: CMD in the container's netns and cgroup.
na_container_bg() {
  local name=$1 log=$2
  shift 2
  # shellcheck disable=SC2016  # expanded by the inner shell
  na_bg "$log" bash -c 'echo $$ >"$1/cgroup.procs" && exec nsenter --net="/run/netns/$2" "${@:3}"' \
    _ "${NA_CGROUP[$name]}" "$name" "$@"
}

# na_container_run NAME CMD...: the same in the foreground, bounded by
# NA_COMMAND_TIMEOUT.
na_container_run() {
  local name=$1
  shift
  # shellcheck disable=SC2016  # expanded by the inner shell
  na_timeout "$NA_COMMAND_TIMEOUT" bash -c \
    'echo $$ >"$1/cgroup.procs" && exec nsenter --net="/run/netns/$2" "${@:3}"' \
    _ "${NA_CGROUP[$name]}" "$name" "$@"
}

na_containers_cleanup() {
  local name cgroup
  # Everything the containers run, however it was started.
  for cgroup in "${NA_CGROUP[@]}"; do echo 1 >"$cgroup/cgroup.kill" 2>/dev/null || true; done
  for name in "${NA_CONTAINERS[@]}"; do
    na_cni DEL "$name" >/dev/null 2>&1 || true
    ip netns del "$name" 2>/dev/null || true
  done
  # A cgroup can be removed once its last process is gone (reaping may lag).
  local deadline=$((SECONDS + 5))
  for cgroup in "${NA_CGROUP[@]}" "$NA_CGROUP_PARENT"; do
    while [[ -d $cgroup ]] && ! rmdir "$cgroup" 2>/dev/null && ((SECONDS < deadline)); do
      sleep 0.1
    done
    [[ -d $cgroup ]] && na_log "WARNING: cgroup $cgroup could not be removed"
  done
  rmdir "$(dirname "$NA_CGROUP_PARENT")" 2>/dev/null || true
  umount /sys/fs/bpf /run/netns 2>/dev/null || true
}

# na_container_wait_listen NAME PORT: waits until something listens on the
# container's TCP port.
na_container_wait_listen() {
  local name=$1 port=$2
  local deadline=$((SECONDS + 10))
  while ((SECONDS < deadline)); do
    [[ -n $(nsenter --net="/run/netns/$name" ss -Hltn "sport = :$port" 2>/dev/null) ]] && return 0
    sleep 0.05
  done
  na_fail "nothing listens on port $port in $name after 10s"
}

# na_container_pid NAME: a PID of a process in the container's cgroup.
na_container_pid() {
  head -n 1 "${NA_CGROUP[$1]}/cgroup.procs"
}

# na_stat NAME SECTION FIELD: a counter of `netaccel stats --json` (0 when
# the container is not listed).
na_stat() {
  "$NETACCEL" stats --json | jq -r --arg name "$1" --arg section "$2" --arg field "$3" \
    '[.containers[] | select(.name == $name) | .[$section][$field]] | first // 0'
}

# What attach and detach change, as text: pins, shared maps' contents, the
# shared sock_ops link, XDP on the containers' interfaces, programs on their
# cgroups (attach puts none there: sock_ops runs at the cgroup v2 root).
# Other programs at the root (other tests') are not ours to compare.
na_bpf_state() {
  local name
  find /sys/fs/bpf/netaccel 2>/dev/null | sort
  local map
  for map in local_endpoints attached_netns; do
    [[ -e /sys/fs/bpf/netaccel/$map ]] && bpftool map dump pinned "/sys/fs/bpf/netaccel/$map"
  done
  [[ -e /sys/fs/bpf/netaccel/sock_ops_link ]] && bpftool link show pinned /sys/fs/bpf/netaccel/sock_ops_link
  for name in "${!NA_CGROUP[@]}"; do
    ip -n "$name" -d link show eth0 | grep -o 'prog/xdp id [0-9]*' || echo "$name: no xdp"
    bpftool cgroup show "${NA_CGROUP[$name]}"
  done
}

# na_sock_ops_link_id: the id of the shared sock_ops link (empty when none
# is pinned), to check after the last detach that the kernel freed it.
na_sock_ops_link_id() {
  [[ -e /sys/fs/bpf/netaccel/sock_ops_link ]] || return 0
  bpftool link show pinned /sys/fs/bpf/netaccel/sock_ops_link --json | jq -r .id
}

# na_expect_link_gone ID: the kernel has no link ID any more (the cgroup
# root runs our sock_ops no longer).
na_expect_link_gone() {
  [[ -n $1 ]] || na_fail "no sock_ops link id was recorded"
  if bpftool link show id "$1" >/dev/null 2>&1; then
    na_fail "sock_ops link $1 still exists: $(bpftool link show id "$1")"
  fi
}
