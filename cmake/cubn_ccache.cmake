# ccache (Debian's package) as the compiler launcher for C, C++ and CUDA, wherever it is found:
# every preset and the Python package's build. Its cache lies under ~/.cache/cubn/ccache (or
# $CUBN_CI_CACHE/ccache), beside what .ci/run keeps, so CI's fresh clone reuses the objects a
# working tree on the same machine compiled:
#   - base_dir is the repository root: paths under it reach the compiler relative to the build
#     folder, the same in every clone whose build folder sits at the same place in the tree (the
#     presets' build/<preset>);
#   - hash_dir off: the build folder's absolute path (in -g's DWARF comp_dir) stays out of the key,
#     so a hit from another clone keeps that clone's comp_dir in its debug information;
#   - max_size 2 GB: the ci, asan, tsan and fuzz objects of one commit take 70 MB compressed (du
#     of the cache after a cold .ci/run), builds with full -g (cpu, default) a few times that: room
#     for many commits of every preset.
# The settings travel in the launcher (env ... ccache), so ninja run by hand uses them too; a launcher
# set by the user (CMAKE_<LANG>_COMPILER_LAUNCHER) wins; -DCUBN_CCACHE=OFF compiles without.
option(CUBN_CCACHE "Compile through ccache when it is found" ON)
if(NOT CUBN_CCACHE)
  return()
endif()
find_program(CUBN_CCACHE_PROGRAM ccache)
if(NOT CUBN_CCACHE_PROGRAM)
  message(STATUS "cubn: ccache not found; compiling without a cache (Debian: apt install ccache)")
  return()
endif()
if(DEFINED ENV{CUBN_CI_CACHE} AND NOT "$ENV{CUBN_CI_CACHE}" STREQUAL "")
  set(_cubn_cache_root "$ENV{CUBN_CI_CACHE}")
else()
  set(_cubn_cache_root "$ENV{HOME}/.cache/cubn")
endif()
set(CUBN_CCACHE_DIR "${_cubn_cache_root}/ccache" CACHE PATH "ccache's cache folder for cubn's builds")
get_filename_component(_cubn_repo_root "${CMAKE_CURRENT_LIST_DIR}/.." ABSOLUTE)
set(_cubn_launcher env "CCACHE_DIR=${CUBN_CCACHE_DIR}" "CCACHE_BASEDIR=${_cubn_repo_root}"
    CCACHE_NOHASHDIR=1 CCACHE_MAXSIZE=2G ${CUBN_CCACHE_PROGRAM})
foreach(_cubn_lang C CXX CUDA)
  if(NOT CMAKE_${_cubn_lang}_COMPILER_LAUNCHER)
    set(CMAKE_${_cubn_lang}_COMPILER_LAUNCHER ${_cubn_launcher})
  endif()
endforeach()
message(STATUS "cubn: compiling through ccache (${CUBN_CCACHE_DIR})")
unset(_cubn_launcher)
unset(_cubn_cache_root)
unset(_cubn_repo_root)
