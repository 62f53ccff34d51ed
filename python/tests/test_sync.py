"""cubn.torch.SyncBatchNorm over torch.distributed's gloo backend on loopback: 2 or 3 processes,
each with its part of one batch (unequal parts, one of them empty), give the outputs, input
gradients and running statistics of single-process batch norm on the whole batch; the ranks'
dweight and dbias sum to the single process's. The same with a variable-length batch (lengths
along the last axis, each rank passing its samples' lengths, 0 and the full length among them):
equal to single-process cubn with the whole batch's lengths, whose own tests compare it with a
masked reference built from torch ops (test_lengths.py).

Tolerance: the statistics are merged from per-rank Welford records (Chan's merge) instead of one
pass, in float32: a few roundings apart, 1e-5 relative."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import cubn.torch as ct

C = 6


def batch(total, channels_last):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(total, C, 5, 4, generator=gen) * 2 + 1
    dy = torch.randn(total, C, 5, 4, generator=gen)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.contiguous(memory_format=fmt), dy.contiguous(memory_format=fmt)


def module(cls):
    m = cls(C, momentum=0.2)
    with torch.no_grad():
        m.weight.copy_(torch.linspace(0.5, 1.5, C))
        m.bias.copy_(torch.linspace(-1, 1, C))
    return m


def lengths_of(total, time):
    """0, 1, ..., time, 0, 1, ...: every length from empty to full."""
    return torch.arange(total, dtype=torch.int32) % (time + 1)


def run(m, x, dy, lengths=None):
    x = x.clone().requires_grad_()
    y = m(x) if lengths is None else m(x, lengths=lengths)
    y.backward(dy)
    return {"y": y.detach(), "dx": x.grad, "dweight": m.weight.grad, "dbias": m.bias.grad,
            "running_mean": m.running_mean, "running_var": m.running_var}


def worker(rank, world, port, sizes, channels_last, out_dir):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x, dy = batch(sum(sizes), channels_last)
        start = sum(sizes[:rank])
        part = slice(start, start + sizes[rank])
        m = module(ct.SyncBatchNorm)
        result = run(m, x[part], dy[part])
        result2 = run(m, x[part] * 0.5, dy[part])  # a second step: running statistics again
        result["running_mean2"], result["running_var2"] = result2["running_mean"], result2[
            "running_var"]
        lengths = lengths_of(sum(sizes), x.shape[-1])[part]
        masked = run(module(ct.SyncBatchNorm), x[part], dy[part], lengths)
        result.update({"masked_" + k: v for k, v in masked.items()})
        torch.save(result, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("sizes,channels_last", [([3, 5], False), ([3, 5], True),
                                                 ([2, 0, 4], False)])
def test_sync_batchnorm_equals_single_process_batchnorm(sizes, channels_last, tmp_path):
    world = len(sizes)
    mp.spawn(worker, args=(world, free_port(), sizes, channels_last, str(tmp_path)),
             nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"{r}.pt") for r in range(world)]
    x, dy = batch(sum(sizes), channels_last)
    single = module(ct.BatchNorm2d)
    want = run(single, x, dy)
    want2 = run(single, x * 0.5, dy)
    theirs = run(module(torch.nn.BatchNorm2d), x, dy)
    tol = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), want["y"], **tol)
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), theirs["y"], **tol)
    torch.testing.assert_close(torch.cat([r["dx"] for r in ranks]), want["dx"], **tol)
    torch.testing.assert_close(torch.cat([r["dx"] for r in ranks]), theirs["dx"], **tol)
    torch.testing.assert_close(sum(r["dweight"] for r in ranks), want["dweight"], **tol)
    torch.testing.assert_close(sum(r["dbias"] for r in ranks), want["dbias"], **tol)
    for r in ranks:
        torch.testing.assert_close(r["running_mean"], want["running_mean"], **tol)
        torch.testing.assert_close(r["running_var"], want["running_var"], **tol)
        torch.testing.assert_close(r["running_mean2"], want2["running_mean"], **tol)
        torch.testing.assert_close(r["running_var2"], want2["running_var"], **tol)
    # variable-length: the ranks' valid positions together are the whole batch's
    lengths = lengths_of(sum(sizes), x.shape[-1])
    want = run(module(ct.BatchNorm2d), x, dy, lengths)
    for k in ("y", "dx"):
        torch.testing.assert_close(torch.cat([r["masked_" + k] for r in ranks]), want[k], **tol)
    for k in ("dweight", "dbias"):
        torch.testing.assert_close(sum(r["masked_" + k] for r in ranks), want[k], **tol)
    for r in ranks:
        for k in ("running_mean", "running_var"):
            torch.testing.assert_close(r["masked_" + k], want[k], **tol)
