#!/usr/bin/env bash
# netaccel-cni at scale: 50 containers (CNI bridge + host-local, then
# netaccel-cni) attached at once, the time of each ADD and DEL and the
# memory of the pinned maps reported; then 200 ADD/DEL cycles over them
# while one container stays attached, and no leak: every map, program and
# link that a cycle's ADD made (by id) is gone from the kernel, no pin, no
# XDP on a container's interface, and the last DEL frees the shared link.
#
# Environment: NA_CNI_SCALE_CONTAINERS (50), NA_CNI_SCALE_CYCLES (200),
# NA_BENCH_OUTPUT (a file such as docs/benchmarks.md: its cni section is
# written with the figures; empty, the default: print only).
# shellcheck source-path=SCRIPTDIR source=../integration/lib.sh
source "$(dirname "$(readlink -f "$0")")/../integration/lib.sh"
na_init "$@"
# shellcheck source-path=SCRIPTDIR source=containers.sh
source "$(dirname "$NA_SELF")/containers.sh"
na_require_tools jq
na_containers_init

PLUGIN=$NA_BIN_DIR/netaccel-cni
[[ -x $PLUGIN ]] || na_fail "$PLUGIN does not exist: build first"
CONTAINERS=${NA_CNI_SCALE_CONTAINERS:-50}
CYCLES=${NA_CNI_SCALE_CYCLES:-200}
# One /24 of host-local addresses for all of them.
((CONTAINERS >= 2 && CONTAINERS <= 250)) || na_fail "NA_CNI_SCALE_CONTAINERS must be 2..250"

# plugin COMMAND NAME: netaccel-cni as a runtime runs it, its time in ms in
# PLUGIN_MS.
plugin() {
  local command=$1 name=$2 config start end
  config=$(jq -c '{cniVersion: "1.0.0", name: "netaccel-test", type: "netaccel-cni", prevResult: .}' \
    "$NA_TMP/$name.prev")
  start=$(date +%s%N)
  CNI_COMMAND=$command CNI_CONTAINERID=id-$name CNI_NETNS=/run/netns/$name CNI_IFNAME=eth0 \
    na_timeout 60 "$PLUGIN" <<<"$config" >"$NA_TMP/out" 2>"$NA_TMP/err" ||
    na_fail "$command $name failed: $(cat "$NA_TMP/out" "$NA_TMP/err")"
  end=$(date +%s%N)
  PLUGIN_MS=$(((end - start) / 1000000))
}
# ids_of NAME: the ids of the container's pinned maps and program, and of
# the shared link, one per line as KIND ID.
ids_of() {
  local pin shown
  # bpftool's text starts with "ID: ..."; jq would double the time.
  for pin in "/sys/fs/bpf/netaccel/$1"/*; do
    if shown=$(bpftool map show pinned "$pin" 2>/dev/null); then
      echo "map ${shown%%:*}"
    else
      shown=$(bpftool prog show pinned "$pin")
      echo "prog ${shown%%:*}"
    fi
  done
  shown=$(bpftool link show pinned /sys/fs/bpf/netaccel/sock_ops_link)
  echo "link ${shown%%:*}"
}
# memlock_of DIRECTORY: bytes the kernel charges for the maps pinned there.
# The maps one by one go to the log.
memlock_of() {
  local pin total=0 bytes
  for pin in "$1"/*; do
    # Links and directories are no maps: nothing to add.
    bytes=$(bpftool -j map show pinned "$pin" 2>/dev/null | jq '.bytes_memlock // 0')
    [[ -n $bytes && $bytes != 0 ]] && na_log "  $pin: $bytes bytes" >&2
    total=$((total + ${bytes:-0}))
  done
  echo "$total"
}
percentiles() {  # percentiles VALUES...: "MEDIAN P90 MAX"
  printf '%s\n' "$@" | sort -n |
    awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)], v[int(NR * 0.9 + 0.5)], v[NR] }'
}
declare -A FIGURES  # label -> "MEDIAN P90 MAX SAMPLES"
# stats LABEL VALUES...: records median, p90 and max in FIGURES, and says
# them in STATS (no subshell: FIGURES must keep them).
stats() {
  local label=$1 median p90 max
  shift
  read -r median p90 max < <(percentiles "$@")
  FIGURES[$label]="$median $p90 $max $#"
  STATS="$label: median $median ms, p90 $p90 ms, max $max ms ($# samples)"
}

na_step "$CONTAINERS empty namespaces, each through bridge + host-local"
names=()
for i in $(seq "$CONTAINERS"); do
  name=na-s$i
  names+=("$name")
  ip netns add "$name" || na_fail "ip netns add $name failed"
  NA_CONTAINERS+=("$name")
  na_cni ADD "$name" >"$NA_TMP/$name.prev" || na_fail "bridge ADD $name failed: $(cat "$NA_TMP/$name.prev")"
done

na_step "ADD of all $CONTAINERS: attached at once"
add_ms=()
for name in "${names[@]}"; do
  plugin ADD "$name"
  add_ms+=("$PLUGIN_MS")
done
attached=$(find /sys/fs/bpf/netaccel -mindepth 1 -maxdepth 1 -type d | wc -l)
((attached == CONTAINERS)) || na_fail "$attached containers attached, expected $CONTAINERS"
[[ $(bpftool map dump pinned /sys/fs/bpf/netaccel/attached_netns | jq length) == "$CONTAINERS" ]] ||
  na_fail "attached_netns does not hold $CONTAINERS namespaces"
container_bytes=$(memlock_of "/sys/fs/bpf/netaccel/${names[0]}")
shared_bytes=$(memlock_of /sys/fs/bpf/netaccel)
stats "ADD (attach) per container, $CONTAINERS in turn" "${add_ms[@]}"
ADD_STATS=$STATS
na_log "$ADD_STATS"
na_log "pinned maps: $((container_bytes / 1024)) KiB per container, $((shared_bytes / 1024)) KiB shared"

na_step "DEL of all $CONTAINERS"
del_ms=()
for name in "${names[@]}"; do
  plugin DEL "$name"
  del_ms+=("$PLUGIN_MS")
done
[[ ! -e /sys/fs/bpf/netaccel ]] || na_fail "pins left after DEL of all: $(find /sys/fs/bpf/netaccel)"
stats "DEL (detach) per container" "${del_ms[@]}"
DEL_STATS=$STATS
na_log "$DEL_STATS"

na_step "$CYCLES ADD/DEL cycles while ${names[0]} stays attached"
plugin ADD "${names[0]}"
shared_link=$(na_sock_ops_link_id)
: >"$NA_TMP/ids"
cycle_add_ms=()
cycle_del_ms=()
for cycle in $(seq "$CYCLES"); do
  name=${names[$((1 + (cycle - 1) % (CONTAINERS - 1)))]}
  plugin ADD "$name"
  cycle_add_ms+=("$PLUGIN_MS")
  ids_of "$name" >>"$NA_TMP/ids"
  plugin DEL "$name"
  cycle_del_ms+=("$PLUGIN_MS")
  [[ ! -e /sys/fs/bpf/netaccel/$name ]] || na_fail "cycle $cycle: DEL left $name's pins"
  ((cycle % 50 == 0)) && na_log "$cycle cycles"
done
stats "ADD in the cycles" "${cycle_add_ms[@]}"
CYCLE_STATS=$STATS
stats "DEL in the cycles" "${cycle_del_ms[@]}"
CYCLE_STATS+="; $STATS"
na_log "$CYCLE_STATS"
[[ $(na_sock_ops_link_id) == "$shared_link" ]] || na_fail "the shared link changed while a container stayed attached"
[[ $(find /sys/fs/bpf/netaccel -mindepth 1 -maxdepth 1 -type d | wc -l) == 1 ]] ||
  na_fail "containers other than ${names[0]} are attached: $(ls /sys/fs/bpf/netaccel)"
plugin DEL "${names[0]}"
[[ ! -e /sys/fs/bpf/netaccel ]] || na_fail "pins left: $(find /sys/fs/bpf/netaccel)"
na_expect_link_gone "$shared_link"

na_step "no leak: what the cycles made is gone from the kernel"
sort -u "$NA_TMP/ids" >"$NA_TMP/made"
made=$(wc -l <"$NA_TMP/made")
{
  bpftool -j map list | jq -r '.[] | "map \(.id)"'
  bpftool -j prog list | jq -r '.[] | "prog \(.id)"'
  bpftool -j link list | jq -r '.[] | "link \(.id)"'
} | sort -u >"$NA_TMP/alive"
leaked=$(comm -12 "$NA_TMP/made" "$NA_TMP/alive")
[[ -z $leaked ]] || na_fail "still in the kernel after DEL: $(echo "$leaked" | tr '\n' ' ')"
for name in "${names[@]}"; do
  ip -n "$name" -d link show eth0 | grep -q 'prog/xdp' && na_fail "$name's eth0 still runs XDP"
done
na_log "$made maps, programs and links made by $CYCLES ADDs: none left; no XDP on any of $CONTAINERS interfaces"
OUTPUT=${NA_BENCH_OUTPUT:-}
if [[ -n $OUTPUT ]]; then
  {
    echo "## Containers through netaccel-cni: attach and detach time, pinned memory"
    echo
    echo "Measured by \`tests/bpf/cni_scale.sh\` on $(date -u '+%Y-%m-%d %H:%M') UTC: kernel $(uname -r)," \
      "$(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg) at the end (other work shared the CPUs)."
    echo
    echo "$CONTAINERS empty network namespaces, each given an interface by Debian's CNI \`bridge\` +" \
      "\`host-local\` (IPv4 and IPv6), then \`netaccel-cni ADD\` run on each as a runtime runs it" \
      "(a process per call, as runtimes do): all $CONTAINERS attached at once, then \`DEL\` of each;" \
      "then $CYCLES \`ADD\`/\`DEL\` cycles over them while one stays attached. Times are of the" \
      "whole plugin process."
    echo
    echo "| operation | median | p90 | max | samples |"
    echo "| --- | ---: | ---: | ---: | ---: |"
    for label in "ADD (attach) per container, $CONTAINERS in turn" "DEL (detach) per container" \
      "ADD in the cycles" "DEL in the cycles"; do
      read -r median p90 max samples <<<"${FIGURES[$label]}"
      echo "| $label | $median ms | $p90 ms | $max ms | $samples |"
    done
    echo
    echo "Memory the kernel charges for the pinned maps (\`bytes_memlock\`): $((container_bytes / 1024)) KiB" \
      "per container (its XDP maps: the flow table, an LRU hash of 16 384 flows, most of it) and" \
      "$((shared_bytes / 1024)) KiB shared by all (the sockhash of 65 536 sockets, the endpoint," \
      "namespace and counter maps), so $CONTAINERS containers hold about" \
      "$(((CONTAINERS * container_bytes + shared_bytes) / 1024 / 1024)) MiB. After the $CYCLES cycles" \
      "none of the maps, programs and links they made is left in the kernel."
    echo
    echo "What an \`ADD\` does that a \`DEL\` does not (the times were not broken down further):" \
      "it creates the container's maps and has the kernel verify and load its own copy of the XDP" \
      "classifier and, again, the sockmap programs, enters the namespace to read its interfaces" \
      "and attach the classifier through libxdp; a \`DEL\` removes entries, detaches and unpins." \
      "Both include starting the plugin process and taking the attach lock; the machine was busy."
  } | python3 "$(dirname "$NA_SELF")/../../scripts/replace_section.py" "$OUTPUT" cni
  na_log "wrote the cni section of $OUTPUT"
fi
na_log "SUMMARY: $ADD_STATS; $DEL_STATS; $CYCLE_STATS; pinned maps $((container_bytes / 1024)) KiB per container + $((shared_bytes / 1024)) KiB shared; $CYCLES ADD/DEL cycles leaked nothing"
na_pass
