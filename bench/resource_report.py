#!/usr/bin/env python3
"""Resources of every kernel instantiation from ptxas -v logs: registers per thread, spills,
static shared memory, and the theoretical occupancy at the block size host/ launches with.

  ptxas_report.py [--check] [--block 256] [--min-occupancy 0.5] LOG...

Each LOG is the output of `nvcc -cubin -arch=sm_XX -Xptxas=-v` (CMake target cubn_ptxas_logs).
Prints a Markdown table. With --check, exits 1 when a kernel spills or its occupancy falls below
--min-occupancy: batch norm is memory-bound and needs enough warps in flight to hide latency.
The persistent kernels run at kPersistentBlocksPerSm blocks per SM (half an SM's shared memory
each holds their slice): they are held to keeping that many resident (--persistent-blocks).
The fused epilogue's map kernels (normalize with FusedAffine, dx with FusedDxOp) are compiled for
kFusedMapBlocksPerSm blocks (a second output or a third input beside the packs in flight), SiLU's
for kSiluMapBlocksPerSm, and held to that (--fused-map-blocks, --silu-map-blocks); so are the
reduction kernels geometry.hpp's reduce_blocks_per_sm compiles for fewer than kMinBlocksPerSm
(SiLU's; fp64's; the statistics kernels whose fused normalization has an epilogue).

A kernel's spills are its own plus those of the non-inlined functions ptxas lists after it (its
callees, e.g. BackwardFinish::finish): an earlier parser let a callee's "0 bytes spill" line
overwrite the kernel's own count, and missed spills of up to 240 bytes in 47 kernels.
"""
import argparse
import re
import subprocess
import sys

# Per-SM limits (CUDA C++ Programming Guide, compute capabilities table; occupancy calculator):
# registers, max resident threads, max resident blocks, shared memory per SM (bytes), shared
# memory the system reserves per block, register allocation unit (per warp).
LIMITS = {
    "sm_80": dict(regs=65536, threads=2048, blocks=32, smem=164 * 1024, reserved=1024, reg_unit=256),
    "sm_86": dict(regs=65536, threads=1536, blocks=16, smem=100 * 1024, reserved=1024, reg_unit=256),
    "sm_89": dict(regs=65536, threads=1536, blocks=24, smem=100 * 1024, reserved=1024, reg_unit=256),
    "sm_90": dict(regs=65536, threads=2048, blocks=32, smem=228 * 1024, reserved=1024, reg_unit=256),
    "sm_100": dict(regs=65536, threads=2048, blocks=32, smem=228 * 1024, reserved=1024, reg_unit=256),
}


def occupancy(arch, regs, smem, block):
    lim = LIMITS[arch]
    warps = (block + 31) // 32
    regs_per_warp = -(-regs * 32 // lim["reg_unit"]) * lim["reg_unit"]
    by_regs = lim["regs"] // (regs_per_warp * warps) if regs else lim["blocks"]
    by_threads = lim["threads"] // block
    by_smem = lim["smem"] // (smem + lim["reserved"]) if smem else lim["blocks"]
    blocks = min(by_regs, by_threads, by_smem, lim["blocks"])
    return blocks * warps / (lim["threads"] // 32), blocks


def parse(path):
    kernels = []
    current, own = None, False
    for line in open(path, encoding="utf-8", errors="replace"):
        m = re.search(r"Compiling entry function '(\S+)' for '(sm_\d+)'", line)
        if m:
            current = dict(mangled=m.group(1), arch=m.group(2), regs=0, smem=0, spill=0, stack=0)
            kernels.append(current)
            continue
        if current is None:
            continue
        # ptxas lists the kernel's own properties, then those of the non-inlined functions it
        # calls (e.g. BackwardFinish::finish): a callee's spills are the kernel's too, and must
        # not overwrite them
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            own = m.group(1) == current["mangled"]
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            if own:
                current["stack"] = int(m.group(1))
            current["spill"] += int(m.group(2)) + int(m.group(3))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current["regs"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            current["smem"] = int(s.group(1)) if s else 0
    return kernels


def demangle(names):
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True)
        return out.stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return names


def short(name):
    # the fused epilogue's activation, a template argument: its name, not a cast
    name = re.sub(r"\((?:cubn|cubn_sim)::kernels::Act\)(\d)",
                  lambda m: ("none", "relu", "silu")[int(m.group(1))], name)
    name = re.sub(r"^void ", "", name)
    name = name.replace("cubn::kernels::", "").replace("cubn_sim::kernels::", "")
    return re.sub(r"\(.*\)$", "", name)


def reduce_blocks(name, args):
    """The blocks per SM a reduction kernel (bn_stats_*, bn_backward_sums_*, and the split-phase
    calls' bn_stats_local_*, bn_backward_sums_local_*) is compiled for when
    that is below kMinBlocksPerSm (kernels/geometry.hpp's reduce_blocks_per_sm): SiLU's
    kSiluMapBlocksPerSm; fp64's and the statistics kernels' whose fused normalization applies an
    activation or a residual, kFusedMapBlocksPerSm. None for the others (held to the occupancy)."""
    m = re.match(r"bn_(stats|backward_sums)_(?:local_)?channels_\w+<([\w:]+), ", name)
    if not m:
        return None
    if ", silu," in name:
        return args.silu_map_blocks
    if m.group(2) == "double" or (m.group(1) == "stats" and "FusedAffine<" in name):
        return args.fused_map_blocks
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("logs", nargs="+")
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--min-occupancy", type=float, default=0.5)
    ap.add_argument("--persistent-blocks", type=int, default=2,
                    help="resident blocks the persistent (cooperative) kernels must keep per SM: "
                         "kPersistentBlocksPerSm; their occupancy is held to that instead")
    ap.add_argument("--fused-map-blocks", type=int, default=3,
                    help="resident blocks the fused epilogue's map kernels must keep per SM: "
                         "kFusedMapBlocksPerSm")
    ap.add_argument("--silu-map-blocks", type=int, default=2,
                    help="the same for SiLU's map kernels: kSiluMapBlocksPerSm")
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    kernels = [k for log in args.logs for k in parse(log)]
    if not kernels:
        print("no kernels found in", " ".join(args.logs))
        return 1
    for k, name in zip(kernels, demangle([k["mangled"] for k in kernels])):
        k["name"] = short(name)
    failures = 0
    print(f"| kernel | arch | registers | spill bytes | stack | static smem | occupancy at {args.block} threads |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for k in sorted(kernels, key=lambda k: (k["name"], k["arch"])):
        occ, blocks = occupancy(k["arch"], k["regs"], k["smem"], args.block)
        if "persistent" in k["name"]:  # designed for fewer, larger blocks: half an SM's smem each
            bad = k["spill"] > 0 or blocks < args.persistent_blocks
        elif re.match(r"bn_(normalize|backward_dx)_", k["name"]) and re.search(
                r"Fused(Affine|DxOp)<", k["name"]):
            want = args.silu_map_blocks if ", silu," in k["name"] else args.fused_map_blocks
            bad = k["spill"] > 0 or blocks < want
        elif reduce_blocks(k["name"], args) is not None:
            bad = k["spill"] > 0 or blocks < reduce_blocks(k["name"], args)
        else:
            bad = k["spill"] > 0 or occ < args.min_occupancy
        failures += bad
        print(f"| `{k['name']}` | {k['arch']} | {k['regs']} | {k['spill']} | {k['stack']} | {k['smem']} | "
              f"{occ:.0%} ({blocks} blocks){' **FAIL**' if bad else ''} |")
    print(f"\n{len(kernels)} kernel instantiations; {failures} spill or fall below "
          f"{args.min_occupancy:.0%} occupancy (persistent kernels: below {args.persistent_blocks} "
          f"resident blocks per SM; fused map kernels: below {args.fused_map_blocks})")
    return 1 if args.check and failures else 0


if __name__ == "__main__":
    sys.exit(main())
