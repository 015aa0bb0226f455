#!/usr/bin/env bash
# netaccel doctor names what a host lacks: here a mount namespace of the
# test's own where /sys/fs/bpf is no BPF filesystem, no huge pages show and
# no monitor runs; each gets its FIX line and the exit status says so. Then
# with the BPF filesystem and a monitor back, those lines say ok.
# shellcheck source-path=SCRIPTDIR source=../integration/lib.sh
source "$(dirname "$(readlink -f "$0")")/../integration/lib.sh"
na_init "$@"
[[ $(id -u) == 0 ]] || na_skip "netaccel doctor's BPF checks need root"

na_step "a host without BPF filesystem, huge pages or monitor"
# Private to this test's mount namespace.
mount -t tmpfs none /sys/fs/bpf || na_fail "cannot mount a tmpfs over /sys/fs/bpf"
echo 0 >"$NA_TMP/no-hugepages"
mount --bind "$NA_TMP/no-hugepages" /proc/sys/vm/nr_hugepages ||
  na_fail "cannot hide the huge pages setting"
status=0
"$NETACCEL" doctor --socket "$NA_SOCK" >"$NA_TMP/sick.txt" 2>&1 || status=$?
cat "$NA_TMP/sick.txt"
((status == 1)) || na_fail "doctor exited $status on a host that lacks things, expected 1"
grep -q '^FIX  no BPF filesystem at /sys/fs/bpf' "$NA_TMP/sick.txt" || na_fail "the BPF filesystem is not named"
grep -q '^FIX  no huge pages reserved' "$NA_TMP/sick.txt" || na_fail "the huge pages are not named"
grep -q "^FIX  monitor not running at $NA_SOCK" "$NA_TMP/sick.txt" || na_fail "the monitor is not named"
grep -q '^ok   kernel BTF' "$NA_TMP/sick.txt" || na_fail "what the kernel has is not reported ok"

na_step "the same host with them back"
umount /sys/fs/bpf
mount -t bpf bpf /sys/fs/bpf || na_fail "cannot mount the BPF filesystem"
umount /proc/sys/vm/nr_hugepages
na_start_monitor
"$NETACCEL" doctor --socket "$NA_SOCK" >"$NA_TMP/well.txt" 2>&1 || true
cat "$NA_TMP/well.txt"
grep -q '^ok   BPF filesystem mounted at /sys/fs/bpf' "$NA_TMP/well.txt" || na_fail "the BPF filesystem is not found"
grep -q "^ok   the monitor answers at $NA_SOCK" "$NA_TMP/well.txt" || na_fail "the monitor is not found"
if grep -q '^FIX' "$NA_TMP/well.txt"; then na_log "left to fix on this host: $(grep -c '^FIX' "$NA_TMP/well.txt") line(s)"; fi
na_pass
