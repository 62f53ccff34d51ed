"""Variable-length batches (lengths=) in cubn.torch and the DLPack calls, on CPU tensors (the CPU
executor), against a masked batch norm built from torch ops.

Tolerances: float64 throughout, where the masked reference and cubn differ by a few roundings of
sums over at most a few hundred values (relative ~1e-15): 1e-12 relative. Padding is NaN in every
input, so a padded value reaching an output or a statistic fails the comparison; a statistic over
the whole padded batch (torch.nn's) differs from the valid positions' by far more than that."""

import pytest
import torch

import cubn
import cubn.torch as ct

TOL = dict(rtol=1e-12, atol=1e-12)


def valid_mask(lengths, shape):
    """(N, 1, ..., L) booleans: position t of sample n is valid when t < lengths[n]."""
    n, l = shape[0], shape[-1]
    mask = torch.arange(l).expand(n, l) < lengths.clamp(0, l).unsqueeze(1)
    return mask.reshape(n, *([1] * (len(shape) - 2)), l)


def masked_batch_norm(x, lengths, weight, bias, eps):
    """The reference: batch norm over the valid positions, 0 at the padded ones; differentiable
    (torch autograd gives its gradients). Returns y, the mean and the biased variance, and M."""
    mask = valid_mask(lengths, x.shape)
    dims = [0] + list(range(2, x.dim()))
    shape = [1, -1] + [1] * (x.dim() - 2)
    xm = torch.where(mask, x, torch.zeros_like(x))
    m = mask.expand_as(x).sum(dims)[0]
    mean = xm.sum(dims) / m
    # padded values enter nothing, not even as 0 * NaN in autograd's chain
    var = (torch.where(mask, xm - mean.reshape(shape), torch.zeros_like(x)) ** 2).sum(dims) / m
    xhat = (xm - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + eps)
    y = xhat * weight.reshape(shape) + bias.reshape(shape)
    return torch.where(mask, y, torch.zeros_like(y)), mean, var, m


def padded_case(shape, lengths, seed=0, channels_last=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64) * 2 + 0.5
    x = torch.where(valid_mask(lengths, shape), x, torch.full_like(x, float("nan")))
    if channels_last:  # C fastest: (N, L, C) or (N, H, W, C) in memory
        perm = [0] + list(range(2, len(shape))) + [1]
        inverse = [perm.index(i) for i in range(len(shape))]
        x = x.permute(perm).contiguous().permute(inverse)
    return x


@pytest.mark.parametrize("shape", [(5, 3, 17), (4, 6, 3, 9)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_training_matches_a_masked_batch_norm_with_its_gradients(shape, channels_last, dtype):
    l = shape[-1]
    lengths = torch.tensor([l, 0, 1, l // 2, 2][: shape[0]], dtype=dtype)
    x = padded_case(shape, lengths, channels_last=channels_last).requires_grad_()
    c = shape[1]
    bn = (ct.BatchNorm1d if len(shape) == 3 else ct.BatchNorm2d)(c).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    y = bn(x, lengths=lengths)
    xr = x.detach().clone().requires_grad_()
    w = bn.weight.detach().clone().requires_grad_()
    b = bn.bias.detach().clone().requires_grad_()
    y_ref, mean, var, m = masked_batch_norm(xr, lengths, w, b, bn.eps)
    torch.testing.assert_close(y, y_ref, **TOL)
    torch.testing.assert_close(bn.running_mean, 0.9 * torch.zeros(c, dtype=torch.float64) +
                               0.1 * mean.detach(), **TOL)
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * var.detach() * m / (m - 1), **TOL)
    dy = torch.randn_like(y_ref)
    dy = torch.where(valid_mask(lengths, shape), dy, torch.full_like(dy, float("nan")))
    y.backward(dy)
    y_ref.backward(torch.nan_to_num(dy))  # the reference's padded outputs are constants
    torch.testing.assert_close(x.grad, torch.where(valid_mask(lengths, shape), xr.grad,
                                                   torch.zeros_like(xr.grad)), **TOL)
    torch.testing.assert_close(bn.weight.grad, w.grad, **TOL)
    torch.testing.assert_close(bn.bias.grad, b.grad, **TOL)
    assert bool((x.grad[~valid_mask(lengths, shape).expand_as(x)] == 0).all())


def test_statistics_equal_those_of_the_unpadded_sequences_concatenated():
    """A small padded sequence model: its batch norm's statistics and outputs are those of the
    sequences without padding, concatenated along time (torch.nn.BatchNorm1d on (1, C, sum L))."""
    torch.manual_seed(1)
    c, seqs = 4, [torch.randn(4, t, dtype=torch.float64) for t in (7, 3, 11, 1, 5)]
    lengths = torch.tensor([s.shape[1] for s in seqs])
    padded = torch.nn.utils.rnn.pad_sequence([s.T for s in seqs], batch_first=True,
                                             padding_value=float("nan")).transpose(1, 2)
    conv = torch.nn.Conv1d(c, c, 1, bias=False).double()
    ours, theirs = ct.BatchNorm1d(c).double(), torch.nn.BatchNorm1d(c).double()
    y = ours(conv(padded), lengths=lengths)
    whole = conv(torch.cat(seqs, dim=1).unsqueeze(0))
    y_whole = theirs(whole)
    torch.testing.assert_close(ours.running_mean, theirs.running_mean, **TOL)
    torch.testing.assert_close(ours.running_var, theirs.running_var, **TOL)
    start = 0
    for n, s in enumerate(seqs):
        t = s.shape[1]
        torch.testing.assert_close(y[n, :, :t], y_whole[0, :, start:start + t], **TOL)
        assert bool((y[n, :, t:] == 0).all())
        start += t
    # torch.nn over the zero-padded batch takes the padding into its statistics
    naive = torch.nn.BatchNorm1d(c).double()
    naive(conv(torch.nan_to_num(padded)))
    assert not torch.allclose(naive.running_var, ours.running_var, rtol=1e-3)


def test_eval_mode_and_its_frozen_backward_take_lengths():
    shape, lengths = (3, 2, 8), torch.tensor([8, 3, 0])
    x = padded_case(shape, lengths, seed=2).requires_grad_()
    bn = ct.BatchNorm1d(2).double().eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.3, -0.2]))
        bn.running_var.copy_(torch.tensor([1.5, 0.7]))
    y = bn(x, lengths=lengths)
    mask = valid_mask(lengths, shape)
    ref = torch.nn.functional.batch_norm(torch.nan_to_num(x.detach()), bn.running_mean,
                                         bn.running_var, bn.weight.detach(), bn.bias.detach(),
                                         False, 0.1, bn.eps)
    torch.testing.assert_close(y.detach(), torch.where(mask, ref, torch.zeros_like(ref)), **TOL)
    y.backward(torch.ones_like(y))
    scale = (bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)).reshape(1, -1, 1)
    torch.testing.assert_close(x.grad, torch.where(mask, scale.expand_as(x),
                                                   torch.zeros_like(x)), **TOL)
    torch.testing.assert_close(bn.bias.grad, torch.full((2,), 11.0, dtype=torch.float64),
                               **TOL)


def test_lengths_pass_opcheck_and_torch_compile():
    x = torch.randn(3, 4, 9)
    lengths = torch.tensor([9, 4, 2])
    w, b = torch.rand(4), torch.randn(4)
    rm, rv = torch.zeros(4), torch.ones(4)
    torch.library.opcheck(torch.ops.cubn.batch_norm_train.default,
                          (x, w, b, rm, rv, 0.1, 1e-5, lengths))
    torch.library.opcheck(torch.ops.cubn.batch_norm_eval.default,
                          (x.requires_grad_(), w, b, rm, rv, 1e-5, lengths))

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv1d(4, 4, 3, padding=1)
            self.bn = ct.BatchNorm1d(4)

        def forward(self, x, lengths):
            return self.bn(self.conv(x), lengths=lengths)

    torch.manual_seed(3)
    model = Model()
    eager = Model()
    eager.load_state_dict(model.state_dict())
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    xs = torch.randn(3, 4, 9)
    torch.testing.assert_close(compiled(xs, lengths), eager(xs, lengths), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.bn.running_var, eager.bn.running_var, rtol=1e-5, atol=1e-6)


def test_all_lengths_l_equal_no_lengths_bit_for_bit():
    x = torch.randn(4, 3, 32)
    a, b = ct.BatchNorm1d(3), ct.BatchNorm1d(3)
    ya = a(x, lengths=torch.full((4,), 32))
    yb = b(x)
    assert torch.equal(ya, yb)
    assert torch.equal(a.running_var, b.running_var)


def test_bad_lengths_are_refused_naming_them():
    x = torch.randn(2, 3, 5)
    bn = ct.BatchNorm1d(3)
    with pytest.raises(TypeError, match="lengths"):
        bn(x, lengths=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="lengths"):
        bn(x, lengths=torch.tensor([1, 2, 3]))
    with pytest.raises(cubn.Error, match="rank 2"):
        ct.BatchNorm1d(3)(torch.randn(4, 3), lengths=torch.tensor([1, 1, 1, 1]))


def test_dlpack_calls_take_lengths_and_padding():
    shape, lengths = (3, 2, 6), torch.tensor([6, 2, 4], dtype=torch.int32)
    x = padded_case(shape, lengths, seed=4)
    y = torch.full_like(x, 7.0)
    mean, invstd = torch.empty(2, dtype=torch.float64), torch.empty(2, dtype=torch.float64)
    ws = torch.empty(cubn.forward_training_workspace_size(x), dtype=torch.uint8)
    cubn.forward_training(x, y, workspace=ws, saved_mean=mean, saved_invstd=invstd,
                          lengths=lengths, padding="untouched")
    mask = valid_mask(lengths, shape).expand_as(x)
    ref, m, _, _ = masked_batch_norm(x, lengths, torch.ones(2, dtype=torch.float64),
                                     torch.zeros(2, dtype=torch.float64), 1e-5)
    torch.testing.assert_close(y[mask], ref[mask], **TOL)
    assert bool((y[~mask] == 7.0).all())
    torch.testing.assert_close(mean, m, **TOL)
    with pytest.raises(ValueError, match="padding"):
        cubn.forward_training(x, y, workspace=ws, lengths=lengths, padding="keep")


@pytest.mark.parametrize("activation", ["relu", "silu", "none"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_dlpack_fused_epilogue_takes_lengths(activation, channels_last):
    """y = act(bn(x) + z) over a padded batch, and its backward (dx, dz, dscale, doffset) through
    the activation, against torch autograd on the masked reference; padded x, z and dy are NaN,
    padded y, dx and dz must be 0."""
    shape, lengths = (4, 3, 2, 11), torch.tensor([11, 0, 1, 6])
    x = padded_case(shape, lengths, seed=5, channels_last=channels_last)
    z = padded_case(shape, lengths, seed=6, channels_last=channels_last)
    dy = padded_case(shape, lengths, seed=7, channels_last=channels_last)
    g = torch.Generator().manual_seed(8)
    w = torch.rand(3, generator=g, dtype=torch.float64) + 0.5
    b = torch.rand(3, generator=g, dtype=torch.float64) - 0.5
    y, dx, dz = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x)
    mean, invstd = torch.empty(3, dtype=torch.float64), torch.empty(3, dtype=torch.float64)
    dw, db = torch.empty(3, dtype=torch.float64), torch.empty(3, dtype=torch.float64)
    reserve = torch.empty(cubn.activation_reserve_size(x, activation), dtype=torch.uint8)
    ws = torch.empty(max(cubn.forward_training_workspace_size(x),
                         cubn.backward_workspace_size(x)), dtype=torch.uint8)
    epilogue = dict(activation=activation, residual=z, reserve=reserve, lengths=lengths)
    cubn.forward_training(x, y, workspace=ws, scale=w, offset=b, saved_mean=mean,
                          saved_invstd=invstd, **epilogue)
    cubn.backward_training(x, dy, dx, workspace=ws, scale=w, saved_mean=mean,
                           saved_invstd=invstd, dscale=dw, doffset=db, dz=dz, **epilogue)

    mask = valid_mask(lengths, shape).expand_as(x)
    xr, zr = x.clone().requires_grad_(), z.nan_to_num().requires_grad_()
    wr, br = w.clone().requires_grad_(), b.clone().requires_grad_()
    bn, _, _, _ = masked_batch_norm(xr, lengths, wr, br, 1e-5)
    act = {"relu": torch.relu, "silu": torch.nn.functional.silu, "none": lambda p: p}[activation]
    y_ref = torch.where(mask, act(bn + zr), torch.zeros_like(bn))
    y_ref.backward(dy.nan_to_num())
    torch.testing.assert_close(y, y_ref.detach(), **TOL)
    torch.testing.assert_close(dx, torch.where(mask, xr.grad, torch.zeros_like(dx)), **TOL)
    torch.testing.assert_close(dz, torch.where(mask, zr.grad, torch.zeros_like(dz)), **TOL)
    torch.testing.assert_close(dw, wr.grad, **TOL)
    torch.testing.assert_close(db, br.grad, **TOL)
