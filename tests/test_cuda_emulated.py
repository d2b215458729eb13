"""The CUDA kernels (cuda_ext/quant_lora_cuda.cu, quant_lora_mma.cu) run on the CPU emulator, no GPU needed.

cuda_ext/emulator/build.py compiles the kernels and their torch-free test program (cuda_ext/test_quant_lora_cuda.cu)
with the host C++ compiler: each block's threads run as fibers with real barriers, warp shuffles and mma.sync
fragments (the PTX ISA's layout), and cp.async copies land only when waited for (NaN until then). The program
checks every path (GEMV fast and generic, every template width, dequantize, the tensor-core blocks of every regime)
against its float64 definition, as it does on a GPU. `python cuda_ext/emulator/build.py --planted` shows the check
failing for planted kernel bugs (a missing barrier, a missing cp.async wait, a buffer restaged too early, a dropped
split-k warp, a wrong epilogue row, a wrong prefetch) and passing a neutral change. Skips where there is no C++
compiler or no CUDA toolkit headers.
"""
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.lesson13
ROOT = Path(__file__).resolve().parents[1]


def _emulator():
    spec = importlib.util.spec_from_file_location("minift_emulator_build", ROOT / "cuda_ext" / "emulator" / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_kernel_path_matches_the_float64_definition_on_the_emulator():
    emu = _emulator()
    if sys.platform == "win32":
        pytest.skip("the emulator's threads are POSIX ucontext fibers: not on Windows")
    if emu.cuda_include() is None or emu.compiler() is None:
        pytest.skip("no CUDA toolkit headers (cuda_bf16.h) or no C++ compiler here")
    with tempfile.TemporaryDirectory(prefix="minift-emu-test-") as tmp:
        exe = emu.build(Path(tmp))
        run = subprocess.run([str(exe), "--no-timings", "4"], capture_output=True, text=True, timeout=600)
    lines = run.stdout.splitlines()
    assert run.returncode == 0 and lines[-1] == "PASS", run.stdout[-3000:] + run.stderr[-2000:]
    assert not [line for line in lines if line.startswith("FAIL")]
    gemv = sum(line.startswith("PASS gemv") for line in lines)
    mma = sum(line.startswith("PASS mma") for line in lines)
    assert gemv >= 42 and mma >= 36, (gemv, mma)        # the hand-picked cases of both kernels all ran
