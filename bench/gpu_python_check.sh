#!/usr/bin/env bash
# The Python package on a GPU machine without network (the issue-12 GPU checks):
#
#   bench/gpu_python_check.sh OUTDIR [PYDEPS]
#
# PYDEPS (default build/pydeps) holds what the device lacks, made on a machine with PyPI and
# carried along:  pip install --target build/pydeps nanobind scikit-build-core pytest
#  1. builds the package with cubn's CUDA library for this GPU (CUBN_CUDA_ARCH, default native)
#     into OUTDIR/site (pip --no-build-isolation --target: nothing is installed system-wide);
#  2. runs python/tests against the device's PyTorch: test_cuda.py (cubn.torch against
#     torch.nn.BatchNorm2d on CUDA tensors, fp16/bf16/fp32, contiguous and channels_last, CUDA
#     graph capture) and the CPU suites;
#  3. times a ResNet-50 training step with torch's batch norm and with cubn's
#     (bench/torch_resnet50.py; bf16 autocast and fp32, channels_last) into OUTDIR/resnet50.csv.
# Exits 1 when the build or a test failed.
set -uo pipefail
out=${1:?usage: bench/gpu_python_check.sh OUTDIR [PYDEPS]}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
pydeps=$(cd "${2:-build/pydeps}" 2>/dev/null && pwd) ||
  { echo "no $2: pip install --target build/pydeps nanobind scikit-build-core pytest"; exit 1; }
export PATH="/usr/local/cuda/bin:$PATH"
start=$SECONDS
status=0
step() { echo "== $* ($((SECONDS - start)) s)" | tee -a "$out/steps.log"; }

step "build the package (CUDA for ${CUBN_CUDA_ARCH:-native})"
PYTHONPATH="$pydeps" timeout 420 python3 -m pip install -q --no-build-isolation --no-deps \
  --target "$out/site" ./python -C cmake.define.CMAKE_CUDA_ARCHITECTURES="${CUBN_CUDA_ARCH:-native}" \
  -C build-dir="${CUBN_PY_BUILD:-build/gpu-python}" > "$out/build.log" 2>&1 ||
  { echo "build failed: $out/build.log"; tail -n 20 "$out/build.log"; exit 1; }
export PYTHONPATH="$out/site:$pydeps"
python3 -c 'import cubn; print("cubn CUDA library:", cubn.has_cuda())' | tee -a "$out/steps.log"

step "pytest"
(cd "$out" && timeout 300 python3 -m pytest -q -p no:cacheprovider -rs \
  "$OLDPWD/python/tests") > "$out/pytest.log" 2>&1 || status=1
tail -n 3 "$out/pytest.log"

step "ResNet-50 training step: torch.nn.BatchNorm2d against cubn.torch"
for dtype in bf16 fp32; do
  timeout 240 python3 bench/torch_resnet50.py --dtype "$dtype" --csv "$out/resnet50.csv" \
    >> "$out/resnet50.log" 2>&1 || status=1
done
cat "$out/resnet50.csv" 2>/dev/null
echo "total $((SECONDS - start)) s; status $status" | tee -a "$out/steps.log"
exit $status
