#!/usr/bin/env bash
# The one-command GPU check, for a machine with an NVIDIA GPU where nothing can be downloaded
# (nvcc, CMake, Ninja and a python3 with PyTorch are there; GoogleTest, matplotlib and the PyPI
# SASS tools may not be):
#
#   bench/gpu_check.sh OUTDIR [PREBUILT]
#
#  1. builds cubn, cubn_bench and cubn_io for the native architecture (and the gpu tests when
#     GoogleTest is found; else it runs PREBUILT/tests/cubn_gpu_tests, default build/ci, built on
#     a machine that has it: carry that folder along);
#  2. runs the gpu-labelled tests (and cubn::nccl's, cubn_nccl_tests, where NCCL was found), then
#     the first again under compute-sanitizer memcheck, racecheck,
#     synccheck and initcheck (the last three on a subset, for time);
#  3. runs cubn_bench --quick beside cuDNN and the copy kernel (CSV; chart if matplotlib is there);
#  4. compares cubn with torch.nn.functional.batch_norm on the same inputs and times PyTorch's
#     native kernels on the benchmark shapes (bench/torch_compare.py);
#  5. writes logs, CSVs and OUTDIR/summary.txt (tests passed, sanitizer errors, cubn/cuDNN and
#     cubn/PyTorch time ratios per shape family) and prints the summary.
# Each step has its own time limit so the whole stays under 9 minutes. Exits 1 when a test, a
# sanitizer run or the PyTorch agreement failed.
set -uo pipefail
out=${1:?usage: bench/gpu_check.sh OUTDIR [PREBUILT]}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
prebuilt=${2:-build/ci}
build=build/gpu-check
start=$SECONDS
status=0
export PATH="/usr/local/cuda/bin:$PATH"

step() { echo "== $* ($((SECONDS - start)) s)" | tee -a "$out/steps.log"; }
left() { echo $((520 - (SECONDS - start))); }  # seconds left of the budget, with margin

step "device"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader
  nvcc --version | tail -n 2
  date -u +"%Y-%m-%d %H:%M UTC"
} > "$out/device.txt" 2>&1
cat "$out/device.txt"

step "configure and build (native architecture)"
tests=ON
if ! cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=native \
    -DCUBN_BUILD_TESTS=ON > "$out/configure.log" 2>&1; then
  tests=OFF
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=native \
    -DCUBN_BUILD_TESTS=OFF >> "$out/configure.log" 2>&1 || { echo "configure failed"; exit 1; }
fi
targets=(cubn_bench cubn_io)
[ "$tests" = ON ] && targets+=(cubn_gpu_tests)
timeout 240 cmake --build "$build" -j "$(nproc)" --target "${targets[@]}" > "$out/build.log" 2>&1 ||
  { echo "build failed: $out/build.log"; tail -n 20 "$out/build.log"; exit 1; }

testbin=$build/tests/cubn_gpu_tests
if [ "$tests" = OFF ]; then
  testbin=$prebuilt/tests/cubn_gpu_tests
  echo "GoogleTest not found here: running the prebuilt $testbin" | tee -a "$out/steps.log"
fi

step "gpu tests"
tests_line="gpu tests: not run (no test binary)"
if [ -x "$testbin" ]; then
  timeout 120 "$testbin" --gtest_brief=1 > "$out/gpu_tests.log" 2>&1 || status=1
  tests_line="gpu tests: $(grep -E '^\[  PASSED  \]|^\[  FAILED  \]' "$out/gpu_tests.log" | tr '\n' ' ')"
  # the forward and backward tests again with every training call on the persistent path
  # (tests/support/path_environment.cpp), as CTest's gpu.persistent.* twins do
  CUBN_TEST_PATH=persistent timeout 120 "$testbin" --gtest_brief=1 \
    --gtest_filter='Forward*:Backward*-ForwardPlans*:BackwardPlans*' \
    > "$out/gpu_tests_persistent.log" 2>&1 || status=1
  tests_line="$tests_line; persistent path: $(grep -E '^\[  PASSED  \]|^\[  FAILED  \]' \
    "$out/gpu_tests_persistent.log" | tr '\n' ' ')"
else
  status=1
fi
echo "$tests_line"

step "nccl tests"
# cubn::nccl's tests (one rank per visible GPU), built where NCCL is found; libnccl.so.2 may come
# from PyTorch's wheel (nvidia/nccl/lib) when the toolkit's is missing
ncclbin=$build/tests/cubn_nccl_tests
if [ "$tests" = ON ]; then
  timeout 240 cmake --build "$build" -j "$(nproc)" --target cubn_nccl_tests >> "$out/build.log" 2>&1 || true
else
  ncclbin=$prebuilt/tests/cubn_nccl_tests
fi
nccl_line="nccl tests: not run (no binary: NCCL not found at build time)"
if [ -x "$ncclbin" ]; then
  torch_nccl=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(nvidia.nccl.__path__[0], "lib"))' 2>/dev/null || true)
  LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$torch_nccl" timeout 180 "$ncclbin" \
    --gtest_brief=1 > "$out/nccl_tests.log" 2>&1 || status=1
  nccl_line="nccl tests: $(grep -E '^\[  PASSED  \]|^\[  FAILED  \]' "$out/nccl_tests.log" | tr '\n' ' ')"
  [ -n "$(grep -E '^\[' "$out/nccl_tests.log")" ] || nccl_line="nccl tests: did not start ($(tail -n 1 "$out/nccl_tests.log"))"
fi
echo "$nccl_line"

step "compute-sanitizer"
san_line="compute-sanitizer:"
subset='*Properties*:*Proxies*:Forward/*EdgeShapes*:Backward/*EdgeShapes*'
for tool in memcheck racecheck synccheck initcheck; do
  [ -x "$testbin" ] || break
  filter='*'
  [ "$tool" = memcheck ] || filter=$subset
  budget=$(( $(left) / 4 ))
  [ "$budget" -lt 20 ] && budget=20
  # the persistent path for racecheck and synccheck: its kernels share slices and grid syncs
  path=auto
  case $tool in racecheck | synccheck) path=persistent ;; esac
  CUBN_TEST_PATH=$path timeout "$budget" compute-sanitizer --tool "$tool" --error-exitcode 99 "$testbin" \
    --gtest_brief=1 --gtest_filter="$filter" > "$out/sanitizer_$tool.log" 2>&1
  rc=$?
  errors=$(grep -Eo 'ERROR SUMMARY: [0-9]+' "$out/sanitizer_$tool.log" | tail -n 1 | grep -Eo '[0-9]+$')
  case $rc in
    0) san_line="$san_line $tool ${errors:-0} errors;" ;;
    124) san_line="$san_line $tool stopped at ${budget} s (${errors:-?} errors so far);" ;;
    *) san_line="$san_line $tool ${errors:-?} errors (exit $rc);"; status=1 ;;
  esac
done
echo "$san_line"

step "cubn_bench --quick"
timeout "$(( $(left) * 2 / 3 ))" "$build/bench/cubn_bench" --quick --csv "$out/bench.csv" \
  > "$out/bench.log" 2>&1 || echo "cubn_bench did not finish (see $out/bench.log)"
python3 bench/plot_bench.py "$out/bench.csv" "$out/bench.png" > "$out/plot.log" 2>&1 ||
  echo "no chart (matplotlib missing?): $out/plot.log"
# the ResNet-50 shapes again with the training calls forced to stream: the persistent path's gain
timeout "$(( $(left) / 3 ))" "$build/bench/cubn_bench" --quick --filter resnet --path streaming \
  --csv "$out/bench_streaming.csv" > "$out/bench_streaming.log" 2>&1 ||
  echo "cubn_bench --path streaming did not finish (see $out/bench_streaming.log)"

step "PyTorch: agreement and timing"
timeout "$(left)" python3 bench/torch_compare.py --cubn-io "$build/bench/cubn_io" --out "$out" --quick \
  > "$out/torch_compare.log" 2>&1 || status=1
agree_line=$(grep -E '^agreement:' "$out/torch_compare.log" || echo "agreement: did not finish")
echo "$agree_line"

step "summary"
python3 - "$out" > "$out/ratios.txt" 2>&1 <<'EOF'
import csv, math, os, sys
from collections import defaultdict
out = sys.argv[1]
def rows(name):
    path = os.path.join(out, name)
    return list(csv.DictReader(open(path))) if os.path.exists(path) else []
torch_us = {(r["family"], r["shape"], r["dtype"], r["order"], r["call"]): float(r["torch_us"])
            for r in rows("torch.csv")}
ratios = defaultdict(lambda: {"cudnn": [], "torch": []})
for r in rows("bench.csv"):
    key = (r["family"], r["shape"], r["dtype"], r["order"], r["call"])
    try:
        cubn = float(r["cubn_us"])
    except ValueError:
        continue
    fam = (r["family"], r["call"])
    try:
        if float(r["cudnn_us"]) > 0:
            ratios[fam]["cudnn"].append(cubn / float(r["cudnn_us"]))
    except ValueError:
        pass
    if key in torch_us and torch_us[key] > 0:
        ratios[fam]["torch"].append(cubn / torch_us[key])
def gmean(v):
    return math.exp(sum(map(math.log, v)) / len(v)) if v else float("nan")
print("cubn time / other time, geometric mean per family and call (below 1: cubn faster)")
for (fam, call), v in sorted(ratios.items()):
    print(f"  {fam:7s} {call:18s} vs cuDNN {gmean(v['cudnn']):5.2f} ({len(v['cudnn'])} cases)"
          f"   vs PyTorch {gmean(v['torch']):5.2f} ({len(v['torch'])} cases)")
EOF
{
  echo "cubn GPU check, $(head -n 1 "$out/device.txt")"
  echo "$tests_line"
  echo "$nccl_line"
  echo "$san_line"
  echo "$agree_line"
  cat "$out/ratios.txt"
  echo "total $((SECONDS - start)) s; status $status"
} | tee "$out/summary.txt"
exit $status
