#!/usr/bin/env python3
"""Host cost per call of cubn.torch against torch.nn, on a tiny tensor (BatchNorm2d(4) on 2x4x1x1
float32), where the host's work, not the kernel, sets the time.

  python3 bench/torch_overhead.py [--device cpu|cuda] [--csv FILE] [--calls N]

cpu (the default): CPU tensors; cubn's kernels are excluded through the CPU executor's measurement
switch CUBN_SIM_SKIP_KERNELS=1, which this script sets for itself before cubn's first call (every
launch is checked and counted, then returns without running: cubn's outputs are not computed, so
only the time means anything). torch.nn's time is its whole call, its CPU kernel on 8 values
included. cubn.torch's time is all its host work: the module's forward, the op's dispatch, the
checks, the workspace and outputs, cubn's planning and launch preparation.

cuda: CUDA tensors on the current device, both libraries' kernels running. "host" is the time the
host spends issuing N calls (a synchronization before, none during: the GPU runs behind); "wall"
adds a synchronization at the end, per call.

Rows: the training forward; training forward + backward (y.backward(dy), dy preallocated); the eval
forward; eval forward + backward (cubn's frozen backward; torch's native batch norm in eval mode).
cubn.torch exposes no fused activation, so there is no fused row. Each figure is the median over 11
rounds of N calls each, after a warm-up, torch's and cubn's rounds interleaved; ratio = cubn /
torch (at most 1: cubn's host cost is at most torch's). The native ops are used where the package
has them (cubn.torch.native_ops()); CUBN_TORCH_NATIVE=0 measures the Python ops over DLPack.
"""

import argparse
import csv
import os
import statistics
import sys
import time


def per_call_us(fns, calls, sync=None, rounds=11):
    """Microseconds per call of each of fns: the median over `rounds` rounds of `calls` calls,
    the functions' rounds interleaved (so that the machine's drift touches each alike)."""
    for fn in fns:
        for _ in range(max(1, calls // 10)):
            fn()
    if sync:
        sync()
    times = [[] for _ in fns]
    for _ in range(rounds):
        for fn, t in zip(fns, times):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            if sync:
                sync()
            t.append((time.perf_counter() - t0) / calls * 1e6)
    return [statistics.median(t) for t in times]


def host_only(fns, calls, sync, rounds=11):
    """Per call, the time to issue `calls` calls (synchronized before each round, not after)."""
    times = [[] for _ in fns]
    for _ in range(rounds):
        for fn, t in zip(fns, times):
            sync()
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            t.append((time.perf_counter() - t0) / calls * 1e6)
    sync()
    return [statistics.median(t) for t in times]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--csv", help="write the rows here")
    ap.add_argument("--calls", type=int, default=0,
                    help="calls per round (default 20000 on cpu, 1000 on cuda)")
    args = ap.parse_args()
    if args.device == "cpu":
        os.environ["CUBN_SIM_SKIP_KERNELS"] = "1"  # read at cubn's first launch

    import torch
    import cubn.torch as ct

    if args.device == "cuda" and not torch.cuda.is_available():
        print("torch_overhead: no CUDA device; run with --device cpu")
        return 2
    torch.set_num_threads(1)
    dev = torch.device(args.device)
    calls = args.calls or (20000 if args.device == "cpu" else 1000)
    x = torch.randn(2, 4, 1, 1, device=dev)
    xg = x.clone().requires_grad_()
    dy = torch.randn_like(x)
    sync = torch.cuda.synchronize if args.device == "cuda" else None

    def module(cls, training):
        m = cls(4).to(dev)
        m.train(training)
        return m

    def forward(m, inp):
        return lambda: m(inp)

    def forward_backward(m):
        def run():
            m(xg).backward(dy)
        return run

    rows = [
        ("train_forward", lambda cls: forward(module(cls, True), x)),
        ("train_forward_backward", lambda cls: forward_backward(module(cls, True))),
        ("eval_forward", lambda cls: forward(module(cls, False), x)),
        ("eval_forward_backward", lambda cls: forward_backward(module(cls, False))),
    ]
    kinds = [("host", None)] if args.device == "cpu" else [("host", None), ("wall", sync)]
    native = ct.native_ops()
    print(f"torch {torch.__version__}, device {args.device}, cubn.torch "
          f"{'native ops' if native else 'Python ops over DLPack'}, BatchNorm2d(4) on 2x4x1x1 "
          f"float32, {calls} calls x 11 rounds, median")
    if args.device == "cpu":
        print("cubn's kernels excluded (CUBN_SIM_SKIP_KERNELS=1); torch.nn's whole call")
    print(f"{'call':<24} {'time':<5} {'torch.nn us':>12} {'cubn.torch us':>14} {'ratio':>7}")
    out = []
    for name, make in rows:
        for kind, kind_sync in kinds:
            fns = [make(torch.nn.BatchNorm2d), make(ct.BatchNorm2d)]
            if kind == "host" and sync:  # the calls issued; the GPU runs behind
                t, c = host_only(fns, calls, sync)
            else:
                t, c = per_call_us(fns, calls, sync=kind_sync)
            print(f"{name:<24} {kind:<5} {t:12.2f} {c:14.2f} {c / t:7.2f}")
            out.append({"device": args.device, "call": name, "time": kind,
                        "torch_us": f"{t:.3f}", "cubn_us": f"{c:.3f}",
                        "ratio": f"{c / t:.3f}", "cubn_ops": "native" if native else "python",
                        "torch": torch.__version__})
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(out[0]))
            w.writeheader()
            w.writerows(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
