// The example on the CPU executor (built against cubn::sim).
#include "train_step.inc"

int train_step_executor(const LayerShape& shape) { return run(shape); }
