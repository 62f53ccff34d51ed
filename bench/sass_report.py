#!/usr/bin/env python3
"""The instruction budget of cubn's streaming kernels, read from their SASS.

  sass_report.py [--check] [--budget 64] [--min-in-flight 4] [--arch sm_90]... INPUT...

Each INPUT is a cubin, or a built library or object (build/ci/host/libcubn.a) whose cubins for the
--arch architectures cuobjdump takes out (into --workdir): the code the tests link, each
architecture compiled once by the build. nvdisasm turns each kernel into SASS; for every kernel the
tool finds its streaming loops and reports, per iteration of each:

  - instructions, and instructions per 16 bytes of global traffic (the bytes of every LDG/STG in
    the loop body, so per-channel coefficient loads count too);
  - the widths of those accesses, and the 16-byte ones;
  - MUFU instructions, calls (the slow paths of IEEE division, reciprocal and square root), and
    integer divisions (32-bit: the I2F.U32.RP of the inline sequence; 64-bit: a call to the
    div_s64/div_u64/rem_s64/rem_u64 routines);
  - independent 16-byte loads in flight per thread: the 16-byte loads issued before any
    instruction reads a register one of them wrote.

A masked kernel's loop (cubn::Lengths) is also given per 16 bytes of what its unmasked twin's loop
(the kernel of the same name without Masked<>: the loop with the same 16-byte loads) moves: a
masked visit moves at most those bytes, and its own accesses count length loads and both a pack's
store and its lane-by-lane stores, of which one runs. The masked loops' budget is held to that
figure (issue 24), not yet by --check.

A loop is a backward branch and the code between its target and it; the streaming loops are the
innermost loops with at least four 16-byte loads per iteration (a kernel's main loops: the
statistics kernels also hold the fused normalization's). Tail and edge loops, which finish what the
main loops leave, move one or two vectors an iteration and are listed nowhere. Every instruction
between the target and the branch counts, including rarely taken paths, so the figure is an upper
bound.

Why 64: an H100 delivers about 12.8 bytes per SM per cycle and issues at most 4 warp-instructions
per SM per cycle, so a warp-iteration moving 512 bytes (32 lanes x 16 bytes) must cost under 160
instructions; a B200 delivers about 27 bytes per SM per cycle, under 75. 64 per 16 bytes leaves
room for the issue slots the memory pipeline itself takes.

With --check, exits 1 when a kernel that a benchmark shape with aligned pointers takes (the
16-byte instantiations for fp32, fp16 and bf16, fused or not) has no streaming loop, or one over
the budget,
with fewer 16-byte loads in flight than --min-in-flight, or dividing 64-bit integers. The scalar
path for misaligned pointers, fp64 and the variable-length batches' masked kernels (not yet within
it) are reported but not held to it; with --check they are not
disassembled at all (nvdisasm -fun with the held kernels' symbols, found by readelf; a cubin that
holds none is skipped): the check reads what it holds in about half the time (CI's sass_budget).

nvdisasm and cuobjdump: --nvdisasm/--cuobjdump, else $CUBN_NVDISASM/$CUBN_CUOBJDUMP, else PATH,
else the PyPI packages nvidia-cuda-nvdisasm and nvidia-cuda-cuobjdump in this interpreter
(bench/cubin_tools.py). Without them the tool exits 77 (CTest reports the test as skipped).
"""
import argparse
import concurrent.futures
import os
import re
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
from cubin_tools import arch_of, demangle, extract_cubins, require_tool  # noqa: E402

INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?);")
LABEL = re.compile(r"^(\.L_x_\d+):")
FUNC = re.compile(r"^\s*\.section\s+\.text\.(\S+?),")
REG = re.compile(r"\bR(\d+)(?:\.64)?\b")


def function_symbols(cubin):
    """(symbol index, mangled name) of every function symbol of a cubin (readelf, binutils)."""
    out = subprocess.run(["readelf", "-Ws", "--wide", cubin], capture_output=True, text=True,
                         check=True)
    syms = []
    for line in out.stdout.splitlines():
        f = line.split()
        if len(f) >= 8 and f[0].endswith(":") and f[3] == "FUNC":
            syms.append((int(f[0][:-1]), f[-1]))
    return syms


def held_symbols(cubin):
    """The symbol indices of the cubin's held kernels (nvdisasm -fun's argument)."""
    syms = function_symbols(cubin)
    names = demangle([m for _, m in syms])
    return [i for (i, _), name in zip(syms, names) if held(short(name))]


def disassemble(nvdisasm, cubin, only=None):
    """The cubin's functions as {section name: instructions and labels}; `only`: symbol indices
    to restrict it to (None: all)."""
    cmd = [nvdisasm, "-c", cubin]
    if only is not None:
        cmd[2:2] = ["-fun", ",".join(str(i) for i in only)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    funcs, current = {}, None
    for line in out.stdout.splitlines():
        m = FUNC.match(line)
        if m:
            current = funcs.setdefault(m.group(1), {"insns": [], "labels": {}})
            continue
        if current is None:
            continue
        m = LABEL.match(line.strip())
        if m:
            current["labels"][m.group(1)] = len(current["insns"])
            continue
        m = INSN.search(line)
        if m:
            text = re.sub(r"^@!?U?P\w+\s+", "", m.group(2).strip())
            current["insns"].append((int(m.group(1), 16), text, m.group(2).strip()))
    return funcs


def width(op):
    m = re.search(r"\.(8|16|32|64|128|256)\b", op)
    if m:
        return int(m.group(1)) // 8
    if re.search(r"\.U8|\.S8", op):
        return 1
    if re.search(r"\.U16|\.S16", op):
        return 2
    return 4


def is_global(op):
    return op.startswith(("LDG", "STG"))


def loops(f):
    out = []
    for i, (_, text, _) in enumerate(f["insns"]):
        if not text.startswith("BRA"):
            continue
        m = re.search(r"(\.L_x_\d+)", text)
        if m and m.group(1) in f["labels"] and f["labels"][m.group(1)] <= i:
            out.append((f["labels"][m.group(1)], i))
    return out


def loop_stats(f, lo, hi):
    body = [t for _, t, _ in f["insns"][lo:hi + 1] if not t.startswith("NOP")]
    widths, traffic, mufu, div32, div64, slow = {}, 0, 0, 0, 0, 0
    for t in body:
        op = t.split()[0]
        if is_global(t):
            w = width(op)
            widths[w] = widths.get(w, 0) + 1
            traffic += w
        if op.startswith("MUFU"):
            mufu += 1
        if op.startswith("I2F.U32.RP") or op.startswith("I2F.RP"):
            div32 += 1
        if op.startswith("CALL") and re.search(r"(div|rem)_[su]64", t):
            div64 += 1
        elif op.startswith("CALL"):
            slow += 1
    # 16-byte loads issued before any instruction reads what one of them wrote
    pending, in_flight = set(), 0
    for t in body:
        op = t.split()[0]
        operands = t[len(op):].split(",")
        if op.startswith("LDG") and width(op) == 16:
            dest = REG.search(operands[0])
            if dest:
                base = int(dest.group(1))
                pending.update(range(base, base + 4))
                in_flight += 1
            continue
        srcs = operands if op.startswith(("STG", "ST", "RED", "ATOM")) else operands[1:]
        if any(int(r) in pending for s in srcs for r in REG.findall(s)):
            break
    return dict(instructions=len(body), traffic=traffic, widths=widths, mufu=mufu, div32=div32,
                div64=div64, slow=slow, in_flight=in_flight, vec=widths.get(16, 0),
                loads16=sum(1 for t in body if t.split()[0].startswith("LDG") and
                            width(t.split()[0]) == 16))


def streaming_loops(f):
    """The innermost loops with at least 4 sixteen-byte global loads per iteration: a kernel's
    main loops (the statistics kernels also have the fused normalization's); the tail and edge
    loops that finish what they leave load one or two vectors an iteration (and store one or two:
    dx and dz) and are not held. A kernel without such a loop is judged by its innermost loop with
    the most 16-byte accesses."""
    spans = loops(f)
    inner = [(lo, hi) for lo, hi in spans
             if not any((l2, h2) != (lo, hi) and lo <= l2 and h2 <= hi for l2, h2 in spans)]
    stats = [loop_stats(f, lo, hi) for lo, hi in sorted(set(inner))]
    out = [a for a in stats if a["loads16"] >= 4]
    if not out:  # a kernel that never has four in flight: its busiest 16-byte loop, to judge it by
        vec = [a for a in stats if a["vec"] > 0]
        out = [max(vec, key=lambda a: (a["vec"], a["traffic"]))] if vec else []
    return out


def short(name):
    # the fused epilogue's activation, a template argument: its name, not a cast
    name = re.sub(r"\((?:cubn|cubn_sim)::kernels::Act\)(\d)",
                  lambda m: ("none", "relu", "silu")[int(m.group(1))], name)
    name = re.sub(r"^void ", "", name)
    name = re.sub(r"(cubn|cubn_sim)::kernels::", "", name)
    name = name.replace("__nv_bfloat16", "bf16").replace("__half", "fp16")
    return re.sub(r"\(.*\)$", "", name)


def element_type(name):
    m = re.search(r"<(\w+), (\d+)", name)
    return (m.group(1), int(m.group(2))) if m else (None, 0)


def masked(name):
    """The variable-length batches' kernels (ops wrapped in Masked<>, kernels/lengths.cuh)."""
    return "Masked<" in name


def unmasked_name(name):
    """The name of a masked kernel's unmasked twin: every Masked<X> of its name written X."""
    while (i := name.find("Masked<")) >= 0:
        depth, j = 1, i + len("Masked<")
        while depth:
            depth += {"<": 1, ">": -1}.get(name[j], 0)
            j += 1
        name = name[:i] + name[i + len("Masked<"):j - 1].rstrip() + name[j:]
    return name


def twin_bytes(loop, twin):
    """The global bytes of the twin's loop that moves what `loop` moves (the same 16-byte loads,
    then the nearest count of 16-byte accesses), or None without a twin."""
    if not twin:
        return None
    best = min(twin, key=lambda t: (abs(t["loads16"] - loop["loads16"]),
                                    abs(t["vec"] - loop["vec"])))
    return best["traffic"]


def held(name):
    """Kernels that a benchmark shape with aligned pointers takes: the 16-byte vector
    instantiations (V = 16 bytes of T) of fp32, fp16 and bf16 (bench/cubn_bench.cu's dtypes),
    the fused epilogue's included. Not yet the masked ones (cubn::Lengths): their loops are
    reported; per 16 B of their twins' bytes the streaming maps' are within the budget or nearly,
    their lane-by-lane copies, the sums', the Welford statistics' and the persistent kernels' not
    yet, and some masked kernels spill (issue 24 leaves that to do; README)."""
    t, v = element_type(name)
    return (t, v) in {("float", 4), ("fp16", 8), ("bf16", 8)} and not masked(name)


def not_held(name):
    return " (not held: masked, cubn::Lengths)" if masked(name) else " (not held: scalar path or fp64)"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--arch", action="append", default=[],
                    help="the architectures to take from a library (sm_90, ...)")
    ap.add_argument("--workdir", help="where a library's cubins go (default: a temporary folder)")
    ap.add_argument("--cuobjdump")
    ap.add_argument("--budget", type=float, default=64)
    ap.add_argument("--min-in-flight", type=int, default=4)
    ap.add_argument("--nvdisasm")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--masked-summary", action="store_true",
                    help="after the table, the masked loops of the held dtypes per kernel and "
                         "architecture, against the budget per 16 B of their twins' bytes")
    args = ap.parse_args()
    nvdisasm = require_tool("nvdisasm", args.nvdisasm)
    if nvdisasm is None:
        return 77
    cubins = [i for i in args.inputs if i.endswith(".cubin")]
    libraries = [i for i in args.inputs if not i.endswith(".cubin")]
    if libraries:
        cuobjdump = require_tool("cuobjdump", args.cuobjdump)
        if cuobjdump is None:
            return 77
        if not args.arch:
            print("--arch: which architectures to take from", " ".join(libraries))
            return 2
        workdir = args.workdir or tempfile.mkdtemp(prefix="cubn-sass-")
        for i, lib in enumerate(libraries):
            got = extract_cubins(cuobjdump, lib, os.path.join(workdir, str(i)), args.arch)
            missing = [a for a in args.arch if a not in {arch_of(c) for c in got}]
            if missing:
                print(f"{lib} holds no cubin for {' '.join(missing)}")
                return 1
            cubins += got
    rows = []
    only = {c: None for c in cubins}
    if args.check:  # what the check holds, alone
        only = {c: held_symbols(c) for c in cubins}
        cubins = [c for c in cubins if only[c]]
    # nvdisasm of the cubins in parallel (one process each, as many at once as there are CPUs)
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        disassembled = list(pool.map(lambda c: disassemble(nvdisasm, c, only[c]), cubins))
    for cubin, funcs in zip(cubins, disassembled):
        names = demangle(list(funcs))
        for (mangled, f), name in zip(funcs.items(), names):
            rows.append((short(name), arch_of(cubin), streaming_loops(f)))
    rows.sort(key=lambda r: (r[0], r[1]))
    failures = 0
    # a masked loop's visit moves at most what its unmasked twin's moves (the valid bytes of the
    # same packs): its budget is per 16 B of those bytes, not of its own accesses, which count
    # the length loads and both a pack's store and its lane-by-lane stores
    loops_of = {(name, arch): found for name, arch, found in rows}
    masked_loops = masked_over = 0
    summary = {}  # (kernel, arch): [loops, over the budget, most per 16 B of the twin's bytes]
    print("| kernel | arch | loop | instructions | global bytes | instructions per 16 B | "
          "access widths (bytes x count) | 16-B loads in flight | MUFU | calls | int div 32/64 | "
          "instructions per 16 B of the unmasked loop's bytes |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, arch, found in rows:
        hold = held(name)
        if not found:
            bad = hold
            failures += bad
            note = " **FAIL**" if bad else " (no 16-byte loop: scalar path, not held)"
            print(f"| `{name}` | {arch} | none | | | | | | | | | |{note}")
            continue
        for i, a in enumerate(found):
            per16 = a["instructions"] * 16 / a["traffic"]
            bad = hold and (per16 > args.budget or a["in_flight"] < args.min_in_flight or a["div64"])
            failures += bool(bad)
            widths = " ".join(f"{w}x{n}" for w, n in sorted(a["widths"].items()))
            note = " **FAIL**" if bad else ("" if hold else not_held(name))
            twin = ""
            if masked(name):
                tb = twin_bytes(a, loops_of.get((unmasked_name(name), arch)))
                if tb:
                    per_twin = a["instructions"] * 16 / tb
                    over = per_twin > args.budget
                    twin = f"{per_twin:.1f}"
                    masked_loops += 1
                    masked_over += over
                    if element_type(name) in {("float", 4), ("fp16", 8), ("bf16", 8)}:
                        e = summary.setdefault((name.split("<")[0], arch), [0, 0, 0.0])
                        e[0] += 1
                        e[1] += over
                        e[2] = max(e[2], per_twin)
            print(f"| `{name}` | {arch} | {i + 1} | {a['instructions']} | {a['traffic']} | {per16:.1f} | "
                  f"{widths} | {a['in_flight']} | {a['mufu']} | {a['slow']} | "
                  f"{a['div32']}/{a['div64']} | {twin} |{note}")
    print(f"\n{len(rows)} kernels; {failures} loops of held kernels over {args.budget:g} instructions "
          f"per 16 bytes, under {args.min_in_flight} 16-byte loads in flight, or dividing 64-bit "
          f"integers (or held kernels without a streaming loop)")
    if masked_loops:
        print(f"{masked_loops} loops of masked kernels beside their unmasked twins; {masked_over} "
              f"over {args.budget:g} instructions per 16 bytes of the twin's loop")
    if args.masked_summary and summary:
        print(f"\nMasked loops of the 16-byte fp32, fp16 and bf16 kernels, per 16 B of their "
              f"twins' bytes:\n\n| kernel | arch | loops | over {args.budget:g} | most |\n"
              "| --- | --- | --- | --- | --- |")
        for (kernel, arch), (n, over, most) in sorted(summary.items()):
            print(f"| `{kernel}` | {arch} | {n} | {over} | {most:.1f} |")
        n, over = (sum(e[i] for e in summary.values()) for i in (0, 1))
        print(f"| all | | {n} | {over} | |")
    empty = [a for a in sorted({arch_of(c) for c in cubins} | set(args.arch))
             if not any(held(n) and arch == a for n, arch, _ in rows)]
    if args.check and empty:  # a check that found nothing to hold would pass whatever the code
        print(f"no held kernel found for {' '.join(empty)}")
        return 1
    return 1 if args.check and failures else 0


if __name__ == "__main__":
    sys.exit(main())
