"""cubn's calls on NumPy arrays (and torch tensors) through DLPack, on the CPU executor, against a
float64 NumPy reference.

Tolerances: float32 results of O(1) values reduced over at most a few hundred elements carry a few
float roundings of mean, variance and invstd (relative 2^-24 each, times |xhat| < 6): 1e-5; float64
1e-12."""

import numpy as np
import pytest

import cubn


def reference(x, scale, offset, eps, axes):
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + offset, mean.ravel(), var.ravel()


@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_training_forward_and_backward_numpy(dtype, tol, channels_last):
    rng = np.random.default_rng(1)
    n, c, h, w = 3, 5, 4, 3
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    if channels_last:  # NHWC storage, logical NCHW
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    p = np.float64 if dtype == np.float64 else np.float32
    scale = rng.uniform(0.5, 1.5, c).astype(p)
    offset = rng.uniform(-1, 1, c).astype(p)
    rmean, rvar = np.zeros(c, p), np.ones(c, p)
    smean, sinvstd = np.empty(c, p), np.empty(c, p)
    y = np.empty_like(x)  # keeps x's strides
    assert cubn.memory_order(x.shape, [s // x.itemsize for s in x.strides]) == (
        cubn.CHANNELS_LAST if channels_last else cubn.CHANNELS_FIRST)
    ws = np.zeros(max(cubn.forward_training_workspace_size(x), cubn.backward_workspace_size(x)),
                  np.uint8)
    cubn.forward_training(x, y, workspace=ws, scale=scale, offset=offset, running_mean=rmean,
                          running_var=rvar, momentum=0.25, saved_mean=smean,
                          saved_invstd=sinvstd)
    xd = x.astype(np.float64)
    want, mean, var = reference(xd, scale[None, :, None, None], offset[None, :, None, None],
                                1e-5, (0, 2, 3))
    np.testing.assert_allclose(y, want, rtol=tol, atol=tol)
    np.testing.assert_allclose(smean, mean, rtol=tol, atol=tol)
    np.testing.assert_allclose(sinvstd, 1 / np.sqrt(var + 1e-5), rtol=tol, atol=tol)
    m = n * h * w
    np.testing.assert_allclose(rvar, 0.75 + 0.25 * var * m / (m - 1), rtol=tol, atol=tol)

    dy = np.empty_like(x)  # in x's memory order, as cubn requires
    dy[...] = rng.standard_normal(x.shape)
    dx, dscale, doffset = np.empty_like(x), np.empty(c, p), np.empty(c, p)
    cubn.backward_training(x, dy, dx, saved_mean=smean, saved_invstd=sinvstd, workspace=ws,
                           scale=scale, dscale=dscale, doffset=doffset)
    xhat = (xd - mean[None, :, None, None]) / np.sqrt(var + 1e-5)[None, :, None, None]
    dyd = dy.astype(np.float64)
    sdy, sdyx = dyd.sum(axis=(0, 2, 3)), (dyd * xhat).sum(axis=(0, 2, 3))
    want_dx = (scale / np.sqrt(var + 1e-5))[None, :, None, None] * (
        dyd - sdy[None, :, None, None] / m - xhat * sdyx[None, :, None, None] / m)
    np.testing.assert_allclose(dx, want_dx, rtol=tol * 10, atol=tol * 10)
    np.testing.assert_allclose(doffset, sdy, rtol=tol * 10, atol=tol * 10)
    np.testing.assert_allclose(dscale, sdyx, rtol=tol * 10, atol=tol * 10)


def test_inference_and_frozen_backward_numpy():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 3, 7)).astype(np.float32)  # (N, C, L)
    rmean = rng.standard_normal(3).astype(np.float32)
    rvar = rng.uniform(0.5, 2, 3).astype(np.float32)
    y = np.empty_like(x)
    cubn.forward_inference(x, y, running_mean=rmean, running_var=rvar, epsilon=1e-3)
    invstd = 1 / np.sqrt(rvar.astype(np.float64) + 1e-3)
    np.testing.assert_allclose(y, (x - rmean[:, None]) * invstd[:, None], rtol=1e-5, atol=1e-5)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx = np.empty_like(x)
    ws = np.zeros(cubn.backward_workspace_size(x), np.uint8)
    cubn.backward_frozen(x, dy, dx, running_mean=rmean, running_var=rvar, epsilon=1e-3,
                         workspace=ws)
    np.testing.assert_allclose(dx, dy * invstd[:, None], rtol=1e-5, atol=1e-6)


def test_split_phases_over_two_ranks_equal_the_single_call():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 4, 6)).astype(np.float64)
    parts = [x[:2], x[2:]]
    ws = np.zeros(cubn.forward_training_workspace_size(x), np.uint8)
    y, smean, sinvstd = np.empty_like(x), np.empty(4), np.empty(4)
    cubn.forward_training(x, y, workspace=ws, saved_mean=smean, saved_invstd=sinvstd)
    record = cubn.local_stats_bytes(x)
    gathered = np.zeros(2 * record, np.uint8)
    for r, part in enumerate(parts):
        cubn.forward_training_local(part, gathered[r * record:(r + 1) * record], workspace=ws)
    for part, start in zip(parts, (0, 2)):
        y_part = np.empty_like(part)
        cubn.forward_training_apply(part, y_part, gathered, ranks=2, workspace=ws)
        np.testing.assert_allclose(y_part, y[start:start + len(part)], rtol=1e-13, atol=1e-13)
    with pytest.raises(cubn.Error, match="gathered.ranks is 0"):  # cubn's own check
        cubn.forward_training_apply(parts[0], np.empty_like(parts[0]), gathered, ranks=0,
                                    workspace=ws)


def test_torch_tensors_and_numpy_agree():
    torch = pytest.importorskip("torch")
    x = torch.randn(2, 3, 4, 4).to(memory_format=torch.channels_last)
    y = torch.empty_like(x)
    ws = torch.zeros(cubn.forward_training_workspace_size(x), dtype=torch.uint8)
    cubn.forward_training(x, y, workspace=ws)
    xn = x.numpy()
    yn = np.empty_like(xn)
    cubn.forward_training(xn, yn, workspace=np.zeros(ws.numel(), np.uint8))
    assert np.array_equal(y.numpy(), yn)


def test_bad_strides_dtypes_and_arguments_are_refused():
    x = np.ones((2, 3, 4, 4), np.float32)
    y = np.empty_like(x)
    ws = np.zeros(cubn.forward_training_workspace_size(x), np.uint8)
    with pytest.raises(ValueError, match="neither contiguous"):
        cubn.forward_training(x[:, :, ::2], y[:, :, ::2], workspace=ws)
    with pytest.raises(ValueError, match="neither contiguous"):
        cubn.forward_training(x.transpose(0, 1, 3, 2), y, workspace=ws)
    with pytest.raises(ValueError, match="y has strides"):
        cubn.forward_training(x, np.empty((2, 4, 4, 3), np.float32).transpose(0, 3, 1, 2),
                              workspace=ws)
    with pytest.raises(TypeError, match="dtype int32"):
        cubn.forward_training(x.astype(np.int32), y, workspace=ws)
    with pytest.raises(TypeError, match="scale has dtype float64"):
        cubn.forward_training(x, y, workspace=ws, scale=np.ones(3))
    with pytest.raises(ValueError, match="C = 3"):
        cubn.forward_training(x, y, workspace=ws, scale=np.ones(4, np.float32))
    before = y.copy()
    with pytest.raises(cubn.Error, match="epsilon is -1e-09") as e:
        cubn.forward_training(x, y, workspace=ws, epsilon=-1e-9)
    assert e.value.status == 1  # invalid argument
    with pytest.raises(cubn.Error, match="workspace.bytes"):
        cubn.forward_training(x, y, workspace=ws[:-1])
    with pytest.raises(cubn.Error, match="one element per channel"):
        one = np.ones((1, 3, 1, 1), np.float32)
        cubn.forward_training(one, np.empty_like(one), workspace=ws)
    assert np.array_equal(y, before, equal_nan=True)
    with pytest.raises(TypeError, match="not an array"):
        cubn.forward_training([1.0, 2.0], y, workspace=ws)


def test_the_build_says_what_its_cuda_library_was_compiled_for():
    archs = cubn.cuda_architectures()
    assert isinstance(archs, tuple)
    assert bool(archs) == cubn.has_cuda()
    for a in archs:  # CMake's syntax: 90-real, 120, 100a-real
        assert a.split("-")[0].rstrip("af").isdigit() and a.split("-")[1:] in ([], ["real"]), a
    from cubn import _cubn_sim
    assert _cubn_sim.cuda_architectures == ""  # the executor module has no GPU code
