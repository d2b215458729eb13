"""Benchmarks behind `minift bench NAME`. Each prints a table and ratios against a baseline
measured in the same run, on the same machine: absolute numbers differ between machines, ratios
travel better.

    minift bench train     training-step tokens/s: the base config vs a GPT-2-small-shaped one
"""
from __future__ import annotations

import time

import torch

from .model import GPT, GPTConfig
from .train import TrainConfig, make_optimizer

BASE = GPTConfig(vocab_size=2048, block_size=256, n_layer=4, n_head=4, n_embd=128)
GPT2_SMALL = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)


def _train_step_rate(cfg: GPTConfig, batch: int, seq: int, steps: int, warmup: int) -> dict:
    """Tokens/s of full training steps (forward, backward, clip, AdamW step) at (batch, seq)."""
    torch.manual_seed(0)
    model = GPT(cfg).train()
    opt = make_optimizer(model, TrainConfig(lr=1e-4))
    x = torch.randint(0, cfg.vocab_size, (batch, seq + 1))
    idx, tgt = x[:, :-1], x[:, 1:]

    def step():
        loss = model(idx, tgt).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = time.perf_counter() - t0
    return {"params": model.num_parameters(), "tokens_per_s": batch * seq * steps / dt,
            "ms_per_step": 1000 * dt / steps}


def bench_train(fast: bool = False) -> list[dict]:
    runs = [("base (TinyWorld)", BASE, 16, 128, 3 if fast else 20),
            ("gpt2-small shape", GPT2_SMALL, 1, 128, 1 if fast else 3)]
    rows = []
    for name, cfg, b, t, steps in runs:
        r = _train_step_rate(cfg, b, t, steps, warmup=1)
        rows.append({"config": name, "batch x seq": f"{b} x {t}", **r})
    base = rows[0]["tokens_per_s"]
    for r in rows:
        r["ratio"] = r["tokens_per_s"] / base
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    print(f"{'config':<18} {'params':>12} {'batch x seq':>12} {'ms/step':>10} {'tokens/s':>11} {'vs base':>8}")
    for r in rows:
        print(f"{r['config']:<18} {r['params']:>12,} {r['batch x seq']:>12} {r['ms_per_step']:>10.1f} "
              f"{r['tokens_per_s']:>11,.0f} {r['ratio']:>7.3f}x")
    return rows


BENCHES = {"train": bench_train}
