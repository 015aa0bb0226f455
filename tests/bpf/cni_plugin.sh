#!/usr/bin/env bash
# netaccel-cni against the CNI spec, driven as a runtime drives a conflist
# (bridge + host-local, then netaccel-cni with the bridge's result as
# prevResult): ADD on an empty namespace passes prevResult on unchanged and
# attaches it (unmodified redis then goes over the sockmap), ADD twice, CHECK
# (and after a detach behind its back: the problem reported), DEL twice, DEL
# of a namespace already deleted, GC, STATUS, VERSION, and the spec's error
# objects for bad JSON, a missing prevResult, an unsupported version and a
# missing variable. Nothing may be left behind.
# shellcheck source-path=SCRIPTDIR source=../integration/lib.sh
source "$(dirname "$(readlink -f "$0")")/../integration/lib.sh"
na_init "$@"
# shellcheck source-path=SCRIPTDIR source=containers.sh
source "$(dirname "$NA_SELF")/containers.sh"
na_require_tools redis-server redis-cli jq
na_containers_init

PLUGIN=$NA_BIN_DIR/netaccel-cni
[[ -x $PLUGIN ]] || na_fail "$PLUGIN does not exist: build first"
readonly NETWORK=netaccel-test PORT=6394

# plugin COMMAND NAME CONFIG_JSON: runs netaccel-cni as a runtime does, for
# container NAME; stdout in $NA_TMP/out, exit status in PLUGIN_STATUS.
plugin() {
  local command=$1 name=$2 config=$3
  PLUGIN_STATUS=0
  CNI_COMMAND=$command CNI_CONTAINERID=id-$name CNI_NETNS=/run/netns/$name CNI_IFNAME=eth0 \
    CNI_PATH=$NA_CNI_PATH na_timeout 60 "$PLUGIN" <<<"$config" >"$NA_TMP/out" || PLUGIN_STATUS=$?
}
# config [PREV_RESULT_FILE [VERSION]]: netaccel-cni's configuration in the
# conflist, as the runtime hands it over (the conflist's name and version).
config() {
  local previous=null
  [[ -n ${1:-} ]] && previous=$(cat "$1")
  jq -cn --arg name "$NETWORK" --arg version "${2:-1.0.0}" --argjson previous "$previous" \
    '{cniVersion: $version, name: $name, type: "netaccel-cni"}
     + (if $previous == null then {} else {prevResult: $previous} end)'
}
# expect_error CODE WHAT: the last call failed with the spec's error object.
expect_error() {
  local code=$1 what=$2
  ((PLUGIN_STATUS != 0)) || na_fail "$what: succeeded: $(cat "$NA_TMP/out")"
  jq -e --argjson code "$code" '.code == $code and (.msg | type) == "string" and (.cniVersion | type) == "string"' \
    "$NA_TMP/out" >/dev/null || na_fail "$what: not an error object with code $code: $(cat "$NA_TMP/out")"
  na_log "$what: error $code ($(jq -r '.msg + " / " + (.details // "")' "$NA_TMP/out"))"
}
expect_success() {
  ((PLUGIN_STATUS == 0)) || na_fail "$1: failed ($PLUGIN_STATUS): $(cat "$NA_TMP/out")"
}
# chain_add NAME: an empty namespace, then bridge and netaccel-cni ADD.
chain_add() {
  local name=$1
  ip netns add "$name" || na_fail "ip netns add $name failed"
  NA_CONTAINERS+=("$name")
  ip -n "$name" link set lo up
  na_cni ADD "$name" >"$NA_TMP/$name.prev" || na_fail "bridge ADD for $name failed: $(cat "$NA_TMP/$name.prev")"
  plugin ADD "$name" "$(config "$NA_TMP/$name.prev")"
  expect_success "ADD $name"
  [[ $(jq -c . "$NA_TMP/out") == "$(jq -c . "$NA_TMP/$name.prev")" ]] ||
    na_fail "ADD $name changed prevResult:"$'\n'"$(diff <(jq . "$NA_TMP/$name.prev") <(jq . "$NA_TMP/out"))"
  NA_IP[$name]=$(jq -r '.ips[] | .address | select(startswith("10."))' "$NA_TMP/$name.prev" | cut -d/ -f1)
}
attached() { [[ -d /sys/fs/bpf/netaccel/$1 ]]; }
processes_in() {
  local netns count=0 pid
  netns=$(stat -L -c %i "/run/netns/$1")
  for pid in /proc/[0-9]*; do
    [[ $(stat -L -c %i "$pid/ns/net" 2>/dev/null) == "$netns" ]] && count=$((count + 1))
  done
  echo "$count"
}

na_step "VERSION"
plugin VERSION na-none '{"cniVersion": "1.0.0"}'
expect_success VERSION
jq -e '.supportedVersions | index("1.0.0") and index("1.1.0")' "$NA_TMP/out" >/dev/null ||
  na_fail "VERSION: $(cat "$NA_TMP/out")"

na_step "ADD on empty namespaces: prevResult passed on unchanged, namespace attached"
before_state=$(na_bpf_state)
chain_add na-c1
chain_add na-c2
[[ $(processes_in na-c1) == 0 && $(processes_in na-c2) == 0 ]] || na_fail "the namespaces are not empty"
for name in na-c1 na-c2; do
  attached "$name" || na_fail "ADD did not attach $name"
  bpftool map dump pinned "/sys/fs/bpf/netaccel/$name/container_record" |
    jq -e --arg id "id-$name" --arg network "$NETWORK" \
      '.[0].value | .cni_container_id == $id and .cni_network == $network' >/dev/null ||
    na_fail "$name's record does not name the CNI container and network"
done
link_id=$(na_sock_ops_link_id)

na_step "ADD twice: the same result, the same attachment"
state=$(na_bpf_state)
plugin ADD na-c1 "$(config "$NA_TMP/na-c1.prev")"
expect_success "second ADD"
[[ $(jq -c . "$NA_TMP/out") == "$(jq -c . "$NA_TMP/na-c1.prev")" ]] || na_fail "second ADD changed prevResult"
[[ $(na_bpf_state) == "$state" ]] || na_fail "second ADD changed the attachment"

na_step "processes started afterwards go over the sockmap"
na_bg redis nsenter --net=/run/netns/na-c2 redis-server --port "$PORT" --bind 0.0.0.0 \
  --protected-mode no --save '' --appendonly no
redis_pid=$NA_LAST_PID
na_container_wait_listen na-c2 "$PORT"
head -c 100000 /dev/urandom | base64 -w 0 >"$NA_TMP/value"
nsenter --net=/run/netns/na-c1 redis-cli -h "${NA_IP[na-c2]}" -p "$PORT" -x set big <"$NA_TMP/value" >/dev/null ||
  na_fail "SET failed"
got=$(nsenter --net=/run/netns/na-c1 redis-cli -h "${NA_IP[na-c2]}" -p "$PORT" --raw get big)
[[ $got == "$(cat "$NA_TMP/value")" ]] || na_fail "the value read back differs"
redirected=$(na_stat na-c1 sockmap redirected_bytes)
((redirected >= 100000)) || na_fail "the sockmap carried $redirected bytes of the SET, expected >= 100000"
na_log "SET/GET of 100000 bytes: the sockmap carried $redirected bytes from na-c1"

na_step "CHECK: complete, then after a detach behind the plugin's back"
plugin CHECK na-c1 "$(config "$NA_TMP/na-c1.prev")"
expect_success CHECK
[[ ! -s $NA_TMP/out ]] || na_fail "CHECK printed: $(cat "$NA_TMP/out")"
plugin CHECK na-c1 "$(config)"
expect_error 7 "CHECK without prevResult"
"$NETACCEL" detach na-c1 >/dev/null || na_fail "netaccel detach na-c1 failed"
plugin CHECK na-c1 "$(config "$NA_TMP/na-c1.prev")"
expect_error 101 "CHECK after detach"
jq -e '.details | test("is not attached")' "$NA_TMP/out" >/dev/null || na_fail "CHECK did not say what is missing"
plugin ADD na-c1 "$(config "$NA_TMP/na-c1.prev")"
expect_success "ADD after detach"
plugin CHECK na-c1 "$(config "$NA_TMP/na-c1.prev")"
expect_success "CHECK after ADD again"

na_step "errors: the spec's codes"
plugin ADD na-c1 'not json {'
expect_error 6 "bad JSON"
plugin ADD na-c1 "$(config)"
expect_error 7 "ADD without prevResult"
plugin ADD na-c1 "$(config "$NA_TMP/na-c1.prev" 9.9.9)"
expect_error 1 "an unsupported CNI version"
PLUGIN_STATUS=0
CNI_COMMAND=ADD CNI_NETNS=/run/netns/na-c1 CNI_IFNAME=eth0 "$PLUGIN" <<<"$(config "$NA_TMP/na-c1.prev")" \
  >"$NA_TMP/out" || PLUGIN_STATUS=$?
expect_error 4 "ADD without CNI_CONTAINERID"
plugin ADD na-missing "$(config "$NA_TMP/na-c1.prev")"
expect_error 100 "ADD of a namespace that does not exist"

na_step "DEL twice"
plugin DEL na-c1 "$(config "$NA_TMP/na-c1.prev")"
expect_success DEL
attached na-c1 && na_fail "DEL left na-c1 attached"
plugin DEL na-c1 "$(config "$NA_TMP/na-c1.prev")"
expect_success "second DEL"

na_step "DEL of a namespace already deleted"
kill "$redis_pid"
na_wait_exit "$redis_pid" 10 redis-server
ip netns del na-c2 || na_fail "ip netns del na-c2 failed"
plugin DEL na-c2 "$(config "$NA_TMP/na-c2.prev")"
expect_success "DEL of a deleted namespace"
attached na-c2 && na_fail "DEL left na-c2 attached"
PLUGIN_STATUS=0
CNI_COMMAND=DEL CNI_CONTAINERID=id-never-added CNI_IFNAME=eth0 "$PLUGIN" <<<"$(config)" >"$NA_TMP/out" ||
  PLUGIN_STATUS=$?
expect_success "DEL without CNI_NETNS of a container never added"
[[ ! -e /sys/fs/bpf/netaccel ]] || na_fail "pins left: $(find /sys/fs/bpf/netaccel)"
na_expect_link_gone "$link_id"
for dispatcher in /sys/fs/bpf/xdp/dispatch-*; do
  [[ -e $dispatcher ]] && na_fail "an XDP dispatcher is left: $dispatcher"
done

na_step "CNI 1.1: STATUS and GC"
plugin STATUS na-c1 "$(config "" 1.1.0)"
expect_success STATUS
plugin ADD na-c1 "$(config "$NA_TMP/na-c1.prev" 1.1.0)"
expect_success "ADD for GC"
gc_config() {
  jq -c --argjson valid "$1" '. + {"cni.dev/valid-attachments": $valid}' <<<"$(config "" 1.1.0)"
}
plugin GC na-c1 "$(gc_config '[{"containerID": "id-na-c1", "ifname": "eth0"}]')"
expect_success "GC keeping na-c1"
attached na-c1 || na_fail "GC removed a valid attachment"
plugin GC na-c1 "$(gc_config '[]')"
expect_success "GC of everything"
attached na-c1 && na_fail "GC left na-c1 attached"
[[ $(na_bpf_state) == "$before_state" ]] ||
  na_fail "something is left:"$'\n'"$(diff <(echo "$before_state") <(na_bpf_state))"
na_pass
