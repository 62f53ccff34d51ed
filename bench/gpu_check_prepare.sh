#!/usr/bin/env bash
# Run here, before the GPU check: stages what the GPU machine lacks into one ignored folder that the
# remote command carries along (README, "Checking on a GPU"):
#
#   bench/gpu_check_prepare.sh [DIR]      default build/gpu-deps
#
# DIR/googletest: Debian's GoogleTest source (/usr/src/googletest, package googletest; about 4 MB),
# which bench/gpu_check.sh builds there with the GPU machine's own compiler (a static library made
# here could need a newer libstdc++ than the one there) and finds through GTest_ROOT.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build/gpu-deps}
src=${CUBN_GTEST_SOURCE:-/usr/src/googletest}
[ -f "$src/CMakeLists.txt" ] ||
  { echo "no GoogleTest source at $src: apt-get install googletest (or set CUBN_GTEST_SOURCE)"; exit 1; }
rm -rf "$dir/googletest"
mkdir -p "$dir"
cp -r "$src" "$dir/googletest"
echo "staged $(du -sh "$dir" | cut -f1) in $dir; send it along: carry [\"$dir\"]"
