#!/usr/bin/env bash
# Installs everything netaccel needs on Debian 12, builds it and installs it.
#
#   bash scripts/setup.sh            # as root (uses sudo for the system steps otherwise)
#
# Idempotent: run it again after pulling; it only does what is missing.
# Environment:
#   NETACCEL_BUILD_DIR   build tree (default: build, in the repository)
#   NETACCEL_BUILD_TYPE  CMake build type (default: Release)
#   NETACCEL_SKIP_APT=1  do not touch packages (offline rebuilds)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${NETACCEL_BUILD_DIR:-$repo/build}
build_type=${NETACCEL_BUILD_TYPE:-Release}

log() { printf '\n==> %s\n' "$*"; }

# Run system steps as root: directly when we are root, else through sudo.
as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    echo "setup.sh: need root (or sudo) for: $*" >&2
    exit 1
  fi
}

packages=(
  # toolchain and build
  build-essential cmake ninja-build pkg-config git ca-certificates
  clang llvm clang-format
  # libraries
  libcli11-dev googletest libgtest-dev libgmock-dev nlohmann-json3-dev
  libbpf-dev libxdp-dev libelf-dev zlib1g-dev linux-libc-dev
  # the user-space stack: DPDK (its af_xdp PMD), and dpkg-source for lwIP's sources
  libdpdk-dev dpkg-dev
  # the .deb: cpack finds binaries with file(1), dependencies with dpkg-shlibdeps
  file
  # eBPF / XDP tools and the container plugins
  xdp-tools bpftool containernetworking-plugins containerd runc
  # FPGA engine: RTL simulation and synthesis
  verilator iverilog yosys
  # real applications the tests and the demo run
  redis-server redis-tools iperf3 sockperf curl python3 nginx wrk socat netcat-openbsd
  libpython3.11-testsuite
  # what the scripts themselves use
  iproute2 iputils-ping util-linux psmisc procps jq coreutils shellcheck ethtool linux-perf
)

# lwIP comes from Debian's source package (the binary liblwip-dev is a
# threaded build; the stack needs NO_SYS=1 with its own lwipopts.h). Its
# sources are unpacked here, outside git, and compiled by CMake.
lwip_dir=$repo/third_party/lwip
lwip_sources_list=/etc/apt/sources.list.d/netaccel-deb-src.sources

policy_rc=/usr/sbin/policy-rc.d
made_policy=0
remove_policy() {
  if [[ $made_policy -eq 1 ]]; then
    as_root rm -f "$policy_rc"
    made_policy=0
  fi
}

install_packages() {
  local missing=()
  local p
  for p in "${packages[@]}"; do
    # Installed packages report "install ok installed"; anything else is missing.
    if [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) != "install ok installed" ]]; then
      missing+=("$p")
    fi
  done
  if [[ ${#missing[@]} -eq 0 ]]; then
    log "all ${#packages[@]} Debian packages already installed"
    return
  fi
  log "installing ${#missing[@]} Debian packages: ${missing[*]}"

  # Service packages (redis-server, nginx, iperf3) would start daemons on
  # install. The tests and the demo run their own instances on their own
  # ports in private network namespaces, so keep the system ones from
  # starting: a policy-rc.d that says "no" for the duration of the install.
  if [[ ! -e $policy_rc ]]; then
    trap remove_policy EXIT
    as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy_rc && chmod 755 $policy_rc"
    made_policy=1
  fi
  local rc=0
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q || rc=$?
  if [[ $rc -eq 0 ]]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
      --no-install-recommends "${missing[@]}" || rc=$?
  fi
  remove_policy
  if [[ $rc -ne 0 ]]; then
    echo "setup.sh: apt-get failed ($rc)" >&2
    exit "$rc"
  fi
}

# `apt-get source` needs a deb-src entry: one for bookworm's main, added once.
add_source_entry() {
  if grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ ||
     grep -qs '^deb-src ' /etc/apt/sources.list; then
    return 1
  fi
  log "adding a deb-src entry for Debian's source packages ($lwip_sources_list)"
  as_root sh -c "printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' > $lwip_sources_list"
  return 0
}

fetch_lwip() {
  if [[ -f $lwip_dir/src/Filelists.cmake ]]; then
    log "lwIP sources already in $lwip_dir"
    return
  fi
  if add_source_entry; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  fi
  log "fetching Debian's lwip source package into $lwip_dir"
  local work
  work=$(mktemp -d)
  # apt's sandbox user cannot write a directory made by another user.
  chmod 755 "$work"
  (cd "$work" && apt-get source -q lwip >/dev/null)
  local unpacked
  unpacked=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'lwip-*' | head -n1)
  if [[ -z $unpacked || ! -f $unpacked/src/Filelists.cmake ]]; then
    echo "setup.sh: apt-get source lwip gave no lwIP tree in $work" >&2
    exit 1
  fi
  mkdir -p "$(dirname "$lwip_dir")"
  rm -rf "$lwip_dir"
  mv "$unpacked" "$lwip_dir"
  rm -rf "$work"
}

# DPDK (the stack's --io dpdk) wants huge pages; 256 of 2 MiB are set aside
# unless there are already as many. Without them it runs with --no-huge.
reserve_hugepages() {
  local wanted=256 now
  now=$(cat /proc/sys/vm/nr_hugepages 2>/dev/null || echo 0)
  if ((now >= wanted)); then return; fi
  log "setting aside $wanted huge pages for DPDK (vm.nr_hugepages was $now)"
  as_root sh -c "echo $wanted > /proc/sys/vm/nr_hugepages" ||
    echo "setup.sh: could not reserve huge pages; DPDK will run with --no-huge" >&2
}

configure_and_build() {
  # A tree configured with another generator cannot be reconfigured with
  # Ninja; start it afresh rather than fail.
  if [[ -f $build_dir/CMakeCache.txt ]] &&
     ! grep -q '^CMAKE_GENERATOR:INTERNAL=Ninja$' "$build_dir/CMakeCache.txt"; then
    log "removing $build_dir (configured with another generator)"
    rm -rf "$build_dir"
  fi
  log "configuring ($build_type) in $build_dir"
  cmake -S "$repo" -B "$build_dir" -G Ninja \
    -DCMAKE_BUILD_TYPE="$build_type" \
    -DCMAKE_INSTALL_PREFIX=/usr/local \
    -DCMAKE_INSTALL_LIBDIR=lib \
    -DNETACCEL_LWIP_DIR="$lwip_dir"
  log "building"
  cmake --build "$build_dir" --parallel "$(nproc)"
}

install_build() {
  log "installing into /usr/local"
  as_root cmake --install "$build_dir"
  if ! command -v netaccel >/dev/null; then
    echo "setup.sh: netaccel is not on PATH after install (PATH=$PATH)" >&2
    exit 1
  fi
  log "ready: $(command -v netaccel)"
}

if [[ ${NETACCEL_SKIP_APT:-0} != 1 ]]; then
  install_packages
fi
fetch_lwip
reserve_hugepages
configure_and_build
install_build
