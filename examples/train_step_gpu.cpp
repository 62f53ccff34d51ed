// The example on a GPU (built against cubn::cubn).
#include "train_step.inc"

int train_step_gpu(const LayerShape& shape) { return run(shape); }
