#!/usr/bin/env bash
# Bad input to attach and detach: a container that does not exist, one
# attached twice, no privileges, the host itself, a netns without an
# interface, detaching what is not attached, and two attaches racing. Each
# must fail with a clear message and change nothing.
# shellcheck source-path=SCRIPTDIR source=../integration/lib.sh
source "$(dirname "$(readlink -f "$0")")/../integration/lib.sh"
na_init "$@"
# shellcheck source-path=SCRIPTDIR source=containers.sh
source "$(dirname "$NA_SELF")/containers.sh"
na_require_tools setpriv jq
na_containers_init

na_container_add na-one
na_container_add na-two
na_container_bg na-one resident-one sleep "$NA_PROC_TIMEOUT"
na_container_bg na-two resident-two sleep "$NA_PROC_TIMEOUT"
ip netns add na-empty || na_fail "ip netns add na-empty failed"
NA_CONTAINERS+=(na-empty)

# expect_refused WHAT PATTERN CMD...: CMD fails, says PATTERN, changes nothing.
expect_refused() {
  local what=$1 pattern=$2
  shift 2
  local before after output status=0
  before=$(na_bpf_state)
  output=$("$@" 2>&1) || status=$?
  after=$(na_bpf_state)
  ((status != 0)) || na_fail "$what: succeeded: $output"
  grep -qiE -- "$pattern" <<<"$output" || na_fail "$what: unclear message: $output"
  [[ $before == "$after" ]] || na_fail "$what: changed the state:"$'\n'"$(diff <(echo "$before") <(echo "$after"))"
  na_log "$what: refused ($output)"
}

na_step "nothing attached yet"
expect_refused "a netns that does not exist" "no container 'na-missing'" "$NETACCEL" attach na-missing
expect_refused "a PID that does not exist" "no process with PID" "$NETACCEL" attach 4000000
expect_refused "a path that is neither netns nor cgroup" "not a network namespace" "$NETACCEL" attach /etc/hostname
expect_refused "the host itself" "host's own network namespace" "$NETACCEL" attach 1
expect_refused "a netns without an interface" "no network interface but loopback" "$NETACCEL" attach na-empty
expect_refused "detaching what is not attached" "is not attached" "$NETACCEL" detach na-one
expect_refused "attach without privileges" "needs root" \
  setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all "$NETACCEL" attach na-one

na_step "attached once"
"$NETACCEL" attach na-one || na_fail "attach na-one failed"
expect_refused "attaching twice by name" "already attached" "$NETACCEL" attach na-one
expect_refused "attaching twice by cgroup" "already attached" "$NETACCEL" attach "${NA_CGROUP[na-one]}"
expect_refused "attaching twice by PID" "already attached" "$NETACCEL" attach "$(na_container_pid na-one)"
expect_refused "attaching twice by path" "already attached" "$NETACCEL" attach /run/netns/na-one
expect_refused "detach without privileges" "needs root" \
  setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all "$NETACCEL" detach na-one
expect_refused "stats without privileges" "needs root" \
  setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all "$NETACCEL" stats

na_step "concurrent attaches and detaches are serialised"
for round in 1 2 3; do
  "$NETACCEL" attach na-two >"$NA_TMP/race-a.log" 2>&1 &
  first=$!
  "$NETACCEL" attach na-two >"$NA_TMP/race-b.log" 2>&1 &
  second=$!
  successes=0
  wait "$first" && ((successes += 1))
  wait "$second" && ((successes += 1))
  ((successes == 1)) || na_fail "round $round: $successes of two racing attaches succeeded: $(cat "$NA_TMP"/race-*.log)"
  grep -q "already attached" "$NA_TMP"/race-*.log || na_fail "round $round: the loser did not say why"
  "$NETACCEL" detach na-two >"$NA_TMP/race-a.log" 2>&1 &
  first=$!
  "$NETACCEL" detach na-one >"$NA_TMP/race-b.log" 2>&1 &
  second=$!
  wait "$first" || na_fail "round $round: detach na-two failed: $(cat "$NA_TMP/race-a.log")"
  wait "$second" || na_fail "round $round: detach na-one failed: $(cat "$NA_TMP/race-b.log")"
  [[ ! -e /sys/fs/bpf/netaccel ]] || na_fail "round $round: pins left: $(find /sys/fs/bpf/netaccel)"
  "$NETACCEL" attach na-one >/dev/null || na_fail "round $round: re-attach na-one failed"
done
"$NETACCEL" detach na-one >/dev/null || na_fail "final detach failed"
[[ ! -e /sys/fs/bpf/netaccel ]] || na_fail "pins left: $(find /sys/fs/bpf/netaccel)"
na_pass
