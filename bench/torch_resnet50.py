#!/usr/bin/env python3
"""Times a ResNet-50 training step (forward, backward, SGD step) with torch.nn.BatchNorm2d and with
cubn.torch's (the same model converted by cubn.torch.convert_batchnorm), on one GPU, channels_last,
under autocast (bf16 or fp16) or in fp32. Prints, and appends to --csv, the median milliseconds per
step of each and their ratio. Uses torchvision's resnet50 where installed, else the same network
built here (bottleneck blocks 3, 4, 6, 3). Needs the cubn package with its CUDA library
(pip install ./python where nvcc is found).

  python3 bench/torch_resnet50.py [--batch 64] [--size 224] [--steps 20] [--dtype bf16]
                                  [--modes eager,graph]

eager: each step launched from Python; graph: one step captured into a CUDA graph
(torch.cuda.graph, after a warm-up on a side stream as torch's docs ask) and replayed, which takes
the host's per-call cost out of the step.

--device cpu runs it on the CPU executor (a check that the script runs, not a timing)."""

import argparse
import copy
import statistics
import time

import torch

import cubn
import cubn.torch as ct


def bottleneck(cin, width, stride):
    cout = width * 4
    body = torch.nn.Sequential(
        torch.nn.Conv2d(cin, width, 1, bias=False), torch.nn.BatchNorm2d(width),
        torch.nn.ReLU(inplace=True),
        torch.nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False),
        torch.nn.BatchNorm2d(width), torch.nn.ReLU(inplace=True),
        torch.nn.Conv2d(width, cout, 1, bias=False), torch.nn.BatchNorm2d(cout))
    short = None
    if stride != 1 or cin != cout:
        short = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                    torch.nn.BatchNorm2d(cout))

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.short = body, short

        def forward(self, x):
            s = x if self.short is None else self.short(x)
            return torch.relu(self.body(x) + s)

    return Block()


def resnet50(classes=1000):
    try:
        import torchvision

        return torchvision.models.resnet50(num_classes=classes)
    except ImportError:
        pass
    layers = [torch.nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
              torch.nn.BatchNorm2d(64), torch.nn.ReLU(inplace=True),
              torch.nn.MaxPool2d(3, stride=2, padding=1)]
    cin = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            layers.append(bottleneck(cin, width, stride if i == 0 else 1))
            cin = width * 4
    layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(cin, classes)]
    return torch.nn.Sequential(*layers)


def time_steps(model, x, target, steps, dtype, device, graph=False):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    amp = dtype != torch.float32

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=amp):
            loss = torch.nn.functional.cross_entropy(model(x), target)
        loss.backward()
        opt.step()

    run = step
    if graph:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up off the capture
            for _ in range(3):
                step()
        torch.cuda.current_stream(device).wait_stream(side)
        captured = torch.cuda.CUDAGraph()
        with torch.cuda.graph(captured):
            step()
        run = captured.replay
    else:
        for _ in range(3):  # warm-up: cuDNN's algorithm search, the caching allocator
            step()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            run()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end))
        else:
            t = time.perf_counter()
            step()
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--csv", default=None)
    ap.add_argument("--modes", default="eager", help="eager, graph or both: eager,graph")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not cubn.has_cuda():
        raise SystemExit("cubn was built without its CUDA library: pip install ./python where "
                         "nvcc is found")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    torch.manual_seed(0)
    theirs = resnet50().to(device).to(memory_format=torch.channels_last)
    ours = ct.convert_batchnorm(copy.deepcopy(theirs))
    x = torch.randn(args.batch, 3, args.size, args.size, device=device).to(
        memory_format=torch.channels_last)
    target = torch.randint(0, 1000, (args.batch,), device=device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print("device,model,batch,size,dtype,torch_ms,cubn_ms,cubn/torch,mode")
    for mode in args.modes.split(","):
        graph = mode == "graph"
        if graph and device.type != "cuda":
            continue
        t_torch = time_steps(theirs, x, target, args.steps, dtype, device, graph)
        t_cubn = time_steps(ours, x, target, args.steps, dtype, device, graph)
        line = (f"{name},resnet50,{args.batch},{args.size},{args.dtype},{t_torch:.3f},"
                f"{t_cubn:.3f},{t_cubn / t_torch:.3f},{mode}")
        print(line)
        if args.csv:
            with open(args.csv, "a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
