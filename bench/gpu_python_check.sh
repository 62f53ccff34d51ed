#!/usr/bin/env bash
# The Python package on a GPU machine without network: the second remote command, for whoever has
# device time left after bench/gpu_check.sh (README, "Checking on a GPU"). Nothing is carried: it
# uses the GPU machine's own python3 (PyTorch, nanobind, scikit-build-core, pytest).
#
#   bench/gpu_python_check.sh OUTDIR [BUDGET]     everything ends within BUDGET s (default 540)
#
#  1. build: the package with cubn's CUDA library for this GPU only (CUBN_GPU_ARCH, else nvidia-smi's
#     compute capability, else 90) into a folder of its own (pip --no-build-isolation --target:
#     nothing is installed system-wide);
#  2. pytest: python/tests against the device's PyTorch: test_cuda.py (cubn.torch against
#     torch.nn.BatchNorm2d on CUDA tensors, fp16/bf16/fp32, contiguous and channels_last, CUDA
#     graph capture) and the CPU suites;
#  3. overhead: bench/torch_overhead.py on CUDA tensors (host and wall time per call of cubn.torch
#     against torch.nn) into torch_overhead.csv;
#  4. resnet_bf16, resnet_fp32: a ResNet-50 training step (N = 32) with torch's batch norm and with
#     cubn's (bench/torch_resnet50.py; channels_last), eager and replayed from a CUDA graph, into
#     resnet50.csv.
# Each step under its share of the budget (bench/gpu_common.sh). OUTDIR then holds summary.txt,
# resnet50.csv, torch_overhead.csv and logs.tar.gz. Exit status: 0 when nothing failed (a step cut
# short is reported, not failed), 1 when the build, a test or a timing run failed, 2 when the
# results would not come back whole.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
repo=$(pwd)
out=${1:?usage: bench/gpu_python_check.sh OUTDIR [BUDGET]}
mkdir -p "$out"
out=$(cd "$out" && pwd)
export PATH="/usr/local/cuda/bin:$PATH"
source bench/gpu_common.sh

build=$repo/build/gpu-python
rm -rf "$build/work"
rm -f "$out/summary.txt" "$out/resnet50.csv" "$out/logs.tar.gz"
budget_start "${2:-540}" "$build/work" "$out"
# name:minimum:cap (seconds; the caps are estimates for an H200 with 16 cores, not yet measured)
parse_steps "build:60:300 pytest:30:150 overhead:30:90 resnet_bf16:30:120 resnet_fp32:30:120"
trap 'finish_results "cubn Python package on a GPU" "" resnet50.csv torch_overhead.csv' EXIT
trap 'report interrupted; exit' INT TERM

device_info
arch=$(gpu_arch)

site=$build/site
run_step build build.log python3 -m pip install -q --no-build-isolation --no-deps \
  --target "$site" ./python -C cmake.define.CMAKE_CUDA_ARCHITECTURES="$arch-real" \
  -C build-dir="$build/cmake"
step_report build "CUDA for sm_$arch"
[ "$STEP_RESULT" = passed ] || exit
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
python3 -c 'import cubn; print("cubn CUDA library:", cubn.has_cuda())' >> "$WORK/build.log" 2>&1

# from the work folder, not the source tree: the tests import the package just built
run_step pytest pytest.log bash -c "cd '$WORK' && python3 -m pytest -q -p no:cacheprovider -rs \
  '$repo/python/tests'"
step_report pytest "$(tail -n 1 "$WORK/pytest.log" 2>/dev/null)"

# host and wall time per call of cubn.torch against torch.nn on CUDA tensors (a tiny tensor)
run_step overhead torch_overhead.log python3 bench/torch_overhead.py --device cuda \
  --csv "$WORK/torch_overhead.csv"
step_report overhead "$([ -f "$WORK/torch_overhead.log" ] &&
  grep -E '^(train|eval)' "$WORK/torch_overhead.log" | awk '{printf "%s %s %s; ", $1, $2, $5}')"

for dtype in bf16 fp32; do
  if ! python3 -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2> /dev/null; then
    report "resnet_$dtype: not run (no CUDA device for PyTorch)"
    continue
  fi
  run_step "resnet_$dtype" "resnet50_$dtype.log" python3 bench/torch_resnet50.py --dtype "$dtype" \
    --batch 32 --modes eager,graph --csv "$WORK/resnet50.csv"
  step_report "resnet_$dtype" "$(tail -n 2 "$WORK/resnet50_$dtype.log" 2>/dev/null | tr '\n' ' ')"
done
exit
