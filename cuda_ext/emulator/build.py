"""Build cuda_ext/test_quant_lora_cuda.cu with the CUDA kernels on the CPU emulator, and run it.

    python cuda_ext/emulator/build.py                  # build, then run the correctness part (12 random cases)
    python cuda_ext/emulator/build.py --random 150     # the GPU run's full set of random cases (a minute)
    python cuda_ext/emulator/build.py --big            # also the bench's shapes (4096 x 14336 ..., a few minutes)
    python cuda_ext/emulator/build.py --asan           # with AddressSanitizer: any read or write past a buffer
    python cuda_ext/emulator/build.py --planted        # planted bugs: each must fail the test, a neutral change pass

What it does: copies the kernels' sources (quant_lora_cuda.cu, quant_lora_mma.cu and their headers) and the test
program into a temporary folder, puts this folder's quant_lora_ptx.cuh (cp.async and mma.sync on the CPU) over the
real one, and rewrites the two things a host compiler cannot read: a launch `kernel<<<grid, block, smem,
stream>>>(args)` becomes `minift_emu::launch(minift_emu::Config(grid, block, smem, stream), kernel, args)`, and
`extern __shared__ T name[];` becomes a pointer to the emulated dynamic shared memory. The host C++ compiler then
builds it against the CUDA toolkit's headers (cuda_bf16.h, cuda_fp16.h, vector_types.h; no nvcc, no GPU, no
CUDA runtime) with this folder's cuda_runtime.h first on the include path (see that file for the execution
model). The test program then checks every kernel's output against its float64 definition, as on a GPU.

Needs a POSIX system (the threads are ucontext fibers), a C++17 compiler ($CXX, else c++ or g++) and a CUDA
toolkit's headers ($CUDA_HOME/include, or where nvcc is); exits 2 when the compiler or the headers are missing. Exit status otherwise: the test program's (0 = every case passed).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CUDA_EXT = HERE.parent
KERNELS = ["quant_lora_cuda.cu", "quant_lora_mma.cu"]
PROGRAM = "test_quant_lora_cuda.cu"

# kernel<<<config>>>(  ->  minift_emu::launch(minift_emu::Config(config), kernel,   (a template's <...> included)
LAUNCH = re.compile(r"(\b[A-Za-z_]\w*(?:<[^;{}()]*?>)?)\s*<<<(.*?)>>>\s*\(", re.S)
DYNAMIC_SHARED = re.compile(r"extern\s+__shared__\s+([\w:]+)\s+(\w+)\s*\[\s*\]\s*;")


def emulated(text: str) -> str:
    """A .cu file's text as the host compiler can read it."""
    text = LAUNCH.sub(lambda m: f"minift_emu::launch(minift_emu::Config({m.group(2).strip()}), {m.group(1)}, ", text)
    return DYNAMIC_SHARED.sub(lambda m: f"{m.group(1)}* {m.group(2)} = minift_emu::dynamic_smem<{m.group(1)}>();", text)


# Planted changes to the kernels: (name, file, text, replacement, is it a bug). Every bug must make the emulated
# test fail; the neutral change (another bijective swizzle, used by both the writes and the reads of the x tile)
# must pass: the emulator flags wrong results, not a different layout.
PLANTED = [
    ("mma: no cp.async wait before reading a tile", "quant_lora_mma.cu", "      cp_async_wait<1>();", "", True),
    ("mma: no barrier before a buffer is restaged", "quant_lora_mma.cu",
     "    __syncthreads();                                           // buffer i % 2 is read", "    //", True),
    ("mma: the split-k sum skips the last warp", "quant_lora_mma.cu", "for (int w = 1; w < WK; ++w)",
     "for (int w = 1; w < WK - 1; ++w)", True),
    ("mma: the epilogue writes row g where D holds row g+8", "quant_lora_mma.cu",
     "const int o = row0 + 16 * mt + mma::d_row(lane, e);", "const int o = row0 + 16 * mt + (lane >> 2);", True),
    ("gemv: no barrier between staging x and reading it", "quant_lora_cuda.cu",
     "0.f;\n    }\n    __syncthreads();", "0.f;\n    }\n", True),
    ("gemv: the prefetch loads the wrong chunk", "quant_lora_cuda.cu", "if (c + 32 < ct) load(c + 32);",
     "if (c + 32 < ct) load(c + 31);", True),
    ("neutral: another bijective swizzle of the x tile", "quant_lora_mma.cuh",
     "return v ^ (((v >> 3) & 1) | ((n & 1) << 1));", "return v ^ (((v >> 3) & 1) | ((n & 1) << 1)) ^ ((n >> 2) & 1);", False),
]


def planted() -> int:
    """Builds and runs the test once per entry of PLANTED; 0 when every bug failed and the neutral change passed."""
    wrong = 0
    for name, file, old, new, bug in PLANTED:
        with tempfile.TemporaryDirectory(prefix="minift-emu-planted-") as tmp:
            src = Path(tmp) / "src"
            shutil.copytree(CUDA_EXT, src, ignore=shutil.ignore_patterns("emulator"))
            text = (src / file).read_text()
            if old not in text:
                print(f"{name}: its text is no longer in {file}; update PLANTED")
                return 1
            (src / file).write_text(text.replace(old, new, 1))
            out = Path(tmp) / "out"
            out.mkdir()
            r = subprocess.run([str(build(out, src=src)), "--no-timings", "0"], capture_output=True, text=True)
            failed = sum(line.startswith("FAIL ") for line in r.stdout.splitlines())
            ok = (r.returncode != 0) == bug
            wrong += not ok
            print(f"{'ok ' if ok else 'BAD'} {name}: exit {r.returncode}, {failed} failing cases "
                  f"({'must fail' if bug else 'must pass'})", flush=True)
    return 1 if wrong else 0


def cuda_include() -> Path | None:
    """The CUDA toolkit's include folder (the one holding cuda_bf16.h), or None."""
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        homes.append(str(Path(nvcc).resolve().parents[1]))
    homes += ["/usr/local/cuda"] + sorted(str(p) for p in Path("/usr/local").glob("cuda-*"))
    for home in homes:
        if home and (Path(home) / "include" / "cuda_bf16.h").is_file():
            return Path(home) / "include"
    return None


def compiler() -> str | None:
    """The host C++ compiler ($CXX, else c++, else g++), or None."""
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")


def build(out: Path, asan: bool = False, src: Path = CUDA_EXT) -> Path:
    """Writes the emulated sources (of the kernels in `src`, default cuda_ext/) into `out` and compiles them;
    returns the executable. Raises FileNotFoundError without a compiler or the CUDA headers, RuntimeError with
    the compiler's message when the build fails."""
    inc, cxx = cuda_include(), compiler()
    if inc is None or cxx is None:
        raise FileNotFoundError("the CPU emulator needs a C++ compiler and a CUDA toolkit's headers (cuda_bf16.h)")
    for f in Path(src).iterdir():
        if f.suffix in (".h", ".cuh"):
            shutil.copy(f, out / f.name)
    shutil.copy(HERE / "quant_lora_ptx.cuh", out / "quant_lora_ptx.cuh")   # the emulated instructions
    sources = [str(HERE / "runtime.cpp")]
    for name in KERNELS + [PROGRAM]:
        dst = out / (name[:-3] + ".cpp")
        dst.write_text(emulated((Path(src) / name).read_text()))
        sources.append(str(dst))
    exe = out / "test_emulated"
    flags = ["-std=c++17", "-O1", "-g", "-ffp-contract=off", "-Wno-attributes"]
    if asan:
        flags += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    cmd = [cxx, *flags, f"-I{HERE}", f"-I{out}", f"-I{inc}", *sources, "-o", str(exe)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}\n{r.stderr[-6000:]}")
    return exe


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--random", type=int, default=12, help="random cases (the GPU run takes 150); default 12")
    ap.add_argument("--big", action="store_true", help="add the bench's shapes (4096 x 14336 ...; minutes)")
    ap.add_argument("--asan", action="store_true", help="build with AddressSanitizer and UBSan")
    ap.add_argument("--keep", metavar="DIR", help="build in DIR (kept) instead of a temporary folder")
    ap.add_argument("--planted", action="store_true", help="run the planted bugs of PLANTED instead (about 2 minutes)")
    args = ap.parse_args(argv)
    if args.planted:
        try:
            return planted()
        except FileNotFoundError as e:
            print(e, file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="minift-emu-") as tmp:
        out = Path(args.keep or tmp)
        out.mkdir(parents=True, exist_ok=True)
        try:
            exe = build(out, args.asan)
        except FileNotFoundError as e:
            print(e, file=sys.stderr)
            return 2
        except RuntimeError as e:
            print(f"the emulated build failed:\n{e}", file=sys.stderr)
            return 1
        env = dict(os.environ)
        if args.asan:   # fibers switch stacks: ASan's stack checks cannot follow them, its heap checks can
            env["ASAN_OPTIONS"] = "detect_stack_use_after_return=0:detect_leaks=0"
        cmd = [str(exe), "--no-timings", str(args.random)] + (["--big"] if args.big else [])
        return subprocess.run(cmd, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
