#!/usr/bin/env bash
# python3 -m http.server and curl, both under netaccel: a 5 MB random file
# and a small file, fetched several times, arrive with the sha256 of the
# source; a 404 stays a 404. A curl not under netaccel still reaches the
# same server (through the kernel listener netaccel keeps beside its own).
set -uo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
na_require_tools curl sha256sum
na_init "$@"

port=18080 big_fetches=3 small_fetches=10

www=$NA_TMP/www
mkdir -p "$www"
head -c $((5 * 1024 * 1024)) /dev/urandom >"$www/big.bin"
seq 1 2000 | sed 's/^/line /' >"$www/small.txt"

na_start_monitor
na_bg http-server "${NA_RUN[@]}" "$NA_PYTHON" -m http.server "$port" --bind 127.0.0.1 --directory "$www"
na_wait_listen "$port"

sha() { sha256sum "$1" | cut -d' ' -f1; }

# fetch NAME TIMES [kernel]: curl NAME TIMES times, each a new connection,
# and compares every copy with the source.
fetch() {
  local name=$1 times=$2 mode=${3:-netaccel} i
  local -a prefix=("${NA_RUN[@]}")
  if [[ $mode == kernel ]]; then prefix=(); fi
  local want
  want=$(sha "$www/$name")
  for ((i = 1; i <= times; i++)); do
    local out=$NA_TMP/got-$mode-$name-$i
    na_timeout 60 "${prefix[@]}" curl -sf --max-time 50 -o "$out" "http://127.0.0.1:$port/$name" </dev/null ||
      na_fail "$mode curl of $name (#$i) failed with $?"
    local got
    got=$(sha "$out")
    [[ $got == "$want" ]] ||
      na_fail "$mode curl of $name (#$i): $(wc -c <"$out") bytes, sha256 $got, expected $(wc -c <"$www/$name") bytes, $want"
    rm -f "$out"
  done
  na_log "$mode: $times x $name ($(wc -c <"$www/$name") bytes), sha256 identical to the source"
}

na_step "curl under netaccel"
na_connections_total
before=$NA_TOTAL
fetch big.bin "$big_fetches"
fetch small.txt "$small_fetches"
code=$(na_timeout 30 "${NA_RUN[@]}" curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/missing" </dev/null) ||
  na_fail "curl of a missing file failed"
[[ $code == 404 ]] || na_fail "a missing file answered HTTP $code, expected 404"
# http.server speaks HTTP/1.0 here: one connection per request.
na_expect_connections "$before" $((big_fetches + small_fetches + 1)) "curl to http.server"

na_step "curl not under netaccel, same server"
fetch small.txt 2 kernel
fetch big.bin 1 kernel

na_pass
