#!/bin/sh
# Compiler launcher of the CUDA library's sources (host/CMakeLists.txt): runs the compile (its
# arguments, ccache's launcher first where there is one), keeps what ptxas -v printed for every
# architecture in <object>.ptxas.log, and passes the rest of stderr through. The resource check
# (bench/resource_report.py) reads those logs for the spill counts the cubins do not record. ccache
# replays a cached compile's stderr, so a cache hit writes the same log.
obj=
prev=
for arg in "$@"; do
  [ "$prev" = "-o" ] && obj=$arg
  prev=$arg
done
if [ -z "$obj" ]; then
  exec "$@"
fi
err="$obj.stderr"
"$@" 2>"$err"
rc=$?
grep -E '^ptxas info|^ +[0-9]+ bytes stack frame' "$err" >"$obj.ptxas.log"
grep -vE '^ptxas info|^ +[0-9]+ bytes stack frame' "$err" >&2
rm -f "$err"
exit $rc
