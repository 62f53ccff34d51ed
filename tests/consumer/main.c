/* The C ABI through the installed package: a size query and a refused call's message. */
#include <cubn/cubn.h>
#include <stdio.h>
#include <string.h>

int main(void) {
  cubn_tensor_desc d = {CUBN_FLOAT16, CUBN_CHANNELS_LAST, 4, {8, 64, 7, 7, 0}};
  size_t bytes = 0;
  if (cubn_forward_training_workspace_size(&d, &bytes) != CUBN_STATUS_SUCCESS) return 1;
  d.rank = 7;
  if (cubn_backward_workspace_size(&d, &bytes) != CUBN_STATUS_INVALID_LAYOUT) return 1;
  printf("consumer_c: %s\n", cubn_last_error_message());
  return strstr(cubn_last_error_message(), "rank 7") != NULL ? 0 : 1;
}
