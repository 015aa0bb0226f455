#!/usr/bin/env bash
# Attach by network namespace alone, as a CNI runtime does: two containers
# attached while no process runs in them, then servers and clients started
# afterwards, in no cgroup of the containers' (sock_ops runs at the cgroup
# v2 root and tells the namespaces apart by cookie). Processes come and go,
# the namespaces empty out and fill again, and the sockmap keeps carrying
# their bytes; detach then removes exactly what attach added.
# shellcheck source-path=SCRIPTDIR source=../integration/lib.sh
source "$(dirname "$(readlink -f "$0")")/../integration/lib.sh"
na_init "$@"
# shellcheck source-path=SCRIPTDIR source=containers.sh
source "$(dirname "$NA_SELF")/containers.sh"
na_require_tools redis-server redis-benchmark redis-cli jq
na_containers_init

readonly PORT=6393 REQUESTS=5000 CLIENTS=5
na_container_add na-a
na_container_add na-b
SERVER=${NA_IP[na-b]}

# processes_in NAME: how many processes run in the container's namespace.
processes_in() {
  local netns count=0 pid
  netns=$(stat -L -c %i "/run/netns/$1")
  for pid in /proc/[0-9]*; do
    [[ $(stat -L -c %i "$pid/ns/net" 2>/dev/null) == "$netns" ]] && count=$((count + 1))
  done
  echo "$count"
}
# in_netns NAME CMD...: CMD in the container's namespace, in the test's own
# cgroup (not the container's).
in_netns() {
  local name=$1
  shift
  na_timeout "$NA_COMMAND_TIMEOUT" nsenter --net="/run/netns/$name" "$@"
}
redirected_total() {
  echo $(($(na_stat na-a sockmap redirected_bytes) + $(na_stat na-b sockmap redirected_bytes)))
}

na_step "attach two empty namespaces (one by name, one by path)"
for name in na-a na-b; do
  [[ $(processes_in "$name") == 0 ]] || na_fail "$name is not empty"
done
empty_state=$(na_bpf_state)
"$NETACCEL" attach na-a || na_fail "attach of the empty namespace na-a failed"
"$NETACCEL" attach /run/netns/na-b || na_fail "attach of the empty namespace /run/netns/na-b failed"
link_id=$(na_sock_ops_link_id)
[[ -n $link_id ]] || na_fail "no shared sock_ops link pinned"
cgroup_root=$(findmnt -n -t cgroup2 -o TARGET | head -n 1)
bpftool link show id "$link_id" --json | jq -e --argjson root "$(stat -c %i "$cgroup_root")" \
  '.cgroup_id == $root' >/dev/null || na_fail "sock_ops link $link_id is not at the cgroup v2 root"
bpftool map dump pinned /sys/fs/bpf/netaccel/attached_netns >"$NA_TMP/netns.json"
[[ $(jq length "$NA_TMP/netns.json") == 2 ]] || na_fail "attached_netns: $(cat "$NA_TMP/netns.json")"
for name in na-a na-b; do
  cookie=$(bpftool map dump pinned "/sys/fs/bpf/netaccel/$name/container_record" |
    jq '.[0].value.netns_cookie')
  jq -e --argjson cookie "$cookie" 'any(.[]; .key == $cookie)' "$NA_TMP/netns.json" >/dev/null ||
    na_fail "$name's cookie $cookie is not in attached_netns"
done
attached_state=$(na_bpf_state)
na_log "both attached with no process in them; sock_ops link $link_id at $cgroup_root"

# round LABEL: a fresh server and a fresh client; the sockmap must carry
# the client's requests, and the server must have processed them.
round() {
  local label=$1 before after server
  na_bg "redis-$label" nsenter --net=/run/netns/na-b redis-server --port "$PORT" --bind 0.0.0.0 \
    --protected-mode no --save '' --appendonly no
  server=$NA_LAST_PID
  na_container_wait_listen na-b "$PORT"
  before=$(redirected_total)
  in_netns na-a redis-benchmark -h "$SERVER" -p "$PORT" -c "$CLIENTS" -n "$REQUESTS" -t set,get \
    --csv >"$NA_TMP/bench-$label.csv" || na_fail "$label: redis-benchmark failed"
  processed=$(in_netns na-a redis-cli -h "$SERVER" -p "$PORT" info stats | tr -d '\r' |
    awk -F: '$1 == "total_commands_processed" {print $2}')
  ((processed >= 2 * REQUESTS)) || na_fail "$label: the server processed $processed commands"
  after=$(redirected_total)
  ((after - before >= 2 * REQUESTS * 3)) ||
    na_fail "$label: the sockmap carried $((after - before)) bytes, expected far more"
  na_log "$label: $processed commands, the sockmap carried $((after - before)) bytes"
  kill "$server"
  na_wait_exit "$server" 10 "redis-server ($label)"
}

na_step "processes started after attach, outside the containers' cgroups"
round first
[[ $(processes_in na-b) == 0 && $(processes_in na-a) == 0 ]] ||
  na_fail "processes left in the namespaces after the first round"
na_step "the namespaces emptied: new processes are served all the same"
round second
added=$(na_stat na-b sockmap sockets_added)
((added >= 2 * CLIENTS)) || na_fail "na-b: $added sockets entered the sockhash, expected >= $((2 * CLIENTS))"
[[ $(na_bpf_state) == "$attached_state" ]] || na_fail "the attachment changed while processes came and went"

na_step "detach removes exactly what attach added"
"$NETACCEL" detach na-a || na_fail "detach na-a failed"
[[ $(bpftool map dump pinned /sys/fs/bpf/netaccel/attached_netns | jq length) == 1 ]] ||
  na_fail "na-a's namespace is still registered"
[[ $(na_sock_ops_link_id) == "$link_id" ]] || na_fail "the shared link went with the first detach"
"$NETACCEL" detach na-b || na_fail "detach na-b failed"
[[ $(na_bpf_state) == "$empty_state" ]] ||
  na_fail "detach left a difference:"$'\n'"$(diff <(echo "$empty_state") <(na_bpf_state))"
na_expect_link_gone "$link_id"
na_pass
