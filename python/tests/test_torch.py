"""cubn.torch against torch.nn on CPU tensors (the CPU executor).

Tolerances: both sides compute in float32 with different reduction orders, so each batch norm's
outputs differ by a few float roundings (relative ~1e-6); through two convolutions, a linear layer
and three SGD steps that stays below 1e-4 relative (atol 1e-5 for values near 0). A wrong formula
(biased running variance, a missing epsilon, dx without the mean terms) moves results by 1e-3 or
more at these sizes, which these tolerances catch. bfloat16 runs compare with the float32 result
within bfloat16's precision (2^-8 relative, times a few roundings)."""

import copy

import pytest
import torch

import cubn
import cubn.torch as ct

RTOL, ATOL = 1e-4, 1e-5


def cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False),
        torch.nn.BatchNorm2d(16, momentum=None),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(64, 12),
        torch.nn.BatchNorm1d(12),
        torch.nn.Linear(12, 5),
    )


def assert_close(a, b, what, rtol=RTOL, atol=ATOL):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def compare_modules(ours, theirs, what):
    for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert_close(a, b, f"{what} {name}")
        if b.grad is not None:
            assert_close(a.grad, b.grad, f"{what} {name}.grad")
    for (name, a), (_, b) in zip(ours.named_buffers(), theirs.named_buffers()):
        assert_close(a, b, f"{what} buffer {name}", rtol=0 if a.dtype == torch.long else RTOL)


@pytest.mark.parametrize("channels_last", [False, True])
def test_cnn_trains_and_evaluates_like_torch(channels_last):
    theirs = cnn()
    ours = ct.convert_batchnorm(copy.deepcopy(theirs))
    assert sum(isinstance(m, (ct.BatchNorm1d, ct.BatchNorm2d)) for m in ours.modules()) == 3
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    theirs.to(memory_format=fmt)
    ours.to(memory_format=fmt)
    opt_t = torch.optim.SGD(theirs.parameters(), lr=0.1)
    opt_o = torch.optim.SGD(ours.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    for step in range(3):
        x = torch.randn(6, 3, 10, 10, generator=gen).contiguous(memory_format=fmt)
        target = torch.randint(0, 5, (6,), generator=gen)
        for model, opt in ((theirs, opt_t), (ours, opt_o)):
            opt.zero_grad()
            out = model(x)
            loss = torch.nn.functional.cross_entropy(out, target)
            loss.backward()
            model.last = (out.detach(), loss.detach())
        assert_close(ours.last[0], theirs.last[0], f"step {step} output")
        assert_close(ours.last[1], theirs.last[1], f"step {step} loss")
        compare_modules(ours, theirs, f"step {step}")
        opt_t.step()
        opt_o.step()
    theirs.eval()
    ours.eval()
    x = torch.randn(4, 3, 10, 10, generator=gen).contiguous(memory_format=fmt)
    assert_close(ours(x), theirs(x), "eval output")


@pytest.mark.parametrize("kwargs", [
    dict(momentum=None),
    dict(track_running_stats=False),
    dict(affine=False),
    dict(affine=False, track_running_stats=False),
    dict(momentum=0.3, eps=1e-3),
])
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_module_options_behave_as_in_torch(kwargs, dims):
    torch_cls = {1: torch.nn.BatchNorm1d, 2: torch.nn.BatchNorm2d, 3: torch.nn.BatchNorm3d}[dims]
    our_cls = {1: ct.BatchNorm1d, 2: ct.BatchNorm2d, 3: ct.BatchNorm3d}[dims]
    theirs, ours = torch_cls(4, **kwargs), our_cls(4, **kwargs)
    if theirs.affine:
        with torch.no_grad():
            theirs.weight.uniform_(0.5, 1.5)
            theirs.bias.uniform_(-1, 1)
    ours.load_state_dict(theirs.state_dict())
    shape = {1: (5, 4, 7), 2: (3, 4, 5, 3), 3: (2, 4, 3, 2, 3)}[dims]
    for step in range(3):
        x = torch.randn(*shape) * (step + 1) + step
        x_t, x_o = x.clone().requires_grad_(), x.clone().requires_grad_()
        y_t, y_o = theirs(x_t), ours(x_o)
        assert_close(y_o, y_t, f"train step {step}")
        dy = torch.randn_like(y_t)
        y_t.backward(dy)
        y_o.backward(dy)
        assert_close(x_o.grad, x_t.grad, f"train step {step} dx")
        compare_modules(ours, theirs, f"train step {step}")
    theirs.eval()
    ours.eval()
    x = torch.randn(*shape)
    x_t, x_o = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_t, y_o = theirs(x_t), ours(x_o)
    assert_close(y_o, y_t, "eval")
    dy = torch.randn_like(y_t)
    y_t.backward(dy)
    y_o.backward(dy)
    assert_close(x_o.grad, x_t.grad, "eval dx (frozen backward)")
    compare_modules(ours, theirs, "eval")


def test_one_dimensional_input_without_length():
    theirs, ours = torch.nn.BatchNorm1d(3), ct.BatchNorm1d(3)
    x = torch.randn(8, 3)
    assert_close(ours(x), theirs(x), "(N, C)")
    assert_close(ours.running_var, theirs.running_var, "running_var")


def test_state_dict_round_trips_both_ways():
    theirs = torch.nn.BatchNorm2d(6)
    theirs(torch.randn(4, 6, 3, 3))
    ours = ct.BatchNorm2d(6)
    ours.load_state_dict(theirs.state_dict())
    assert set(ours.state_dict()) == {"weight", "bias", "running_mean", "running_var",
                                      "num_batches_tracked"}
    ours(torch.randn(4, 6, 3, 3))
    back = torch.nn.BatchNorm2d(6)
    back.load_state_dict(ours.state_dict())
    for k, v in ours.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert int(back.num_batches_tracked) == 2


def test_convert_batchnorm_keeps_tensors_and_mode():
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(3),
                                torch.nn.Sequential(torch.nn.BatchNorm1d(2)))
    model[1].eval()
    weight = model[0].weight
    out = ct.convert_batchnorm(model)
    assert out is model
    assert type(model[0]) is ct.BatchNorm2d and type(model[1][0]) is ct.BatchNorm1d
    assert model[0].weight is weight and model[1][0].training is False
    assert isinstance(model[0], torch.nn.BatchNorm2d)  # code that checks torch's type still works
    root = ct.convert_batchnorm(torch.nn.BatchNorm3d(2))
    assert type(root) is ct.BatchNorm3d


def test_bfloat16_input_with_float32_parameters():
    torch.manual_seed(3)
    theirs, ours = torch.nn.BatchNorm2d(5), ct.BatchNorm2d(5)
    x = torch.randn(4, 5, 6, 6).to(torch.bfloat16)
    want = theirs(x.float())
    got = ours(x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)
    assert_close(ours.running_var, theirs.running_var, "running_var")


def test_wrong_strides_get_a_clear_error():
    bn = ct.BatchNorm2d(4)
    x = torch.randn(2, 4, 6, 6)
    with pytest.raises(ValueError, match="neither contiguous"):
        bn(x[:, :, ::2])
    with pytest.raises(ValueError, match="neither contiguous"):
        bn(x.transpose(2, 3))
    with pytest.raises(ValueError, match="neither contiguous"):
        bn(x.permute(1, 0, 2, 3))
    with pytest.raises(ValueError, match="expected 4D input"):
        bn(torch.randn(2, 4, 6))
    with pytest.raises(cubn.Error, match="one element per channel"):
        bn(torch.randn(1, 4, 1, 1))


def test_ops_pass_torch_library_opcheck():
    x = torch.randn(3, 4, 5, 5, requires_grad=True)
    w = torch.rand(4, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    rm, rv = torch.zeros(4), torch.ones(4)
    # the training op mutates the running statistics: its autograd is _TrainFunction, not the op
    torch.library.opcheck(torch.ops.cubn.batch_norm_train.default,
                          (x.detach(), w.detach(), b.detach(), rm, rv, 0.1, 1e-5))
    torch.library.opcheck(torch.ops.cubn.batch_norm_eval.default, (x, w, b, rm, rv, 1e-5))


def test_torch_compile_treats_the_ops_as_opaque():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), ct.BatchNorm2d(4), torch.nn.ReLU())
    reference = copy.deepcopy(model)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 3, 8, 8)
    assert_close(compiled(x), reference(x), "compiled train")
    assert_close(model[1].running_mean, reference[1].running_mean, "compiled running_mean")
    model.eval()
    reference.eval()
    assert_close(compiled(x), reference(x), "compiled eval")


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_frozen_backward_through_a_fused_relu_matches_torch_autograd(dtype, tol, residual,
                                                                     channels_last):
    """forward_inference(activation="relu", reserve=...) writes the mask that backward_frozen
    reads: y, dx, dz, dscale and doffset against torch's autograd of relu(batch_norm(x) + z) in
    float64. Tolerances: float32 sums of 60 O(1) terms, a few roundings each (2e-5); float64
    1e-12."""
    torch.manual_seed(11)
    n, c, h, w = 4, 6, 5, 3
    x = torch.randn(n, c, h, w, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    p = torch.float64 if dtype == torch.float64 else torch.float32
    z = torch.randn_like(x) if residual else None
    scale, offset = torch.rand(c, dtype=p) + 0.5, torch.randn(c, dtype=p)
    rm, rv, eps = torch.randn(c, dtype=p) * 0.1, torch.rand(c, dtype=p) + 0.5, 1e-3
    y = torch.empty_like(x)
    reserve = torch.empty(cubn.activation_reserve_size(x, "relu"), dtype=torch.uint8)
    cubn.forward_inference(x, y, running_mean=rm, running_var=rv, scale=scale, offset=offset,
                           epsilon=eps, activation="relu", residual=z, reserve=reserve)
    dy = torch.randn_like(x)
    dx, dz = torch.empty_like(x), torch.empty_like(x) if residual else None
    dscale, doffset = torch.empty(c, dtype=p), torch.empty(c, dtype=p)
    ws = torch.empty(cubn.backward_workspace_size(x), dtype=torch.uint8)
    cubn.backward_frozen(x, dy, dx, running_mean=rm, running_var=rv, workspace=ws, scale=scale,
                         offset=offset, epsilon=eps, dscale=dscale, doffset=doffset,
                         activation="relu", residual=z, reserve=reserve, dz=dz)

    xr = x.double().requires_grad_()
    sr, orr = scale.double().requires_grad_(), offset.double().requires_grad_()
    zr = z.double().requires_grad_() if residual else None
    pre = torch.nn.functional.batch_norm(xr, rm.double(), rv.double(), sr, orr, False, 0.0, eps)
    yr = torch.relu(pre + zr if residual else pre)
    yr.backward(dy.double())
    close = dict(rtol=tol, atol=tol)
    torch.testing.assert_close(y.double(), yr.detach(), **close)
    torch.testing.assert_close(dx.double(), xr.grad, **close)
    torch.testing.assert_close(dscale.double(), sr.grad, **close)
    torch.testing.assert_close(doffset.double(), orr.grad, **close)
    if residual:
        torch.testing.assert_close(dz.double(), zr.grad, **close)
    assert (xr.grad == 0).any(), "the ReLU passed everything: the mask is not tested"


def test_native_ops_are_used_where_the_package_has_them():
    import os

    built = os.path.exists(os.path.join(os.path.dirname(ct.__file__), "_cubn_torch_ops.so"))
    assert ct.native_ops() == built


@pytest.mark.parametrize("training", [True, False])
def test_gradients_match_torch_in_both_modes_and_keep_parameter_dtypes(training):
    """Training and eval (frozen statistics) backward against torch.nn, float32 and a .half()
    module (fp16 parameters and buffers: cubn computes in float32, gradients come back fp16)."""
    torch.manual_seed(4)
    for half in (False, True):
        theirs, ours = torch.nn.BatchNorm2d(5), ct.BatchNorm2d(5)
        with torch.no_grad():
            theirs.weight.uniform_(0.5, 1.5)
            theirs.bias.uniform_(-1, 1)
            theirs.running_var.uniform_(0.5, 1.5)
        ours.load_state_dict(theirs.state_dict())
        theirs.train(training)
        ours.train(training)
        if half:
            ours.half()
        x = torch.randn(4, 5, 3, 3)
        xt, xo = x.clone().requires_grad_(), (x.half() if half else x.clone()).requires_grad_()
        dy = torch.randn_like(x)
        theirs(xt).backward(dy)
        yo = ours(xo)
        yo.backward(dy.half() if half else dy)
        tol = dict(rtol=2e-2, atol=2e-2) if half else dict(rtol=RTOL, atol=ATOL)
        assert ours.weight.grad.dtype == (torch.float16 if half else torch.float32)
        torch.testing.assert_close(xo.grad.float(), xt.grad, **tol)
        torch.testing.assert_close(ours.weight.grad.float(), theirs.weight.grad, **tol)
        torch.testing.assert_close(ours.bias.grad.float(), theirs.bias.grad, **tol)
        torch.testing.assert_close(ours.running_var.float(), theirs.running_var, **tol)


def test_python_ops_still_match_torch_when_asked_for():
    """CUBN_TORCH_NATIVE=0: the Python ops over DLPack (the build without torch) in a fresh
    process: a training step and an eval step against torch.nn."""
    import subprocess
    import sys
    import os

    code = """
import torch, cubn.torch as ct
assert not ct.native_ops()
torch.manual_seed(0)
theirs, ours = torch.nn.BatchNorm2d(3), ct.BatchNorm2d(3)
x = torch.randn(4, 3, 2, 2)
xt, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
theirs(xt).sum().backward(); ours(xo).sum().backward()
torch.testing.assert_close(xo.grad, xt.grad, rtol=1e-4, atol=1e-5)
torch.testing.assert_close(ours.running_var, theirs.running_var)
theirs.eval(); ours.eval()
torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)
print("ok")
"""
    env = dict(os.environ, CUBN_TORCH_NATIVE="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_the_skip_kernels_switch_runs_no_kernel():
    """CUBN_SIM_SKIP_KERNELS=1 (benchmarks only): calls are checked and return without running
    their kernels, so y keeps what it held; without it y is computed."""
    import subprocess
    import sys
    import os

    code = """
import torch, cubn
x = torch.randn(2, 3, 4, 4)
y = torch.full_like(x, 7.0)
ones, zeros = torch.ones(3), torch.zeros(3)
cubn.forward_inference(x, y, running_mean=zeros, running_var=ones)
print(bool((y == 7.0).all()))
try:
    cubn.forward_inference(x, y, running_mean=zeros, running_var=ones, epsilon=-1.0)
    print("accepted")
except cubn.Error:
    print("refused")
"""
    for skip, want in (("1", "True\nrefused"), ("0", "False\nrefused")):
        env = dict(os.environ, CUBN_SIM_SKIP_KERNELS=skip)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True)
        assert out.returncode == 0 and out.stdout.strip() == want, (skip, out.stdout, out.stderr)


def test_a_package_without_the_native_ops_warns_at_import_and_still_works(tmp_path):
    """The package as built where torch was not importable (no _cubn_torch_ops.so): importing
    cubn.torch warns, saying why and how to get the native ops, and the Python ops run."""
    import os
    import shutil
    import subprocess
    import sys

    src = os.path.dirname(cubn.__file__)
    shutil.copytree(src, tmp_path / "cubn",
                    ignore=shutil.ignore_patterns("_cubn_torch_ops.so", "__pycache__"))
    code = """
import warnings
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    import cubn.torch as ct
assert not ct.native_ops()
assert any("no native ops" in str(m.message) and "no-build-isolation" in str(m.message)
           for m in w), [str(m.message) for m in w]
import torch
bn = ct.BatchNorm2d(3)
torch.testing.assert_close(bn(torch.ones(2, 3, 1, 1)), torch.zeros(2, 3, 1, 1))
print("ok")
"""
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
