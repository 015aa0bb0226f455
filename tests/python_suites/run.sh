#!/usr/bin/env bash
# run.sh BUILD_BIN_DIR MODULE RESULTS_DIR
#
# Runs one of CPython's own test modules (Debian's libpython3.11-testsuite)
# on the plain kernel and under `netaccel run`, each side in a fresh network
# namespace, and compares the outcome of every test case (passed, failed,
# error, skipped — from regrtest's --junit-xml). Skipped and
# resource-dependent cases are compared like any other: they must be the same
# on both sides. A difference is re-run once on both sides before it counts,
# so that a test that is flaky on the kernel itself does not show up as a gap.
#
# Confirmed differences must be listed in known_gaps.txt (module, test id,
# reason), and every listed gap must still differ. Under netaccel the
# monitor's connections_total must grow by the module's minimum from
# modules.txt, or netaccel was not exercised at all.
#
# RESULTS_DIR gets MODULE.summary (one tab-separated line) and
# MODULE.differences (test id, kernel, netaccel, known-gap|FAIL).
# shellcheck source=tests/integration/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../integration/lib.sh"
na_init "$@"
[[ $# -eq 3 ]] || na_fail "usage: $0 BUILD_BIN_DIR MODULE RESULTS_DIR"
module=$2
results_dir=$3
here=$(dirname "$NA_SELF")
python=/usr/bin/python3.11
[[ -x $python ]] || na_skip "$python is not installed"
"$python" -c "import test.$module" 2>/dev/null ||
  na_skip "test.$module is missing: install libpython3.11-testsuite (scripts/setup.sh)"
mkdir -p "$results_dir"

min_connections="" extra_arguments=()
while read -r name minimum rest; do
  if [[ $name == "$module" ]]; then
    min_connections=$minimum
    read -r -a extra_arguments <<<"$rest"
  fi
done < <(grep -v '^#' "$here/modules.txt")
[[ -n $min_connections ]] || na_fail "$module is not listed in modules.txt"

# The per-file limit kills one hung test file (regrtest reports it failed)
# instead of the whole run; the outer limit bounds everything.
per_file_timeout=${PYTHON_SUITE_FILE_TIMEOUT:-600}
run_timeout=${PYTHON_SUITE_TIMEOUT:-1500}
regrtest=("$python" -m test -j1 -u "network,subprocess" --timeout "$per_file_timeout"
  "${extra_arguments[@]}")

cd "$NA_TMP" || na_fail "cannot enter $NA_TMP"
# regrtest names its work directory after its pid, which in our PID
# namespace is the same for every run: two suites run at once on one
# machine would share it (and one deletes it under the other).
export TMPDIR=$NA_TMP
export NA_PYTHON  # for the kernel side's fresh namespace below

# run_regrtest SIDE NAME [ARGS...]: the module's regrtest on SIDE (kernel or
# netaccel); outcomes in $NA_TMP/NAME.tsv, log in $NA_TMP/NAME.log.
run_regrtest() {
  local side=$1 name=$2 status=0
  shift 2
  local -a command=("${regrtest[@]}" --junit-xml "$NA_TMP/$name.xml" "$@" "$module")
  if [[ $side == kernel ]]; then
    timeout -k 10 "$run_timeout" unshare --net -- bash -c 'ip link set lo up && exec "$@"' _ \
      "${command[@]}" >"$NA_TMP/$name.log" 2>&1 </dev/null || status=$?
  else
    timeout -k 10 "$run_timeout" "${NA_RUN[@]}" "${command[@]}" \
      >"$NA_TMP/$name.log" 2>&1 </dev/null || status=$?
  fi
  if [[ -s $NA_TMP/$name.xml ]]; then
    "$python" "$here/outcomes.py" list "$NA_TMP/$name.xml" >"$NA_TMP/$name.tsv"
  else
    : >"$NA_TMP/$name.tsv"
  fi
  na_log "$side: regrtest exit $status, $("$python" "$here/outcomes.py" count "$NA_TMP/$name.tsv")"
  if [[ $status -eq 124 ]]; then na_log "$side: the run hit its ${run_timeout}s limit"; fi
}

na_step "$module on the kernel"
started=$SECONDS
run_regrtest kernel kernel
kernel_seconds=$((SECONDS - started))

na_step "$module under netaccel"
na_start_monitor
na_connections_total
before=$NA_TOTAL
started=$SECONDS
run_regrtest netaccel netaccel
netaccel_seconds=$((SECONDS - started))
na_connections_total
carried=$((NA_TOTAL - before))
na_log "netaccel carried $carried connections (at least $min_connections expected)"

"$python" "$here/outcomes.py" differ "$NA_TMP/kernel.tsv" "$NA_TMP/netaccel.tsv" >"$NA_TMP/first.diff"
differences=$NA_TMP/first.diff
if [[ -s $differences ]]; then
  count=$(wc -l <"$differences")
  if ((count <= 200)) && ! grep -q $'\tmissing' "$differences"; then
    na_step "re-running the $count differing tests on both sides"
    cut -f1 "$differences" >"$NA_TMP/rerun.match"
    run_regrtest kernel kernel-rerun --matchfile "$NA_TMP/rerun.match"
    run_regrtest netaccel netaccel-rerun --matchfile "$NA_TMP/rerun.match"
    "$python" "$here/outcomes.py" differ "$NA_TMP/kernel-rerun.tsv" "$NA_TMP/netaccel-rerun.tsv" |
      grep -F -f <(cut -f1 "$differences" | sed 's/$/\t/') >"$NA_TMP/confirmed.diff" || true
    differences=$NA_TMP/confirmed.diff
  else
    na_log "$count tests differ (or went missing): no re-run"
  fi
fi

declare -A known=()
while IFS=$'\t' read -r gap_module test_id reason; do
  [[ $gap_module == "$module" ]] && known[$test_id]=$reason
done < <(grep -v '^#' "$here/known_gaps.txt")

failures=0
: >"$results_dir/$module.differences"
declare -A differing=()
while IFS=$'\t' read -r test_id on_kernel on_netaccel; do
  differing[$test_id]=1
  if [[ -n ${known[$test_id]:-} ]]; then
    verdict="known-gap"
  else
    verdict=FAIL
    failures=$((failures + 1))
  fi
  printf '%s\t%s\t%s\t%s\n' "$test_id" "$on_kernel" "$on_netaccel" "$verdict" >>"$results_dir/$module.differences"
  na_log "$verdict: $test_id: kernel $on_kernel, netaccel $on_netaccel"
done <"$differences"
for test_id in "${!known[@]}"; do
  if [[ -z ${differing[$test_id]:-} ]]; then
    na_log "FAIL: $test_id is listed in known_gaps.txt but no longer differs: remove it"
    failures=$((failures + 1))
  fi
done
if ((carried < min_connections)); then
  na_log "FAIL: netaccel carried $carried connections, expected at least $min_connections"
  failures=$((failures + 1))
fi

verdict=pass
if ((failures > 0)); then
  verdict=FAIL
elif [[ -s $differences ]]; then
  verdict="known-gaps"
fi
printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$module" "$verdict" \
  "$("$python" "$here/outcomes.py" count "$NA_TMP/kernel.tsv")" \
  "$("$python" "$here/outcomes.py" count "$NA_TMP/netaccel.tsv")" \
  "$(wc -l <"$differences")" "$carried" "$kernel_seconds" "$netaccel_seconds" \
  >"$results_dir/$module.summary"
if [[ $verdict == FAIL ]]; then
  echo "----- last lines of the netaccel run -----"
  tail -n 30 "$NA_TMP/netaccel.log"
  na_fail "$module: $failures unexpected differences"
fi
na_pass
