"""What bench/resource_report.py and bench/sass_report.py share: finding the CUDA binary tools and
taking the cubins out of a built library, so that both read the very code the tests link (each
architecture compiled once, by the build) instead of compiling the sources again.

cuobjdump and nvdisasm: the toolkit here lacks them; .ci/run installs PyPI's nvidia-cuda-cuobjdump
and nvidia-cuda-nvdisasm. Found as: the explicit path, else $CUBN_CUOBJDUMP / $CUBN_NVDISASM, else
PATH, else beside this interpreter, else those packages in this interpreter.
"""
import os
import re
import shutil
import subprocess
import sys


def find_tool(name, explicit=None):
    if explicit:
        return explicit
    env = os.environ.get("CUBN_" + name.upper())
    if env:
        return env
    for cand in (shutil.which(name), os.path.join(os.path.dirname(sys.executable), name)):
        if cand and os.path.exists(cand):
            return cand
    try:  # the PyPI wheels nvidia-cuda-<tool>, installed into this interpreter
        import nvidia  # noqa: F401
        for base in nvidia.__path__:
            for sub in ("cu13", "cuda_" + name, "cu12"):
                cand = os.path.join(base, sub, "bin", name)
                if os.path.exists(cand):
                    return cand
    except ImportError:
        pass
    return None


def require_tool(name, explicit=None):
    """find_tool, or None after saying how to get it (the caller then exits 77: skipped)."""
    path = find_tool(name, explicit)
    if path is None:
        print(f"{name} not found: install the PyPI package nvidia-cuda-{name} (.ci/run does) or "
              f"set CUBN_{name.upper()}")
    return path


def extract_cubins(cuobjdump, library, outdir, archs):
    """The library's cubins (one per object file and architecture) for `archs` (e.g. ["sm_90"]),
    written into outdir; returns their paths, sorted. A fresh outdir each call: cuobjdump names
    them <object>.<n>.<arch>.cubin."""
    os.makedirs(outdir, exist_ok=True)
    for f in os.listdir(outdir):
        if f.endswith(".cubin"):
            os.remove(os.path.join(outdir, f))
    library = os.path.abspath(library)
    for arch in archs:
        subprocess.run([cuobjdump, "-xelf", arch, library], cwd=outdir, check=True,
                       capture_output=True, text=True)
    out = sorted(os.path.join(outdir, f) for f in os.listdir(outdir) if f.endswith(".cubin"))
    return [f for f in out if arch_of(f) in archs]


def arch_of(cubin):
    m = re.search(r"\.(sm_\d+a?)\.cubin$", os.path.basename(cubin)) or \
        re.search(r"(sm_\d+)", os.path.basename(cubin))
    return m.group(1) if m else "?"


def demangle(names):
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True,
                             check=True)
        return out.stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return names


def short(name):
    """A kernel's name without namespaces, return type and parameters; the fused epilogue's
    activation (a template argument) by name, not as a cast."""
    name = re.sub(r"\((?:cubn|cubn_sim)::kernels::Act\)(\d)",
                  lambda m: ("none", "relu", "silu")[int(m.group(1))], name)
    name = re.sub(r"^void ", "", name)
    name = re.sub(r"(cubn|cubn_sim)::kernels::", "", name)
    return re.sub(r"\(.*\)( const)?$", "", name)
