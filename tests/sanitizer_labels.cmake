# Labels for the sanitizer stages (and the environment of the tests run twice), given by name to the tests gtest_discover_tests finds (CTest reads
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
#   one_sm.Lengths* (tests/CMakeLists.txt): the Lengths calls again on a 1-SM device, whose fewer
#     splits change how many visits a thread's loop makes, not which kernels, paths or accesses;
#   OneWorkspaceServesCallsOfEveryShapeAndIsLeftReady: the edge shapes again with one workspace;
#     the reference tests run every edge shape with a workspace of exactly the size asked for, so
#     an access past it is found there;
#   Proxies.FusedCallsMatchTheirByteModel, Proxies.BytesMovedMatchTheModelAndWarpAccessesAreCoalesced:
#     the byte models of the executor's profile; the profiler itself runs under the sanitizers in
#     Proxies.BenchmarkFamilies* and Proxies.EveryLaunchIsNamedAfterItsKernel, the calls in the
#     reference tests.
set(cubn_sanitize_skip
    "^one_sm\\.|\\.DeterministicBitForBit$|\\.OneWorkspaceServesCallsOfEveryShapeAndIsLeftReady$|^Proxies\\.(FusedCallsMatchTheirByteModel|BytesMovedMatchTheModelAndWarpAccessesAreCoalesced)$")

# tsan (ThreadSanitizer): where blocks run on several host threads at once, the only place it can
# see what crosses blocks:
#  - the executor's own tests of grid syncs, shared memory races, concurrent blocks, the memory
#    model it gives ThreadSanitizer (fences, atomics, barriers; each broken pattern reported, each
#    correct one clean), the watchdog, warp sites and collective storage;
#  - cubn's tickets: TicketPaths runs every reduction that ends in a ticket (plane splits, column
#    blocks, the second-level ticket, the fused epilogue's statistics and gradient sums, the
#    split-phase local reductions; forward and backward, every dtype, both memory orders) with the
#    blocks of ordinary launches on several host threads (BlockOrder::kConcurrent), and
#    TicketMutations mutates the ticket (each ordering removed in turn: reported);
#  - the persistent (cooperative) path of each kernel family: forward and backward (in place,
#    NaN/Inf, misaligned, optional outputs, zero upstream gradient, no scale and offset), and the
#    fused epilogue's (ReLU and SiLU, residual, in place; both memory orders, every dtype), and
#    with lengths (the masked slices, where only vectors with a valid element take slots: fp16 and
#    fp32, both memory orders, the Lengths shapes);
#  - the tests tests/CMakeLists.txt registers with the prefix concurrent. (CUBN_CONCURRENT_TESTS:
#    reference tests of each family again with concurrent blocks; label tsan there).
# ForwardProperties.SeveralHostThreadsAtOnce is left out: its host threads' full 132-SM cooperative
# grids at once pass ThreadSanitizer's limit of 8,128 threads.
set(cubn_tsan_tests
    "^(Cooperative|SharedRaces|CooperativeCatches|CooperativeUnderTsan|ConcurrentBlocks|MemoryModel|Watchdog|WarpSites|CollectiveStorage|TicketPaths|TicketMutations)\\.|^persistent\\.(ForwardProperties\\.(InPlace|NanAndInf|Misaligned)|BackwardProperties\\.(OptionalOutputs|ZeroUpstream)|Forward\\.TrainingWithoutScaleAndOffset|ForwardFused\\.(InPlace|NanAndInfInTheResidual)|BackwardFused\\.OptionalOutputs|Lengths/[02]\\.Training(Forward|Backward)MatchesTheReferenceOnTheValidPositions)|^concurrent\\.")

# The environment of the tests run twice (tests/CMakeLists.txt): set here, where a list stays one
# value (gtest_discover_tests' PROPERTIES splits it into separate arguments, and the variables
# past the first were lost).
set(cubn_persistent_environment "CUBN_TEST_PATH=persistent;CUBN_TEST_SMS=4")
set(cubn_one_sm_environment "CUBN_TEST_SMS=1")
set(cubn_concurrent_environment
    "CUBN_SIM_BLOCKS=concurrent;CUBN_TEST_PATH=streaming;CUBN_TEST_SMS=8")

# each: the test list, its labels, the variable that holds its environment (none: -)
foreach(list_and_labels "cubn_cpu_tests_TESTS;cpu;-"
                        "cubn_cpu_persistent_TESTS;cpu,persistent;cubn_persistent_environment"
                        "cubn_cpu_one_sm_TESTS;cpu;cubn_one_sm_environment"
                        "cubn_cpu_concurrent_TESTS;cpu,concurrent;cubn_concurrent_environment")
  list(GET list_and_labels 0 list)
  list(GET list_and_labels 1 labels)
  list(GET list_and_labels 2 environment)
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
    if(DEFINED ${environment})
      set_tests_properties("${test}" PROPERTIES ENVIRONMENT "${${environment}}")
    endif()
  endforeach()
endforeach()
foreach(test IN LISTS cubn_gpu_persistent_TESTS)
  set_tests_properties("${test}" PROPERTIES LABELS "gpu;persistent"
                                            ENVIRONMENT "CUBN_TEST_PATH=persistent")
endforeach()
