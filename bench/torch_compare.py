#!/usr/bin/env python3
"""cubn beside PyTorch on a GPU: the same inputs through both, and PyTorch's own times.

  bench/torch_compare.py --cubn-io build/.../bench/cubn_io --out OUTDIR [--quick] [--filter TEXT]

1. Agreement. For a set of shapes (ResNet-50 planes, odd planes, C = 100, BatchNorm1d) in fp32,
   fp16 and bf16 and both memory orders, writes x, dy and parameters to files, runs cubn_io (cubn's
   training and inference forward, backward and frozen backward) and PyTorch on the same values
   (torch.nn.functional.batch_norm, autograd), and compares both with a float64 computation on
   the same rounded inputs. Outputs (y, dx) are held to 2 ulp of the output dtype at max(|ref|, 1)
   for fp16/bf16 and to 32 ulp of max(|ref|, 1) for fp32 (tests/support/tolerance.hpp derives the
   executor tests' bounds; these are the same order); statistics and parameter gradients to a
   relative 1e-4 (fp32: 1e-5) of max(|ref|, 1). PyTorch's errors are printed beside cubn's.
   Writes OUTDIR/torch_compare.txt; exits 1 on any case out of bounds.
2. Timing. PyTorch's native CUDA batch norm (aten.native_batch_norm and its backward, so cuDNN's
   kernels are not what is timed) on the shapes cubn_bench times, median of CUDA-event times with
   the L2 flushed between repetitions. Writes OUTDIR/torch.csv (family,shape,dtype,order,call,
   torch_us), to be joined with cubn_bench's CSV; --filter times only the shapes cubn_bench's
   --filter with the same text times.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ULP_BITS = {"fp32": 23, "fp16": 10, "bf16": 7}

AGREEMENT = [(8, 64, 56, 56), (8, 256, 14, 14), (8, 512, 7, 7), (4, 40, 7, 7), (16, 100, 5, 3),
             (2048, 1024), (4, 3, 33, 33), (2, 16, 8, 8, 8)]

# cubn_bench's shapes (bench/cubn_bench.cu)
TIMING = [("resnet", (32, 64, 112, 112)), ("resnet", (32, 256, 56, 56)), ("resnet", (32, 512, 28, 28)),
          ("resnet", (32, 2048, 7, 7)), ("resnet", (256, 64, 112, 112)), ("resnet", (256, 256, 56, 56)),
          ("resnet", (256, 512, 28, 28)), ("resnet", (256, 2048, 7, 7)), ("bn1d", (65536, 1024)),
          ("small", (1, 64, 8, 8)), ("small", (8, 32, 16, 16)), ("3d", (16, 64, 64, 64, 64))]


def memory_format(order, rank):
    if order == "NCHW" or rank < 4:
        return torch.contiguous_format
    return torch.channels_last if rank == 4 else torch.channels_last_3d


def to_layout(t, order):
    """A contiguous tensor in the order's memory layout (channels-last for NHWC)."""
    return t.contiguous(memory_format=memory_format(order, t.dim()))


def raw_bytes(t, order):
    """The tensor's bytes in its memory order (as cubn reads them)."""
    if order == "NHWC" and t.dim() >= 3:
        t = t.movedim(1, -1)
    return t.contiguous().view(torch.uint8).cpu().numpy().tobytes()


def from_raw(data, shape, dtype, order):
    t = torch.frombuffer(bytearray(data), dtype=dtype)
    if order == "NHWC" and len(shape) >= 3:
        moved = (shape[0],) + tuple(shape[2:]) + (shape[1],)
        return t.view(moved).movedim(-1, 1)
    return t.view(shape)


def ulp_err(got, ref, bits):
    scale = ref.abs().clamp(min=1.0)
    ulp = torch.exp2(torch.floor(torch.log2(scale)) - bits)
    return ((got.double() - ref).abs() / ulp).max().item()


def rel_err(got, ref):
    return ((got.double() - ref).abs() / ref.abs().clamp(min=1.0)).max().item()


def reference(x, dy, w, b, rm, rv, eps, momentum):
    """float64 batch norm (training and inference, with gradients) on the rounded inputs."""
    xd = x.double().requires_grad_(True)
    wd = w.double().requires_grad_(True)
    bd = b.double().requires_grad_(True)
    rmd, rvd = rm.double().clone(), rv.double().clone()
    y = F.batch_norm(xd, rmd, rvd, wd, bd, training=True, momentum=momentum, eps=eps)
    dx, dw, db = torch.autograd.grad(y, (xd, wd, bd), dy.double())
    dims = [0] + list(range(2, x.dim()))
    mean = x.double().mean(dims)
    invstd = 1 / torch.sqrt(x.double().var(dims, unbiased=False) + eps)
    xf = x.double().requires_grad_(True)
    wf = w.double().requires_grad_(True)
    bf = b.double().requires_grad_(True)
    yi = F.batch_norm(xf, rm.double(), rv.double(), wf, bf, training=False, eps=eps)
    dxi, dwi, dbi = torch.autograd.grad(yi, (xf, wf, bf), dy.double())
    return dict(y_train=y.detach(), y_infer=yi.detach(), dx=dx, dscale=dw, doffset=db, smean=mean,
                sinvstd=invstd, rmean_out=rmd, rvar_out=rvd, dx_frozen=dxi, dscale_frozen=dwi,
                doffset_frozen=dbi)


def torch_results(x, dy, w, b, rm, rv, eps, momentum, order):
    xt = to_layout(x, order).requires_grad_(True)
    wt, bt = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    rmt, rvt = rm.clone(), rv.clone()
    y = F.batch_norm(xt, rmt, rvt, wt, bt, training=True, momentum=momentum, eps=eps)
    dx, dw, db = torch.autograd.grad(y, (xt, wt, bt), to_layout(dy, order))
    xi = to_layout(x, order).requires_grad_(True)
    wi, bi = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    yi = F.batch_norm(xi, rm.clone(), rv.clone(), wi, bi, training=False, eps=eps)
    dxi, dwi, dbi = torch.autograd.grad(yi, (xi, wi, bi), to_layout(dy, order))
    return dict(y_train=y, y_infer=yi, dx=dx, dscale=dw, doffset=db, rmean_out=rmt, rvar_out=rvt,
                dx_frozen=dxi, dscale_frozen=dwi, doffset_frozen=dbi)


def agree(cubn_io, out, quick):
    torch.manual_seed(0)
    lines, failures = [], 0
    eps, momentum = 1e-5, 0.1
    shapes = AGREEMENT[:4] if quick else AGREEMENT
    for shape in shapes:
        for name, dtype in DTYPES.items():
            for order in ("NCHW", "NHWC"):
                if order == "NHWC" and len(shape) == 2:
                    continue
                C = shape[1]
                bshape = [1, C] + [1] * (len(shape) - 2)
                mean = torch.randn(bshape, device="cuda") * 3
                sigma = torch.rand(bshape, device="cuda") * 2 + 0.1
                x = (torch.randn(shape, device="cuda") * sigma + mean).to(dtype)
                dy = torch.randn(shape, device="cuda").to(dtype)
                w = torch.rand(C, device="cuda") + 0.5
                b = torch.rand(C, device="cuda") - 0.5
                rm = torch.rand(C, device="cuda") - 0.5
                rv = torch.rand(C, device="cuda") + 0.5
                with tempfile.TemporaryDirectory() as d:
                    with open(os.path.join(d, "case.txt"), "w") as f:
                        f.write(f"{name} {order} {eps} {momentum} {' '.join(map(str, shape))}\n")
                    for fname, t in (("x", x), ("dy", dy)):
                        open(os.path.join(d, fname + ".bin"), "wb").write(raw_bytes(t, order))
                    for fname, t in (("scale", w), ("offset", b), ("rmean", rm), ("rvar", rv)):
                        open(os.path.join(d, fname + ".bin"), "wb").write(t.cpu().numpy().tobytes())
                    subprocess.run([cubn_io, d], check=True)
                    got = {}
                    for key in ("y_train", "y_infer", "dx", "dx_frozen"):
                        got[key] = from_raw(open(os.path.join(d, key + ".bin"), "rb").read(), shape, dtype, order)
                    for key in ("smean", "sinvstd", "rmean_out", "rvar_out", "dscale", "doffset",
                                "dscale_frozen", "doffset_frozen"):
                        got[key] = torch.frombuffer(bytearray(open(os.path.join(d, key + ".bin"), "rb").read()),
                                                    dtype=torch.float32)
                ref = {k: v.cpu() for k, v in reference(x, dy, w, b, rm, rv, eps, momentum).items()}
                th = {k: v.detach().cpu() for k, v in torch_results(x, dy, w, b, rm, rv, eps, momentum, order).items()}
                bits = ULP_BITS[name]
                tol_ulp = 2 if name != "fp32" else 32
                tol_rel = 1e-5 if name == "fp32" else 1e-4
                row = []
                bad = False
                for key in ("y_train", "y_infer", "dx", "dx_frozen"):
                    e_c, e_t = ulp_err(got[key], ref[key], bits), ulp_err(th[key], ref[key], bits)
                    bad |= e_c > tol_ulp
                    row.append(f"{key} {e_c:.2f}/{e_t:.2f} ulp")
                for key in ("smean", "sinvstd", "rmean_out", "rvar_out", "dscale", "doffset",
                            "dscale_frozen", "doffset_frozen"):
                    e_c = rel_err(got[key], ref[key])
                    e_t = rel_err(th[key], ref[key]) if key in th else float("nan")
                    bad |= e_c > tol_rel * (16 if key.startswith("d") else 1)
                    row.append(f"{key} {e_c:.1e}/{e_t:.1e}")
                failures += bad
                lines.append(f"{'FAIL' if bad else 'ok  '} {name} {order} {'x'.join(map(str, shape))}: "
                             + ", ".join(row))
                print(lines[-1], flush=True)
    head = ("cubn against float64 on the same rounded inputs (cubn/PyTorch): outputs in ulp of "
            "max(|ref|, 1) of the output dtype, statistics and gradients as relative errors")
    with open(os.path.join(out, "torch_compare.txt"), "w") as f:
        f.write(head + "\n" + "\n".join(lines) + f"\n{failures} of {len(lines)} cases out of bounds\n")
    return failures, len(lines)


def median_us(fn, reps, flush):
    times = []
    for _ in range(reps + 1):
        flush.zero_()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) * 1000)
    times = sorted(times[1:])
    return times[len(times) // 2]


def timing(out, quick, filter_text=""):
    """Times PyTorch's kernels on cubn_bench's shapes (those whose "family NxCx.. dtype order" key
    holds filter_text, as cubn_bench --filter); each row is written as it is measured, so a run
    stopped at its time limit keeps what it has."""
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    reps = 5 if quick else 20
    count = 0
    with open(os.path.join(out, "torch.csv"), "w") as f:
        f.write("family,shape,dtype,order,call,torch_us\n")
        for family, shape in TIMING:
            for name, dtype in DTYPES.items():
                if quick and shape[0] == 256 and name != "fp16":
                    continue
                for order in ("NCHW", "NHWC"):
                    if filter_text not in f"{family} {'x'.join(map(str, shape))} {name} {order}":
                        continue
                    try:
                        x = to_layout(torch.randn(shape, device="cuda", dtype=dtype), order)
                        dy = to_layout(torch.randn(shape, device="cuda", dtype=dtype), order)
                    except torch.OutOfMemoryError:
                        continue
                    C = shape[1]
                    w, b = torch.ones(C, device="cuda"), torch.zeros(C, device="cuda")
                    rm, rv = torch.zeros(C, device="cuda"), torch.ones(C, device="cuda")
                    eps = 1e-5
                    _, sm, si = torch.ops.aten.native_batch_norm(x, w, b, rm, rv, True, 0.1, eps)
                    calls = {
                        "forward_training": lambda: torch.ops.aten.native_batch_norm(x, w, b, rm, rv, True, 0.1, eps),
                        "forward_inference": lambda: torch.ops.aten.native_batch_norm(x, w, b, rm, rv, False, 0.1, eps),
                        "backward_training": lambda: torch.ops.aten.native_batch_norm_backward(
                            dy, x, w, rm, rv, sm, si, True, eps, [True, True, True]),
                    }
                    for call, fn in calls.items():
                        us = median_us(fn, reps, flush)
                        f.write(f"{family},{'x'.join(map(str, shape))},{name},{order},{call},{us:.2f}\n")
                        f.flush()
                        count += 1
                    del x, dy
                    torch.cuda.empty_cache()
    return count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cubn-io", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--filter", default="", help="time only the shapes whose key holds this text")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("torch_compare: no CUDA device for PyTorch")
        return 1
    failures, cases = agree(args.cubn_io, args.out, args.quick)
    print(f"agreement: {cases - failures} of {cases} cases within bounds")
    if not args.skip_timing:
        print(f"timing: {timing(args.out, args.quick, args.filter)} PyTorch measurements in {args.out}/torch.csv")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
