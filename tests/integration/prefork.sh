#!/usr/bin/env bash
# Servers that fork, under netaccel, with clients under netaccel:
# - a pre-fork server (the master listens and forks three workers, which
#   accept on the inherited listener; the master never accepts);
# - socketserver.ForkingTCPServer (the parent accepts and forks a child per
#   connection, then closes its copy; the child answers on it).
# Every answer must arrive intact, and the connections must go through
# netaccel.
set -uo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
na_init "$@"

apps=$(dirname "$NA_SELF")/apps
na_start_monitor

# clients PORT COUNT: two client processes, COUNT connections each.
clients() {
  local port=$1 count=$2 i
  for i in 1 2; do
    na_timeout 120 "${NA_RUN[@]}" "$NA_PYTHON" "$apps/line_client.py" "$port" "$count" \
      >"$NA_TMP/client-$port-$i.out" 2>&1 &
  done
  for i in 1 2; do
    wait -n || na_fail "a client of port $port failed: $(cat "$NA_TMP"/client-"$port"-*.out)"
  done
  na_log "answers on port $port: $(cat "$NA_TMP"/client-"$port"-*.out | tr '\n' ' ')"
}

na_step "pre-fork server: master listens, three workers accept"
na_bg prefork "${NA_RUN[@]}" "$NA_PYTHON" "$apps/prefork_server.py" 18200 3
na_wait_listen 18200
na_connections_total
before=$NA_TOTAL
clients 18200 200
na_expect_connections "$before" 400 "clients to the pre-fork server"

na_step "forking server: a child per connection, the parent closes its copy"
na_bg forking "${NA_RUN[@]}" "$NA_PYTHON" "$apps/forking_server.py" 18201
na_wait_listen 18201
na_connections_total
before=$NA_TOTAL
clients 18201 50
# Between a fork and the parent's next wait for connections its listener is
# not announced, and a connection arriving then takes the kernel path (as
# correct, only slower): most, not all, go through netaccel.
na_expect_connections "$before" 50 "clients to the forking server"

na_pass
