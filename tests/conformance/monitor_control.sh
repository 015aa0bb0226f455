#!/usr/bin/env bash
# monitor_control.sh start|stop: starts or stops the conformance runner's
# private monitor. Cases call it (through CONFORMANCE_MONITOR_CONTROL) to
# restart the monitor under live connections; run.sh uses it for the first
# start. Before a stop it appends the monitor's connections_total to
# $CONFORMANCE_STATE/carried, so the runner can still tell what netaccel
# carried before the restart reset the counter.
# Needs NETACCEL, NA_SOCK and CONFORMANCE_STATE in the environment.
set -euo pipefail
# Cases run under the preload; the monitor itself must not.
unset LD_PRELOAD

pid_file=$CONFORMANCE_STATE/monitor.pid

connections_total() {
  timeout 10 "$NETACCEL" status --socket "$NA_SOCK" --json |
    grep -o '"connections_total": *[0-9]*' | grep -o '[0-9]*$'
}

case ${1:-} in
  start)
    # A case runs this with its sockets open; a monitor started as a service
    # holds none of an application's descriptors (an anchor it held would
    # keep a shared connection end open).
    (
      for fd_path in /proc/self/fd/*; do
        fd=${fd_path##*/}
        if ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null || true; fi
      done
      exec "$NETACCEL" daemon --socket "$NA_SOCK" ${NA_ENGINE:+--engine "$NA_ENGINE"} </dev/null >>"$CONFORMANCE_STATE/monitor.log" 2>&1
    ) &
    echo $! >"$pid_file"
    for _ in $(seq 200); do
      if connections_total >/dev/null 2>&1; then exit 0; fi
      sleep 0.05
    done
    echo "monitor did not answer on $NA_SOCK" >&2
    exit 1
    ;;
  stop)
    connections_total >>"$CONFORMANCE_STATE/carried"
    pid=$(cat "$pid_file")
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.01; done
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 1
    ;;
esac
