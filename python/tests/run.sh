#!/usr/bin/env bash
# The Python package's tests, as CTest runs them (test `python`): pip install ./python into the
# environment of the interpreter given (the CPU executor build only: CUDA would compile every
# kernel again), then pytest. Exits 77 (CTest: skipped) where none is given or it lacks what the
# tests need.
# run.sh <python> <repository root> <build dir for the package>
set -euo pipefail
py=$1 root=$2 build=$3
if [ -z "$py" ] || ! "$py" -c 'import torch, numpy, pytest, nanobind, scikit_build_core' 2>/dev/null
then
  echo "skipped: CUBN_PYTHON (${py:-unset}) is not an interpreter with torch, numpy, pytest," \
       "nanobind and scikit-build-core (.ci/run makes a virtual environment with them)"
  exit 77
fi
start=$SECONDS
"$py" -m pip install -q --disable-pip-version-check --no-build-isolation "$root/python" \
  -C cmake.define.CUBN_ENABLE_CUDA=OFF -C build-dir="$build"
echo "== pip install ./python: $((SECONDS - start)) s"
cd "$build"  # not the source tree: the tests import the installed package
"$py" -m pytest -q -p no:cacheprovider "$root/python/tests"
