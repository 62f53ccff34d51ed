# Which GPU architectures cubn's CUDA library is compiled for.
#
# CUBN_CUDA_ARCHITECTURES (cache, default auto):
#   auto  the architectures of the GPUs this machine's CUDA runtime sees at configure time (CMake's
#         own detection, the one behind CMAKE_CUDA_ARCHITECTURES=native; CUDA_VISIBLE_DEVICES
#         applies; once per build folder, as CMake keeps the compiler's facts: a GPU added later
#         needs a fresh folder), as SASS; where it sees none, no CUDA library: the CPU executor
#         build alone, which is all that runs on such a machine. nvcc takes 40 to 45 s of CPU per
#         dtype's library source and architecture, so seven architectures made the README's first
#         command 12 minutes on a 2-core machine without a GPU.
#   all   the release set: every major architecture from Turing to Blackwell as SASS and PTX of
#         the newest for GPUs that come later (the release preset; what a package for other
#         machines needs).
#   a list in CMake's syntax, e.g. 90-real or 80-real;90
# A CMAKE_CUDA_ARCHITECTURES given by the user (command line, preset, the CUDAARCHS environment
# variable) wins over all three: CI's preset names the architectures its checks read.
set(CUBN_RELEASE_CUDA_ARCHITECTURES "75-real;80-real;86-real;89-real;90-real;100-real;120")
set(CUBN_CUDA_ARCHITECTURES "auto" CACHE STRING
    "auto (the visible GPUs' architectures, or the CPU executor alone where none is visible), all (sm_75 to sm_120, for distribution), or a CMake architecture list such as 90-real")
set_property(CACHE CUBN_CUDA_ARCHITECTURES PROPERTY STRINGS auto all)

# cubn_choose_cuda_architectures(<out> <choice> <native> <supported>)
# The decision alone, without CMake's detection (tests/cmake/architectures_test.cmake drives it):
#   choice     auto, all, or a CMake architecture list
#   native     the visible GPUs' architectures as CMake's detection gives them ("90-real;80-real"),
#              empty where none is visible
#   supported  the toolkit's architectures as numbers (from nvcc --list-gpu-arch: 75;80;...;120)
# Sets <out> to the architecture list to compile, empty for the executor build alone, and
# <out>_WHY to one sentence saying what and why.
function(cubn_choose_cuda_architectures out choice native supported)
  if(choice STREQUAL "all")
    set(archs "${CUBN_RELEASE_CUDA_ARCHITECTURES}")
    set(why "every architecture (CUBN_CUDA_ARCHITECTURES=all)")
  elseif(NOT choice STREQUAL "auto")
    if(NOT choice MATCHES "^[0-9]+[af]?(-real|-virtual)?(;[0-9]+[af]?(-real|-virtual)?)*$")
      message(FATAL_ERROR "cubn: CUBN_CUDA_ARCHITECTURES is \"${choice}\"; expected auto, all, "
                          "or a CMake architecture list such as 90-real or 80-real;90")
    endif()
    set(archs "${choice}")
    set(why "as asked (CUBN_CUDA_ARCHITECTURES=${choice})")
  else()
    list(SORT supported COMPARE NATURAL)
    list(GET supported 0 oldest)
    list(GET supported -1 newest)
    set(archs "")
    set(skipped "")
    foreach(gpu IN LISTS native)
      string(REGEX REPLACE "-real$" "" gpu "${gpu}")
      if(gpu IN_LIST supported)
        list(APPEND archs "${gpu}-real")
      elseif(gpu GREATER newest)
        # newer than this toolkit: the newest PTX it has, which the driver compiles for the GPU
        list(APPEND archs "${newest}")
      else()
        list(APPEND skipped "sm_${gpu}")
      endif()
    endforeach()
    list(REMOVE_DUPLICATES archs)
    if(skipped)
      set(skip_note "; this toolkit cannot compile for ${skipped} (it compiles sm_${oldest} to sm_${newest})")
    else()
      set(skip_note "")
    endif()
    if(archs)
      set(why "the visible GPUs' architectures (CUBN_CUDA_ARCHITECTURES=auto)${skip_note}")
    elseif(native)
      set(why "no visible GPU this toolkit can compile for${skip_note}")
    else()
      set(why "no GPU visible")
    endif()
  endif()
  set(${out} "${archs}" PARENT_SCOPE)
  set(${out}_WHY "${why}" PARENT_SCOPE)
endfunction()

# cubn_user_cuda_architectures(<out>): whether the user named CMAKE_CUDA_ARCHITECTURES themselves.
# Called before enable_language(CUDA); where they did not, it sets CMAKE_CUDA_ARCHITECTURES (a
# normal variable) for CMake's compiler checks to the toolkit's oldest architecture, so that CMake
# neither picks nor caches a default of its own, and cubn_set_cuda_architectures decides after.
macro(cubn_user_cuda_architectures out)
  if(DEFINED CACHE{CMAKE_CUDA_ARCHITECTURES} OR NOT "$ENV{CUDAARCHS}" STREQUAL "")
    set(${out} ON)
  else()
    set(${out} OFF)
    execute_process(COMMAND "${CMAKE_CUDA_COMPILER}" --list-gpu-arch
                    OUTPUT_VARIABLE _cubn_gpu_archs RESULT_VARIABLE _cubn_rc
                    OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    string(REGEX MATCHALL "compute_[0-9]+" _cubn_gpu_archs "${_cubn_gpu_archs}")
    list(TRANSFORM _cubn_gpu_archs REPLACE "compute_" "")
    if(NOT _cubn_rc EQUAL 0 OR NOT _cubn_gpu_archs)
      set(_cubn_gpu_archs 75 80 86 89 90 100 120)  # CUDA 13's, for a compiler that cannot list
    endif()
    list(SORT _cubn_gpu_archs COMPARE NATURAL)
    set(CUBN_TOOLKIT_CUDA_ARCHITECTURES "${_cubn_gpu_archs}")
    list(GET _cubn_gpu_archs 0 _cubn_oldest)
    set(CMAKE_CUDA_ARCHITECTURES "${_cubn_oldest}-real")
    unset(_cubn_gpu_archs)
    unset(_cubn_rc)
    unset(_cubn_oldest)
  endif()
endmacro()

# cubn_set_cuda_architectures(<user>): after enable_language(CUDA). Sets CMAKE_CUDA_ARCHITECTURES
# (a normal variable: the targets' CUDA_ARCHITECTURES) to the choice, or CUBN_ENABLE_CUDA to OFF
# where the choice is the executor build alone; says which in one line.
macro(cubn_set_cuda_architectures user)
  if(${user})
    message(STATUS "cubn: CUDA for ${CMAKE_CUDA_ARCHITECTURES} (CMAKE_CUDA_ARCHITECTURES)")
  else()
    cubn_choose_cuda_architectures(_cubn_archs "${CUBN_CUDA_ARCHITECTURES}"
                                   "${CMAKE_CUDA_ARCHITECTURES_NATIVE}"
                                   "${CUBN_TOOLKIT_CUDA_ARCHITECTURES}")
    if(_cubn_archs)
      set(CMAKE_CUDA_ARCHITECTURES "${_cubn_archs}")
      set(_cubn_hint "; -DCUBN_CUDA_ARCHITECTURES=all builds every architecture (the release preset)")
      if(CUBN_CUDA_ARCHITECTURES STREQUAL "all")
        set(_cubn_hint "")
      endif()
      message(STATUS "cubn: CUDA for ${_cubn_archs}: ${_cubn_archs_WHY}${_cubn_hint}")
      unset(_cubn_hint)
    else()
      set(CUBN_ENABLE_CUDA OFF)
      message(STATUS "cubn: ${_cubn_archs_WHY}: building the CPU executor alone, no CUDA library; "
                     "-DCUBN_CUDA_ARCHITECTURES=all builds it for every architecture (the release "
                     "preset), -DCUBN_CUDA_ARCHITECTURES=90-real for one")
    endif()
    unset(_cubn_archs)
    unset(_cubn_archs_WHY)
  endif()
endmacro()
