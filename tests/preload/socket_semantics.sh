#!/usr/bin/env bash
# Runs the socket-semantics suite under netaccel with a private monitor, in
# its own network namespace. The same binary also runs on the plain kernel
# (a separate CTest entry): both must pass.
source "$(dirname "${BASH_SOURCE[0]}")/../integration/lib.sh"
na_init "$@"
suite=$NA_BIN_DIR/test_socket_semantics
[[ -x $suite ]] || na_fail "$suite is not built"
na_start_monitor
na_step "socket semantics under netaccel"
NETACCEL_EXPECT_SOCKET=$NA_SOCK na_timeout 300 "${NA_RUN[@]}" "$suite" ||
  na_fail "the suite failed under netaccel"
na_pass
