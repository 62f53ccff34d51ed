"""cubn: CUDA batch normalization for any array that supports DLPack, and drop-in PyTorch modules
(`cubn.torch`). See cubn._core for the calls' contract."""

from ._core import (
    ACTIVATIONS,
    BFLOAT16,
    CHANNELS_FIRST,
    CHANNELS_LAST,
    FLOAT16,
    FLOAT32,
    FLOAT64,
    Error,
    activation_reserve_size,
    backward_frozen,
    backward_training,
    backward_training_apply,
    backward_training_local,
    backward_workspace_size,
    forward_inference,
    forward_training,
    forward_training_apply,
    forward_training_local,
    forward_training_workspace_size,
    local_grad_sums_bytes,
    local_stats_bytes,
    memory_order,
)

__version__ = "0.1.0"


def has_cuda() -> bool:
    """Whether this build has cubn's CUDA library (CUDA arrays); host arrays always work."""
    try:
        from . import _cubn_cuda  # noqa: F401
    except ImportError:
        return False
    return True


def cuda_architectures() -> tuple:
    """The GPU architectures this build's CUDA library was compiled for, in CMake's syntax
    (("90-real",): sm_90 code; ("120",): sm_120 code and PTX the driver compiles for newer GPUs);
    () where it has none (has_cuda() is False). `pip install ./python` builds for the GPUs visible
    when it runs, or without CUDA where none is; -C cmake.define.CUBN_CUDA_ARCHITECTURES=all for
    every architecture."""
    try:
        from . import _cubn_cuda
    except ImportError:
        return ()
    return tuple(a for a in _cubn_cuda.cuda_architectures.split(";") if a)
