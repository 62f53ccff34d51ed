# Warnings for host code and, through nvcc, for the host side of CUDA code.
function(cubn_set_warnings target)
  set(flags -Wall -Wextra)
  if(CUBN_WERROR)
    list(APPEND flags -Werror)
  endif()
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:${flags}>
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra>)
endfunction()

# cubn_sim_sources(<out-var> <file.cu>...): the CPU executor build compiles CUDA sources with the
# host compiler. Source properties are per directory, so each .cu gets a generated .cpp that
# includes it; the .cu itself stays the one source of truth.
function(cubn_sim_sources out)
  set(result)
  foreach(src IN LISTS ARGN)
    get_filename_component(abs ${src} ABSOLUTE)
    file(RELATIVE_PATH rel ${PROJECT_SOURCE_DIR} ${abs})
    string(REPLACE "/" "_" flat ${rel})
    set(wrapper ${CMAKE_CURRENT_BINARY_DIR}/sim_sources/${flat}.cpp)
    # included by a path relative to the wrapper: the same text in every clone, so that ccache
    # (cmake/cubn_ccache.cmake) finds one clone's objects from another
    file(RELATIVE_PATH include_path ${CMAKE_CURRENT_BINARY_DIR}/sim_sources ${abs})
    file(CONFIGURE OUTPUT ${wrapper} CONTENT "// generated: ${rel} for the CPU executor build\n#include \"${include_path}\"\n")
    list(APPEND result ${wrapper})
  endforeach()
  set(${out} ${result} PARENT_SCOPE)
endfunction()
