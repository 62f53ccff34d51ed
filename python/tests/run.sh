#!/usr/bin/env bash
# The Python package's tests, as CTest runs them (test `python`): pip install ./python into the
# environment of the interpreter given, then pytest. Given a cubn build tree, the package links
# that build's libraries (installed into <build dir>/prefix; python/CMakeLists.txt, CUBN_PREFIX)
# and compiles only its module; without one it builds cubn itself. The executor module only
# (CUBN_ENABLE_CUDA=OFF): the CUDA one would need a GPU to test. Exits 77 (CTest: skipped) where
# no interpreter is given or it lacks what the tests need.
# run.sh <python> <repository root> <build dir for the package> [<cubn build tree>]
set -euo pipefail
py=$1 root=$(realpath "$2") build=$(realpath -m "$3") tree=${4:+$(realpath "$4")}
if [ -z "$py" ] || ! "$py" -c 'import torch, numpy, pytest, nanobind, scikit_build_core' 2>/dev/null
then
  echo "skipped: CUBN_PYTHON (${py:-unset}) is not an interpreter with torch, numpy, pytest," \
       "nanobind and scikit-build-core (.ci/run makes a virtual environment with them)"
  exit 77
fi
start=$SECONDS
prebuilt=()
if [ -n "$tree" ]; then
  rm -rf "$build/prefix"
  cmake --install "$tree" --prefix "$build/prefix" >/dev/null
  prebuilt=(-C "cmake.define.CUBN_PREFIX=$build/prefix")
  echo "== linking the libraries of $tree"
fi
"$py" -m pip install -q --disable-pip-version-check --no-build-isolation "$root/python" \
  -C cmake.define.CUBN_ENABLE_CUDA=OFF -C build-dir="$build" "${prebuilt[@]}"
echo "== pip install ./python: $((SECONDS - start)) s"
cd "$build"  # not the source tree: the tests import the installed package
"$py" -m pytest -q -p no:cacheprovider "$root/python/tests"
