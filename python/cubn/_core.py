"""cubn's calls over any array that supports DLPack (PyTorch, CuPy, JAX, NumPy).

Every call takes its outputs and its workspace from the caller (no hidden allocation): size the
workspace with the size queries; it needs no zero-filling, and one serves every later call.
CUDA arrays run through cubn's CUDA library on the array's stream (PyTorch's or CuPy's current
stream, or `stream=`); host arrays run through cubn's CPU executor build, which exists to test and
debug cubn's kernels on machines without a GPU: it is not a fast CPU batch norm.

The memory order comes from x's strides: contiguous (N, C, ...) is channels-first, and the
strides of torch's channels_last / channels_last_3d (C fastest, then the spatial dims, N slowest)
are channels-last; anything else is refused. Every other tensor (y, dy, dx, residual, dz) must
have x's shape, strides, dtype and device; parameters and statistics are 1-D arrays of C float32
values (float64 for a float64 x), contiguous, on x's device.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

FLOAT16, BFLOAT16, FLOAT32, FLOAT64 = 0, 1, 2, 3
CHANNELS_FIRST, CHANNELS_LAST = 0, 1
ACTIVATIONS = {"none": 0, "relu": 1, "silu": 2}

_DLPACK_CPU, _DLPACK_CUDA, _DLPACK_CUDA_HOST, _DLPACK_CUDA_MANAGED = 1, 2, 3, 13
_DLPACK_FLOAT, _DLPACK_BFLOAT = 2, 4
_DTYPE_NAMES = {FLOAT16: "float16", BFLOAT16: "bfloat16", FLOAT32: "float32", FLOAT64: "float64"}


class Error(ValueError):
    """A call cubn refused (its message names the argument) or failed; `status` is cubn's code."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _executor():
    from . import _cubn_sim

    return _cubn_sim


def _backend(device_type: int):
    if device_type in (_DLPACK_CPU, _DLPACK_CUDA_HOST):
        return _executor()
    if device_type in (_DLPACK_CUDA, _DLPACK_CUDA_MANAGED):
        try:
            from . import _cubn_cuda
        except ImportError:
            raise RuntimeError(
                "cubn: this build of the package has no CUDA library (it was built where nvcc "
                "was not found, or with CUBN_ENABLE_CUDA=OFF); CUDA arrays need "
                "`pip install ./python` on a machine with the CUDA toolkit"
            ) from None
        return _cubn_cuda
    raise ValueError(
        f"cubn: arrays on DLPack device type {device_type} are not supported (CPU and CUDA are)"
    )


@dataclass
class _Array:
    ptr: int
    dtype: int  # cubn's dtype code, or -1
    dtype_name: str
    shape: tuple
    strides: tuple
    device: tuple  # (DLPack device type, id)
    itemsize: int

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def _info(call: str, name: str, obj) -> _Array:
    if getattr(obj, "requires_grad", False):  # torch refuses to export those; we only read them
        obj = obj.detach()
    try:
        ptr, (code, bits, lanes), shape, strides, dev_type, dev_id = _executor().array_info(obj)
    except (TypeError, RuntimeError) as e:
        raise TypeError(
            f"{call}: {name} is a {type(obj).__name__}, not an array cubn can read through "
            f"DLPack ({e})"
        ) from None
    dtype = -1
    if lanes == 1 and code == _DLPACK_FLOAT:
        dtype = {16: FLOAT16, 32: FLOAT32, 64: FLOAT64}.get(bits, -1)
    elif lanes == 1 and code == _DLPACK_BFLOAT and bits == 16:
        dtype = BFLOAT16
    kind = {0: "int", 1: "uint", 2: "float", 4: "bfloat", 5: "complex", 6: "bool"}
    lanes_name = f"x{lanes}" if lanes != 1 else ""
    dtype_name = _DTYPE_NAMES.get(dtype) or (
        f"{kind.get(code, f'(DLPack type code {code}) ')}{bits}{lanes_name}")
    if dev_type == _DLPACK_CUDA_HOST:
        dev_type = _DLPACK_CPU
    return _Array(ptr, dtype, dtype_name, tuple(shape), tuple(strides), (dev_type, dev_id),
                  max(1, bits * lanes // 8))


def _dense(shape, strides, dims_outer_to_inner) -> bool:
    expected = 1
    for d in reversed(dims_outer_to_inner):
        if shape[d] != 1 and strides[d] != expected:
            return False
        expected *= shape[d]
    return True


def memory_order(shape, strides) -> int:
    """CHANNELS_FIRST or CHANNELS_LAST for an (N, C, ...) array of these shape and strides (in
    elements), or None if it is neither dense layout."""
    rank = len(shape)
    if _dense(shape, strides, list(range(rank))):
        return CHANNELS_FIRST
    if _dense(shape, strides, [0] + list(range(2, rank)) + [1]):
        return CHANNELS_LAST
    if 0 in shape:  # an empty array has no layout to keep
        return CHANNELS_FIRST
    return None


class _Call:
    """One call: x's facts, the backend and stream it runs on, and the checks of the others."""

    def __init__(self, call: str, x, stream):
        self.call = call
        self.x = _info(call, "x", x)
        if self.x.dtype < 0:
            raise TypeError(
                f"{call}: x has dtype {self.x.dtype_name}; cubn takes float16, bfloat16, "
                "float32 and float64"
            )
        if not 2 <= len(self.x.shape) <= 5:
            raise ValueError(
                f"{call}: x has shape {self.x.shape}; batch norm takes (N, C) to "
                "(N, C, D, H, W), 2 to 5 dims"
            )
        order = memory_order(self.x.shape, self.x.strides)
        if order is None:
            raise ValueError(
                f"{call}: x has strides {self.x.strides} (in elements) for shape "
                f"{self.x.shape}: neither contiguous (N, C, ...) nor channels-last (C fastest, "
                "N slowest); make it dense first (torch: .contiguous() or "
                ".contiguous(memory_format=torch.channels_last))"
            )
        self.order = order
        self.backend = _backend(self.x.device[0])
        self.param_dtype = FLOAT64 if self.x.dtype == FLOAT64 else FLOAT32
        self.stream = self._stream(x, stream)

    @property
    def desc(self):
        return (self.x.dtype, self.order, list(self.x.shape))

    def _stream(self, x, stream) -> int:
        if self.x.device[0] != _DLPACK_CUDA:
            return 0
        if stream is not None:
            if isinstance(stream, int):
                return stream
            for attr in ("cuda_stream", "ptr"):  # torch.cuda.Stream, cupy.cuda.Stream
                if hasattr(stream, attr):
                    return int(getattr(stream, attr))
            raise TypeError(f"{self.call}: stream is a {type(stream).__name__}, not a CUDA stream")
        module = type(x).__module__
        if module.startswith("torch"):
            import torch

            return torch.cuda.current_stream(self.x.device[1]).cuda_stream
        if module.startswith("cupy"):
            import cupy

            return cupy.cuda.get_current_stream().ptr
        return 0  # the legacy default stream

    def _same_device(self, name: str, a: _Array):
        if a.device != self.x.device:
            raise ValueError(
                f"{self.call}: {name} is on device {a.device}, x on {self.x.device} "
                "(DLPack device type, id)"
            )

    def like_x(self, name: str, obj, optional: bool = True) -> int:
        """The pointer of a tensor with x's shape, strides, dtype and device (0 for None)."""
        if obj is None:
            if optional:
                return 0
            raise ValueError(f"{self.call}: {name} is required")
        a = _info(self.call, name, obj)
        self._same_device(name, a)
        if a.dtype != self.x.dtype:
            raise TypeError(f"{self.call}: {name} has dtype {a.dtype_name}, x {self.x.dtype_name}")
        if a.shape != self.x.shape:
            raise ValueError(f"{self.call}: {name} has shape {a.shape}, x {self.x.shape}")
        if a.numel > 0 and memory_order(a.shape, a.strides) != self.order:
            raise ValueError(
                f"{self.call}: {name} has strides {a.strides}, x {self.x.strides}: it must be "
                "stored in x's memory order"
            )
        return a.ptr

    def param(self, name: str, obj) -> int:
        """The pointer of a parameter or statistic: C values of the parameter type (0 for None)."""
        if obj is None:
            return 0
        a = _info(self.call, name, obj)
        self._same_device(name, a)
        c = self.x.shape[1]
        if a.dtype != self.param_dtype:
            raise TypeError(
                f"{self.call}: {name} has dtype {a.dtype_name}; parameters and statistics of a "
                f"{self.x.dtype_name} x are {_DTYPE_NAMES[self.param_dtype]}"
            )
        if a.numel != c or (c > 1 and (len(a.shape) != 1 or a.strides[0] != 1)):
            raise ValueError(
                f"{self.call}: {name} has shape {a.shape} and strides {a.strides}; it must be "
                f"a contiguous 1-D array of C = {c} values"
            )
        return a.ptr

    def buffer(self, name: str, obj, optional: bool = False):
        """(pointer, bytes) of a contiguous byte buffer (workspace, reserve, record)."""
        if obj is None:
            if optional:
                return 0, 0
            raise ValueError(f"{self.call}: {name} is required")
        a = _info(self.call, name, obj)
        self._same_device(name, a)
        if not _dense(a.shape, a.strides, list(range(len(a.shape)))):
            raise ValueError(f"{self.call}: {name} must be contiguous")
        return a.ptr, a.numel * a.itemsize

    def lengths(self, lengths, padding):
        """(pointer, cubn_length_type, cubn_padding) of a variable-length batch's lengths: N int32
        or int64 values on x's device, contiguous ((0, 0, 0) for None)."""
        pad = _PADDINGS.get(padding)
        if pad is None:
            raise ValueError(f"{self.call}: padding is {padding!r}; it must be 'zero' or "
                             "'untouched'")
        if lengths is None:
            return 0, 0, pad
        a = _info(self.call, "lengths", lengths)
        self._same_device("lengths", a)
        kind = {"int32": 0, "int64": 1}.get(a.dtype_name)
        if kind is None:
            raise TypeError(f"{self.call}: lengths has dtype {a.dtype_name}; it must be int32 or "
                            "int64")
        n = self.x.shape[0]
        if a.numel != n or (n > 1 and (len(a.shape) != 1 or a.strides[0] != 1)):
            raise ValueError(f"{self.call}: lengths has shape {a.shape} and strides {a.strides}; "
                             f"it must be a contiguous 1-D array of N = {n} values")
        return a.ptr, kind, pad

    def run(self, fn, *args):
        """fn(*args) on x's device: raises cubn's error for a failed status; returns the value of
        a (status, value) result (the size queries)."""
        with _device_guard(self.x.device):
            result = fn(*args)
        status, value = result if isinstance(result, tuple) else (result, None)
        if status != 0:
            raise Error(status, self.backend.last_error_message())
        return value


@contextlib.contextmanager
def _device_guard(device):
    """Makes the array's GPU current for the call, through the framework that holds it."""
    import sys

    if device[0] != _DLPACK_CUDA:
        yield
        return
    if "torch" in sys.modules:
        import torch

        with torch.cuda.device(device[1]):
            yield
        return
    if "cupy" in sys.modules:
        import cupy

        with cupy.cuda.Device(device[1]):
            yield
        return
    yield


_PADDINGS = {"zero": 0, "untouched": 1}


def _activation(call: str, activation) -> int:
    if activation in ACTIVATIONS:
        return ACTIVATIONS[activation]
    raise ValueError(f"{call}: activation is {activation!r}; it must be one of {list(ACTIVATIONS)}")


def _momentum(call: str, momentum):
    if isinstance(momentum, (tuple, list)):
        if len(momentum) != 2:
            raise ValueError(f"{call}: momentum is {momentum!r}; give one value or (mean, var)")
        return float(momentum[0]), float(momentum[1])
    return float(momentum), float(momentum)


def _size(query: str, x, *extra) -> int:
    c = _Call(f"cubn.{query}", x, None)
    return c.run(getattr(c.backend, query), *c.desc, *extra)


def forward_training_workspace_size(x) -> int:
    """Bytes of workspace forward_training (and the split forward phases) needs for x."""
    return _size("forward_training_workspace_size", x)


def backward_workspace_size(x) -> int:
    """Bytes of workspace backward_training, backward_frozen (and the split phases) need."""
    return _size("backward_workspace_size", x)


def activation_reserve_size(x, activation: str) -> int:
    """Bytes the forward writes for the backward of a fused activation."""
    return _size("activation_reserve_size", x, _activation("cubn.activation_reserve_size",
                                                           activation))


def local_stats_bytes(x) -> int:
    """Bytes of one rank's forward record (forward_training_local)."""
    return _size("local_stats_bytes", x)


def local_grad_sums_bytes(x) -> int:
    """Bytes of one rank's backward record (backward_training_local)."""
    return _size("local_grad_sums_bytes", x)


def _forward_training(call, x, y, workspace, scale, offset, running_mean, running_var, momentum,
                      saved_mean, saved_invstd, epsilon, activation, residual, reserve, gathered,
                      ranks, stream, lengths=None, padding="zero"):
    c = _Call(call, x, stream)
    mm, mv = _momentum(call, momentum)
    act = _activation(call, activation)
    reserve_ptr, reserve_bytes = c.buffer("reserve", reserve, optional=True)
    apply = ranks is not None  # the split call's apply phase, else the single call
    gathered_ptr, gathered_bytes = c.buffer("gathered", gathered) if apply else (0, 0)
    ws_ptr, ws_bytes = c.buffer("workspace", workspace)
    c.run(c.backend.forward_training, *c.desc, c.x.ptr, c.like_x("y", y, optional=False),
          c.param("scale", scale), c.param("offset", offset), float(epsilon),
          c.param("running_mean", running_mean), c.param("running_var", running_var), mm, mv,
          c.param("saved_mean", saved_mean), c.param("saved_invstd", saved_invstd), act,
          c.like_x("residual", residual), reserve_ptr, reserve_bytes, apply, gathered_ptr,
          gathered_bytes, int(ranks or 0), ws_ptr, ws_bytes, c.stream,
          *c.lengths(lengths, padding))


def forward_training(x, y, *, workspace, scale=None, offset=None, running_mean=None,
                     running_var=None, momentum=0.1, saved_mean=None, saved_invstd=None,
                     epsilon=1e-5, activation="none", residual=None, reserve=None, stream=None,
                     lengths=None, padding="zero"):
    """Training forward: y = scale * (x - mean) * invstd + offset with this batch's statistics;
    running_mean/var (optional) updated as (1 - momentum) running + momentum batch (unbiased
    variance); saved_mean/invstd (optional) written for backward. momentum may be (mean, var).
    lengths (optional, N int32 or int64 on x's device): a padded batch whose sample n is valid at
    the first lengths[n] positions of the last axis; statistics over those only, y at the others
    0 (padding="zero") or not written ("untouched")."""
    _forward_training("cubn.forward_training", x, y, workspace, scale, offset, running_mean,
                      running_var, momentum, saved_mean, saved_invstd, epsilon, activation,
                      residual, reserve, None, None, stream, lengths, padding)


def forward_training_apply(x, y, gathered, *, ranks, workspace, scale=None, offset=None,
                           running_mean=None, running_var=None, momentum=0.1, saved_mean=None,
                           saved_invstd=None, epsilon=1e-5, activation="none", residual=None,
                           reserve=None, stream=None, lengths=None, padding="zero"):
    """The split forward's second phase: normalizes with the statistics of the `ranks` records in
    `gathered` (every rank's forward_training_local record, in rank order). lengths: this rank's,
    the same as its forward_training_local's."""
    _forward_training("cubn.forward_training_apply", x, y, workspace, scale, offset, running_mean,
                      running_var, momentum, saved_mean, saved_invstd, epsilon, activation,
                      residual, reserve, gathered, ranks, stream, lengths, padding)


def forward_training_local(x, local, *, workspace, stream=None, lengths=None):
    """The split forward's first phase: this rank's record (local_stats_bytes) of x, over the
    valid positions of its lengths when given (a rank whose lengths are all 0 gives an empty
    record; the global count decides)."""
    c = _Call("cubn.forward_training_local", x, stream)
    local_ptr, local_bytes = c.buffer("local", local)
    ws_ptr, ws_bytes = c.buffer("workspace", workspace)
    c.run(c.backend.forward_training_local, *c.desc, c.x.ptr, local_ptr, local_bytes, ws_ptr,
          ws_bytes, c.stream, *c.lengths(lengths, "zero"))


def forward_inference(x, y, *, running_mean, running_var, scale=None, offset=None, epsilon=1e-5,
                      activation="none", residual=None, reserve=None, stream=None, lengths=None,
                      padding="zero"):
    """Inference forward: normalizes with the running statistics given. With activation="relu",
    `reserve` (optional, activation_reserve_size bytes) receives the mask backward_frozen reads
    to differentiate through the ReLU."""
    call = "cubn.forward_inference"
    c = _Call(call, x, stream)
    reserve_ptr, reserve_bytes = c.buffer("reserve", reserve, optional=True)
    c.run(c.backend.forward_inference, *c.desc, c.x.ptr, c.like_x("y", y, optional=False),
          c.param("scale", scale), c.param("offset", offset),
          c.param("running_mean", running_mean), c.param("running_var", running_var),
          float(epsilon), _activation(call, activation), c.like_x("residual", residual),
          reserve_ptr, reserve_bytes, c.stream, *c.lengths(lengths, padding))


def _backward_training(call, phase, x, dy, dx, workspace, saved_mean, saved_invstd, scale,
                       dscale, doffset, accumulate, activation, residual, reserve, dz, records,
                       ranks, stream, lengths=None, padding="zero"):
    c = _Call(call, x, stream)
    reserve_ptr, reserve_bytes = c.buffer("reserve", reserve, optional=True)
    records_ptr, records_bytes = (0, 0)
    if phase:
        records_ptr, records_bytes = c.buffer("local" if phase == 1 else "gathered", records)
    ws_ptr, ws_bytes = c.buffer("workspace", workspace)
    c.run(c.backend.backward_training, *c.desc, c.x.ptr, c.like_x("dy", dy, optional=False),
          c.like_x("dx", dx, optional=phase == 1), c.param("scale", scale),
          c.param("saved_mean", saved_mean), c.param("saved_invstd", saved_invstd),
          c.param("dscale", dscale), c.param("doffset", doffset), bool(accumulate),
          _activation(call, activation), c.like_x("residual", residual), reserve_ptr,
          reserve_bytes, c.like_x("dz", dz), phase, records_ptr, records_bytes, ranks, ws_ptr,
          ws_bytes, c.stream, *c.lengths(lengths, padding))


def backward_training(x, dy, dx, *, saved_mean, saved_invstd, workspace, scale=None, dscale=None,
                      doffset=None, accumulate=False, activation="none", residual=None,
                      reserve=None, dz=None, stream=None, lengths=None, padding="zero"):
    """Backward of forward_training: dx, and (optional) dscale = sum(dy * xhat) and
    doffset = sum(dy), written or with accumulate=True added to. lengths: the forward's (sums over
    the valid positions; dx 0 at the others, or not written with padding="untouched")."""
    _backward_training("cubn.backward_training", 0, x, dy, dx, workspace, saved_mean,
                       saved_invstd, scale, dscale, doffset, accumulate, activation, residual,
                       reserve, dz, None, 0, stream, lengths, padding)


def backward_training_local(x, dy, local, *, saved_mean, saved_invstd, workspace, scale=None,
                            dscale=None, doffset=None, accumulate=False, activation="none",
                            residual=None, reserve=None, stream=None, lengths=None):
    """The split backward's first phase: this rank's record (local_grad_sums_bytes) and its
    share of dscale and doffset (over the valid positions of lengths when given)."""
    _backward_training("cubn.backward_training_local", 1, x, dy, None, workspace, saved_mean,
                       saved_invstd, scale, dscale, doffset, accumulate, activation, residual,
                       reserve, None, local, 0, stream, lengths, "zero")


def backward_training_apply(x, dy, dx, gathered, *, ranks, saved_mean, saved_invstd, workspace,
                            scale=None, activation="none", residual=None, reserve=None, dz=None,
                            stream=None, lengths=None, padding="zero"):
    """The split backward's second phase: dx from the `ranks` records in `gathered`. lengths:
    this rank's (dx 0 at its padded positions, or not written with padding="untouched")."""
    _backward_training("cubn.backward_training_apply", 2, x, dy, dx, workspace, saved_mean,
                       saved_invstd, scale, None, None, False, activation, residual, reserve, dz,
                       gathered, int(ranks), stream, lengths, padding)


def backward_frozen(x, dy, dx, *, running_mean, running_var, workspace, scale=None, offset=None,
                    epsilon=1e-5, dscale=None, doffset=None, accumulate=False, activation="none",
                    residual=None, reserve=None, dz=None, stream=None, lengths=None,
                    padding="zero"):
    """Backward of forward_inference (frozen statistics): dx = dy * scale * invstd(running).
    lengths: the forward's, as for backward_training."""
    call = "cubn.backward_frozen"
    c = _Call(call, x, stream)
    reserve_ptr, reserve_bytes = c.buffer("reserve", reserve, optional=True)
    ws_ptr, ws_bytes = c.buffer("workspace", workspace)
    c.run(c.backend.backward_frozen, *c.desc, c.x.ptr, c.like_x("dy", dy, optional=False),
          c.like_x("dx", dx, optional=False), c.param("scale", scale), c.param("offset", offset),
          c.param("running_mean", running_mean), c.param("running_var", running_var),
          float(epsilon), c.param("dscale", dscale), c.param("doffset", doffset),
          bool(accumulate), _activation(call, activation), c.like_x("residual", residual),
          reserve_ptr, reserve_bytes, c.like_x("dz", dz), ws_ptr, ws_bytes, c.stream,
          *c.lengths(lengths, padding))
