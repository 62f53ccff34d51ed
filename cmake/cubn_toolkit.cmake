# Toolkit paths cubn needs beyond what CUDA::toolkit names; included by the build and by the
# installed cubnConfig.cmake, so that they are found on the user's machine, never exported.

# cubn_cccl_include_dirs(<out-var>): the toolkit's libcu++ directories (include/cccl in CUDA 13),
# which the host compiler needs named.
function(cubn_cccl_include_dirs out)
  set(dirs)
  foreach(dir IN LISTS CUDAToolkit_INCLUDE_DIRS)
    if(EXISTS ${dir}/cccl/cuda/atomic)
      list(APPEND dirs ${dir}/cccl)
    endif()
  endforeach()
  set(${out} ${dirs} PARENT_SCOPE)
endfunction()

# Sets CUBN_NCCL_INCLUDE and CUBN_NCCL_LIBRARY (cache variables; -NOTFOUND where missing): NCCL
# under CUBN_NCCL_ROOT, the toolkit (which ships it), or the system's.
macro(cubn_find_nccl)
  find_path(CUBN_NCCL_INCLUDE nccl.h HINTS ${CUBN_NCCL_ROOT}/include ${CUDAToolkit_INCLUDE_DIRS})
  find_library(CUBN_NCCL_LIBRARY nccl HINTS ${CUBN_NCCL_ROOT}/lib ${CUDAToolkit_LIBRARY_DIR})
endmacro()
