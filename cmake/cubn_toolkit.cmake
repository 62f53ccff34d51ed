# Toolkit paths cubn needs beyond what CUDA::toolkit names; included by the build and by the
# installed cubnConfig.cmake (so that they are found on the user's machine, never exported).
# cubn_cccl_include_dirs(<out-var>): the toolkit's libcu++ directories (include/cccl in CUDA 13),
# which the host compiler needs named. Used by the build and by the installed cubnConfig.cmake.
function(cubn_cccl_include_dirs out)
  set(dirs)
  foreach(dir IN LISTS CUDAToolkit_INCLUDE_DIRS)
    if(EXISTS ${dir}/cccl/cuda/atomic)
      list(APPEND dirs ${dir}/cccl)
    endif()
  endforeach()
  set(${out} ${dirs} PARENT_SCOPE)
endfunction()
