"""cubn.torch on CUDA tensors against torch.nn.BatchNorm2d on the same GPU: contiguous and
channels_last, fp16, bf16 and fp32, training (outputs, input and parameter gradients, running
statistics) and eval; a CUDA graph capture of a training step, graph replays equal to the eager
calls bit for bit, two streams at once equal to serial calls, the native ops on CUDA tensors.
Skipped without a GPU or without cubn's CUDA library in this build.

Tolerances: fp32 as in test_torch.py (1e-4); fp16 and bf16 outputs are rounded once to the
tensor's type on both sides from statistics that agree to float precision, so they differ by at
most one unit in the last place or so: 2e-3 (fp16, 2^-10) and 1.6e-2 (bf16, 2^-7) relative."""

import pytest
import torch

import cubn
import cubn.torch as ct

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and cubn.has_cuda()),
    reason="needs a CUDA GPU and cubn's CUDA library (pip install ./python where nvcc is found)")

TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_batchnorm2d_matches_torch_on_the_gpu(dtype, channels_last):
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    theirs = torch.nn.BatchNorm2d(64).cuda()
    ours = ct.BatchNorm2d(64).cuda()
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 1.5)
        theirs.bias.uniform_(-1, 1)
    ours.load_state_dict(theirs.state_dict())
    tol = TOL[dtype]
    for step in range(2):
        x = (torch.randn(16, 64, 28, 28, device="cuda") * 2 + 1).to(dtype).contiguous(
            memory_format=fmt)
        x_t, x_o = x.clone().requires_grad_(), x.clone().requires_grad_()
        with torch.autocast("cuda", enabled=False):
            y_t, y_o = theirs(x_t), ours(x_o)
        torch.testing.assert_close(y_o, y_t, rtol=tol, atol=tol)
        dy = torch.randn_like(y_t)
        y_t.backward(dy)
        y_o.backward(dy)
        torch.testing.assert_close(x_o.grad, x_t.grad, rtol=tol * 10, atol=tol * 10)
        torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-3, atol=1e-2)
        torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=1e-4, atol=1e-5)
    theirs.eval()
    ours.eval()
    torch.testing.assert_close(ours(x), theirs(x), rtol=tol, atol=tol)


def test_training_step_under_cuda_graph_capture():
    model = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), ct.BatchNorm2d(16),
                                torch.nn.ReLU()).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(8, 8, 16, 16, device="cuda").contiguous(memory_format=torch.channels_last)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up off the capture, as torch's docs ask
        for _ in range(2):
            model(x).sum().backward()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = model(x).sum()
        loss.backward()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.isfinite(loss).item()


def test_graph_replays_give_the_eager_results():
    """The native ops' workspaces come from the caching allocator (the graph's private pool under
    capture) and need no zero-filling: every replay of a captured training forward + backward
    gives the eager results bit for bit."""
    torch.manual_seed(1)
    bn = ct.BatchNorm2d(16).cuda()
    x = torch.randn(8, 16, 12, 12, device="cuda").contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    dy = torch.randn_like(x)
    eager_y = bn(x)
    eager_y.backward(dy)
    eager_dx = x.grad.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            x.grad = None
            bn(x).backward(dy)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    x.grad = None
    with torch.cuda.graph(graph):
        y = bn(x)
        y.backward(dy)
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(y, eager_y) and torch.equal(x.grad, eager_dx)


def test_two_streams_at_once_give_the_serial_results():
    """Calls on two streams at once (each op's workspace is its own block of the caching
    allocator, ordered on its stream) give what the same calls give one after another."""
    torch.manual_seed(2)
    xs = [torch.randn(32, 64, 28, 28, device="cuda") for _ in range(2)]
    mods = [ct.BatchNorm2d(64).cuda() for _ in range(2)]
    serial = [m(x) for m, x in zip(mods, xs)]
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    for s in streams:
        s.wait_stream(torch.cuda.current_stream())
    outs = []
    for m, x, s in zip(mods, xs, streams):
        with torch.cuda.stream(s):
            outs.append([m(x) for _ in range(20)][-1])
    torch.cuda.synchronize()
    for got, want in zip(outs, serial):
        assert torch.equal(got, want)


def test_the_native_ops_run_cuda_tensors():
    assert ct.native_ops()
    assert torch._C._dispatch_has_kernel_for_dispatch_key("cubn::batch_norm_train", "CUDA")


def test_the_cuda_library_was_compiled_for_this_gpu():
    major, minor = torch.cuda.get_device_capability()
    numbers = {int(a.split("-")[0].rstrip("af")) for a in cubn.cuda_architectures()}
    ptx = [int(a.rstrip("af")) for a in cubn.cuda_architectures() if "-" not in a]
    gpu = major * 10 + minor
    assert gpu in numbers or any(p <= gpu for p in ptx), (gpu, cubn.cuda_architectures())
