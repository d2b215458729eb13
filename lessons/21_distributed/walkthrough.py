"""Lesson 21: fine-tuning across processes, data-parallel with torch.distributed.

Prints, top to bottom:

  1. what has to travel: the trainable parameters of full fine-tuning and of LoRA on the base
     model, the all-reduce payload per step, and what a ring all-reduce sends per rank for W ranks;
  2. two processes on this machine (`torchrun --standalone --nproc_per_node 2`, gloo): continued
     pretraining on the second domain with full fine-tuning and with LoRA, the bytes each step
     all-reduced (measured by minift.train) and the time per step;
  3. the proof: one process with gradient accumulation over 2 micro-batches, same seed, reaches the
     same parameters as the 2 processes (max |difference| over every trainable parameter);
  4. beyond one machine: the launch lines for several nodes, and what FSDP (ZeRO-3 sharding) would
     save for a 7B-shaped model, from minift.memory's prediction.

    python lessons/21_distributed/walkthrough.py          # or: minift run 21
    python lessons/21_distributed/walkthrough.py --fast   # 1 step per run, no launch: a world of one (the tests)
    python lessons/21_distributed/walkthrough.py --device cuda   # 2+ GPUs: nccl, one GPU per rank

With --device cuda and at least two GPUs, each rank trains on its own GPU over nccl, and part 3's
single process runs on the first GPU. With one GPU, nccl cannot give each rank a GPU: the ranks
and part 3 stay on the CPU with gloo (said at the top of part 2), and part 1 loads on the GPU.

The walkthrough launches its own workers with torchrun (the same file, `--worker`); everything it
trains with is the library's (minift/distributed.py, minift/train.py, minift/peft/lora.py). --fast
launches nothing (three more Pythons importing torch would cost more than the smoke test's budget):
the worker's code runs in this process as a world of one; tests/test_distributed.py launches the two.
"""
EXPECTED_SECONDS = 54
FAST_SECONDS = 10

import argparse
import os
import subprocess
import sys
import tempfile
import time

import torch

from minift import course, world
from minift.distributed import init_from_env, leave, rank_and_world, rank_device, ring_allreduce_bytes
from minift.memory import PRESETS, estimate
from minift.peft.lora import LoRAConfig, apply_lora
from minift.pretrain import load_base
from minift.report import header, table
from minift.tasks import LMDataset
from minift.train import TrainConfig, train
from minift.validate import count_arg

parser = course.parser(__doc__, "1 step per run, no torchrun launch: the worker's code in this process, a world of one")
parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
parser.add_argument("--grad-accum", type=count_arg, default=1, help=argparse.SUPPRESS)
args = course.start("21", parser)   # the base-model check, one thread (two processes on two cores), the clock
STEPS = 1 if args.fast else 12
BATCH = 4                       # per process: 2 processes x 4 = 8 windows of 128 tokens per step
LORA = LoRAConfig(r=4, alpha=8, targets=("attn.c_attn",), qkv=("q", "v"))
LR = {"full": 3e-4, "lora": 3e-3}
DEV = args.device
# Data-parallel on GPUs: nccl, one GPU per rank, so it needs as many GPUs as ranks (2); otherwise the
# ranks use gloo on the CPU. Part 3's single process runs where the ranks ran, to compare like with like.
DDP_ON_GPU = DEV.type == "cuda" and torch.cuda.device_count() >= 2
RUN_DEV = DEV if DDP_ON_GPU else torch.device("cpu")


_WINDOWS = {}


def windows(tok):
    """The second domain's training text as 128-token windows, built once per process."""
    if "train" not in _WINDOWS:
        _WINDOWS["train"] = LMDataset(tok, world.domain2_corpus("train"), 128)
    return _WINDOWS["train"]


def setup(method, device=RUN_DEV):
    """The base model on `device`, fully trainable or with LoRA on W_q, W_v, and the second-domain
    windows: the same in every process (load_base is deterministic; LoRA's A is drawn after seeding)."""
    model, tok = load_base(device=device)
    torch.manual_seed(0)
    if method == "lora":
        apply_lora(model, LORA)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    return model, windows(tok)


def recipe(method, grad_accum=1):
    return TrainConfig(steps=STEPS, batch_size=BATCH, grad_accum=grad_accum, lr=LR[method], warmup_steps=0,
                       seed=0, progress=False, desc=method)


def trainable(model):
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}   # compared on the CPU


# ---- the worker: what each of the two processes runs (both methods, one launch) ----------------
def worker():
    rank, W = rank_and_world()                     # (0, 1) outside torchrun: --fast's world of one
    dev = rank_device() if torch.distributed.is_initialized() else RUN_DEV    # --fast: where part 3 runs
    results = {}
    for method in ("full", "lora"):
        model, data = setup(method, dev)
        course.sync(dev)
        t0 = time.perf_counter()
        hist = train(model, data, recipe(method))
        course.sync(dev)
        results[method] = {"state": trainable(model), "world": W, "seconds": time.perf_counter() - t0,
                           "comm": [h.get("comm_bytes", 0) for h in hist], "loss": [h["loss"] for h in hist]}
    return rank, results


if args.worker:
    init_from_env("nccl" if DEV.type == "cuda" else "gloo")           # nccl: this rank's GPU is cuda:LOCAL_RANK
    rank, results = worker()
    if rank == 0:
        torch.save(results, args.out)
    leave()                                        # leave the process group and exit (see its docstring)

# ==============================================================================================
header("1. What travels: the trainable gradients, once per step")
rows = []
counts = {}
for method in ("full", "lora"):
    m, _ = setup(method, DEV)
    n = sum(p.numel() for p in m.parameters() if p.requires_grad)
    counts[method] = n
    rows.append((method, f"{n:,}", f"{4 * n:,}", *(f"{ring_allreduce_bytes(4 * n, w) / 2 ** 20:.2f}" for w in (2, 8, 64))))
table(("method", "trainable", "payload bytes/step", "sent/rank MiB W=2", "W=8", "W=64"), rows)
print(f"LoRA r={LORA.r} on W_q, W_v all-reduces {counts['full'] / counts['lora']:.0f}x fewer bytes than full "
      f"fine-tuning: frozen parameters have no gradient, so there is nothing of theirs to average. A ring "
      f"all-reduce sends 2 (W - 1) / W of the payload per rank, so per-rank traffic stays under 2x the payload "
      f"however many ranks there are.")

# ==============================================================================================
BACKEND = "nccl" if DDP_ON_GPU else "gloo"
header(f"2. Two processes on this machine: torchrun --standalone --nproc_per_node 2 ({BACKEND})")
if DEV.type == "cuda" and not DDP_ON_GPU:
    print(f"--device {DEV}: {torch.cuda.device_count()} GPU here, and nccl needs one GPU per rank (2): the two ranks "
          f"run gloo on the CPU, and so does part 3's single process (like with like).")
if args.fast:            # the smoke test: no launch (three more Pythons importing torch), the worker's code here
    print("--fast: nothing launched; the worker's code runs in this process, a world of one "
          "(tests/test_distributed.py launches the two processes)", flush=True)
    runs = worker()[1]
else:
    scratch = tempfile.TemporaryDirectory(prefix="minift-ddp-")           # removed when the run ends
    out = os.path.join(scratch.name, "runs.pt")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.abspath(__file__), "--worker", "--out", out] + (["--device", "cuda"] if DDP_ON_GPU else [])
    print("+ torchrun --standalone --nproc_per_node 2 lessons/21_distributed/walkthrough.py --worker"
          + (" --device cuda" if DDP_ON_GPU else "") + "   (full fine-tuning, then LoRA, in each process)", flush=True)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True,     # (torchrun's own log folder goes in scratch too)
                       env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": scratch.name})
    if r.returncode != 0:
        sys.exit(f"the torchrun workers failed:\n{r.stderr[-3000:]}")
    runs = torch.load(out, weights_only=True)          # tensors, numbers and lists only
    wall = time.perf_counter() - t0
rows = []
for method, res in runs.items():
    rows.append((method, str(res["world"]), f"{STEPS} x {BATCH} per rank", f"{res['comm'][0]:,}",
                 f"{res['loss'][0]:.3f} -> {res['loss'][-1]:.3f}", f"{1000 * res['seconds'] / STEPS:.0f} ms"))
table(("method", "ranks", "steps x batch", "bytes all-reduced/step", "loss (mean of ranks)", "per step"), rows)
if not args.fast:                  # a world of one all-reduces nothing
    print(f"measured by minift.train (history's comm_bytes): {runs['full']['comm'][0] / runs['lora']['comm'][0]:.0f}x "
          f"fewer bytes per step for LoRA. The whole launch took {wall:.1f}s: starting two Python processes and "
          f"importing torch in each costs more than training this small model.")

# ==============================================================================================
header("3. The proof: 2 processes x batch b == 1 process accumulating 2 micro-batches of b")
rows = []
for method in ("full", "lora"):
    model, data = setup(method)
    hist = train(model, data, recipe(method, grad_accum=runs[method]["world"]))   # 2 (--fast: 1)
    mine = trainable(model)
    theirs = runs[method]["state"]
    diff = max(float((mine[n] - theirs[n]).abs().max()) for n in mine)
    moved = max(float((mine[n] - p).abs().max()) for n, p in trainable(setup(method)[0]).items())
    rows.append((method, f"{len(mine)}", f"{moved:.2e}", f"{diff:.2e}",
                 f"{abs(hist[-1]['loss'] - runs[method]['loss'][-1]):.1e}"))
table(("method", "tensors", "max |θ_k − θ_0|", "max |θ_1proc − θ_2proc|", "|Δ last loss|"), rows)
print("The two runs agree (to the last bit on this CPU; another back-end may sum the all-reduce in another order "
      "and differ in float32 rounding), while training moved the weights far more: rank r computes "
      "micro-batches r, r + W, ... of the one seeded stream, and the average of the ranks' averages is the one "
      "process's average over all of them (tests/test_distributed.py asserts it).")

# ==============================================================================================
header("4. Beyond one machine: rendezvous, and what FSDP would add")
print("The same file on 2 machines with 8 GPUs each (nccl on GPU; every node runs the same line with its rank):\n"
      "  torchrun --nnodes 2 --node_rank 0 --master_addr 10.0.0.1 --master_port 29500 --nproc_per_node 8 train.py\n"
      "  torchrun --nnodes 2 --node_rank 1 --master_addr 10.0.0.1 --master_port 29500 --nproc_per_node 8 train.py\n"
      "or with elastic rendezvous: --rdzv-backend c10d --rdzv-endpoint 10.0.0.1:29500 --rdzv-id job42.\n")
BIG = "gpt2-small" if args.fast else "llama-7b"   # --fast: a 12-layer shape (the meta model is slow to build)
cfg = PRESETS[BIG]
rows = []
for method in ("full", "lora"):
    e = estimate(cfg, method, batch=1, seq=min(2048, cfg.block_size), dtype=torch.bfloat16, r=8, checkpointing=True)
    state = e["weights"] + e["gradients"] + e["optimizer"]
    rows.append((method, f"{e['weights'] / 2 ** 30:.1f}", f"{e['gradients'] / 2 ** 30:.2f}",
                 f"{e['optimizer'] / 2 ** 30:.2f}", f"{e['activations'] / 2 ** 30:.2f}",
                 f"{e['total'] / 2 ** 30:.1f}",
                 *(f"{(state / n + e['activations']) / 2 ** 30:.1f}" for n in (8, 64))))
table((f"{BIG} shape, bf16", "weights GiB", "grads", "optimizer", "activations", "DDP per GPU",
       "FSDP/8 GPUs", "FSDP/64"), rows)
print("DDP keeps a whole copy of weights, gradients and optimizer state on every GPU: full fine-tuning of a 7B model "
      "needs the 'DDP per GPU' column on each one. FSDP (ZeRO-3) shards all three over the N GPUs and gathers each "
      "layer's weights just in time, so a GPU holds 1/N of the state plus its activations (columns FSDP/N; the "
      "optimizer states are AdamW's two moments in float32, and activations use checkpointing). "
      "For LoRA the state is small already: DDP is enough, and FSDP would shard the frozen weights only.")
print(f"\ntotal: {course.elapsed():.1f}s")
