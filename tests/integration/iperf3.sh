#!/usr/bin/env bash
# iperf3 client and one-off server, both under netaccel: bytes are
# transferred in both directions of the test (normal and --reverse), both
# ends exit 0, and the client's and server's counts agree; the kernel runs
# the same for comparison.
set -uo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
na_require_tools iperf3
na_init "$@"

port=15201 seconds=3

na_start_monitor

# transfer MODE [IPERF3 CLIENT ARGS...]: one iperf3 test against a fresh
# one-off server; sets GBPS (received, Gbit/s).
transfer() {
  local mode=$1
  shift
  local -a prefix=()
  if [[ $mode == netaccel ]]; then prefix=("${NA_RUN[@]}"); fi
  local tag
  tag=$mode$(printf '%s' "$*" | tr -c 'a-z0-9' '-')
  na_bg "iperf3-server-$tag" "${prefix[@]}" iperf3 -s -p "$port" -1
  local server=$NA_LAST_PID
  na_wait_listen "$port"
  local json=$NA_TMP/client-$tag.json rc=0
  na_timeout $((seconds + 60)) "${prefix[@]}" iperf3 -c 127.0.0.1 -p "$port" -t "$seconds" --json "$@" \
    </dev/null >"$json" 2>"$NA_TMP/client-$tag.err" || rc=$?
  if [[ $rc -ne 0 ]]; then
    cat "$json" "$NA_TMP/client-$tag.err" >&2
    na_fail "$mode: iperf3 client $* exited with $rc"
  fi
  na_wait_exit "$server" 30 "$mode: iperf3 server"
  [[ $NA_EXIT -eq 0 ]] || na_fail "$mode: iperf3 server exited with $NA_EXIT"
  GBPS=$(python3 - "$json" <<'EOF'
import json, sys
result = json.load(open(sys.argv[1]))
if "error" in result:
    sys.exit("iperf3 error: %s" % result["error"])
end = result["end"]
sent, received = end["sum_sent"]["bytes"], end["sum_received"]["bytes"]
if sent <= 0 or received <= 0:
    sys.exit("sent %d bytes, received %d" % (sent, received))
# The receiver may not have drained the last in-flight bytes when the sender
# stops; beyond a few socket buffers' worth, bytes went missing.
if sent - received > 16 * 1024 * 1024 or received > sent:
    sys.exit("sent %d bytes but received %d" % (sent, received))
print("%.2f" % (end["sum_received"]["bits_per_second"] / 1e9))
EOF
  ) || { cat "$json" >&2; na_fail "$mode: iperf3 $*: bad result"; }
  na_log "$mode iperf3${*:+ $*}: $GBPS Gbit/s received"
}

for direction in "" --reverse; do
  na_step "iperf3 ${seconds}s ${direction:-client to server}"
  transfer kernel ${direction:+"$direction"}
  kernel_gbps=$GBPS
  na_connections_total
  before=$NA_TOTAL
  transfer netaccel ${direction:+"$direction"}
  # A test is two connections: control and one data stream.
  na_expect_connections "$before" 2 "iperf3 ${direction:-client to server}"
  na_log "${direction:-client to server}: kernel $kernel_gbps Gbit/s, netaccel $GBPS Gbit/s"
done

na_pass
