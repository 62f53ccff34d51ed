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

# cubn_find_gpu_library(<PREFIX> <header> <name> <wheel>): sets <PREFIX>_INCLUDE and
# <PREFIX>_LIBRARY (cache variables; -NOTFOUND where missing) from the first place that has both the
# header and the library, so that the two always come from one installation:
#  1. <PREFIX>_ROOT (include/ and lib/ or lib64/ under it);
#  2. nvidia/<wheel> under each folder of CUBN_WHEEL_SITES: PyPI's wheels (nvidia-cudnn-cu13,
#     nvidia-nccl-cu13, which PyTorch installs) ship only the versioned libname.so.N, which a plain
#     find_library does not take; bench/gpu_check.sh names python3's site-packages here;
#  3. the toolkit's folders, then the system's (find_path/find_library).
function(cubn_find_gpu_library prefix header name wheel)
  if(${prefix}_INCLUDE AND ${prefix}_LIBRARY)
    return()
  endif()
  set(roots)
  if(${prefix}_ROOT)
    list(APPEND roots ${${prefix}_ROOT})
  endif()
  foreach(site IN LISTS CUBN_WHEEL_SITES)
    list(APPEND roots ${site}/nvidia/${wheel})
  endforeach()
  foreach(root IN LISTS roots)
    if(NOT EXISTS ${root}/include/${header})
      continue()
    endif()
    foreach(libdir ${root}/lib ${root}/lib64)
      # the unversioned name where present, else the shortest versioned one (libnccl.so.2, not
      # libnccl.so.2.28.3)
      file(GLOB candidates ${libdir}/lib${name}.so ${libdir}/lib${name}.so.[0-9]*)
      set(best)
      foreach(candidate IN LISTS candidates)
        string(LENGTH "${candidate}" length)
        if(NOT best OR length LESS best_length)
          set(best ${candidate})
          set(best_length ${length})
        endif()
      endforeach()
      if(best)
        set(${prefix}_INCLUDE ${root}/include CACHE PATH "${header}'s folder" FORCE)
        set(${prefix}_LIBRARY ${best} CACHE FILEPATH "lib${name}" FORCE)
        return()
      endif()
    endforeach()
  endforeach()
  find_path(${prefix}_INCLUDE ${header} HINTS ${CUDAToolkit_INCLUDE_DIRS})
  find_library(${prefix}_LIBRARY ${name} HINTS ${CUDAToolkit_LIBRARY_DIR})
endfunction()

# Sets CUBN_NCCL_INCLUDE and CUBN_NCCL_LIBRARY: NCCL under CUBN_NCCL_ROOT, PyTorch's wheel under
# CUBN_WHEEL_SITES, the toolkit (which ships it), or the system's.
macro(cubn_find_nccl)
  cubn_find_gpu_library(CUBN_NCCL nccl.h nccl nccl)
endmacro()

# Sets CUBN_CUDNN_INCLUDE and CUBN_CUDNN_LIBRARY likewise (the benchmark's comparison).
macro(cubn_find_cudnn)
  cubn_find_gpu_library(CUBN_CUDNN cudnn.h cudnn cudnn)
endmacro()
