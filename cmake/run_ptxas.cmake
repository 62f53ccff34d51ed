# Compiles one CUDA source to a cubin with ptxas -v and keeps what ptxas printed.
#   cmake -DNVCC=... -DARCH=sm_90 -DSRC=... -DOUT=log -DINCLUDES="a|b" -P run_ptxas.cmake
set(flags -cubin -arch=${ARCH} -std=c++17 --expt-relaxed-constexpr -Xptxas=-v)
string(REPLACE "|" ";" include_dirs "${INCLUDES}")
foreach(dir IN LISTS include_dirs)
  list(APPEND flags -I${dir})
endforeach()
execute_process(COMMAND ${NVCC} ${flags} ${SRC} -o ${OUT}.cubin
                OUTPUT_FILE ${OUT} ERROR_FILE ${OUT} RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  file(READ ${OUT} log)
  message(FATAL_ERROR "nvcc failed for ${SRC} (${ARCH}):\n${log}")
endif()
