#!/usr/bin/env bash
# Another XDP program on a container's interface beside netaccel's
# classifier, loaded the way another team would load it (xdp-loader, a
# counting pass-through program built with the tests), before and after
# `netaccel attach`.
#
#   xdp_coexistence.sh BUILD_BIN_DIR xdp_pass_count.bpf.o shared|alone
#
# shared: the kernel runs libxdp's dispatcher. Both programs see every frame
# the classifier passes, in either order of loading; detach leaves the other
# program attached; the dispatcher goes with the last program.
# alone: the kernel refuses the freplace programs the dispatcher is made of
# (its BPF policy can), so libxdp attaches every program alone. Attach then
# refuses an interface that runs another program, changing nothing, and the
# classifier, once attached, keeps its interface (xdp-loader is refused).
# Each mode skips when the kernel shows the other one. While the classifier
# runs alone or in a dispatcher of frags programs only, the veth keeps taking
# multi-buffer frames (its peer's maximum MTU says so). Both then check that a
# detach after the container's namespace is gone succeeds and leaves nothing.
# shellcheck source-path=SCRIPTDIR source=../integration/lib.sh
source "$(dirname "$(readlink -f "$0")")/../integration/lib.sh"
na_init "$@"
OTHER_OBJECT=${2:-}
MODE=${3:-}
[[ -f $OTHER_OBJECT && ($MODE == shared || $MODE == alone) ]] ||
  na_fail "usage: $0 BUILD_BIN_DIR xdp_pass_count.bpf.o shared|alone"
# shellcheck source-path=SCRIPTDIR source=containers.sh
source "$(dirname "$NA_SELF")/containers.sh"
na_require_tools xdp-loader ethtool jq
na_containers_init

readonly FRAMES=20
na_container_add na-server
na_container_add na-client
na_container_add na-gone
for name in na-server na-client na-gone; do
  na_container_bg "$name" "resident-$name" sleep "$NA_PROC_TIMEOUT"
done
SERVER=${NA_IP[na-server]}

in_netns() {
  local name=$1
  shift
  nsenter --net="/run/netns/$name" "$@"
}

# The other program: loaded on NAME's eth0, its counter pinned per container.
other_pins() { echo "/sys/fs/bpf/other-$1"; }
other_load() {
  in_netns "$1" xdp-loader load -m native -p "$(other_pins "$1")" eth0 "$OTHER_OBJECT"
}
other_frames() {
  bpftool -j map lookup pinned "$(other_pins "$1")/seen_frames" key 0 0 0 0 |
    jq '.formatted.value // .value'
}
# other_id NAME: the id of NAME's copy of the other program (it uses that counter).
other_id() {
  local map
  map=$(bpftool -j map show pinned "$(other_pins "$1")/seen_frames" | jq '.id')
  bpftool -j prog show | jq --argjson map "$map" \
    'first(.[] | select(.name == "xdp_pass_count" and ((.map_ids // []) | index($map)))) | .id'
}
other_unload() {
  in_netns "$1" xdp-loader unload -i "$(other_id "$1")" eth0 || na_fail "xdp-loader unload failed"
  rm -rf "$(other_pins "$1")"
}

our_program_id() { bpftool -j prog show pinned "/sys/fs/bpf/netaccel/$1/xdp_program" | jq '.id'; }
# The program NAME's eth0 runs (the dispatcher, or a program alone), 0 for none.
attached_id() {
  local id
  id=$(ip -n "$1" -d link show eth0 | grep -o 'prog/xdp id [0-9]*' | awk '{print $3}')
  echo "${id:-0}"
}
xdp_status() { in_netns "$1" xdp-loader status eth0; }
dispatcher_dirs() { find /sys/fs/bpf/xdp -mindepth 1 -maxdepth 1 -name 'dispatch-*' 2>/dev/null; }

# The largest MTU the host side of NAME's veth allows: while the container
# end runs XDP, a page (3506 bytes here) for a single-buffer program, far more
# for a multi-buffer (frags) one, which takes frames spread over pages.
peer_max_mtu() {
  local peer_index
  peer_index=$(ip -n "$1" -j link show eth0 | jq '.[0].link_index')
  ip -d -j link show | jq --argjson index "$peer_index" '.[] | select(.ifindex == $index) | .max_mtu'
}
expect_frags() {
  (($(peer_max_mtu "$1") > 4096)) ||
    na_fail "$1's eth0 runs XDP without frags (peer max MTU $(peer_max_mtu "$1"))"
}

# send_frames: FRAMES UDP datagrams from na-client to na-server's eth0.
send_frames() {
  na_container_run na-client "$NA_PYTHON" -c '
import socket, sys
sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[2])):
    sender.sendto(b"netaccel", (sys.argv[1], 9))
' "$SERVER" "$FRAMES" || na_fail "cannot send frames to $SERVER"
}

# expect_frames_seen WHO...: after send_frames, each of `ours` (the
# classifier's container_stats) and `other` (the other program's counter)
# named counted every frame on na-server's eth0.
expect_frames_seen() {
  local who before_ours before_other after_ours after_other
  before_ours=$(na_stat na-server xdp packets)
  before_other=0
  [[ -e $(other_pins na-server)/seen_frames ]] && before_other=$(other_frames na-server)
  send_frames
  after_ours=$(na_stat na-server xdp packets)
  after_other=$before_other
  [[ -e $(other_pins na-server)/seen_frames ]] && after_other=$(other_frames na-server)
  for who in "$@"; do
    case $who in
      ours) ((after_ours - before_ours >= FRAMES)) ||
        na_fail "the classifier counted $((after_ours - before_ours)) of $FRAMES frames" ;;
      other) ((after_other - before_other >= FRAMES)) ||
        na_fail "the other program counted $((after_other - before_other)) of $FRAMES frames" ;;
    esac
  done
  na_log "frames counted: classifier +$((after_ours - before_ours)), other program +$((after_other - before_other))"
}

expect_nothing_attached() {
  [[ $(attached_id "$1") == 0 ]] || na_fail "$1's eth0 still runs XDP: $(xdp_status "$1")"
  [[ ! -e /sys/fs/bpf/netaccel/$1 ]] || na_fail "pins left: $(find "/sys/fs/bpf/netaccel/$1")"
  [[ -z $(dispatcher_dirs) ]] || na_fail "libxdp dispatchers left: $(dispatcher_dirs)"
}

na_step "does this kernel run libxdp's dispatcher?"
other_load na-client || na_fail "xdp-loader load failed on an interface without XDP"
xdp_status na-client
if xdp_status na-client | grep -q xdp_dispatcher; then KERNEL_MODE=shared; else KERNEL_MODE=alone; fi
other_unload na-client
if [[ $MODE == shared && $KERNEL_MODE == alone ]]; then
  na_skip "this kernel refuses freplace (BPF_PROG_TYPE_EXT) programs, which libxdp's dispatcher is" \
    "made of: libxdp attaches every program alone and two cannot share an interface" \
    "(bpf.containers.xdp_coexistence.alone checks that case)"
fi
if [[ $MODE == alone && $KERNEL_MODE == shared ]]; then
  na_skip "this kernel runs libxdp's dispatcher (bpf.containers.xdp_coexistence.shared checks that)"
fi

if [[ $MODE == shared ]]; then
  na_step "the other program first, then netaccel attach: both run, the classifier first"
  other_load na-server || na_fail "xdp-loader load failed"
  "$NETACCEL" attach na-server || na_fail "attach beside the other program failed"
  xdp_status na-server | tee "$NA_TMP/xdp-status.txt"
  for program in xdp_classify xdp_pass_count; do
    grep -q "$program" "$NA_TMP/xdp-status.txt" || na_fail "xdp-loader status does not show $program"
  done
  "$NETACCEL" status >"$NA_TMP/status.txt" 2>&1
  cat "$NA_TMP/status.txt"
  grep -q 'XDP on eth0: libxdp dispatcher id' "$NA_TMP/status.txt" || na_fail "status shows no dispatcher"
  grep -Eq '1\. xdp_classify +id [0-9]+ +priority 15 +chain on XDP_PASS +\(netaccel\)' "$NA_TMP/status.txt" ||
    na_fail "status does not show the classifier first, at priority 15, chaining on XDP_PASS"
  grep -Eq '2\. xdp_pass_count +id [0-9]+ +priority 50 ' "$NA_TMP/status.txt" ||
    na_fail "status does not show the other program second, at priority 50"
  na_log "host side of na-server's veth: max MTU $(peer_max_mtu na-server) (the other program is single-buffer)"
  expect_frames_seen ours other

  na_step "detach leaves the other program attached and counting"
  "$NETACCEL" detach na-server || na_fail "detach failed"
  xdp_status na-server | tee "$NA_TMP/xdp-status.txt"
  grep -q xdp_pass_count "$NA_TMP/xdp-status.txt" || na_fail "detach took the other program away"
  grep -q xdp_classify "$NA_TMP/xdp-status.txt" && na_fail "the classifier is still attached"
  [[ ! -e /sys/fs/bpf/netaccel/na-server ]] || na_fail "pins left after detach"
  expect_frames_seen other
  other_unload na-server
  expect_nothing_attached na-server

  na_step "netaccel attach first, then the other program"
  "$NETACCEL" attach na-server || na_fail "attach failed"
  "$NETACCEL" status | grep -q 'XDP on eth0: libxdp dispatcher id [0-9]* (frags)' ||
    na_fail "the classifier alone is not in a dispatcher loaded with frags: $("$NETACCEL" status)"
  expect_frags na-server
  other_load na-server || na_fail "xdp-loader load beside the classifier failed"
  xdp_status na-server | tee "$NA_TMP/xdp-status.txt"
  for program in xdp_classify xdp_pass_count; do
    grep -q "$program" "$NA_TMP/xdp-status.txt" || na_fail "xdp-loader status does not show $program"
  done
  expect_frames_seen ours other

  na_step "the other program leaves: the classifier stays"
  other_unload na-server
  xdp_status na-server | grep -q xdp_classify || na_fail "unloading the other program took the classifier"
  expect_frames_seen ours
  other_load na-server || na_fail "xdp-loader load failed"

  na_step "detach leaves the other program, loaded after, attached and counting"
  "$NETACCEL" detach na-server || na_fail "detach failed"
  xdp_status na-server | grep -q xdp_pass_count || na_fail "detach took the other program away"
  expect_frames_seen other
  other_unload na-server
  expect_nothing_attached na-server
else
  na_step "the other program first: attach refuses the interface and changes nothing"
  other_load na-server || na_fail "xdp-loader load failed"
  before=$(attached_id na-server)
  output=$("$NETACCEL" attach na-server 2>&1) && na_fail "attach succeeded on an interface taken: $output"
  grep -q "outside libxdp's dispatcher" <<<"$output" || na_fail "unclear refusal: $output"
  na_log "refused: $output"
  [[ $(attached_id na-server) == "$before" ]] || na_fail "the interface changed programs"
  [[ ! -e /sys/fs/bpf/netaccel/na-server ]] || na_fail "a refused attach left pins"
  expect_frames_seen other
  other_unload na-server

  na_step "netaccel first: the classifier alone, with frags, the other program refused"
  output=$("$NETACCEL" attach na-server 2>&1) || na_fail "attach failed: $output"
  grep -q "without its dispatcher" <<<"$output" || na_fail "attach did not say the classifier is alone: $output"
  "$NETACCEL" status | grep -q 'XDP on eth0: classifier attached alone' ||
    na_fail "status does not say the classifier is alone: $("$NETACCEL" status)"
  [[ $(attached_id na-server) == "$(our_program_id na-server)" ]] ||
    na_fail "eth0 runs $(attached_id na-server), not the classifier $(our_program_id na-server)"
  expect_frags na-server
  other_load na-server && na_fail "xdp-loader replaced or joined the classifier: $(xdp_status na-server)"
  rm -rf "$(other_pins na-server)"
  [[ $(attached_id na-server) == "$(our_program_id na-server)" ]] || na_fail "the classifier lost eth0"
  expect_frames_seen ours
  "$NETACCEL" detach na-server || na_fail "detach failed"
  expect_nothing_attached na-server
fi

na_step "the last program detached takes its dispatcher with it"
"$NETACCEL" attach na-client || na_fail "attach na-client failed"
"$NETACCEL" detach na-client || na_fail "detach na-client failed"
expect_nothing_attached na-client

na_step "detach after the container's network namespace is gone"
"$NETACCEL" attach na-gone || na_fail "attach na-gone failed"
[[ $MODE == shared ]] && { other_load na-gone || na_fail "xdp-loader load on na-gone failed"; }
echo 1 >"${NA_CGROUP[na-gone]}/cgroup.kill"
ip netns del na-gone || na_fail "ip netns del na-gone failed"
deadline=$((SECONDS + 10))
while [[ -n $(cat "${NA_CGROUP[na-gone]}/cgroup.procs") ]] && ((SECONDS < deadline)); do sleep 0.1; done
"$NETACCEL" detach na-gone || na_fail "detach after the namespace went failed"
rm -rf "$(other_pins na-gone)"
[[ ! -e /sys/fs/bpf/netaccel ]] || na_fail "pins left: $(find /sys/fs/bpf/netaccel)"
[[ -z $(dispatcher_dirs) ]] || na_fail "the gone interface's dispatcher is still pinned: $(dispatcher_dirs)"
na_pass
