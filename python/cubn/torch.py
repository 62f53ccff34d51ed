"""cubn.torch: drop-in replacements for torch.nn's batch norms.

BatchNorm1d, BatchNorm2d, BatchNorm3d and SyncBatchNorm take torch.nn's constructor arguments and
hold the same parameters and buffers under the same names (they subclass torch's classes), so
state_dict() moves between torch's modules and these both ways. train() runs cubn's training
forward (batch statistics, running statistics updated) and its backward; eval() runs cubn's
inference forward and, where gradients are needed, its frozen backward. The calls are torch.library
custom ops (cubn::batch_norm_train, cubn::batch_norm_eval and their backwards), opaque to
torch.compile and CUDA graphs. Tensors must be contiguous or channels-last (channels_last,
channels_last_3d); other strides are refused with an error. Workspaces come from PyTorch's
allocator (an uninitialized block per call: cubn's kernels take any content), never from a hidden
cudaMalloc.

Where the package was built against torch (`pip install --no-build-isolation ./python` in the
environment that has torch), the ops are native: cubn/_cubn_torch_ops.so, C++ kernels that call
cubn's C++ API with the tensors' pointers and PyTorch's current stream, with autograd in C++, at
less host cost per call than torch.nn's own batch norm (bench/torch_overhead.py).
Elsewhere they run in Python over DLPack (cubn._core), several times slower on the host; importing
cubn.torch then warns, and native_ops() says which is in use.

convert_batchnorm(module) swaps torch's batch norms in a module for these, in place, keeping the
parameter and buffer tensors themselves (as torch.nn.SyncBatchNorm.convert_sync_batchnorm does).
"""

import os
import warnings
from typing import Optional

import torch
from torch import Tensor

from . import _core


def _load_native():
    """(True, "") when cubn/_cubn_torch_ops.so loaded, else (False, why)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_cubn_torch_ops.so")
    if not os.path.exists(path):
        return False, ("the package was built without them (torch was not importable by the "
                       "Python that built it)")
    try:
        torch.ops.load_library(path)
    except (OSError, RuntimeError) as e:  # another torch than the one it was built against
        return False, f"{path} did not load ({e})"
    return True, ""


if os.environ.get("CUBN_TORCH_NATIVE", "1") == "0":  # the Python ops asked for (tests)
    _NATIVE, _NATIVE_WHY = False, ""
else:
    _NATIVE, _NATIVE_WHY = _load_native()
if _NATIVE_WHY:
    warnings.warn(
        f"cubn.torch: no native ops: {_NATIVE_WHY}. The ops run in Python over DLPack, at several "
        "times torch's host cost per call; for the native ones reinstall with torch installed: "
        "pip install --no-build-isolation ./python", RuntimeWarning, stacklevel=2)


def native_ops() -> bool:
    """Whether cubn.torch's ops are the native ones (cubn/_cubn_torch_ops.so), not Python's."""
    return _NATIVE

__all__ = [
    "native_ops",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "SyncBatchNorm",
    "batch_norm",
    "convert_batchnorm",
]


def _param_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _p(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """A parameter or statistic in cubn's parameter type (float32, float64 for float64 x)."""
    return t if t is None or t.dtype == dtype else t.to(dtype)


def _like(x: Tensor, t: Tensor) -> Tensor:
    """t in x's memory order (dy may come back from autograd in another)."""
    if t.stride() == x.stride():
        return t
    return torch.empty_like(x).copy_(t)


def _outputs(x: Tensor):
    """A tensor like x (its strides too) and two of C values in the parameter type: (y,
    saved_mean, saved_invstd) or (dx, dscale, doffset)."""
    p = _param_dtype(x)
    c = x.shape[1]
    return torch.empty_like(x), x.new_empty((c,), dtype=p), x.new_empty((c,), dtype=p)


def _workspace(x: Tensor, backward: bool) -> Tensor:
    """The workspace of a forward (or backward) call on x, uninitialized (cubn's kernels take any
    content); at least 16 bytes: cubn takes a workspace pointer even where it needs none."""
    query = _core.backward_workspace_size if backward else _core.forward_training_workspace_size
    return torch.empty(max(query(x), 16), dtype=torch.uint8, device=x.device)


class _Stats:
    """Running statistics in the parameter type, written back where the buffers hold another
    (a module converted with .half() keeps fp16 buffers; cubn updates float ones)."""

    def __init__(self, tensors, dtype):
        self.tensors = tensors
        self.work = [_p(t, dtype) for t in tensors]

    def write_back(self):
        for t, w in zip(self.tensors, self.work):
            if t is not None and w is not t:
                t.copy_(w)


def _train_python(
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    momentum: float,
    eps: float,
    lengths: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Training forward: (y, saved_mean, saved_invstd); running statistics updated in place."""
    p = _param_dtype(x)
    y, saved_mean, saved_invstd = _outputs(x)
    stats = _Stats([running_mean, running_var], p)
    _core.forward_training(
        x, y, workspace=_workspace(x, backward=False), scale=_p(weight, p), offset=_p(bias, p),
        running_mean=stats.work[0], running_var=stats.work[1], momentum=momentum,
        saved_mean=saved_mean, saved_invstd=saved_invstd, epsilon=eps, lengths=lengths)
    stats.write_back()
    return y, saved_mean, saved_invstd


def _train_fake(x, weight, bias, running_mean, running_var, momentum, eps, lengths=None):
    return _outputs(x)


def _train_backward_python(
    dy: Tensor, x: Tensor, weight: Optional[Tensor], saved_mean: Tensor, saved_invstd: Tensor,
    lengths: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Backward of batch_norm_train: (dx, dweight, dbias) in the parameter type."""
    p = _param_dtype(x)
    dx, dscale, doffset = _outputs(x)
    _core.backward_training(
        x, _like(x, dy), dx, saved_mean=saved_mean, saved_invstd=saved_invstd,
        workspace=_workspace(x, backward=True), scale=_p(weight, p), dscale=dscale,
        doffset=doffset, lengths=lengths)
    return dx, dscale, doffset


def _train_backward_fake(dy, x, weight, saved_mean, saved_invstd, lengths=None):
    return _outputs(x)


def _param_dtypes(weight: Optional[Tensor], bias: Optional[Tensor]):
    return tuple(None if t is None else t.dtype for t in (weight, bias))


def _param_grads(ctx, dscale: Tensor, doffset: Tensor):
    """(dweight, dbias) in the parameters' own dtypes (ctx.param_dtypes), where autograd asks."""
    return tuple(g.to(dtype) if needed else None
                 for g, dtype, needed in zip((dscale, doffset), ctx.param_dtypes,
                                             ctx.needs_input_grad[1:3]))


class _TrainFunction(torch.autograd.Function):
    """Autograd of the training forward. The op updates the running statistics in place, and
    torch.library attaches autograd formulas to functional ops only, so the formula lives here
    (torch.compile traces autograd.Function; both ops stay opaque)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps, lengths):
        y, saved_mean, saved_invstd = _train_op(x, weight, bias, running_mean, running_var,
                                                momentum, eps, lengths)
        ctx.save_for_backward(x, weight, saved_mean, saved_invstd, lengths)
        ctx.param_dtypes = _param_dtypes(weight, bias)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, saved_mean, saved_invstd, lengths = ctx.saved_tensors
        dx, dscale, doffset = _train_backward_op(dy, x, weight, saved_mean, saved_invstd, lengths)
        return (dx if ctx.needs_input_grad[0] else None, *_param_grads(ctx, dscale, doffset),
                None, None, None, None, None)


def _eval_python(
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    running_mean: Tensor,
    running_var: Tensor,
    eps: float,
    lengths: Optional[Tensor] = None,
) -> Tensor:
    """Inference forward with the running statistics."""
    p = _param_dtype(x)
    y = torch.empty_like(x)
    _core.forward_inference(
        x, y, running_mean=_p(running_mean, p), running_var=_p(running_var, p),
        scale=_p(weight, p), offset=_p(bias, p), epsilon=eps, lengths=lengths)
    return y


def _eval_fake(x, weight, bias, running_mean, running_var, eps, lengths=None):
    return torch.empty_like(x)


def _eval_backward_python(
    dy: Tensor,
    x: Tensor,
    weight: Optional[Tensor],
    running_mean: Tensor,
    running_var: Tensor,
    eps: float,
    lengths: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Frozen backward (statistics are constants): (dx, dweight, dbias)."""
    p = _param_dtype(x)
    dx, dscale, doffset = _outputs(x)
    _core.backward_frozen(
        x, _like(x, dy), dx, running_mean=_p(running_mean, p), running_var=_p(running_var, p),
        workspace=_workspace(x, backward=True), scale=_p(weight, p),
        epsilon=eps, dscale=dscale, doffset=doffset, lengths=lengths)
    return dx, dscale, doffset


def _eval_backward_fake(dy, x, weight, running_mean, running_var, eps, lengths=None):
    return _outputs(x)


# The ops: the native library's (schemas and kernels in C++) with fake implementations added here,
# or the same schemas as Python custom ops over DLPack.
_OPS = (
    ("batch_norm_train", _train_python, _train_fake, ("running_mean", "running_var")),
    ("batch_norm_train_backward", _train_backward_python, _train_backward_fake, ()),
    ("batch_norm_eval", _eval_python, _eval_fake, ()),
    ("batch_norm_eval_backward", _eval_backward_python, _eval_backward_fake, ()),
)
for _name, _python, _fake, _mutates in _OPS:
    if _NATIVE:
        torch.library.register_fake(f"cubn::{_name}", _fake)
    else:
        torch.library.custom_op(f"cubn::{_name}", _python, mutates_args=_mutates).register_fake(
            _fake)
_train_op = torch.ops.cubn.batch_norm_train.default
_train_backward_op = torch.ops.cubn.batch_norm_train_backward.default
_eval_op = torch.ops.cubn.batch_norm_eval.default
_eval_backward_op = torch.ops.cubn.batch_norm_eval_backward.default
_train_eager, _eval_eager = _train_op._op, _eval_op._op  # the dispatcher's own entry points


def _eval_setup(ctx, inputs, output):
    x, weight, bias, running_mean, running_var, eps, lengths = inputs
    ctx.save_for_backward(x, weight, running_mean, running_var, lengths)
    ctx.eps = eps
    ctx.param_dtypes = _param_dtypes(weight, bias)


def _eval_backward(ctx, dy):
    x, weight, running_mean, running_var, lengths = ctx.saved_tensors
    dx, dscale, doffset = _eval_backward_op(dy, x, weight, running_mean, running_var, ctx.eps,
                                            lengths)
    return (dx if ctx.needs_input_grad[0] else None, *_param_grads(ctx, dscale, doffset), None,
            None, None, None)


if not _NATIVE:  # the native library registers both ops' autograd in C++
    torch.library.register_autograd("cubn::batch_norm_eval", _eval_backward,
                                    setup_context=_eval_setup)


def batch_norm(
    input: Tensor,
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    lengths: Optional[Tensor] = None,
) -> Tensor:
    """torch.nn.functional.batch_norm's contract on cubn's calls: training uses the batch's
    statistics and updates the running ones given; otherwise both running statistics are used.

    lengths (optional): a padded batch of sequences along the last axis (N, C, L), or (N, C, H, W)
    with W as time: an int32 or int64 tensor of N lengths on input's device; sample n is valid at
    its first lengths[n] positions (clamped to [0, L]). Statistics, the running statistics'
    update and the gradients then cover the valid positions only, and the output and input
    gradient are 0 at the padded ones."""
    # eager calls of the native ops skip OpOverload.__call__ (a Python frame that cost 3.7 us of a
    # 10 us call, bench/torch_overhead.py); torch.compile traces the OpOverloads
    eager = _NATIVE and not torch.compiler.is_compiling()
    try:
        if training:
            if not _NATIVE:
                return _TrainFunction.apply(input, weight, bias, running_mean, running_var,
                                            float(momentum), float(eps), lengths)
            op = _train_eager if eager else _train_op  # autograd in C++ (src/torch_ops.cpp)
            return op(input, weight, bias, running_mean, running_var, float(momentum),
                      float(eps), lengths)[0]
        if running_mean is None or running_var is None:
            raise ValueError("cubn.torch.batch_norm: running_mean and running_var are needed "
                             "when not training")
        op = _eval_eager if eager else _eval_op
        return op(input, weight, bias, running_mean, running_var, float(eps), lengths)
    except ValueError as e:
        raise _native_error(e) from None


def _native_error(e: ValueError) -> ValueError:
    """cubn's own refusal from the native ops ("[cubn status N] message") as cubn.Error, as the
    Python ops raise it; any other error as it is."""
    text = str(e)
    if isinstance(e, _core.Error) or not text.startswith("[cubn status "):
        return e
    status, _, message = text[len("[cubn status "):].partition("] ")
    return _core.Error(int(status), message)


class _CubnBatchNorm:
    """torch.nn's _BatchNorm.forward, with cubn's calls in place of F.batch_norm."""

    def forward(self, input: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """torch's forward; `lengths` (optional): a padded batch's valid lengths along the last
        axis (see cubn.torch.batch_norm)."""
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
            else:
                factor = self.momentum
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        keep = not self.training or self.track_running_stats
        running_mean = self.running_mean if keep else None
        running_var = self.running_var if keep else None
        return self._normalize(input, running_mean, running_var, bn_training, factor, lengths)

    def _normalize(self, input, running_mean, running_var, bn_training, factor, lengths=None):
        return batch_norm(input, running_mean, running_var, self.weight, self.bias, bn_training,
                          factor, self.eps, lengths)


class BatchNorm1d(_CubnBatchNorm, torch.nn.BatchNorm1d):
    """torch.nn.BatchNorm1d on cubn: (N, C) or (N, C, L)."""


class BatchNorm2d(_CubnBatchNorm, torch.nn.BatchNorm2d):
    """torch.nn.BatchNorm2d on cubn: (N, C, H, W), contiguous or channels_last."""


class BatchNorm3d(_CubnBatchNorm, torch.nn.BatchNorm3d):
    """torch.nn.BatchNorm3d on cubn: (N, C, D, H, W), contiguous or channels_last_3d."""


def _all_gather_bytes(local: Tensor, group, world: int) -> Tensor:
    import torch.distributed as dist

    gathered = local.new_empty((world * local.numel(),))
    dist.all_gather(list(gathered.chunk(world)), local, group=group)
    return gathered


class _SyncBatchNormFunction(torch.autograd.Function):
    """Training across ranks: cubn's split phases around torch.distributed all-gathers of the
    per-rank records (statistics forward, gradient sums backward)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps, group, world,
                lengths):
        x = x.detach()
        p = _param_dtype(x)
        workspace = _workspace(x, backward=False)
        local = torch.empty(_core.local_stats_bytes(x), dtype=torch.uint8, device=x.device)
        _core.forward_training_local(x, local, workspace=workspace, lengths=lengths)
        gathered = _all_gather_bytes(local, group, world)
        y, saved_mean, saved_invstd = _outputs(x)
        stats = _Stats([running_mean, running_var], p)
        _core.forward_training_apply(
            x, y, gathered, ranks=world, workspace=workspace, scale=_p(weight, p),
            offset=_p(bias, p), running_mean=stats.work[0], running_var=stats.work[1],
            momentum=momentum, saved_mean=saved_mean, saved_invstd=saved_invstd, epsilon=eps,
            lengths=lengths)
        stats.write_back()
        ctx.save_for_backward(x, weight, saved_mean, saved_invstd, lengths)
        ctx.group, ctx.world = group, world
        ctx.param_dtypes = _param_dtypes(weight, bias)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, saved_mean, saved_invstd, lengths = ctx.saved_tensors
        p = _param_dtype(x)
        dy = _like(x, dy)
        workspace = _workspace(x, backward=True)
        local = torch.empty(_core.local_grad_sums_bytes(x), dtype=torch.uint8, device=x.device)
        dx, dscale, doffset = _outputs(x)
        _core.backward_training_local(
            x, dy, local, saved_mean=saved_mean, saved_invstd=saved_invstd, workspace=workspace,
            scale=_p(weight, p), dscale=dscale, doffset=doffset, lengths=lengths)
        gathered = _all_gather_bytes(local, ctx.group, ctx.world)
        _core.backward_training_apply(
            x, dy, dx, gathered, ranks=ctx.world, saved_mean=saved_mean,
            saved_invstd=saved_invstd, workspace=workspace, scale=_p(weight, p), lengths=lengths)
        # dscale and doffset are this rank's share (torch's SyncBatchNorm's): the trainer's
        # gradient all-reduce (DistributedDataParallel) sums them
        return (dx, *_param_grads(ctx, dscale, doffset), None, None, None, None, None, None,
                None)


class SyncBatchNorm(_CubnBatchNorm, torch.nn.SyncBatchNorm):
    """torch.nn.SyncBatchNorm on cubn: in training with a torch.distributed process group of
    several ranks, the statistics (and the backward's sums) are those of every rank's batch,
    gathered through torch.distributed (any backend: NCCL, gloo). Elsewhere it is BatchNorm."""

    def _normalize(self, input, running_mean, running_var, bn_training, factor, lengths=None):
        import torch.distributed as dist

        if bn_training and self.training and dist.is_available() and dist.is_initialized():
            group = self.process_group or dist.group.WORLD
            world = dist.get_world_size(group)
            if world > 1:
                return _SyncBatchNormFunction.apply(input, self.weight, self.bias, running_mean,
                                                    running_var, factor, self.eps, group, world,
                                                    lengths)
        return super()._normalize(input, running_mean, running_var, bn_training, factor, lengths)


_CONVERSIONS = {
    torch.nn.BatchNorm1d: BatchNorm1d,
    torch.nn.BatchNorm2d: BatchNorm2d,
    torch.nn.BatchNorm3d: BatchNorm3d,
    torch.nn.SyncBatchNorm: SyncBatchNorm,
}


def convert_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Swaps torch's batch norms in `module` (and itself, if it is one: use the return value) for
    cubn's, keeping their parameter and buffer tensors, training flag and hooks-free state."""
    out = module
    cls = _CONVERSIONS.get(type(module))
    if cls is not None:
        kwargs = dict(num_features=module.num_features, eps=module.eps, momentum=module.momentum,
                      affine=module.affine, track_running_stats=module.track_running_stats,
                      device="meta")
        if cls is SyncBatchNorm:
            kwargs["process_group"] = module.process_group
        out = cls(**kwargs)
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
        if hasattr(module, "qconfig"):
            out.qconfig = module.qconfig
    for name, child in module.named_children():
        out.add_module(name, convert_batchnorm(child))
    return out
