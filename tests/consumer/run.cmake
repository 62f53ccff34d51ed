# Installs the build tree BUILD into a fresh prefix, checks that the exported targets name no
# absolute toolkit path, then configures, builds and runs the consumer project (this folder)
# against it. cmake -DBUILD=<build dir> -DWORK=<scratch dir> -P run.cmake
foreach(var BUILD WORK)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "run.cmake: set -D${var}=")
  endif()
endforeach()
set(prefix ${WORK}/prefix)
file(REMOVE_RECURSE ${WORK})

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}")
  endif()
endfunction()

run(${CMAKE_COMMAND} --install ${BUILD} --prefix ${prefix})

# no path of this machine's toolkit (or of the source and build trees) in the exported targets
file(GLOB exported ${prefix}/lib*/cmake/cubn/*.cmake)
foreach(f IN LISTS exported)
  file(READ ${f} text)
  foreach(bad /usr/local/cuda /opt/nvidia ${BUILD})
    string(FIND "${text}" "${bad}" at)
    if(NOT at EQUAL -1)
      message(FATAL_ERROR "${f} names the absolute path ${bad}")
    endif()
  endforeach()
endforeach()

get_filename_component(source ${CMAKE_CURRENT_LIST_DIR} ABSOLUTE)
run(${CMAKE_COMMAND} -S ${source} -B ${WORK}/build -G Ninja -DCMAKE_PREFIX_PATH=${prefix}
    -DCMAKE_BUILD_TYPE=Release)
run(${CMAKE_COMMAND} --build ${WORK}/build)
run(${WORK}/build/consumer_sim)
run(${WORK}/build/consumer_c)
