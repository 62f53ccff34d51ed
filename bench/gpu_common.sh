# shellcheck shell=bash
# Shared by bench/gpu_check.sh and bench/gpu_python_check.sh (sourced, not run): the time budget,
# steps with hard limits, and results packed into at most four files that the GPU machine's
# remote command gives back (at most 8 files, 16 MiB each, no deeper than two folders, names of
# letters, digits, '.', '_' and '-').
#
# The budget: the whole check ends within BUDGET seconds of its start. Each step has a minimum
# and a cap; it gets
#     min(cap, left - reserve - the minimums of the steps after it)   but at least its minimum,
# and is not started at all when less than its minimum is left (after the reserve). A step's
# command runs under `timeout -k GRACE`, so a started step ends within its share plus GRACE; the
# reserve (RESERVE s) covers that grace and packing the results. So no timeout is ever 0 or
# negative, earlier (more valuable) steps win when time is short, and later ones keep their
# minimum while there is time for it. `share` is the arithmetic alone, so that
# `gpu_check.sh --dry-run` can check it for every budget from 120 to 600 s.

GRACE=5     # seconds between timeout's TERM and its KILL
RESERVE=20  # seconds kept back for GRACE, the summary and the packing

# share LEFT MIN CAP LATER_MINS: sets SHARE to the seconds a step may take, or 0 for "do not start
# it" (a variable, not output: the dry run calls it some 30,000 times).
share() {
  local left=$1 min=$2 cap=$3 later=$4
  local avail=$((left - RESERVE))
  if [ "$avail" -lt "$min" ]; then
    SHARE=0
    return
  fi
  SHARE=$((avail - later))
  [ "$SHARE" -lt "$min" ] && SHARE=$min
  [ "$SHARE" -gt "$cap" ] && SHARE=$cap
}

# gpu_arch: the architecture to build for: CUBN_GPU_ARCH, else the first GPU's compute capability
# (90 on an H200), else 90.
gpu_arch() {
  local arch=${CUBN_GPU_ARCH:-}
  [ -n "$arch" ] || arch=$(timeout 20 nvidia-smi --query-gpu=compute_cap --format=csv,noheader \
    2> /dev/null | head -n 1 | tr -d '.[:space:]')
  echo "${arch:-90}"
}

# budget_start SECONDS WORKDIR OUTDIR: starts the clock (SECONDS: whole seconds, at least 60, else
# exit 2); step logs go to WORKDIR, results to OUTDIR.
budget_start() {
  [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -ge 60 ] || { echo "BUDGET: seconds, at least 60"; exit 2; }
  BUDGET=$1
  WORK=$2
  OUT=$3
  T0=$SECONDS
  mkdir -p "$WORK" "$OUT"
  : > "$WORK/steps.log"
}

elapsed() { echo $((SECONDS - T0)); }
left() { echo $((BUDGET - (SECONDS - T0))); }

note() { echo "$*" | tee -a "$WORK/steps.log"; }

# parse_steps "name:min:cap ...": the steps in the order they run, into STEP_NAME, STEP_MIN,
# STEP_CAP and STEP_LATER (the sum of the minimums of the steps after each). With
# CUBN_GPU_CHECK_STEPS set (names, space-separated: a rerun of what failed, say "gtest configure
# build tests persistent"), only those steps: run_step reports the others "not selected", and they
# take no share of the budget.
parse_steps() {
  local entry i later=0
  STEP_NAME=() STEP_MIN=() STEP_CAP=() STEP_LATER=()
  for entry in $1; do
    if [ -n "${CUBN_GPU_CHECK_STEPS:-}" ] && [[ " $CUBN_GPU_CHECK_STEPS " != *" ${entry%%:*} "* ]]; then
      continue
    fi
    STEP_NAME+=("${entry%%:*}")
    entry=${entry#*:}
    STEP_MIN+=("${entry%%:*}")
    STEP_CAP+=("${entry#*:}")
  done
  for ((i = ${#STEP_NAME[@]} - 1; i >= 0; i--)); do
    STEP_LATER[i]=$later
    later=$((later + STEP_MIN[i]))
  done
}

# step_share NAME: sets SHARE to this step's seconds now (0: not started).
step_share() {
  local i
  for i in "${!STEP_NAME[@]}"; do
    if [ "${STEP_NAME[i]}" = "$1" ]; then
      share "$(left)" "${STEP_MIN[i]}" "${STEP_CAP[i]}" "${STEP_LATER[i]}"
      return
    fi
  done
  echo "step_share: no step $1" >&2
  exit 2
}

# The summary: one line per step (report), and FAILED: 0, 1 for a failure of cubn (a test, a
# sanitizer, an agreement check, a build), 2 for a failure of the check itself.
SUMMARY=()
FAILED=0
report() { SUMMARY+=("$*"); }
mark_failed() { if [ "$1" -gt "$FAILED" ]; then FAILED=$1; fi; }

# step_report LABEL [DETAIL]: the summary line of the step run_step just ran, "LABEL: result;
# DETAIL"; a step that FAILED marks a failure of cubn.
step_report() {
  report "$1: $STEP_RESULT${2:+; $2}"
  case $STEP_RESULT in FAILED*) mark_failed 1 ;; esac
}

# device_info: WORK/device.txt: the GPU (name, driver, memory, compute capability) or "no GPU
# visible", nvcc's version, the date.
device_info() {
  {
    if command -v nvidia-smi > /dev/null && timeout 20 nvidia-smi -L > /dev/null 2>&1; then
      timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap \
        --format=csv,noheader
    else
      echo "no GPU visible"
    fi
    nvcc --version | tail -n 2
    date -u +"%Y-%m-%d %H:%M UTC"
  } > "$WORK/device.txt" 2>&1
}

# finish_results TITLE APPENDIX FILE...: the end of a check, whatever happened (its EXIT trap):
# OUT/summary.txt (TITLE with the device, the summary lines, WORK/APPENDIX where there is one, the
# time and the verdict), each FILE copied from WORK to OUT where it exists, the logs packed and
# the results checked; prints the summary and exits with FAILED.
finish_results() {
  local title=$1 appendix=$2 f
  shift 2
  trap - EXIT
  {
    echo "$title: $(head -n 1 "$WORK/device.txt" 2>/dev/null)"
    printf '%s\n' "${SUMMARY[@]}"
    [ -f "$WORK/$appendix" ] && cat "$WORK/$appendix"
    echo "total $(elapsed) s of a $BUDGET s budget; $(verdict "$FAILED" "${SUMMARY[@]}")"
  } > "$OUT/summary.txt"
  for f in "$@"; do
    [ -f "$WORK/$f" ] && cp "$WORK/$f" "$OUT/"
  done
  cp "$OUT/summary.txt" "$WORK/"
  if ! pack_results; then
    echo "results would not come back whole" | tee -a "$OUT/summary.txt"
    mark_failed 2
  fi
  cat "$OUT/summary.txt"
  exit "$FAILED"
}

# run_step NAME LOG CMD...: runs CMD under its share with output to WORK/LOG and sets STEP_RESULT
# to one of: passed, FAILED (exit N), did not finish (stopped at T s), not started (budget spent),
# dry run (not run: needs a GPU). Under DRY_RUN=gpu the command is only described.
run_step() {
  local name=$1 log=$2
  shift 2
  local t
  if [ -n "${CUBN_GPU_CHECK_STEPS:-}" ] && [[ " $CUBN_GPU_CHECK_STEPS " != *" $name "* ]]; then
    STEP_RESULT="not selected (CUBN_GPU_CHECK_STEPS)"
    return
  fi
  step_share "$name"
  t=$SHARE
  if [ "$t" = 0 ]; then
    STEP_RESULT="not started (budget spent: $(left) s left)"
    note "== $name: $STEP_RESULT"
    return
  fi
  if [ "${DRY_RUN:-}" = gpu ]; then
    STEP_RESULT="dry run (not run: needs a GPU; would get $t s)"
    note "== $name ($(elapsed) s): would run for at most $t s: $*"
    return
  fi
  note "== $name ($(elapsed) s): at most $t s"
  timeout -k "$GRACE" "$t" "$@" > "$WORK/$log" 2>&1
  local rc=$?
  case $rc in
    0) STEP_RESULT=passed ;;
    124 | 137) STEP_RESULT="did not finish (stopped at $t s)" ;;
    *) STEP_RESULT="FAILED (exit $rc)" ;;
  esac
  note "   $name: $STEP_RESULT ($(elapsed) s)"
}

# gtest_progress LOG...: "N tests passed, M failed, K skipped" from GoogleTest logs, whole or cut
# short (a test's own result line ends with its time; the closing lists repeat names without it).
gtest_progress() {
  local ok failed skipped
  ok=$(cat "$@" 2>/dev/null | grep -c '^\[       OK \] .* ms)$')
  failed=$(cat "$@" 2>/dev/null | grep -c '^\[  FAILED  \] .* ms)$')
  skipped=$(cat "$@" 2>/dev/null | grep -c '^\[  SKIPPED \] .* ms)$')
  echo "${ok:-0} tests passed, ${failed:-0} failed, ${skipped:-0} skipped"
}

# gtest_shards N LOG CMD...: CMD (a GoogleTest binary and its arguments) as N processes at once, each
# running its shard of the tests (GTEST_TOTAL_SHARDS) into LOG.K: the tests' host-side references
# use one core each, and the GPU machine has 16. Fails when any shard fails.
gtest_shards() {
  local n=$1 log=$2 k rc=0 pid pids=()
  shift 2
  for ((k = 0; k < n; k++)); do
    GTEST_TOTAL_SHARDS=$n GTEST_SHARD_INDEX=$k "$@" > "$log.$k" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do
    wait "$pid" || rc=1
  done
  return $rc
}

# verdict FAILED LINE...: the summary's last word: FAILED when FAILED is not 0, else passed, and
# "incomplete" with how many steps did not finish or start.
verdict() {
  local failed=$1 line short=0
  shift
  for line in "$@"; do
    case $line in *"did not finish"* | *"not started"*) short=$((short + 1)) ;; esac
  done
  if [ "$failed" != 0 ]; then
    echo FAILED
  elif [ "$short" -gt 0 ]; then
    echo "passed as far as it went: incomplete, $short step$([ "$short" = 1 ] || echo s) did not" \
      "finish or start"
  else
    echo passed
  fi
}

# pack_results: OUT gets WORK's logs as one tarball beside the files already there, then checks
# what would come back: at most 4 files, each under 16 MiB, no folders, plain names. A log over
# 2 MiB is cut to its last 2 MiB in the tarball (the whole stays in WORK).
pack_results() {
  local packdir="$WORK/pack/logs" f
  rm -rf "$WORK/pack"
  mkdir -p "$packdir"
  for f in "$WORK"/*; do
    [ -f "$f" ] || continue
    if [ "$(stat -c %s "$f")" -gt $((2 << 20)) ]; then
      { echo "[cut to the last 2 MiB]"; tail -c $((2 << 20)) "$f"; } > "$packdir/$(basename "$f")"
    else
      cp "$f" "$packdir/"
    fi
  done
  tar -czf "$OUT/logs.tar.gz" -C "$WORK/pack" logs
  check_results "$OUT"
}

# check_results DIR: fails (1) when DIR holds what the remote command would not give back whole.
check_results() {
  local dir=$1 count=0 bad=0 f name size
  while IFS= read -r -d '' f; do
    name=${f#"$dir"/}
    if [ -d "$f" ]; then
      echo "results: folder $name (results must be files at the top)"
      bad=1
      continue
    fi
    count=$((count + 1))
    size=$(stat -c %s "$f")
    [ "$size" -lt $((16 << 20)) ] || { echo "results: $name is $size bytes (16 MiB at most)"; bad=1; }
    [[ $name =~ ^[A-Za-z0-9._-]+$ ]] || { echo "results: name '$name' has other characters"; bad=1; }
  done < <(find "$dir" -mindepth 1 -print0)
  [ "$count" -le 4 ] || { echo "results: $count files (4 at most)"; bad=1; }
  return $bad
}
