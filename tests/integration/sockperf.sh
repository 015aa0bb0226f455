#!/usr/bin/env bash
# sockperf over TCP, server and client under netaccel: ping-pong (latency)
# and throughput (1 KiB messages) complete without errors, drops or
# reordering, and print their summaries; the kernel runs the same for
# comparison.
set -uo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
na_require_tools sockperf
na_init "$@"

port_netaccel=11111 port_kernel=11112 seconds=3

na_start_monitor
na_bg sockperf-server-netaccel "${NA_RUN[@]}" sockperf server --tcp -i 127.0.0.1 -p "$port_netaccel"
na_bg sockperf-server-kernel sockperf server --tcp -i 127.0.0.1 -p "$port_kernel"
na_wait_listen "$port_netaccel"
na_wait_listen "$port_kernel"

# client MODE NAME ARGS...: runs a sockperf client; its output, without
# colour codes, in $NA_TMP/NAME.out.
client() {
  local mode=$1 name=$2
  shift 2
  local port=$port_kernel
  local -a prefix=()
  if [[ $mode == netaccel ]]; then port=$port_netaccel prefix=("${NA_RUN[@]}"); fi
  local out=$NA_TMP/$name-$mode.out rc=0
  na_timeout $((seconds + 60)) "${prefix[@]}" sockperf "$@" --tcp -i 127.0.0.1 -p "$port" -t "$seconds" \
    </dev/null 2>&1 | sed 's/\x1b\[[0-9;]*m//g' >"$out" || rc=$?
  if [[ $rc -ne 0 ]]; then
    cat "$out" >&2
    na_fail "$mode: sockperf $1 exited with $rc"
  fi
  if grep -q 'ERROR' "$out"; then
    cat "$out" >&2
    na_fail "$mode: sockperf $1 reported an error"
  fi
  OUT=$out
}

# ping_pong MODE: sets LATENCY (average, usec).
# An explicit --mps: with the default (max), sockperf sizes its table of
# sequence numbers for 600k round trips/s without pacing, so a faster path
# (netaccel reaches 1.4M/s) aborts it with "_seqN > m_maxSequenceNo". Given a
# rate it paces to it, so the table, sized (seconds + 1) x rate, always holds
# the run; at 16 bytes an entry, 2M/s is 128 MB.
ping_pong() {
  local mode=$1
  client "$mode" ping-pong ping-pong --mps 2000000
  LATENCY=$(sed -n 's/.*Summary: Latency is \([0-9.]*\) usec.*/\1/p' "$OUT")
  [[ -n $LATENCY ]] || { cat "$OUT" >&2; na_fail "$mode: no latency summary from ping-pong"; }
  grep -q 'dropped messages = 0; # duplicated messages = 0; # out-of-order messages = 0' "$OUT" ||
    { cat "$OUT" >&2; na_fail "$mode: ping-pong lost, duplicated or reordered messages"; }
  local received
  received=$(sed -n 's/.*\[Valid Duration\].*ReceivedMessages=\([0-9]*\).*/\1/p' "$OUT")
  [[ ${received:-0} -gt 0 ]] || { cat "$OUT" >&2; na_fail "$mode: ping-pong received no messages"; }
  na_log "$mode ping-pong: average latency $LATENCY usec over $received round trips"
}

# throughput MODE: sets RATE (messages/s) and BANDWIDTH (MBps).
throughput() {
  local mode=$1
  client "$mode" throughput throughput -m 1024
  RATE=$(sed -n 's/.*Summary: Message Rate is \([0-9]*\) \[msg\/sec\].*/\1/p' "$OUT")
  BANDWIDTH=$(sed -n 's/.*Summary: BandWidth is \([0-9.]*\) MBps.*/\1/p' "$OUT")
  [[ ${RATE:-0} -gt 0 && -n $BANDWIDTH ]] || { cat "$OUT" >&2; na_fail "$mode: no throughput summary"; }
  na_log "$mode throughput: $RATE msg/s, $BANDWIDTH MBps at 1024 B"
}

na_step "ping-pong, ${seconds}s"
ping_pong kernel
kernel_latency=$LATENCY
na_connections_total
before=$NA_TOTAL
ping_pong netaccel
na_expect_connections "$before" 1 "sockperf ping-pong"

na_step "throughput, ${seconds}s, 1024-byte messages"
throughput kernel
kernel_rate=$RATE
na_connections_total
before=$NA_TOTAL
throughput netaccel
na_expect_connections "$before" 1 "sockperf throughput"

na_log "latency: kernel $kernel_latency usec, netaccel $LATENCY usec; throughput: kernel $kernel_rate msg/s, netaccel $RATE msg/s"
na_pass
