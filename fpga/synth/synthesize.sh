#!/usr/bin/env bash
# Synthesizes the engine for a Xilinx 7-series part with yosys and writes a
# report: LUTs, flip-flops, block/distributed RAM, and the deepest chain of
# LUTs between flip-flops, from which the report derives a plausible clock.
#
#   synthesize.sh REPORT.txt [PARAM=VALUE...]
#
# Parameters override na_engine_top's (PROCESSES, LISTENERS, CONNECTIONS...).
# Fails unless yosys reports logic, flip-flops and a path depth.
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: $0 REPORT.txt [PARAM=VALUE...]" >&2
  exit 2
fi
report=$1
shift
rtl=$(cd "$(dirname "$0")/../rtl" && pwd)
command -v yosys >/dev/null || { echo "yosys is not installed (scripts/setup.sh)" >&2; exit 77; }

chparams=""
for assignment in "$@"; do
  chparams+="chparam -set ${assignment%%=*} ${assignment#*=} na_engine_top; "
done

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Files in dependency order: the package, leaves, then the top.
yosys -q -l "$log" -p "
  read_verilog -sv $rtl/na_protocol.sv
  read_verilog -sv $rtl/na_address_classify.sv $rtl/na_descriptor_parser.sv
  read_verilog -sv $rtl/na_listener_table.sv $rtl/na_process_table.sv $rtl/na_connection_table.sv
  read_verilog -sv $rtl/na_doorbell_frontend.sv $rtl/na_output_fifo.sv
  read_verilog -sv $rtl/na_engine_core.sv $rtl/na_engine_top.sv
  $chparams
  synth_xilinx -family xc7 -top na_engine_top -flatten -noiopad
  tee -o $log.stat stat
  tee -q -o $log.ltp ltp t:FD* t:RAM* %u t:SRL* %u %n
" >/dev/null

count() {  # sum of the named cell types in the stat output
  local total=0 cell n
  for cell in "$@"; do
    n=$(awk -v c="$cell" '$1 == c { print $2 }' "$log.stat" | tail -1)
    total=$((total + ${n:-0}))
  done
  echo "$total"
}
luts=$(count LUT1 LUT2 LUT3 LUT4 LUT5 LUT6)
flip_flops=$(count FDRE FDSE FDCE FDPE)
lutram=$(count RAM32M RAM64M RAM32X1D RAM64X1D RAM128X1D RAM256X1S RAM64X1S RAM32X1S)
bram36=$(count RAMB36E1)
bram18=$(count RAMB18E1)
carry=$(count CARRY4)
muxes=$(count MUXF7 MUXF8)
depth=$(sed -n 's/.*Longest topological path in .* (length=\([0-9]*\)).*/\1/p' "$log.ltp" | tail -1)
rm -f "$log.stat" "$log.ltp"

# ltp counts cells on the longest path, LUTs, carry and mux cells alike.
# On a 7-series -1 part a level costs about 0.7 ns (LUT plus routing), and a
# register-to-register path adds about 1 ns (clock to out, setup, skew).
clock_mhz=$(awk -v d="${depth:-0}" 'BEGIN { printf "%d", 1000 / (d * 0.7 + 1.0) }')
{
  echo "target: xc7 (yosys synth_xilinx), parameters: ${*:-defaults}"
  echo "luts: $luts"
  echo "flip_flops: $flip_flops"
  echo "carry4: $carry"
  echo "muxf7_f8: $muxes"
  echo "lutram_cells: $lutram"
  echo "bram36: $bram36"
  echo "bram18: $bram18"
  echo "logic_levels: ${depth:-unknown}"
  echo "plausible_clock_mhz: $clock_mhz"
} > "$report"
cat "$report"
if ((luts == 0 || flip_flops == 0)) || [[ -z $depth ]]; then
  echo "yosys reported no resources: synthesis failed" >&2
  exit 1
fi
