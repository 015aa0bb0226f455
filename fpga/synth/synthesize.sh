#!/usr/bin/env bash
# Synthesizes the engine for a Xilinx 7-series part with yosys and writes a
# report: LUTs, flip-flops, block/distributed RAM, and the slowest
# register-to-register path by yosys's static timing analysis (the cell
# delays of yosys's 7-series models), from which it derives a plausible clock.
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
  read_verilog -sv $rtl/na_first_set.sv $rtl/na_address_classify.sv $rtl/na_descriptor_parser.sv
  read_verilog -sv $rtl/na_listener_table.sv $rtl/na_process_table.sv $rtl/na_connection_table.sv
  read_verilog -sv $rtl/na_container_table.sv $rtl/na_policy_table.sv
  read_verilog -sv $rtl/na_doorbell_frontend.sv $rtl/na_output_fifo.sv
  read_verilog -sv $rtl/na_engine_core.sv $rtl/na_engine_top.sv
  $chparams
  synth_xilinx -family xc7 -top na_engine_top -flatten -noiopad
  tee -o $log.stat stat
  read_verilog -lib -specify +/xilinx/cells_sim.v
  tee -q -o $log.sta sta
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
cells_ps=$(sed -n "s/^Latest arrival time in .* is \([0-9]*\):.*/\1/p" "$log.sta" | tail -1)
# The path is printed from its end back to the clock: the net after the end
# flip-flop's D pin, and the net before the start flip-flop's (or RAM's) clock.
path_end=$(awk '/^Latest arrival/ { getline; getline; print $1; exit }' "$log.sta")
path_start=$(awk '/^Latest arrival/ { on = 1 } on && /[.](C|CLK[A-Z]*)->[A-Z0-9]*\)/ { print previous; exit }
                  on { previous = $1 }' "$log.sta")
rm -f "$log.stat" "$log.sta"

# The analysis adds cell delays only. Routing on a 7-series part typically
# costs about as much again, so the plausible period is twice the path.
clock_mhz=$(awk -v ps="${cells_ps:-0}" 'BEGIN { if (ps > 0) printf "%d", 1e6 / (2 * ps); else print 0 }')
{
  echo "target: xc7 (yosys synth_xilinx), parameters: ${*:-defaults}"
  echo "luts: $luts"
  echo "flip_flops: $flip_flops"
  echo "carry4: $carry"
  echo "muxf7_f8: $muxes"
  echo "lutram_cells: $lutram"
  echo "bram36: $bram36"
  echo "bram18: $bram18"
  echo "critical_path_from: $path_start"
  echo "critical_path_to: $path_end"
  echo "critical_path_cells_ns: $(awk -v ps="${cells_ps:-0}" 'BEGIN { printf "%.2f", ps / 1000 }')"
  echo "plausible_clock_mhz: $clock_mhz"
} > "$report"
cat "$report"
if ((luts == 0 || flip_flops == 0 || clock_mhz == 0)); then
  echo "yosys reported no resources: synthesis failed" >&2
  exit 1
fi
