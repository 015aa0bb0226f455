#!/usr/bin/env bash
# Debian's nginx with Debian's default settings (apps/nginx_conf.sh: a
# daemon, master plus `worker_processes auto` workers as www-data, sendfile,
# tcp_nopush), under netaccel, with wrk and curl under netaccel:
# - curl fetches a 4 MB file (sendfile) and a small one, sha256 intact;
# - wrk loads it with 50 connections: no socket errors, no non-2xx answers;
# - three `nginx -s reload`s while wrk loads it: the workers are replaced
#   each time and not one request fails. Connections queued for a retiring
#   worker when it closes its listener go to the new workers, as from the
#   kernel's one queue (the monitor's connections_handed_on counts them);
# - and the connections went through netaccel.
set -uo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
na_require_tools nginx wrk curl sha256sum
na_init "$@"

port=18300
www=$NA_TMP/www
mkdir -p "$www"
head -c $((4 * 1024 * 1024)) /dev/urandom >"$www/big.bin"
seq 1 200 | sed 's/^/line /' >"$www/small.txt"
chmod -R a+rX "$NA_TMP"
conf=$NA_TMP/nginx.conf
"$(dirname "$NA_SELF")/apps/nginx_conf.sh" "$NA_TMP" "$port" "$www" >"$conf"
NA_LOGS+=("$NA_TMP/nginx-error.log")

na_start_monitor
na_step "nginx (daemon, master + workers) under netaccel"
na_timeout 30 "${NA_RUN[@]}" nginx -c "$conf" </dev/null || na_fail "nginx did not start"
na_wait_listen "$port"
master=$(cat "$NA_TMP/nginx.pid")
na_log "nginx master $master, workers: $(pgrep -P "$master" | tr '\n' ' ')"

na_connections_total
before=$NA_TOTAL
for name in big.bin small.txt big.bin; do
  na_timeout 60 "${NA_RUN[@]}" curl -sf --max-time 50 -o "$NA_TMP/got" "http://127.0.0.1:$port/$name" </dev/null ||
    na_fail "curl of $name failed with $?"
  [[ $(sha256sum <"$NA_TMP/got") == $(sha256sum <"$www/$name") ]] || na_fail "$name arrived changed"
done
na_log "curl: big.bin (sendfile, 4 MB) and small.txt arrived intact"

# wrk_errors SECONDS OUT [WRK ARGS...]: wrk under netaccel, its report in OUT;
# prints how many requests failed (socket errors plus non-2xx answers).
wrk_errors() {
  local seconds=$1 out=$2
  shift 2
  na_timeout $((seconds + 60)) "${NA_RUN[@]}" wrk -t 2 -c 50 -d "${seconds}s" "$@" "http://127.0.0.1:$port/small.txt" \
    >"$out" 2>&1 </dev/null || na_fail "wrk failed: $(cat "$out")"
  grep -q "Requests/sec" "$out" || na_fail "wrk printed no rate: $(cat "$out")"
  python3 - "$out" <<'PYTHON'
import re, sys
text = open(sys.argv[1]).read()
errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
errors += sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", text))
print(errors)
PYTHON
}

# wrk_clean SECONDS [WRK ARGS...]: wrk under netaccel; fails on any failed request.
wrk_clean() {
  local seconds=$1 out=$NA_TMP/wrk-$RANDOM.txt errors
  shift
  errors=$(wrk_errors "$seconds" "$out" "$@") || exit 1
  na_log "wrk: $(grep "Requests/sec" "$out"), $errors failed requests"
  ((errors == 0)) || na_fail "wrk saw errors: $(cat "$out")"
}

na_step "wrk -c 50 under netaccel"
wrk_clean 3

na_step "three nginx -s reloads while wrk loads it"
# A worker that a reload retires closes its idle keep-alive connections, and
# wrk counts a request it had just sent on one as a read error, on the
# kernel too: one request per connection makes the reload invisible there.
reload_report=$NA_TMP/wrk-reload.txt
wrk_errors 8 "$reload_report" -H "Connection: close" >"$NA_TMP/reload-errors" &
wrk_pid=$!
retired_workers=
for reload in 1 2 3; do
  sleep 2
  old_workers=$(pgrep -P "$master" | sort | tr '\n' ' ')
  nginx -c "$conf" -s reload || na_fail "nginx -s reload failed"
  for ((i = 0; i < 100; i++)); do
    new_workers=$(pgrep -P "$master" | sort | tr '\n' ' ')
    [[ $new_workers != "$old_workers" ]] && break
    sleep 0.05
  done
  [[ $new_workers != "$old_workers" ]] || na_fail "reload $reload did not replace the workers ($old_workers)"
  na_log "reload $reload: workers $old_workers-> $new_workers"
  retired_workers+=" $old_workers"
done
wait "$wrk_pid" || na_fail "wrk during the reloads failed"
reload_errors=$(cat "$NA_TMP/reload-errors")
requests=$(awk '/requests in/ {print $1}' "$reload_report")
na_counter connections_handed_on
na_log "during the reloads: $requests requests, $reload_errors failed; $NA_COUNTER queued connections handed on to new workers"
((reload_errors == 0)) || na_fail "requests failed during the reloads: $(cat "$reload_report")"
for pid in $retired_workers; do
  for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && na_fail "retired worker $pid still runs 10 s after its reload"
done
na_step "after the reload: wrk -c 50, one request per connection"
wrk_clean 3 -H "Connection: close"

na_step "the connections went through netaccel"
na_expect_connections "$before" 100 "curl and wrk to nginx"
na_pass
