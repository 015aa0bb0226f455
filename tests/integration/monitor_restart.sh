#!/usr/bin/env bash
# The monitor killed (SIGKILL) and started again while a client and a server
# under netaccel talk: the established connection keeps working throughout;
# new connections work while it is down (through the kernel) and go through
# netaccel again once it is back.
set -uo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
na_init "$@"
[[ $NA_WITHOUT_PRELOAD == 1 ]] && na_skip "this test is about the monitor"

apps=$(dirname "$NA_SELF")/apps
port=18400 phases=$NA_TMP/phases
mkdir -p "$phases"

wait_phase() {
  local name=$1 i
  for ((i = 0; i < 600; i++)); do
    [[ -e $phases/$name ]] && return 0
    kill -0 "$client" 2>/dev/null || na_fail "the client stopped before '$name': $(cat "$NA_TMP/client.log")"
    sleep 0.05
  done
  na_fail "the client never reached '$name'"
}

na_start_monitor
na_bg server "${NA_RUN[@]}" "$NA_PYTHON" "$apps/echo_server.py" "$port"
na_wait_listen "$port"
na_bg client "${NA_RUN[@]}" "$NA_PYTHON" "$apps/restart_client.py" "$port" "$phases"
client=$NA_LAST_PID

wait_phase connected
na_counter connections_total
((NA_COUNTER >= 2)) || na_fail "the first connections did not go through netaccel ($NA_COUNTER)"
na_log "two connections through netaccel; killing the monitor"

na_step "monitor killed"
# The daemon itself, not the timeout(1) that na_bg wraps it in.
daemon=$(pgrep -f -x "$NETACCEL daemon --socket $NA_SOCK( .*)?") || na_fail "no monitor process found"
kill -KILL "$daemon"
wait "$NA_MONITOR_PID" 2>/dev/null
kill -0 "$daemon" 2>/dev/null && na_fail "the monitor survived SIGKILL"
touch "$phases/monitor-killed"
wait_phase checked-down
na_log "the kept connection still echoes; a new one works through the kernel"

na_step "monitor restarted"
na_start_monitor
touch "$phases/monitor-restarted"
wait_phase finished
wait "$client" || na_fail "the client failed: $(cat "$NA_TMP/client.log")"
na_counter connections_total
((NA_COUNTER >= 5)) || na_fail "after the restart only $NA_COUNTER new connections went through netaccel, expected 5"
na_log "the kept connection echoed after the restart; $NA_COUNTER new connections through the new monitor"
na_pass
