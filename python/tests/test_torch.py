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
