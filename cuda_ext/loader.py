"""Build and load cuda_ext (the fused quantized-LoRA matmul) with torch.utils.cpp_extension.load.

One translation unit for the CPU (quant_lora.cpp, -O3 -fopenmp, plus -mavx2 -mfma when both the compiler
and this CPU support them: otherwise the scalar path alone is compiled). Only when torch sees a GPU and
a CUDA toolkit with its headers (cuda_toolkit_problem says what is missing, when one is): two
more, quant_lora_cuda.cu (the GEMV and dequantize kernels) and quant_lora_mma.cu (the tensor-core kernel),
which ninja compiles in parallel, with their headers (the interface quant_lora_cuda.h, which
quant_lora.cpp then includes, quant_lora_common.cuh, quant_lora_mma.cuh and quant_lora_ptx.cuh).

The build is cached outside the repository: $MINIFT_EXT_DIR, else $XDG_CACHE_HOME/minift/cuda_ext,
else ~/.cache/minift/cuda_ext: one sub-folder per flag set and content of the sources, which are
copied into it, so every checkout with the same sources (a second clone, CI's fresh one) shares one
build, and checkouts with different sources never rebuild each other's. The first build takes a
minute on a 2-core machine; later loads take about a second. `minift.quant.ops` calls `load()` once, lazily,
and falls back to the pure-PyTorch reference if it raises.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
NAME = "minift_quant_lora"
BUILD_NOTE = "building the C++ extension (one time, ~40 s)"


def built(build: Path, name: str) -> bool:
    """Is the module already compiled in `build` (so load() only imports it, in about a second)?"""
    return any(build.glob(name + ".*so")) or any(build.glob(name + ".pyd"))


def cache_dir() -> Path:
    if os.environ.get("MINIFT_EXT_DIR"):
        return Path(os.environ["MINIFT_EXT_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "minift" / "cuda_ext"


def _cpu_has_avx2_fma() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


def _compiler_accepts(flags: list[str]) -> bool:
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return False
    r = subprocess.run([cxx, *flags, "-x", "c++", "-E", "-"], input="", capture_output=True, text=True)
    return r.returncode == 0


def flags() -> list[str]:
    """-O3 and -fopenmp (at::parallel_for is an OpenMP loop: without the flag it runs on one thread),
    plus -mavx2 -mfma when this CPU has them and the compiler takes them, plus $MINIFT_EXT_CFLAGS
    (e.g. "-fsanitize=address -fno-omit-frame-pointer" for an AddressSanitizer build: give it its own
    MINIFT_EXT_DIR, and run python with ASAN_OPTIONS=detect_leaks=0 and LD_PRELOAD="$(gcc
    -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)": without libstdc++ preloaded,
    ASan finds no __cxa_throw to forward to and aborts at the first TORCH_CHECK that raises)."""
    f = ["-O3"] + (["-fopenmp"] if _compiler_accepts(["-fopenmp"]) else [])
    if os.environ.get("MINIFT_EXT_SCALAR") != "1" and _cpu_has_avx2_fma() and _compiler_accepts(["-mavx2", "-mfma"]):
        f += ["-mavx2", "-mfma"]
    return f + os.environ.get("MINIFT_EXT_CFLAGS", "").split()


# The CUDA build's files: its two sources, then the headers they include (tests/test_ops.py checks that
# every local #include of these and of quant_lora.cpp is listed, so none is missing on a GPU machine).
CUDA_FILES = ["quant_lora_cuda.cu", "quant_lora_mma.cu", "quant_lora_cuda.h", "quant_lora_common.cuh",
              "quant_lora_mma.cuh", "quant_lora_ptx.cuh"]


def nvcc_toolkit() -> Optional[str]:
    """The CUDA toolkit folder of the `nvcc` on PATH, as nvcc itself reports it (`nvcc -dryrun` prints
    `TOP=<its bin>/..`), when that folder holds the CUDA headers; else None."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        r = subprocess.run([nvcc, "-dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                           capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    for line in (r.stdout + r.stderr).splitlines():
        if line.startswith("#$ TOP="):
            top = Path(line.split("=", 1)[1].strip().strip('"')).resolve()
            return str(top) if (top / "include" / "cuda_runtime_api.h").is_file() else None
    return None


def cuda_toolkit_problem(cuda_home: Optional[str]) -> Optional[str]:
    """Why the CUDA kernels cannot be compiled with torch's CUDA_HOME, or None when they can.

    torch takes CUDA_HOME from the environment, else two folders above the `nvcc` on PATH. Where that
    nvcc is a wrapper script (/usr/local/bin/nvcc running /usr/local/cuda-13.0/bin/nvcc), the guess is
    /usr/local, which has no CUDA headers, and the build would fail on the first #include; the answer
    then names the toolkit nvcc itself uses, for CUDA_HOME."""
    if not cuda_home:
        return "torch found no CUDA toolkit (no nvcc on PATH and no CUDA_HOME)"
    if (Path(cuda_home) / "include" / "cuda_runtime_api.h").is_file():
        return None
    top = nvcc_toolkit()
    fix = f"the nvcc on PATH uses {top}: export CUDA_HOME={top}" if top else "set CUDA_HOME to the CUDA toolkit"
    return f"torch's CUDA_HOME={cuda_home} has no include/cuda_runtime_api.h; {fix}"


def plan() -> tuple[str, list[str], list[str], Path]:
    """What load() builds: (module name, files, compiler flags, build folder). files: the sources the
    compiler gets, then the headers they include (copied and hashed, not compiled). The folder is
    named by the flag set and a hash of the torch version, the flags and the files' bytes."""
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    cflags = flags()
    files = ["quant_lora.cpp"]
    cuda = torch.cuda.is_available() and cuda_toolkit_problem(CUDA_HOME) is None
    if cuda:                                                   # the CUDA kernels and their interface
        files += CUDA_FILES
        cflags.append("-DMINIFT_WITH_CUDA")
    tag = ("_avx2" if "-mavx2" in cflags else "_scalar") + ("_cuda" if cuda else "")
    digest = hashlib.sha256(repr((torch.__version__, cflags)).encode())
    for f in files:
        digest.update((HERE / f).read_bytes())
    return NAME + tag, files, cflags, cache_dir() / f"{NAME}{tag}-{digest.hexdigest()[:12]}"


def load(verbose: bool = False):
    """Build (or reuse the cached build) and import the extension module. Raises on any failure."""
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, load as _load

    name, files, cflags, build = plan()
    cuda = "-DMINIFT_WITH_CUDA" in cflags
    build.mkdir(parents=True, exist_ok=True)
    if not built(build, name):
        print(BUILD_NOTE, file=sys.stderr, flush=True)
        if not cuda and torch.cuda.is_available():
            print(f"  without its CUDA kernels: {cuda_toolkit_problem(CUDA_HOME)}", file=sys.stderr, flush=True)
    with _build_lock(build):
        sources = []
        for f in files:                                        # the build reads these copies, not the checkout
            dst = build / "src" / f
            if not dst.is_file() or dst.read_bytes() != (HERE / f).read_bytes():
                dst.parent.mkdir(exist_ok=True)
                shutil.copyfile(HERE / f, dst)
            if not f.endswith((".h", ".cuh")):                 # a header is included, not compiled
                sources.append(str(dst))
        return _load(name=name, sources=sources, extra_cflags=cflags,
                     extra_ldflags=[f for f in cflags if f == "-fopenmp" or f.startswith("-fsanitize")] or None,
                     extra_cuda_cflags=["-O3"] if cuda else None, build_directory=str(build), verbose=verbose)


@contextmanager
def _build_lock(build: Path):
    """One build at a time, by a lock the OS releases when its holder dies.

    torch's own lock is a plain file (`build/lock`) that a build killed half-way (Ctrl-C, a
    timeout) leaves behind, and every later load then waits for it forever. Holding our lock
    means no other minift build is running, so such a file is stale: remove it first."""
    try:
        import fcntl
    except ImportError:                                        # not POSIX: torch's lock alone
        yield
        return
    with open(build / ".minift-build.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        try:
            (build / "lock").unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(guard, fcntl.LOCK_UN)
