#!/usr/bin/env bash
# The GPU check of issue 21, as ONE command for a lent GPU machine (device time is scarce: this ends within
# ~9 minutes even when a stage hangs). Stages, most valuable first, each under its own `timeout`:
#
#   info         versions, nvidia-smi, the GPU torch sees
#   install      pip install -e ".[test]", only if minift/pytest/hypothesis do not import (no internet: goes on)
#   build        the extension with CUDA (cuda_ext/loader.py, verbose log), timed
#   kernel_test  cuda_ext/test_mma_layout.cu (the tensor-core layout, on the CPU), then
#                cuda_ext/test_quant_lora_cuda.cu (plain CUDA, no torch): nvcc it and run it (beside the build)
#   gpu_tests    the GPU tests (kernel, device, ops, method contract, bench, figures, heads), junit XML
#   bench        minift bench kernels --device cuda  ->  $OUT/bench_kernels.txt (+ .json: every row, the verdicts)
#   mma_auto     where the bench names a batch for MMA_AUTO_MIN_N: the kernel tests again with the automatic
#                choice taking the tensor cores from it (MINIFT_MMA_AUTO_MIN_N, no rebuild), junit XML
#   lessons      every lesson's walkthrough --fast --figures --device cuda (figures: when matplotlib
#                imports), each under its own timeout
#   suite        the whole test suite (pytest-xdist -n 8 if it imports), junit XML; whatever time is left
#
#   OUT=/some/dir bash .ci/gpu_check.sh     everything goes to $OUT (default ./gpu_check_out): one log per
#                                           stage, summary.txt (each stage's status and seconds), junit XML
#   MINIFT_GPU_CHECK_CPU=1                  where there is no GPU, run the stages that mean something on a
#                                           CPU anyway (build for the CPU, compile the test program, the
#                                           tests on their cpu parameters, `--device cuda` refused, the
#                                           lessons on cpu); without it, no GPU = one line and exit 2
#   MINIFT_GPU_CHECK_STAGES=build,bench     only these stages (info always runs); the suite runs on a CPU
#                                           only when named here
#   MINIFT_GPU_CHECK_BUDGET=540             seconds for the whole script; a stage gets min(its cap, what is left)
#   MINIFT_GPU_CHECK_LESSONS='1[23]_*'      only these lesson folders (a glob; default all); 90 s each at most
#                                           (MINIFT_GPU_CHECK_LESSON_LIMIT)
#
# Exit status: 0 every stage that ran passed, 1 some stage failed or timed out, 2 no GPU (and no CPU flag).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export OUT
export OMP_NUM_THREADS=1 CI="${CI:-1}" PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"           # minift imports from this checkout, installed or not
export MINIFT_EXT_DIR="${MINIFT_EXT_DIR:-${TMPDIR:-/tmp}/minift_gpu_check_ext}"   # reused by a rerun
PY="${PYTHON:-python}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
export PY
if [[ -z "${CUDA_HOME:-}" ]] && ! command -v nvcc >/dev/null 2>&1 && [[ -x /usr/local/cuda/bin/nvcc ]]; then
    export CUDA_HOME=/usr/local/cuda PATH="/usr/local/cuda/bin:$PATH"
fi
# torch guesses CUDA_HOME as two folders above the nvcc on PATH: for a wrapper script (/usr/local/bin/nvcc
# exec-ing the real one) that is /usr/local, without the CUDA headers, and the build stage would build no CUDA.
# Take the toolkit that nvcc itself reports (cuda_ext/loader.py's nvcc_toolkit).
if [[ -z "${CUDA_HOME:-}" ]] && command -v nvcc >/dev/null 2>&1; then
    home=$("$PY" -c 'import importlib.util as u; s = u.spec_from_file_location("loader", "cuda_ext/loader.py")
m = u.module_from_spec(s); s.loader.exec_module(m); print(m.nvcc_toolkit() or "")' 2>/dev/null)
    if [[ -n "$home" ]]; then export CUDA_HOME="$home"; fi
fi

budget="${MINIFT_GPU_CHECK_BUDGET:-540}"
stages="${MINIFT_GPU_CHECK_STAGES:-}"
t0=$SECONDS
summary="$OUT/summary.txt"
printf '%-12s %-26s %7s %7s  %s\n' stage status seconds limit log > "$summary"
failed=0

want() {        # is stage $1 selected? (info always is)
    [[ -z "$stages" || $1 == info || ",$stages," == *",$1,"* ]]
}

record() {      # NAME STATUS SECONDS LIMIT
    printf '%-12s %-26s %7s %7s  %s\n' "$1" "$2" "$3" "$4" "$1.log" >> "$summary"
    echo "== $1: $2 (${3}s)"
}

# run_stage NAME CAP: runs the function stage_NAME under `timeout`, for min(CAP, time left) seconds,
# output to $OUT/NAME.log (its tail echoed on failure), one line in summary.txt.
run_stage() {
    local name=$1 cap=$2 left limit s rc status
    want "$name" || return 0
    left=$(( budget - (SECONDS - t0) - 10 ))
    limit=$(( cap < left ? cap : left ))
    if (( limit < 5 )); then
        record "$name" "SKIPPED (out of time)" 0 0
        return 0
    fi
    echo "== $name: started, limit ${limit}s"
    s=$SECONDS
    timeout -k 10 "$limit" bash -c "stage_$name" > "$OUT/$name.log" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124|137) status="TIMEOUT after ${limit}s"; failed=1 ;;
        *) status="FAILED (exit $rc)"; failed=1 ;;
    esac
    record "$name" "$status" $(( SECONDS - s )) "$limit"
    if (( rc != 0 )); then tail -n 25 "$OUT/$name.log" | sed 's/^/    /'; fi
    return 0
}

# ---- the stages (each runs in its own bash: only exported variables and functions are seen) ----------

stage_info() {
    date -u
    uname -a
    "$PY" --version
    "$PY" - <<'EOF'
import importlib.util, torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cudnn {torch.backends.cudnn.version()}, "
      f"cuda available {torch.cuda.is_available()}")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i} {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
          f"{p.total_memory / 2**30:.0f} GiB, L2 {getattr(p, 'L2_cache_size', 0) / 2**20:.0f} MiB")
for m in ("numpy", "tokenizers", "safetensors", "pytest", "hypothesis", "xdist", "triton"):
    print(f"{m}: {'yes' if importlib.util.find_spec(m) else 'no'}")
from torch.utils.cpp_extension import CUDA_HOME
print(f"CUDA_HOME {CUDA_HOME}")
EOF
    command -v nvcc >/dev/null && nvcc --version | tail -n 2
    command -v g++ >/dev/null && g++ --version | head -n 1
    echo "ninja: $(command -v ninja || echo "not on PATH (torch builds extensions with it)")"
    command -v nvidia-smi >/dev/null && timeout 20 nvidia-smi
    return 0
}

stage_install() {
    if "$PY" -c "import minift, pytest, hypothesis" 2>/dev/null; then
        echo "minift, pytest and hypothesis import: nothing to install"
        return 0
    fi
    "$PY" -m pip install -q --retries 0 --timeout 10 -e ".[test]" && return 0
    echo "pip install -e '.[test]' failed (no internet?); trying without dependencies and build isolation"
    "$PY" -m pip install -q --retries 0 --timeout 10 --no-deps --no-build-isolation -e . || true
    "$PY" -c "import minift, pytest, hypothesis"      # what the later stages need (PYTHONPATH has minift)
}

stage_build() {
    "$PY" - <<'EOF'
import importlib.util, os, sys, time, torch
spec = importlib.util.spec_from_file_location("loader", "cuda_ext/loader.py")
loader = importlib.util.module_from_spec(spec)
spec.loader.exec_module(loader)
name, files, flags, build = loader.plan()
print(f"building {name} from {files} with {flags} in {build}", flush=True)
t = time.time()
ext = loader.load(verbose=True)
print(f"loaded in {time.time() - t:.1f} s; cuda built: {ext.cuda}; avx2: {getattr(ext, 'avx2', '?')}")
want_cuda = torch.cuda.is_available()
if not want_cuda and torch.version.cuda:
    # A CUDA torch on a machine without a GPU: compile and link the CUDA build as well (what a GPU run builds;
    # TORCH_CUDA_ARCH_LIST names the targets, as there is no GPU to ask) and import it, which runs no kernel.
    from torch.utils.cpp_extension import CUDA_HOME
    problem = loader.cuda_toolkit_problem(CUDA_HOME)
    if problem:
        sys.exit(f"the CUDA build cannot be compiled here: {problem}")
    torch.cuda.is_available = lambda: True
    print(f"no GPU, and torch {torch.__version__} has CUDA: compiling the CUDA build for "
          f"TORCH_CUDA_ARCH_LIST={os.environ.setdefault('TORCH_CUDA_ARCH_LIST', '8.0;9.0')}", flush=True)
    t = time.time()
    ext = loader.load(verbose=True)
    print(f"compiled and imported in {time.time() - t:.1f} s; cuda built: {ext.cuda}; "
          f"entry points: {sorted(a for a in dir(ext) if not a.startswith('_'))}")
    want_cuda = True
sys.exit(0 if bool(ext.cuda) == want_cuda else 3)              # a GPU here but no CUDA build: a failure
EOF
}

stage_kernel_test() {
    local src=cuda_ext/test_quant_lora_cuda.cu arch bin
    if [[ ! -f $src ]]; then echo "no $src in this checkout"; return 3; fi
    arch=$("$PY" -c "import torch; print('sm_%d%d' % torch.cuda.get_device_capability() if torch.cuda.is_available() else 'sm_90')")
    bin="$(mktemp -d)/test_quant_lora_cuda"
    if [[ -f cuda_ext/test_mma_layout.cu ]]; then               # the tensor-core layout, on the CPU: seconds
        echo "+ nvcc -std=c++17 cuda_ext/test_mma_layout.cu -o $bin.layout && $bin.layout"
        nvcc -std=c++17 cuda_ext/test_mma_layout.cu -o "$bin.layout" && "$bin.layout" || return 5
    fi
    local f pids=() objs=()                                     # the three files compile in parallel
    for f in "$src" cuda_ext/quant_lora_cuda.cu cuda_ext/quant_lora_mma.cu; do
        echo "+ nvcc -std=c++17 -O3 -arch=$arch -lineinfo -c $f -o $bin.${f##*/}.o"
        nvcc -std=c++17 -O3 -arch="$arch" -lineinfo -c "$f" -o "$bin.${f##*/}.o" &
        pids+=($!) objs+=("$bin.${f##*/}.o")
    done
    for f in "${pids[@]}"; do wait "$f" || return 4; done
    echo "+ nvcc -arch=$arch ${objs[*]} -o $bin"
    nvcc -arch="$arch" "${objs[@]}" -o "$bin" || return 4
    if [[ "$GPU" != 1 ]]; then echo "compiled; not run: no GPU here"; return 0; fi
    "$bin" | tee "$OUT/kernel_test.txt"
    return "${PIPESTATUS[0]}"
}

pytest_args() {         # the parallel flags when pytest-xdist imports
    if "$PY" -c "import xdist" 2>/dev/null; then echo "-n 8"; fi
}

stage_gpu_tests() {
    local files=() f
    for f in tests/test_cuda_kernel.py tests/test_device.py tests/test_device_align.py tests/test_ops.py \
             tests/test_method_contract.py tests/test_bench.py tests/test_figures.py tests/test_heads.py; do
        if [[ -f $f ]]; then files+=("$f"); else echo "(no $f in this checkout)"; fi
    done
    # shellcheck disable=SC2046
    "$PY" -m pytest -q -p no:cacheprovider -rfEs --durations=15 $(pytest_args) \
        --junitxml="$OUT/junit_gpu_tests.xml" "${files[@]}"
}

stage_bench() {
    if [[ "$GPU" == 1 ]]; then          # what `minift bench kernels --device cuda` prints, + the rows as JSON
        "$PY" - 2>&1 <<'EOF' | tee "$OUT/bench_kernels.txt"
import json, os
from minift.bench_gpu import bench_kernels_cuda
res = bench_kernels_cuda(fast=os.environ.get("MINIFT_GPU_CHECK_FAST_BENCH") == "1", device="cuda")
with open(os.path.join(os.environ["OUT"], "bench_kernels.json"), "w") as f:
    json.dump(res, f, indent=1)
EOF
        return "${PIPESTATUS[0]}"
    fi
    # no GPU: the command must refuse with one line and exit status 2
    "$PY" -c "import sys; from minift.bench import run; sys.exit(run('kernels', device='cuda'))"
    local rc=$?
    echo "exit status $rc (2 expected without a GPU)"
    [[ $rc == 2 ]]
}

stage_mma_auto() {      # the batch the bench suggests, tried at once: the auto path with the tensor cores on
    local n=
    if [[ -f "$OUT/bench_kernels.json" ]]; then
        n=$("$PY" -c 'import json, os; print(json.load(open(os.environ["OUT"] + "/bench_kernels.json"))["mma_from"] or "")')
    fi
    if [[ -z "$n" ]]; then echo "the bench names no batch for MMA_AUTO_MIN_N (or did not run): nothing to try"; return 0; fi
    echo "+ MINIFT_MMA_AUTO_MIN_N=$n pytest tests/test_cuda_kernel.py"
    # shellcheck disable=SC2046
    MINIFT_MMA_AUTO_MIN_N="$n" "$PY" -m pytest -q -p no:cacheprovider -rfEs $(pytest_args) \
        --junitxml="$OUT/junit_mma_auto.xml" tests/test_cuda_kernel.py
}

lesson_one() {          # one lesson, under its own timeout; a line per lesson in lessons.txt
    local dir=$1 nn s rc
    nn=$(basename "$dir")
    s=$SECONDS
    timeout -k 5 "$LESSON_LIMIT" "$PY" "$dir/walkthrough.py" --fast --figures --device "$DEVICE" > "$OUT/lessons/$nn.log" 2>&1
    rc=$?
    printf '%-28s exit %3s  %4ss\n' "$nn" "$rc" $(( SECONDS - s )) >> "$OUT/lessons.txt"
    return $(( rc != 0 ))
}

stage_lessons() {
    mkdir -p "$OUT/lessons"
    : > "$OUT/lessons.txt"
    # four at a time: every walkthrough uses one CPU thread, and the GPU has room for four small models
    # shellcheck disable=SC2086
    printf '%s\n' lessons/$LESSONS/ | sed 's:/$::' | xargs -P 4 -I{} bash -c 'lesson_one "$1"' _ {}
    local rc=$?
    sort "$OUT/lessons.txt"
    return $rc
}

stage_suite() {
    # shellcheck disable=SC2046
    "$PY" -m pytest -q -p no:cacheprovider -rfE --durations=20 $(pytest_args) \
        --junitxml="$OUT/junit_suite.xml" tests
}

export -f stage_info stage_install stage_build stage_kernel_test pytest_args stage_gpu_tests stage_bench \
    stage_mma_auto lesson_one stage_lessons stage_suite

# ---- the run -----------------------------------------------------------------------------------------

run_stage info 30
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    GPU=1 DEVICE=cuda
else
    GPU=0 DEVICE=cpu
    echo "gpu_check: no GPU: torch.cuda.is_available() is False here (or torch does not import)"
    if [[ "${MINIFT_GPU_CHECK_CPU:-}" != 1 ]]; then
        record gpu "NO GPU (nothing run)" 0 0
        echo "gpu_check: set MINIFT_GPU_CHECK_CPU=1 to run the stages that mean something on a CPU"
        exit 2
    fi
    echo "gpu_check: MINIFT_GPU_CHECK_CPU=1: the CPU-meaningful stages, on cpu"
    [[ -n "$stages" ]] || stages=info,install,build,kernel_test,gpu_tests,bench,lessons   # the suite only by name
fi
export GPU DEVICE LESSON_LIMIT="${MINIFT_GPU_CHECK_LESSON_LIMIT:-90}" LESSONS="${MINIFT_GPU_CHECK_LESSONS:-[0-9][0-9]_*}"

run_stage install 120
# the standalone kernel test needs only nvcc and the GPU: it runs beside the build (which needs the CPUs)
run_stage kernel_test 150 > "$OUT/kernel_test.stage" 2>&1 &
kt=$!
run_stage build 300
wait "$kt" || true
cat "$OUT/kernel_test.stage"
if grep -Eq "^kernel_test +(FAILED|TIMEOUT)" "$summary"; then failed=1; fi
run_stage gpu_tests 180
run_stage bench 180
run_stage mma_auto 90
run_stage lessons 180
run_stage suite 600

echo
echo "gpu_check: $(( SECONDS - t0 ))s in all; $OUT/summary.txt:"
cat "$summary"
exit "$failed"
