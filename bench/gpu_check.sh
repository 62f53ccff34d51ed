#!/usr/bin/env bash
# The GPU check: one remote command on a GPU machine without network (README, "Checking on a GPU").
#
#   bench/gpu_check_prepare.sh                   here, first: stages GoogleTest into build/gpu-deps
#   bench/gpu_check.sh OUTDIR [BUDGET]           there: everything ends within BUDGET s (540)
#   bench/gpu_check.sh --dry-run OUTDIR          here, without a GPU (CTest gpu_check.dry_run)
#
# It needs there only what the GPU machine has: nvcc, CMake, Ninja, compute-sanitizer, and a python3
# with PyTorch (whose nvidia-cudnn-cu13 and nvidia-nccl-cu13 wheels give cuDNN and NCCL where the
# toolkit lacks them). It builds there, for that GPU's architecture only (sm_90 on an H200), and runs
# in order of value, each step under its share of the budget (bench/gpu_common.sh):
#   device                   nvidia-smi, nvcc, date
#   gtest, configure, build  GoogleTest from build/gpu-deps, then cubn's GPU targets
#   tests, persistent, nccl  every gpu-labelled test (graph capture, two streams, the ticket paths),
#                            the forward and backward tests again on the persistent path, cubn::nccl
#                            on one rank
#   memcheck, racecheck, racecheck_ticket, synccheck
#                            compute-sanitizer on subsets: memcheck on the default paths; racecheck
#                            and synccheck on the cooperative (persistent) kernels, racecheck on the
#                            ticket (streaming) kernels
#   bench                    cubn_bench on ResNet-50's N=32 shapes, fp32/fp16/bf16, both layouts,
#                            beside cuDNN and a copy kernel
#   torch                    agreement with torch.nn.functional.batch_norm, and its timing on the
#                            shapes cubn_bench times
#   large                    a bf16 tensor past 2^31 elements, both layouts (cubn_large)
# OUTDIR then holds four files: summary.txt, bench.csv, bench.png (where matplotlib is) and
# logs.tar.gz (every step's log), packed whatever happens (a trap on exit).
# Exit status: 0 when nothing failed (a step that did not finish or start is reported, not failed),
# 1 when a test, a sanitizer or an agreement check failed, 2 on a broken check (a dry run's finding).
#
# The dry run does here what the GPU machine will, up to its first GPU call: stages the deps, sums
# the working tree and what is sent against 48 MiB, checks the budget arithmetic for budgets of 120
# to 600 s, builds GoogleTest from the staged source, configures the GPU build exactly as there
# (cuDNN and NCCL found in a wheel-like layout it makes, the toolkit's own not used), builds and runs
# a small program that links them and GoogleTest, describes each GPU step with its share, and packs
# and checks the results against what the remote command gives back.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
repo=$(pwd)
DRY_RUN=
if [ "${1:-}" = --dry-run ]; then
  DRY_RUN=1
  shift
fi
out=${1:?usage: bench/gpu_check.sh [--dry-run] OUTDIR [BUDGET]}
mkdir -p "$out"
out=$(cd "$out" && pwd)
export PATH="/usr/local/cuda/bin:$PATH"
source bench/gpu_common.sh

deps=$repo/build/gpu-deps
# CUBN_GPU_CHECK_BUILD: another build folder (a rehearsal here reusing the dry run's objects)
build=${CUBN_GPU_CHECK_BUILD:-$repo/build/gpu-check${DRY_RUN:+-dry}}
rm -rf "$build/work"
rm -f "$out/summary.txt" "$out/bench.csv" "$out/bench.png" "$out/logs.tar.gz"
budget_start "${2:-540}" "$build/work" "$out"

# the steps in order: name:minimum:cap (seconds)
# (the minimums: what a step needs to be worth starting; the caps: estimates for an H200 with 16
# cores, none measured yet, so that no step can take the time of the ones after it)
parse_steps "gtest:10:90 configure:15:120 build:60:330 tests:30:150 persistent:20:90 nccl:10:60
  memcheck:20:60 racecheck:20:60 racecheck_ticket:15:45 synccheck:15:45 bench:30:120 torch:30:120
  large:20:60"
trap 'finish_results "cubn GPU check${DRY_RUN:+ (dry run, no GPU)}" ratios.txt bench.csv bench.png' \
  EXIT
trap 'report "interrupted"; exit' INT TERM

# --- dry run only: what travels, and the budget arithmetic ---------------------------------------
check_size() {  # the working tree (tracked and untracked-not-ignored files) plus build/gpu-deps
  local tree sent limit=$((48 << 20))
  tree=$(git ls-files -z -co --exclude-standard | xargs -0 stat -c %s -- 2>/dev/null |
    awk '{s += $1} END {print s + 0}')
  sent=$(du -sb "$deps" | cut -f1)
  report "size: working tree $(awk "BEGIN {printf \"%.1f\", $tree / 1048576}") MiB + build/gpu-deps $(
    awk "BEGIN {printf \"%.1f\", $sent / 1048576}") MiB = $(
    awk "BEGIN {printf \"%.1f\", ($tree + $sent) / 1048576}") MiB (at most 48)"
  [ $((tree + sent)) -le $limit ] || mark_failed 2
}

# Every budget from 120 to 600 s: each step that starts gets at least its minimum (so never 0 or
# less), and the steps end, at worst each running its whole share plus GRACE and 1 s between steps,
# with RESERVE - GRACE seconds left for the summary and the packing. Also random step times.
check_budget_arithmetic() {
  local b trial i t elapsed_s took bad=0
  for b in $(seq 120 5 600); do
    for trial in $(seq 0 20); do
      elapsed_s=1  # the device step (its commands under 20 s limits, counted apart)
      for i in "${!STEP_NAME[@]}"; do
        share $((b - elapsed_s)) "${STEP_MIN[i]}" "${STEP_CAP[i]}" "${STEP_LATER[i]}"
        t=$SHARE
        [ "$t" = 0 ] && continue
        if [ "$t" -lt "${STEP_MIN[i]}" ] || [ "$t" -le 0 ]; then
          echo "budget $b: step ${STEP_NAME[i]} given $t s"
          bad=1
        fi
        took=$((t + GRACE))  # trial 0: the worst case
        [ "$trial" -gt 0 ] && took=$((RANDOM % (t + GRACE + 1)))
        elapsed_s=$((elapsed_s + took + 1))
      done
      if [ $((b - elapsed_s)) -lt $((RESERVE - GRACE - 1)) ]; then
        echo "budget $b: steps end at $elapsed_s s, too late to pack"
        bad=1
      fi
    done
  done
  report "budget arithmetic: budgets 120 to 600 s, worst case and 20 random runs each: $(
    [ $bad = 0 ] && echo "every step that starts gets at least its minimum and all end in time" ||
      echo FAILED)"
  [ $bad = 0 ] || mark_failed 2
}

# A wheel-like layout of the toolkit's cuDNN and NCCL (versioned names only, as PyPI's wheels have)
fake_wheels() {
  local site=$build/wheels/site f lib
  rm -rf "$build/wheels"
  mkdir -p "$site/nvidia/cudnn/include" "$site/nvidia/cudnn/lib" "$site/nvidia/nccl/include" \
    "$site/nvidia/nccl/lib"
  for f in /usr/local/cuda/include/cudnn*.h; do ln -s "$f" "$site/nvidia/cudnn/include/"; done
  ln -s /usr/local/cuda/include/nccl.h "$site/nvidia/nccl/include/"
  for lib in /usr/local/cuda/lib64/libcudnn*.so.9; do
    ln -s "$(readlink -f "$lib")" "$site/nvidia/cudnn/lib/$(basename "$lib")"
  done
  ln -s "$(readlink -f /usr/local/cuda/lib64/libnccl.so.2)" "$site/nvidia/nccl/lib/libnccl.so.2"
  echo "$site"
}

# site-packages holding PyTorch's nvidia wheels (cuDNN, NCCL), for CUBN_WHEEL_SITES
wheel_sites() {
  python3 - <<'EOF' 2>/dev/null
import importlib.util, os
sites = []
for name in ("nvidia.cudnn", "nvidia.nccl"):
    try:
        spec = importlib.util.find_spec(name)
    except ImportError:
        continue
    for loc in (spec.submodule_search_locations or []) if spec else []:
        site = os.path.dirname(os.path.dirname(loc))
        if site not in sites:
            sites.append(site)
print(";".join(sites))
EOF
}

cache_value() { sed -n "s/^$1:[A-Z]*=//p" "$build/CMakeCache.txt" 2>/dev/null; }

# --- the check ------------------------------------------------------------------------------------
if [ -n "$DRY_RUN" ]; then
  bench/gpu_check_prepare.sh "$deps" > "$WORK/prepare.log" 2>&1 ||
    { report "prepare: FAILED ($(tail -n 1 "$WORK/prepare.log"))"; mark_failed 2; exit; }
  check_size
  check_budget_arithmetic
fi

note "== device ($(elapsed) s)"
device_info
cat "$WORK/device.txt"
arch=$(gpu_arch)
[ -n "$DRY_RUN" ] && sites=$(fake_wheels) || sites=$(wheel_sites)
report "device: $(head -n 1 "$WORK/device.txt"); building for sm_$arch"

gtest=$build/gtest
if [ ! -f "$deps/googletest/CMakeLists.txt" ]; then
  report "gtest: FAILED (no $deps/googletest: run bench/gpu_check_prepare.sh here and carry build/gpu-deps)"
  mark_failed 2
  exit
fi
# (GoogleTest 1.12 asks for CMake 3.5, the oldest that CMake 4, perhaps the GPU machine's, still
# takes: the policy minimum keeps a later CMake from refusing it)
run_step gtest gtest.log bash -c "cmake -S '$deps/googletest' -B '$build/gtest-build' -G Ninja \
  -DCMAKE_BUILD_TYPE=Release -DBUILD_GMOCK=OFF -DCMAKE_INSTALL_PREFIX='$gtest' \
  -DCMAKE_POLICY_VERSION_MINIMUM=3.5 &&
  cmake --build '$build/gtest-build' -j $(nproc) && cmake --install '$build/gtest-build'"
step_report "gtest (GoogleTest from build/gpu-deps)"
[ "$STEP_RESULT" = passed ] || { mark_failed 2; exit; }

run_step configure configure.log cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_ARCHITECTURES="$arch-real" -DCUBN_BUILD_TESTS=ON -DCUBN_BUILD_EXAMPLES=OFF \
  -DCUBN_INSTALL=OFF -DCUBN_TEST_INSTALL=OFF -DCUBN_TEST_PYTHON=OFF -DGTest_ROOT="$gtest" \
  -DCUBN_WHEEL_SITES="$sites"
gtest_dir=$(cache_value GTest_DIR)
cudnn=$(cache_value CUBN_CUDNN_LIBRARY)
nccl=$(cache_value CUBN_NCCL_LIBRARY)
step_report configure \
  "GoogleTest ${gtest_dir:-not found}; cuDNN ${cudnn:-not found}; NCCL ${nccl:-not found}"
[ "$STEP_RESULT" = passed ] || { mark_failed 2; exit; }
if [ -n "$DRY_RUN" ]; then
  # the GPU machine's lookups must take the staged GoogleTest and the wheels, not this machine's
  [[ $gtest_dir == "$gtest"/* ]] || { report "dry run: GoogleTest not from the staged folder"; mark_failed 2; }
  [[ $cudnn == "$sites"/nvidia/cudnn/lib/libcudnn.so.9 ]] ||
    { report "dry run: cuDNN not found in the wheel layout"; mark_failed 2; }
  [[ $nccl == "$sites"/nvidia/nccl/lib/libnccl.so.2 ]] ||
    { report "dry run: NCCL not found in the wheel layout"; mark_failed 2; }
fi
# wheels' libraries load from where they were found (cuDNN's sub-libraries through its own RPATH)
for lib in "$cudnn" "$nccl"; do
  if [[ $lib == */* && -e $lib ]]; then
    LD_LIBRARY_PATH="$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export LD_LIBRARY_PATH
  fi
done

targets=(cubn_gpu_check_link)
[ -z "$DRY_RUN" ] && targets+=(cubn_gpu_tests cubn_bench cubn_io cubn_large)
[ -z "$DRY_RUN" ] && [ -n "$nccl" ] && [[ $nccl != *NOTFOUND ]] && targets+=(cubn_nccl_tests)
run_step build build.log cmake --build "$build" -j "$(nproc)" --target "${targets[@]}"
step_report "build (${targets[*]})"
[ "$STEP_RESULT" = passed ] || exit
if [ -n "$DRY_RUN" ]; then
  if "$build/tests/cubn_gpu_check_link" > "$WORK/link.log" 2>&1; then
    report "link: GoogleTest, $(grep -E '^(cuDNN|NCCL|CUDA)' "$WORK/link.log" | tr '\n' ' ')loaded"
  else
    report "link: FAILED ($(tail -n 2 "$WORK/link.log" | tr '\n' ' '))"
    mark_failed 2
  fi
  DRY_RUN=gpu  # from here on every step needs a GPU: describe it, do not run it
fi

# --- on the GPU -----------------------------------------------------------------------------------
# ran LOG: the step's command ran (it was not only described or skipped)
ran() { [ -f "$WORK/$1" ]; }
tests=$build/tests/cubn_gpu_tests
gtest_step() {  # NAME LOG SHARDS CMD...: a GoogleTest run, reported with how far it got
  local name=$1 log=$2 shards=$3
  shift 3
  run_step "$name" "$log" bash -c 'source bench/gpu_common.sh && gtest_shards "$@"' gtest_shards \
    "$shards" "$WORK/$log" "$@"
  step_report "$name" "$(ran "$log" && gtest_progress "$WORK/$log".*)"
}
gtest_step tests gpu_tests.log 4 "$tests"
gtest_step persistent gpu_tests_persistent.log 4 env CUBN_TEST_PATH=persistent "$tests" \
  --gtest_filter='Forward*:Backward*:Lengths*-ForwardPlans*:BackwardPlans*'
if [ -x "$build/tests/cubn_nccl_tests" ] || [ "$DRY_RUN" = gpu ]; then
  gtest_step nccl nccl_tests.log 1 "$build/tests/cubn_nccl_tests"
else
  report "nccl: not run (NCCL not found at configure)"
fi

# compute-sanitizer, each on a subset; the persistent path for the cooperative kernels
export PATH="$PATH:/usr/local/cuda/compute-sanitizer"
sanitize() {  # NAME TOOL PATH FILTER
  local name=$1 tool=$2 path=$3 filter=$4 errors
  if [ "$DRY_RUN" != gpu ] && ! command -v compute-sanitizer > /dev/null; then
    report "$name: not run (no compute-sanitizer on this machine)"
    return
  fi
  run_step "$name" "sanitizer_$name.log" env CUBN_TEST_PATH="$path" compute-sanitizer \
    --tool "$tool" --error-exitcode 99 "$tests" --gtest_brief=1 --gtest_filter="$filter"
  errors=$(grep -Eo 'ERROR SUMMARY: [0-9]+' "$WORK/sanitizer_$name.log" 2>/dev/null | tail -n 1 |
    grep -Eo '[0-9]+$')
  step_report "$name ($tool, $path path)" "${errors:+$errors errors}"
}
small='Forward/*EdgeShapes*:Backward/*.TrainingMatchesTheReference:ForwardFused/*.TrainingMatchesTheReference'
sanitize memcheck memcheck auto "$small:*Misaligned*:*NanAndInf*:*InPlace*:Launch*"
sanitize racecheck racecheck persistent "$small"
sanitize racecheck_ticket racecheck streaming "$small:*DeterministicBitForBit*"
sanitize synccheck synccheck persistent "$small"

run_step bench bench.log "$build/bench/cubn_bench" --quick --filter "resnet 32x" \
  --csv "$WORK/bench.csv"
detail=
if ran bench.log && grep -q 'no usable CUDA device' "$WORK/bench.log"; then
  detail="no usable CUDA device"
elif ran bench.log; then
  cudnn_version=$(grep -Eo '^cuDNN [0-9]+' "$WORK/bench.log")
  detail="${cudnn_version:+compared with $cudnn_version}${cudnn_version:-no cuDNN found: no comparison}"
fi
step_report "bench (ResNet-50 N=32, fp32/fp16/bf16, both layouts)" "$detail"
if [ -f "$WORK/bench.csv" ]; then
  timeout 30 python3 bench/plot_bench.py "$WORK/bench.csv" "$WORK/bench.png" > "$WORK/plot.log" 2>&1
fi

if [ "$DRY_RUN" = gpu ] || python3 -c 'import torch' 2> /dev/null; then
  run_step torch torch_compare.log python3 bench/torch_compare.py \
    --cubn-io "$build/bench/cubn_io" --out "$WORK" --quick --filter "resnet 32x"
  step_report torch "$(ran torch_compare.log &&
    { grep -E '^(agreement|torch_compare):' "$WORK/torch_compare.log" || echo 'no agreement line'; })"
else
  report "torch: not run (python3 has no PyTorch)"
fi

run_step large large.log "$build/bench/cubn_large"
detail=
if ran large.log && grep -q 'no usable CUDA device' "$WORK/large.log"; then
  detail="no usable CUDA device"
elif ran large.log; then
  detail=$(grep -E '^large: bf16' "$WORK/large.log" |
    sed -E 's/^large: bf16 (NCHW|NHWC) ([0-9x]+) .*forward ([0-9.]+) ms.*backward ([0-9.]+) ms.*errors y ([0-9]+).* dx ([0-9]+) .*per-channel errors ([0-9]+)/\1 \2: forward \3 ms, backward \4 ms, errors y \5, dx \6, per channel \7/' |
    tr '\n' ';')
fi
step_report "large (bf16 past 2^31 elements)" "$detail"

# cubn / other per dtype, order and call (geometric means; below 1: cubn faster)
timeout 30 python3 - "$WORK" > "$WORK/ratios.txt" 2>&1 <<'EOF'
import csv, math, os, sys
from collections import defaultdict
work = sys.argv[1]
def rows(name):
    path = os.path.join(work, name)
    return list(csv.DictReader(open(path))) if os.path.exists(path) else []
def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")
torch_us = {(r["family"], r["shape"], r["dtype"], r["order"], r["call"]): num(r["torch_us"])
            for r in rows("torch.csv")}
ratios = defaultdict(lambda: defaultdict(list))
for r in rows("bench.csv"):
    key = (r["dtype"], r["order"], r["call"])
    cubn = num(r["cubn_us"])
    for other, us in (("cuDNN", num(r["cudnn_us"])), ("copy", num(r["copy_us"])),
                      ("PyTorch", torch_us.get((r["family"], r["shape"], r["dtype"], r["order"],
                                                r["call"]), float("nan")))):
        if cubn > 0 and us > 0:
            ratios[key][other].append(cubn / us)
if ratios:
    print("cubn time / other time, geometric mean over the shapes (below 1: cubn faster; copy: the"
          " bandwidth ceiling)")
    for key in sorted(ratios):
        parts = []
        for other in ("cuDNN", "PyTorch", "copy"):
            v = ratios[key][other]
            parts.append(f"{other} {math.exp(sum(map(math.log, v)) / len(v)):5.2f} ({len(v)})"
                         if v else f"{other}   -  (0)")
        print(f"  {key[0]:4s} {key[1]:4s} {key[2]:18s} " + "   ".join(parts))
EOF
exit
