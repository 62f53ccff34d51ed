/* The NCCL C ABI (cubn/cubn_nccl.h) from C99: it compiles and links against cubn::nccl, and its
 * argument checks answer without a GPU or a communicator (null comm, descriptor, arguments). The
 * collective itself runs in the gpu-labelled cubn_nccl_tests. */
#include <stdio.h>
#include <string.h>

#include "cubn/cubn_nccl.h"

int main(void) {
  cubn_tensor_desc d = {CUBN_FLOAT32, CUBN_CHANNELS_FIRST, 4, {2, 3, 4, 4, 0}};
  size_t bytes = 0;
  cubn_training_forward_args args;
  int failures = 0;
  cubn_training_forward_args_init(&args);
  if (cubn_nccl_forward_training_workspace_size(&d, NULL, &bytes) != CUBN_STATUS_INVALID_ARGUMENT ||
      strstr(cubn_last_error_message(), "comm is null") == NULL) {
    fprintf(stderr, "null comm: %s\n", cubn_last_error_message());
    ++failures;
  }
  if (cubn_nccl_forward_training(NULL, NULL, NULL, &args, NULL, 0, NULL, NULL) !=
          CUBN_STATUS_INVALID_ARGUMENT ||
      strstr(cubn_last_error_message(), "x_desc is null") == NULL) {
    fprintf(stderr, "null x_desc: %s\n", cubn_last_error_message());
    ++failures;
  }
  if (cubn_nccl_backward_training(&d, NULL, NULL, NULL, NULL, NULL, 0, NULL, NULL) !=
          CUBN_STATUS_INVALID_ARGUMENT ||
      strstr(cubn_last_error_message(), "args is null") == NULL) {
    fprintf(stderr, "null args: %s\n", cubn_last_error_message());
    ++failures;
  }
  if (failures == 0) printf("cubn NCCL C ABI: every check passed\n");
  return failures == 0 ? 0 : 1;
}
