# Which CUDA architectures a build compiles for (cmake/cubn_cuda_architectures.cmake).
#   cmake -P architectures_test.cmake
#       the decision (cubn_choose_cuda_architectures) on each case below, no compiler needed;
#   cmake -DSOURCE=<repo> -DBINARY=<folder> -P architectures_test.cmake
#       also configures the repository as the README's first command does (no architecture
#       named) with no GPU visible (CUDA_VISIBLE_DEVICES empty, so also on a GPU runner) and
#       checks that it builds the CPU executor alone and says so in one line naming the option.
cmake_minimum_required(VERSION 3.25)
include(${CMAKE_CURRENT_LIST_DIR}/../../cmake/cubn_cuda_architectures.cmake)
if(BAD)  # the child run of the refused-value case below
  cubn_choose_cuda_architectures(got "sm90" "" "75;90")
  return()
endif()

# Every failed check is a SEND_ERROR: the script goes on to the next and exits 1 at the end.
# expect(<choice> <native> <want> <why-substring>)
function(expect choice native want why_part)
  set(supported 75 80 86 87 88 89 90 100 110 103 120 121)  # nvcc 13.0's list, its order
  cubn_choose_cuda_architectures(got "${choice}" "${native}" "${supported}")
  if(NOT got STREQUAL want OR NOT got_WHY MATCHES "${why_part}")
    message(SEND_ERROR "choice '${choice}', GPUs '${native}': got '${got}' (${got_WHY}), "
                       "want '${want}' (... ${why_part} ...)")
  endif()
endfunction()

expect(auto "90-real" "90-real" "visible GPUs")
expect(auto "" "" "^no GPU visible$")
expect(auto "80-real;90-real;90-real" "80-real;90-real" "visible GPUs")  # two kinds, three GPUs
expect(auto "120-real" "120-real" "visible GPUs")
expect(auto "70-real" "" "cannot compile for sm_70 \\(it compiles sm_75 to sm_121\\)")  # Volta
expect(auto "70-real;86-real" "86-real" "sm_70")
expect(auto "130-real" "121" "visible GPUs")  # newer than the toolkit: the newest PTX, JIT
expect(auto "72-real" "" "sm_72")  # between supported ones (Xavier)
expect(all "90-real" "75-real;80-real;86-real;89-real;90-real;100-real;120" "every architecture")
expect(all "" "75-real;80-real;86-real;89-real;90-real;100-real;120" "every architecture")
expect("89-real" "" "89-real" "as asked")
expect("80-real;90" "100-real" "80-real;90" "as asked")
expect("100a-real" "" "100a-real" "as asked")

# a value that is none of these: a configure error naming the option
execute_process(COMMAND ${CMAKE_COMMAND} -DBAD=1 -P ${CMAKE_CURRENT_LIST_FILE}
                RESULT_VARIABLE rc ERROR_VARIABLE err OUTPUT_QUIET)
if(rc EQUAL 0 OR NOT err MATCHES "CUBN_CUDA_ARCHITECTURES is \"sm90\"; expected auto, all")
  message(SEND_ERROR "CUBN_CUDA_ARCHITECTURES=sm90 was not refused by name: rc ${rc}, ${err}")
endif()

if(DEFINED SOURCE)
  file(REMOVE_RECURSE ${BINARY})
  execute_process(COMMAND ${CMAKE_COMMAND} -E env CUDA_VISIBLE_DEVICES=
                          ${CMAKE_COMMAND} -S ${SOURCE} -B ${BINARY} -G Ninja
                          -DCUBN_BUILD_TESTS=OFF -DCUBN_BUILD_BENCH=OFF -DCUBN_CCACHE=OFF
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  string(REGEX MATCHALL "-- cubn: [^\n]*" said "${out}")
  message(STATUS "configure said:\n  ${said}")
  if(NOT rc EQUAL 0)
    message(SEND_ERROR "configure failed (${rc}):\n${out}\n${err}")
  else()
    if(NOT out MATCHES "cubn: nvcc not found")  # a machine without nvcc builds the executor anyway
      if(NOT out MATCHES "-- cubn: no GPU visible: building the CPU executor alone, no CUDA library; -DCUBN_CUDA_ARCHITECTURES=all [^\n]*release preset")
        message(SEND_ERROR "configure without a GPU did not say it builds the executor alone")
      endif()
    endif()
    file(READ ${BINARY}/build.ninja ninja)
    if(ninja MATCHES "-arch|--generate-code|\\.cu\\.o")
      message(SEND_ERROR "configure without a GPU still compiles CUDA code (build.ninja)")
    endif()
    if(NOT ninja MATCHES "build examples/cubn_demo:")
      message(SEND_ERROR "the demo is not among the targets")
    endif()
    file(STRINGS ${BINARY}/CMakeCache.txt cached REGEX "^CMAKE_CUDA_ARCHITECTURES:")
    if(cached)
      message(SEND_ERROR "CMAKE_CUDA_ARCHITECTURES was cached (${cached}): a reconfigure would take it for the user's")
    endif()
  endif()
endif()
