# Labels for the sanitizer stages, given by name to the tests gtest_discover_tests finds (CTest reads
# this file after the discovery: tests/CMakeLists.txt adds it to TEST_INCLUDE_FILES). The asan preset
# runs the tests labelled `sanitize`, the tsan preset those labelled `tsan`.
#
# sanitize (AddressSanitizer and UndefinedBehaviorSanitizer): every test of the executor binary
# and its persistent twins, the C ABI test, except those below. Each left out only repeats calls
# that labelled tests make with the same kernels, paths and shapes, or accounts numbers of a run a
# labelled test also makes; none is the only test of a kernel family, a path, an argument check, an
# error path or an executor feature:
#   DeterministicBitForBit (forward, backward, and their twins): the same calls again, to compare
#     bits; the reference tests make each of these calls once;
#   OneWorkspaceServesCallsOfEveryShapeAndIsLeftReady: the edge shapes again with one workspace;
#     the reference tests run every edge shape with a workspace of exactly the size asked for, so
#     an access past it is found there;
#   Proxies.FusedCallsMatchTheirByteModel, Proxies.BytesMovedMatchTheModelAndWarpAccessesAreCoalesced:
#     the byte models of the executor's profile; the profiler itself runs under the sanitizers in
#     Proxies.BenchmarkFamilies* and Proxies.EveryLaunchIsNamedAfterItsKernel, the calls in the
#     reference tests.
set(cubn_sanitize_skip
    "\\.DeterministicBitForBit$|\\.OneWorkspaceServesCallsOfEveryShapeAndIsLeftReady$|^Proxies\\.(FusedCallsMatchTheirByteModel|BytesMovedMatchTheModelAndWarpAccessesAreCoalesced)$")

# tsan (ThreadSanitizer): where blocks run on several host threads at once, the only place it can
# see anything: the cooperative launches (the executor's own tests of grid syncs and shared memory
# races, and persistent-path calls of each kind: in place, NaN/Inf, misaligned, optional outputs,
# zero upstream gradient, no scale and offset). An ordinary launch runs its blocks one after
# another on one host thread, so its tickets (last-block merges) show nothing to ThreadSanitizer;
# they are right by construction (cuda::atomic_ref with acq_rel ordering, kernels/) and run in the
# sanitize tests. ForwardProperties.SeveralHostThreadsAtOnce is left out: its host threads' full
# 132-SM cooperative grids at once pass ThreadSanitizer's limit of 8,128 threads.
set(cubn_tsan_tests
    "^(Cooperative|SharedRaces|CooperativeCatches|CooperativeUnderTsan)\\.|^persistent\\.(ForwardProperties\\.(InPlace|NanAndInf|Misaligned)|BackwardProperties\\.(OptionalOutputs|ZeroUpstream)|Forward\\.TrainingWithoutScaleAndOffset)")

foreach(list_and_labels "cubn_cpu_tests_TESTS;cpu" "cubn_cpu_persistent_TESTS;cpu,persistent")
  list(GET list_and_labels 0 list)
  list(GET list_and_labels 1 labels)
  string(REPLACE "," ";" labels "${labels}")
  foreach(test IN LISTS ${list})
    set(these ${labels})
    if(NOT test MATCHES "${cubn_sanitize_skip}")
      list(APPEND these sanitize)
    endif()
    if(test MATCHES "${cubn_tsan_tests}")
      list(APPEND these tsan)
    endif()
    set_tests_properties("${test}" PROPERTIES LABELS "${these}")
  endforeach()
endforeach()
