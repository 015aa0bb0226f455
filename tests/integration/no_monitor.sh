#!/usr/bin/env bash
# With no monitor running, `netaccel run` changes nothing: a TCP and UDP
# echo pair in python3, and curl against python3 -m http.server, print
# exactly what they print on the kernel, exit codes pass through, and
# nothing hangs.
set -uo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
na_require_tools curl sha256sum
na_init "$@"

# No monitor: the socket path names nothing.
absent=$NA_TMP/no-monitor-here.sock
export NETACCEL_SOCKET=$absent
run_prefix=("$NETACCEL" run --socket "$absent" --)
if [[ $NA_WITHOUT_PRELOAD == 1 ]]; then run_prefix=(); fi

# A TCP echo server for CONNECTIONS sequential clients (each sends until
# shutdown(SHUT_WR) and gets the bytes back upper-cased), and a UDP echo
# of one datagram. Everything printed is deterministic.
cat >"$NA_TMP/echo_server.py" <<'EOF'
import hashlib, socket, sys
port, connections, loaded = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
# Aside, for the test: is the preload library in this process?
with open("/proc/self/maps") as maps, open(loaded, "w") as out:
    out.write("yes" if "libnetaccel_preload" in maps.read() else "no")
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.1", port))
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen(8)
print("listening", flush=True)
for i in range(connections):
    conn, peer = listener.accept()
    data = bytearray()
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    conn.sendall(bytes(data).upper())
    conn.close()
    print("connection %d: %d bytes, sha256 %s" % (i, len(data), hashlib.sha256(data).hexdigest()), flush=True)
datagram, peer = udp.recvfrom(65536)
udp.sendto(datagram.upper(), peer)
print("udp: %r" % datagram, flush=True)
EOF

cat >"$NA_TMP/echo_client.py" <<'EOF'
import hashlib, selectors, socket, sys
port, connections = int(sys.argv[1]), int(sys.argv[2])
for i in range(connections):
    payload = (b"netaccel %d " % i) * (1 + 20000 * (i % 2))  # small, then about 250 KB
    conn = socket.create_connection(("127.0.0.1", port), timeout=20)
    conn.sendall(payload)
    conn.shutdown(socket.SHUT_WR)
    # Read through a selector (epoll) to exercise readiness as well.
    conn.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(conn, selectors.EVENT_READ)
    reply = bytearray()
    while True:
        if not selector.select(timeout=20):
            sys.exit("connection %d: no reply within 20 s" % i)
        chunk = conn.recv(65536)
        if not chunk:
            break
        reply += chunk
    conn.close()
    print("connection %d: sent %d, got %d bytes, sha256 %s, %s" % (
        i, len(payload), len(reply), hashlib.sha256(reply).hexdigest(),
        "upper-cased" if bytes(reply) == payload.upper() else "WRONG"), flush=True)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.settimeout(20)
udp.sendto(b"hello over udp", ("127.0.0.1", port))
print("udp: %r" % udp.recvfrom(65536)[0], flush=True)
EOF

# echo_pair MODE PORT: runs the pair; output in $NA_TMP/echo-MODE.out.
echo_pair() {
  local mode=$1 port=$2 connections=4
  local -a prefix=()
  if [[ $mode == netaccel ]]; then prefix=("${run_prefix[@]}"); fi
  na_bg "echo-server-$mode" "${prefix[@]}" "$NA_PYTHON" "$NA_TMP/echo_server.py" "$port" "$connections" \
    "$NA_TMP/loaded-$mode"
  local server=$NA_LAST_PID
  na_wait_listen "$port"
  if [[ $mode == netaccel && $NA_WITHOUT_PRELOAD != 1 && $(cat "$NA_TMP/loaded-$mode") != yes ]]; then
    na_fail "libnetaccel_preload.so is not loaded in a program under netaccel run"
  fi
  local rc=0
  na_timeout 30 "${prefix[@]}" "$NA_PYTHON" "$NA_TMP/echo_client.py" "$port" "$connections" \
    </dev/null >"$NA_TMP/echo-client-$mode.out" 2>"$NA_TMP/echo-client-$mode.err" || rc=$?
  if [[ $rc -eq 124 ]]; then na_fail "$mode: the echo client hung (killed after 30 s)"; fi
  if [[ $rc -ne 0 ]]; then
    cat "$NA_TMP/echo-client-$mode.out" "$NA_TMP/echo-client-$mode.err" >&2
    na_fail "$mode: the echo client exited with $rc"
  fi
  na_wait_exit "$server" 20 "$mode: the echo server"
  [[ $NA_EXIT -eq 0 ]] || na_fail "$mode: the echo server exited with $NA_EXIT"
  cat "$NA_TMP/echo-client-$mode.out" "$NA_TMP/echo-server-$mode.log" >"$NA_TMP/echo-$mode.out"
}

# same_output WHAT KERNEL_FILE NETACCEL_FILE
same_output() {
  if ! diff -u "$2" "$3" >"$NA_TMP/diff" 2>&1; then
    cat "$NA_TMP/diff" >&2
    na_fail "$1: output under netaccel run (no monitor) differs from the kernel's"
  fi
}

na_step "exit status and output pass through"
# shellcheck disable=SC2016  # $1 is for the inner sh
out=$(na_timeout 20 "${run_prefix[@]}" sh -c 'echo "hello $1"; exit 3' sh world </dev/null)
rc=$?
[[ $rc -ne 124 ]] || na_fail "netaccel run of sh hung"
[[ $rc -eq 3 && $out == "hello world" ]] || na_fail "netaccel run -- sh: exit $rc, output '$out' (expected 3, 'hello world')"
na_log "exit status 3 and stdout passed through"

na_step "python3 TCP + UDP echo, kernel vs netaccel run without a monitor"
echo_pair kernel 17001
echo_pair netaccel 17002
grep -q WRONG "$NA_TMP/echo-kernel.out" && na_fail "the echo pair is wrong on the kernel itself"
same_output "python3 echo pair" "$NA_TMP/echo-kernel.out" "$NA_TMP/echo-netaccel.out"
if [[ -s $NA_TMP/echo-client-netaccel.err ]]; then
  na_log "note: the client printed on stderr under netaccel run: $(head -c 300 "$NA_TMP/echo-client-netaccel.err")"
fi
na_log "identical output: $(wc -l <"$NA_TMP/echo-netaccel.out") lines"

na_step "curl and python3 -m http.server, kernel vs netaccel run without a monitor"
www=$NA_TMP/www
mkdir -p "$www"
head -c $((2 * 1024 * 1024)) /dev/urandom >"$www/data.bin"
echo "small file" >"$www/small.txt"

# http_pair MODE PORT: fetches files and a 404; summary in $NA_TMP/http-MODE.out.
http_pair() {
  local mode=$1 port=$2
  local -a prefix=()
  if [[ $mode == netaccel ]]; then prefix=("${run_prefix[@]}"); fi
  na_bg "http-server-$mode" "${prefix[@]}" "$NA_PYTHON" -m http.server "$port" --bind 127.0.0.1 --directory "$www"
  na_wait_listen "$port"
  local out=$NA_TMP/http-$mode.out name rc code
  : >"$out"
  for name in data.bin small.txt missing; do
    rc=0
    code=$(na_timeout 30 "${prefix[@]}" curl -s --max-time 25 -o "$NA_TMP/body" -w '%{http_code}' \
      "http://127.0.0.1:$port/$name" </dev/null) || rc=$?
    [[ $rc -ne 124 ]] || na_fail "$mode: curl of $name hung"
    echo "$name: curl exit $rc, HTTP $code, $(wc -c <"$NA_TMP/body") bytes, sha256 $(sha256sum <"$NA_TMP/body" | cut -d' ' -f1)" >>"$out"
  done
}
http_pair kernel 17003
http_pair netaccel 17004
grep -q "data.bin: curl exit 0, HTTP 200, $((2 * 1024 * 1024)) bytes, sha256 $(sha256sum <"$www/data.bin" | cut -d' ' -f1)" \
  "$NA_TMP/http-kernel.out" || { cat "$NA_TMP/http-kernel.out" >&2; na_fail "the kernel fetch itself is wrong"; }
same_output "curl / http.server" "$NA_TMP/http-kernel.out" "$NA_TMP/http-netaccel.out"
na_log "identical: $(tr '\n' ';' <"$NA_TMP/http-netaccel.out")"

na_pass
