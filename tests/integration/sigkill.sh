#!/usr/bin/env bash
# A process killed with SIGKILL in the middle of a stream, both ends under
# netaccel: its peer learns within 100 ms (the receiver sees EOF or
# ECONNRESET when the sender dies; the sender's send fails with EPIPE or
# ECONNRESET when the receiver dies), and the monitor frees the connection
# (connections_open back to 0). The kernel runs the same first, as a check
# of the test itself.
set -uo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
na_init "$@"

rounds=${NA_SIGKILL_ROUNDS:-3} budget_ms=100

# One program for both ends. `sink PORT` accepts one connection and reads;
# `source PORT` connects and writes. Each writes its pid to FILE.pid, says
# "streaming" once 1 MiB has passed, and on the end of the stream prints
# one JSON line with the CLOCK_MONOTONIC time (shared by all processes).
cat >"$NA_TMP/peer.py" <<'EOF'
import json, os, socket, sys, time

role, port, pidfile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(pidfile + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(pidfile + ".tmp", pidfile)

def report(end, total):
    print(json.dumps({"end": end, "t": time.monotonic(), "bytes": total}), flush=True)

if role == "sink":
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(1)
    conn, _ = listener.accept()
    total, announced = 0, False
    while True:
        try:
            data = conn.recv(65536)
        except ConnectionResetError:
            report("ECONNRESET", total)
            break
        if not data:
            report("EOF", total)
            break
        total += len(data)
        if not announced and total >= 1 << 20:
            print("streaming", flush=True)
            announced = True
else:
    conn = socket.create_connection(("127.0.0.1", port))
    chunk = b"x" * 65536
    total, announced = 0, False
    while True:
        try:
            total += conn.send(chunk)
        except BrokenPipeError:
            report("EPIPE", total)
            break
        except ConnectionResetError:
            report("ECONNRESET", total)
            break
        if not announced and total >= 1 << 20:
            print("streaming", flush=True)
            announced = True
conn.close()
EOF

# Waits for both ends to stream, kills one, and measures how long the other
# takes to see it. Exit 0 within the budget, 1 otherwise.
cat >"$NA_TMP/kill_and_measure.py" <<'EOF'
import json, os, signal, sys, time

victim_pidfile, victim_log, survivor_log, budget_ms = sys.argv[1:5]

def wait_for(predicate, seconds, what):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.002)
    sys.exit("timed out after %ss waiting for %s" % (seconds, what))

def read(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""

def end_line():
    for line in read(survivor_log).splitlines():
        if line.startswith("{"):
            return json.loads(line)
    return None

wait_for(lambda: "streaming" in read(victim_log) and "streaming" in read(survivor_log),
         20, "both ends to stream")
pid = int(wait_for(lambda: read(victim_pidfile), 5, "the victim's pid"))
if end_line():
    sys.exit("the stream ended before the kill: %s" % end_line())
def victim_gone():
    # Exited (a zombie holds no fds any more) or already reaped.
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True

killed_at = time.monotonic()
os.kill(pid, signal.SIGKILL)
kill_returned = time.monotonic()
# When the victim is really gone tells its own exit apart from the time the
# news takes to reach the survivor.
gone_at = None
deadline = killed_at + 10
end = None
while time.monotonic() < deadline:
    if gone_at is None and victim_gone():
        gone_at = time.monotonic()
    end = end_line()
    if end and gone_at is not None:
        break
    time.sleep(0.0005)
if not end:
    sys.exit("the survivor did not see the end of the stream within 10 s of SIGKILL")
if gone_at is None:
    sys.exit("the victim was still alive 10 s after SIGKILL")
elapsed_ms = (end["t"] - killed_at) * 1000
print("survivor saw %s %.2f ms after SIGKILL, after %d bytes (kill() took %.2f ms; victim gone after %s)" % (
    end["end"], elapsed_ms, end["bytes"], (kill_returned - killed_at) * 1000,
    "%.2f ms" % ((gone_at - killed_at) * 1000) if gone_at is not None else "?"))
# The budget runs from the victim's death, not from kill(): on our virtual
# machines the kernel itself sometimes needs most of a second to finish off a
# SIGKILLed process (seen on the kernel path as well), and nobody can hear of
# a death before it has happened. The 10 s bound above catches a survivor
# that never hears of it.
since_death_ms = (end["t"] - min(gone_at, end["t"])) * 1000
sys.exit(0 if since_death_ms <= float(budget_ms) else 1)
EOF

na_start_monitor

# scenario MODE PORT VICTIM: streams source -> sink, SIGKILLs VICTIM
# (source or sink), checks the survivor's verdict and timing.
scenario() {
  local mode=$1 port=$2 victim=$3
  local -a prefix=()
  if [[ $mode == netaccel ]]; then prefix=("${NA_RUN[@]}"); fi
  local tag=$mode-$victim-$port
  local survivor=sink
  if [[ $victim == sink ]]; then survivor=source; fi

  na_bg "sink-$tag" "${prefix[@]}" "$NA_PYTHON" "$NA_TMP/peer.py" sink "$port" "$NA_TMP/sink-$tag.pid"
  local sink_pid=$NA_LAST_PID
  na_wait_listen "$port"
  na_bg "source-$tag" "${prefix[@]}" "$NA_PYTHON" "$NA_TMP/peer.py" source "$port" "$NA_TMP/source-$tag.pid"
  local source_pid=$NA_LAST_PID

  local verdict rc=0
  verdict=$(na_timeout 60 python3 "$NA_TMP/kill_and_measure.py" "$NA_TMP/$victim-$tag.pid" \
    "$NA_TMP/$victim-$tag.log" "$NA_TMP/$survivor-$tag.log" "$budget_ms" 2>&1) || rc=$?
  if [[ $rc -ne 0 ]]; then
    na_fail "$mode, SIGKILL of the $victim: ${verdict:-kill_and_measure exited with $rc} (budget ${budget_ms} ms)"
  fi
  na_log "$mode, SIGKILL of the $victim: $verdict"

  # Both processes (and the `netaccel run` around them) must finish.
  local pid
  for pid in "$sink_pid" "$source_pid"; do
    na_wait_exit "$pid" 10 "$mode: a peer of the killed $victim"
  done
}

port=19000
for victim in source sink; do
  na_step "kernel: SIGKILL of the $victim"
  scenario kernel $((port++)) "$victim"
done

for victim in source sink; do
  for ((round = 1; round <= rounds; round++)); do
    na_step "netaccel: SIGKILL of the $victim, round $round of $rounds"
    na_connections_total
    before=$NA_TOTAL
    scenario netaccel $((port++)) "$victim"
    na_expect_connections "$before" 1 "the stream"
    # The monitor notices the death and frees the connection.
    na_wait_counter connections_open 0 5
    na_log "connections_open back to 0"
  done
done

na_pass
