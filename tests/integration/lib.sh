# shellcheck shell=bash
# shellcheck disable=SC2034  # globals set here are read by the tests
# Shared helpers for the integration tests. Each test starts with
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#   na_init "$@"
#
# and is then running inside its own network namespace (loopback up), in
# its own PID namespace (so every process it started dies with it), with a
# scratch directory in $NA_TMP. Exit codes: 0 pass, 1 fail, 77 skip.
#
# NETACCEL_TEST_ENGINE=fpga-sim runs the monitor with that control-plane
# engine (default: the daemon's own, software); the applications and the
# assertions stay the same.
#
# NETACCEL_TEST_WITHOUT_PRELOAD=1 runs the applications on the plain kernel
# and does not check netaccel's counters. It exists only to check the tests
# themselves against the kernel; a test run that way proves nothing about
# netaccel and says so.

NA_SELF=$(readlink -f "$0")
NA_NAME=$(basename "$0" .sh)
NA_PIDS=()
NA_LOGS=()
NA_PROC_TIMEOUT=${NA_PROC_TIMEOUT:-180}  # upper bound on any background process
NA_COMMAND_TIMEOUT=${NA_COMMAND_TIMEOUT:-180}  # upper bound on one foreground command
NA_WITHOUT_PRELOAD=${NETACCEL_TEST_WITHOUT_PRELOAD:-0}
NA_ENGINE=${NETACCEL_TEST_ENGINE:-}

na_log() { printf '[%s %s] %s\n' "$NA_NAME" "$(date +%T.%3N)" "$*"; }
na_step() { printf '\n[%s %s] --- %s\n' "$NA_NAME" "$(date +%T.%3N)" "$*"; }
# Verdicts go to stderr so that they show even from inside $(...).
na_skip() { na_log "SKIP: $*" >&2; exit 77; }
na_fail() { na_log "FAIL: $*" >&2; exit 1; }
na_pass() {
  if [[ $NA_WITHOUT_PRELOAD == 1 ]]; then
    na_log "PASS on the kernel only (NETACCEL_TEST_WITHOUT_PRELOAD=1): netaccel was not tested"
  else
    na_log "PASS"
  fi
  exit 0
}

# Skips the test when any of the named programs is missing.
na_require_tools() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || na_skip "$tool is not installed (scripts/setup.sh installs it)"
  done
}

# na_bound_run COMMANDS: for a script that may run longer than
# NA_PROC_TIMEOUT (a benchmark on a busy machine): it runs at most COMMANDS
# foreground commands, each bounded by NA_COMMAND_TIMEOUT, so background
# processes started afterwards are bounded by their sum (plus set-up)
# instead, and none of them (servers, a container's resident process) is
# killed while the run still needs it. The PID namespace ends them all with
# the script anyway.
na_bound_run() {
  NA_PROC_TIMEOUT=$(($1 * NA_COMMAND_TIMEOUT + 300))
}

# Bounds a foreground command: TERM after $1 seconds, KILL 5 s later.
na_timeout() {
  local seconds=$1
  shift
  timeout -k 5 "$seconds" "$@"
}

# ---------------------------------------------------------------------------
# Set-up: arguments, namespaces, scratch directory, clean-up.

na_init() {
  if [[ $# -lt 1 || ! -d $1 ]]; then
    echo "usage: $0 BUILD_BIN_DIR   (the directory holding netaccel)" >&2
    exit 1
  fi
  NA_BIN_DIR=$(cd "$1" && pwd)
  NETACCEL=$NA_BIN_DIR/netaccel
  export NA_BIN_DIR NETACCEL
  if [[ $NA_WITHOUT_PRELOAD != 1 && ! -x $NETACCEL ]]; then
    na_fail "$NETACCEL does not exist: build first (scripts/setup.sh)"
  fi
  na_require_tools timeout unshare ip ss python3

  if [[ ${NA_IN_NAMESPACE:-} != "$$" ]]; then
    na_enter_namespaces "$@"  # does not return
  fi

  ip link set lo up || na_fail "cannot bring loopback up in the new network namespace"
  NA_TMP=$(mktemp -d "${TMPDIR:-/tmp}/netaccel-$NA_NAME.XXXXXX")
  NA_SOCK=$NA_TMP/monitor.sock
  export NA_TMP NA_SOCK
  # "${NA_RUN[@]}" CMD... runs CMD under netaccel with this test's monitor;
  # a prefix rather than a function so that timeout and na_bg can take it.
  NA_RUN=("$NETACCEL" run --socket "$NA_SOCK" --)
  if [[ $NA_WITHOUT_PRELOAD == 1 ]]; then NA_RUN=(); fi
  trap na_cleanup EXIT
  trap 'exit 1' INT TERM HUP

  # Applications under test use Debian's python3, not a user's shim.
  if [[ -x /usr/bin/python3 ]]; then NA_PYTHON=/usr/bin/python3; else NA_PYTHON=$(command -v python3); fi
  export NA_PYTHON

  if [[ $NA_WITHOUT_PRELOAD == 1 ]]; then
    na_log "NETACCEL_TEST_WITHOUT_PRELOAD=1: applications run on the kernel; netaccel is NOT tested"
  fi
  na_log "network namespace ready (pid $$), scratch $NA_TMP"
}

# Re-executes this test as PID 1 of new network, PID and mount namespaces.
# When that PID 1 exits, the kernel kills everything left inside, and
# --kill-child takes it down if CTest kills unshare on a timeout.
na_enter_namespaces() {
  local -a unshare_args=(--net --pid --fork --kill-child --mount-proc)
  if [[ $(id -u) -ne 0 ]]; then
    unshare_args=(--map-root-user "${unshare_args[@]}")
  fi
  if ! unshare "${unshare_args[@]}" true >/dev/null 2>&1; then
    na_skip "cannot create network/PID namespaces (unshare ${unshare_args[*]} failed; run as root)"
  fi
  # Inside, $$ is 1: that is how the re-executed script knows where it is.
  exec unshare "${unshare_args[@]}" env NA_IN_NAMESPACE=1 bash "$NA_SELF" "$@"
}

na_cleanup() {
  local status=$?
  local pid
  trap - EXIT
  for pid in "${NA_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  local deadline=$((SECONDS + 3))
  for pid in "${NA_PIDS[@]}"; do
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.05; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [[ $status -ne 0 && $status -ne 77 ]]; then
    local f
    for f in "${NA_LOGS[@]}"; do
      [[ -s $f ]] || continue
      echo "----- last lines of $(basename "$f") -----"
      tail -n 40 "$f"
    done
  fi
  if [[ -n ${NA_TMP:-} && ${NA_KEEP_TMP:-0} != 1 ]]; then rm -rf "$NA_TMP"; fi
  exit "$status"
}

# ---------------------------------------------------------------------------
# Processes.

# na_bg NAME CMD...: starts CMD in the background, bounded by
# $NA_PROC_TIMEOUT, output in $NA_TMP/NAME.log; its pid in NA_LAST_PID.
# `timeout` forwards the TERM of the clean-up to CMD.
na_bg() {
  local name=$1
  shift
  local log=$NA_TMP/$name.log
  timeout -k 5 "$NA_PROC_TIMEOUT" "$@" </dev/null >"$log" 2>&1 &
  NA_LAST_PID=$!
  NA_PIDS+=("$NA_LAST_PID")
  NA_LOGS+=("$log")
}

# Waits until something listens on TCP port $1 (netaccel listeners also
# listen on the kernel, so `ss` sees them); fails after $2 seconds (10).
na_wait_listen() {
  local port=$1 limit=${2:-10}
  local deadline=$((SECONDS + limit))
  while ((SECONDS < deadline)); do
    if [[ -n $(ss -Hltn "sport = :$port" 2>/dev/null) ]]; then return 0; fi
    sleep 0.05
  done
  na_fail "nothing listens on port $port after ${limit}s"
}

# Waits until process $1 has exited; fails after $2 seconds. Sets NA_EXIT.
na_wait_exit() {
  local pid=$1 limit=$2 what=${3:-process $1}
  local deadline=$((SECONDS + limit))
  while kill -0 "$pid" 2>/dev/null; do
    ((SECONDS < deadline)) || na_fail "$what still running after ${limit}s"
    sleep 0.05
  done
  NA_EXIT=0
  wait "$pid" || NA_EXIT=$?
}

# ---------------------------------------------------------------------------
# The monitor and its counters.

na_start_monitor() {
  if [[ $NA_WITHOUT_PRELOAD == 1 ]]; then return 0; fi
  local -a engine_args=()
  if [[ -n $NA_ENGINE ]]; then engine_args=(--engine "$NA_ENGINE"); fi
  # The isolation policy persists in the test's own state directory.
  na_bg monitor "$NETACCEL" daemon --socket "$NA_SOCK" --state-dir "$NA_TMP/state" "${engine_args[@]}"
  NA_MONITOR_PID=$NA_LAST_PID
  local deadline=$((SECONDS + 10))
  while ((SECONDS < deadline)); do
    if [[ -S $NA_SOCK ]] && na_status_json >/dev/null 2>&1; then
      if [[ -n $NA_ENGINE && $(na_status_json) != *"\"engine\":\"$NA_ENGINE\""* ]]; then
        na_fail "the monitor does not run the $NA_ENGINE engine: $(na_status_json)"
      fi
      na_log "monitor up on $NA_SOCK (pid $NA_MONITOR_PID, engine ${NA_ENGINE:-default})"
      return 0
    fi
    kill -0 "$NA_MONITOR_PID" 2>/dev/null || na_fail "netaccel daemon exited at start-up"
    sleep 0.05
  done
  na_fail "netaccel daemon did not answer status on $NA_SOCK within 10s"
}

na_status_json() {
  na_timeout 10 "$NETACCEL" status --socket "$NA_SOCK" --json
}

# na_counter FIELD: sets NA_COUNTER to the monitor's counter FIELD (searched
# for at any depth of the status JSON, so nesting may change without
# breaking tests). No subshell: a failure here fails the test.
na_counter() {
  local field=$1 json
  json=$(na_status_json) || na_fail "netaccel status --json failed"
  NA_COUNTER=$(python3 -c '
import json, sys
def find(node, key):
    if isinstance(node, dict):
        if key in node:
            return node[key]
        children = node.values()
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        found = find(child, key)
        if found is not None:
            return found
    return None
value = find(json.loads(sys.stdin.read()), sys.argv[1])
if isinstance(value, bool) or not isinstance(value, (int, float)):
    sys.exit("no numeric field %r in netaccel status --json" % sys.argv[1])
print(int(value))
' "$field" <<<"$json") || na_fail "cannot read $field from: $json"
}

# Sets NA_TOTAL to connections_total now (0 in the kernel self-check mode).
na_connections_total() {
  NA_TOTAL=0
  if [[ $NA_WITHOUT_PRELOAD != 1 ]]; then
    na_counter connections_total
    NA_TOTAL=$NA_COUNTER
  fi
}

# na_expect_connections BEFORE MIN WHAT: connections_total must have grown
# by at least MIN since BEFORE: proof that WHAT went through netaccel.
na_expect_connections() {
  local before=$1 min=$2 what=$3
  if [[ $NA_WITHOUT_PRELOAD == 1 ]]; then
    na_log "netaccel connections for $what: not checked (kernel self-check mode)"
    return 0
  fi
  na_counter connections_total
  local now=$NA_COUNTER
  local grew=$((now - before))
  if ((grew < min)); then
    na_fail "$what: netaccel carried $grew connections (connections_total $before -> $now), expected at least $min: the traffic went through the kernel"
  fi
  na_log "$what: netaccel carried $grew connections (>= $min expected)"
}

# na_wait_counter FIELD VALUE SECONDS: waits until FIELD equals VALUE.
na_wait_counter() {
  local field=$1 want=$2 limit=$3
  if [[ $NA_WITHOUT_PRELOAD == 1 ]]; then return 0; fi
  local deadline=$((SECONDS + limit))
  while :; do
    na_counter "$field"
    [[ $NA_COUNTER == "$want" ]] && return 0
    ((SECONDS < deadline)) || na_fail "$field is $NA_COUNTER, expected $want within ${limit}s"
    sleep 0.1
  done
}
