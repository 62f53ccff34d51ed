# The rules the executor relies on, checked in the sources (cmake -DSOURCE=<dir> -P this file; a
# rule broken is a SEND_ERROR naming the file and line):
#  - shared memory in kernels/ and host/ is declared through kernels/platform.cuh's macros
#    (CUBN_SHARED, CUBN_SHARED_OBJECT, CUBN_DYNAMIC_SHARED), which the executor race-checks and
#    poisons; a plain __shared__ there would be neither;
#  - kernels/ takes atomics and fences through DeviceAtomicRef and device_fence (platform.cuh),
#    which the executor sees (ThreadSanitizer's model of fences, the watchdog's spin-waits); a
#    cuda::atomic_ref, a standalone fence or std::atomic there would not be seen.
# With -DEXPECT_FAILURES=N it instead checks that the sources break the rules exactly N times (the
# test of this check, on a folder of bad sources).
cmake_minimum_required(VERSION 3.25)
if(NOT SOURCE)
  message(FATAL_ERROR "usage: cmake -DSOURCE=<repository or fixture> -P kernel_sources_test.cmake")
endif()

set(failures 0)
# rule(<folder> <regex> <why>): every line of the folder's sources that matches, outside
# platform.cuh and outside // comments, is a failure.
function(rule folder regex why)
  file(GLOB_RECURSE sources "${SOURCE}/${folder}/*.cuh" "${SOURCE}/${folder}/*.cu"
       "${SOURCE}/${folder}/*.hpp" "${SOURCE}/${folder}/*.cpp" "${SOURCE}/${folder}/*.h")
  foreach(src IN LISTS sources)
    get_filename_component(name "${src}" NAME)
    if(name STREQUAL "platform.cuh")
      continue()
    endif()
    file(STRINGS "${src}" lines)
    set(n 0)
    foreach(line IN LISTS lines)
      math(EXPR n "${n} + 1")
      string(REGEX REPLACE "//.*$" "" code "${line}")
      if(code MATCHES "${regex}")
        file(RELATIVE_PATH rel "${SOURCE}" "${src}")
        if(DEFINED EXPECT_FAILURES)
          message(STATUS "found, as expected: ${rel}:${n}")
        else()
          message(SEND_ERROR "${rel}:${n}: ${why}\n  ${line}")
        endif()
        math(EXPR failures "${failures} + 1")
      endif()
    endforeach()
  endforeach()
  set(failures ${failures} PARENT_SCOPE)
endfunction()

set(shared "plain __shared__: declare shared memory with CUBN_SHARED, CUBN_SHARED_OBJECT or CUBN_DYNAMIC_SHARED (kernels/platform.cuh), which the executor checks")
rule(kernels "(^|[^A-Za-z0-9_])__shared__" "${shared}")
rule(host "(^|[^A-Za-z0-9_])__shared__" "${shared}")
rule(kernels "cuda::atomic_ref|cuda::atomic_thread_fence|cuda::std::atomic_thread_fence|std::atomic|__threadfence"
     "an atomic or fence the executor does not see: use DeviceAtomicRef and device_fence (kernels/platform.cuh)")

if(DEFINED EXPECT_FAILURES)
  if(NOT failures EQUAL EXPECT_FAILURES)
    message(FATAL_ERROR "expected ${EXPECT_FAILURES} broken rules in ${SOURCE}, found ${failures}")
  endif()
  message(STATUS "the check found the ${failures} broken rules of ${SOURCE}")
elseif(failures GREATER 0)
  message(FATAL_ERROR "${failures} line(s) break the rules above")
endif()
