"""Scaling laws for fine-tuning (Zhang, Liu, Cherry and Firat, 2024, "When Scaling Meets LLM
Finetuning: The Effect of Data, Model and Finetuning Method").

The paper fine-tunes 1B-16B models on 10^3-10^6 examples and finds that the test loss after
fine-tuning follows a *multiplicative* joint power law in the fine-tuning data size D_f and one
other factor X (here: the model size), one law per method:

    L̂(X, D_f) = A · X^(-α) · D_f^(-β) + E                         A, E > 0

    X    model size: non-embedding parameters, 12 L C^2 for our GPT (Kaplan et al.'s convention)
    D_f  fine-tuning examples
    α    how much a larger base model helps; β how much more data helps
    E    the loss no amount of either removes (here: the summaries' own entropy, plus what the
         method cannot express)

The fit leaves α and β free: the paper finds both positive, and a negative α would say the bigger
model is worse, at every D_f alike.

"Multiplicative": doubling the data multiplies the reducible loss by 2^(-β) whatever the model
size, and doubling the model multiplies it by 2^(-α) whatever the data. The fit is Chinchilla's
(Hoffmann et al., 2022) and the paper's: Huber loss on log L, minimised from a grid of starting
points (by Levenberg-Marquardt here, where they use L-BFGS), in a = log A and e = log E so that
A and E stay positive:

    log L̂ = logsumexp(a - α log X - β log D_f, e)

This module holds the two halves lesson 20 needs: `finetune_cell` (one fine-tuning run: a model
size, a method, a data size, a seed -> the test loss at the best validation step) with a JSON
`Cache` of finished cells, and `fit_scaling_law` / `predict_loss`. The paper fits the same law with
X = the pretraining data size P (tokens) as well; `equivalent_factor` compares two fitted axes:
k times one is worth q = k^(α_from/α_to) times the other. The task is TinyWorld's
summarization: its loss is smooth and cheap to measure (teacher-forced, no generation).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from .checkpoint import load_json, save_json
from .peft.io import apply_config
from .peft.lora import LoRAConfig
from .peft.prompt import PromptConfig
from .train import TrainConfig, evaluate_nll, train
from .validate import check_float, check_str

TASK = "summarization"
BATCH = 16
STEPS = 200                                    # the same budget at every data size (batch 16)
N_VAL, N_TEST = 96, 200                        # early stopping on val; the reported loss is test's
EVALS = 10                                     # validation points per run, evenly spaced, the last at the end


@dataclass(frozen=True)
class Method:
    """A fine-tuning method of the sweep: a PEFT config (None: full fine-tuning) and its peak lr,
    the same at every model and data size (the paper keeps one recipe per method too)."""
    name: str
    config: object
    lr: float

    def __post_init__(self):
        check_str(self, "name", self.name)
        check_float(self, "lr", self.lr, lo=0, lo_open=True)


METHODS = {"full": Method("full", None, 3e-4),
           "lora": Method("lora", LoRAConfig(r=4), 1e-2),
           "prompt": Method("prompt", PromptConfig(n_tokens=16, init="vocab"), 1e-1)}


def non_embedding_parameters(model) -> int:
    """X: every parameter outside the token and position embeddings (wte, wpe). With a tied
    lm_head, the output projection is wte and is not counted either."""
    emb = {id(model.transformer.wte.weight), id(model.transformer.wpe.weight)}
    return sum(p.numel() for p in model.parameters() if id(p) not in emb)


def steps_for(n_train: int, batch_size: int = BATCH) -> int:
    """Optimizer steps for a data size: STEPS at every size, so that a larger D_f brings more
    *data*, not more compute (200 steps x 16 = 67 passes over 48 examples, 2.1 over 1500).
    Early stopping on validation picks the step before a small set is overfitted."""
    if isinstance(n_train, bool) or not isinstance(n_train, int) or n_train < 1:
        raise ValueError(f"n_train={n_train!r} must be an int >= 1")
    return STEPS


def train_subset(pairs: Sequence, n_train: int, seed: int) -> list:
    """The first n_train of a seeded permutation of the training pairs: nested, so for one seed
    the 480-example set contains the 150-example set, and a larger D_f only adds data."""
    if n_train > len(pairs):
        raise ValueError(f"n_train={n_train} is more than the {len(pairs)} {TASK} training examples")
    g = torch.Generator().manual_seed(1000 + seed)
    return [pairs[int(i)] for i in torch.randperm(len(pairs), generator=g, device="cpu")[:n_train]]


def finetune_cell(size: str, method: str, n_train: int, seed: int = 0, *, steps: Optional[int] = None,
                  n_val: int = N_VAL, n_test: int = N_TEST, load: Optional[Callable] = None,
                  lr: Optional[float] = None) -> dict:
    """Fine-tune model size `size` with `method` on n_train summarization examples; report the
    test loss (nats per summary token) at the validation-best of EVALS evenly spaced steps.

    load(size) -> (model, tok) defaults to the pretrained checkpoint of minift.pretrain.SIZES;
    lr overrides the method's (the learning-rate probe of lesson 20 uses it).
    """
    from .pretrain import load_base, size_dir
    from .tasks import SFTDataset, collate_fn, sft_pairs
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not in the sweep; choose from {sorted(METHODS)}")
    m = METHODS[method]
    torch.manual_seed(seed)                    # the method's random init (LoRA's A) follows the cell's seed
    model, tok = (load or (lambda s: load_base(size_dir(s))))(size)
    X = non_embedding_parameters(model)
    apply_config(model, m.config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    T = model.config.block_size - (m.config.n_tokens if isinstance(m.config, PromptConfig) else 0)
    data = SFTDataset(tok, train_subset(sft_pairs(TASK, "train"), n_train, seed), T)
    val = SFTDataset(tok, sft_pairs(TASK, "val")[:n_val], T)
    test = SFTDataset(tok, sft_pairs(TASK, "test")[:n_test], T)
    coll = collate_fn(tok.pad_id)
    steps = steps or steps_for(n_train)
    best = {"val": float("inf"), "step": 0, "state": None}
    evals = []

    def eval_fn(mdl):                          # keep the trainable tensors of the val-best step
        v = evaluate_nll(mdl, val, batch_size=32, collate_fn=coll)
        evals.append(v)
        if v < best["val"]:
            best.update(val=v, step=len(evals),
                        state={n: p.detach().clone() for n, p in mdl.named_parameters() if p.requires_grad})
        return {"val_nll": v}

    cfg = TrainConfig(steps=steps, batch_size=BATCH, lr=lr or m.lr, warmup_steps=max(1, steps // 10), seed=seed,
                      eval_every=max(1, steps // EVALS), progress=False, desc=f"{size}/{method}/{n_train}")
    t0 = time.perf_counter()
    hist = train(model, data, cfg, collate_fn=coll, eval_fn=eval_fn)
    seconds = time.perf_counter() - t0
    with torch.no_grad():                      # back to the val-best weights, then test once
        params = dict(model.named_parameters())
        for n, p in best["state"].items():
            params[n].copy_(p)
    test_nll = evaluate_nll(model, test, batch_size=32, collate_fn=coll)
    eval_steps = [h["step"] for h in hist if "eval_val_nll" in h]
    return {"size": size, "method": method, "n_train": n_train, "seed": seed, "X": X, "lr": lr or m.lr,
            "trainable": trainable, "steps": steps, "best_step": eval_steps[best["step"] - 1],
            "val_nll": best["val"], "test_nll": test_nll, "final_train_loss": hist[-1]["loss"],
            "val_curve": evals, "eval_steps": eval_steps,
            "seconds": round(seconds, 2)}


# ============================================================================ the cache

def recipe_fingerprint(sizes: Sequence[str]) -> str:
    """What a cached cell depends on: the sweep's recipe (methods, lrs, steps rule, eval sizes)
    and the bytes of each model size's checkpoint. A changed recipe or checkpoint gives a new
    fingerprint, and the cache refuses the old cells instead of mixing them in."""
    from .pretrain import size_dir
    h = hashlib.sha256()
    recipe = {"task": TASK, "batch": BATCH, "steps": STEPS, "val": N_VAL,
              "test": N_TEST, "evals": EVALS,
              "methods": {k: [repr(m.config), m.lr] for k, m in sorted(METHODS.items())}}
    h.update(json.dumps(recipe, sort_keys=True).encode())
    for s in sorted(sizes):
        path = size_dir(s) / "model.safetensors"
        if not path.is_file():
            raise ValueError(f"no checkpoint for model size {s!r} at {path}; run `minift pretrain --size {s}`")
        h.update(s.encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


class Cache:
    """Finished cells in one JSON file {"fingerprint": ..., "cells": {"size/method/n/seed": {...}}}.
    Written atomically after every cell, so an interrupted sweep loses at most the cell it was in,
    and a re-run starts where it stopped."""

    def __init__(self, path: str, fingerprint: str):
        self.path, self.fingerprint, self.cells, self.stale = str(path), fingerprint, {}, None
        if os.path.isfile(self.path):
            data = load_json(self.path)
            if not isinstance(data, dict) or "cells" not in data:
                raise ValueError(f"{self.path} is not a scaling cache (no 'cells')")
            if data.get("fingerprint") == fingerprint:
                self.cells = data["cells"]
            else:
                self.stale = data.get("fingerprint")
                print(f"{self.path}: made by another recipe or checkpoint (fingerprint {self.stale} != "
                      f"{fingerprint}); its {len(data['cells'])} cells are not used (the file is kept as "
                      f"{self.path}.{self.stale} when the first new cell is written)", flush=True)

    @staticmethod
    def key(size, method, n_train, seed) -> str:
        return f"{size}/{method}/{n_train}/{seed}"

    def get(self, *cell) -> Optional[dict]:
        return self.cells.get(self.key(*cell))

    def put(self, result: dict) -> None:
        self.cells[self.key(result["size"], result["method"], result["n_train"], result["seed"])] = result
        if self.stale is not None and os.path.isfile(self.path):     # never overwrite another recipe's cells
            os.replace(self.path, f"{self.path}.{self.stale}")
            self.stale = None
        save_json({"fingerprint": self.fingerprint, "cells": self.cells}, self.path)


def sweep(sizes, methods, data_sizes, seeds, cache: Optional[Cache] = None, run: Callable = finetune_cell,
          only_cached: bool = False, progress: bool = True) -> list[dict]:
    """Every cell of sizes x methods x data_sizes x seeds: from the cache where it has them,
    else run (and cache) them; only_cached=True skips the missing ones instead."""
    from tqdm import tqdm
    cells = list(itertools.product(sizes, methods, data_sizes, seeds))
    out, todo = [], []
    for c in cells:
        hit = cache.get(*c) if cache is not None else None
        if hit is not None:
            out.append(hit)
        else:
            todo.append(c)
    if only_cached:
        return out
    for c in tqdm(todo, desc="sweep", disable=not progress or not todo, leave=False, dynamic_ncols=True):
        r = run(*c)
        if cache is not None:
            cache.put(r)
        out.append(r)
    return out


# ============================================================================ the law

def predict_loss(params: dict, X, D) -> torch.Tensor:
    """L̂ = A X^(-α) D^(-β) + E, elementwise over X and D (tensors or numbers)."""
    X, D = torch.as_tensor(X, dtype=torch.float64), torch.as_tensor(D, dtype=torch.float64)
    return params["A"] * X.pow(-params["alpha"]) * D.pow(-params["beta"]) + params["E"]


def equivalent_factor(alpha_from: float, alpha_to: float, k: float = 2.0) -> float:
    """How far one axis of the law must grow to do what k times the other does. Multiplying the
    first factor by k multiplies L - E by k^(-α_from); multiplying the second by q, by q^(-α_to).
    They are equal when

        q = k^(α_from / α_to)

    (lesson 20: a model k times larger is worth q times more pretraining tokens, α_from = α of the
    model-size fit, α_to = α of the pretraining-data fit). Only meaningful when both exponents are
    positive: with α_to < 0 more of the second factor makes the loss worse, and no q helps."""
    for name, v in (("alpha_from", alpha_from), ("alpha_to", alpha_to), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"equivalent_factor: {name}={v!r} must be a finite number")
    if alpha_to == 0:
        raise ValueError("equivalent_factor: alpha_to=0: the second factor does not change the loss, "
                         "so no amount of it is equivalent; it must be nonzero")
    if k <= 0:
        raise ValueError(f"equivalent_factor: k={k!r} must be > 0 (a factor on a size)")
    log_q = math.log(k) * alpha_from / alpha_to                        # log q = (α_from / α_to) log k
    return math.exp(log_q) if log_q < 700 else math.inf               # beyond float64: infinitely far


def _check_points(X, D, L):
    X, D, L = (torch.as_tensor(v, dtype=torch.float64).reshape(-1) for v in (X, D, L))
    if not (len(X) == len(D) == len(L)):
        raise ValueError(f"fit_scaling_law: X, D and L must have the same length, got {len(X)}, {len(D)}, {len(L)}")
    if len(L) < 4:
        raise ValueError(f"fit_scaling_law: the law has 4 parameters; got only {len(L)} points")
    for name, v in (("X", X), ("D", D), ("L", L)):
        if not torch.isfinite(v).all() or (v <= 0).any():
            raise ValueError(f"fit_scaling_law: every {name} must be finite and > 0, got {v.tolist()}")
    if len(set(X.tolist())) < 2 or len(set(D.tolist())) < 2:
        raise ValueError("fit_scaling_law: needs at least two distinct model sizes X and two data sizes D")
    return X, D, L


def fit_scaling_law(X, D, L, delta: float = 1e-3) -> dict:
    """Fit A, α, β, E of L̂ = A X^(-α) D^(-β) + E to points (X_i, D_i, L_i).

    Minimises Σ_i Huber_δ(log L̂_i - log L_i) over (a = log A, α, β, e = log E) by
    Levenberg-Marquardt from the best three points of a grid over (α, β) ∈ [-1, 2]² (the objective
    has several local minima), and keeps the best.
    Returns {A, alpha, beta, E, objective, mad}: mad is the mean absolute deviation |L̂ - L| on
    the points fitted (the paper's Δ_e)."""
    X, D, L = _check_points(X, D, L)
    lx, ld, ll = X.log(), D.log(), L.log()

    def objective(theta):                                             # Σ Huber_δ(log L̂ - log L)
        a, alpha, beta, e = theta
        r = torch.logaddexp(a - alpha * lx - beta * ld, e) - ll
        return float(torch.where(r.abs() <= delta, 0.5 * r * r, delta * (r.abs() - 0.5 * delta)).sum())

    def residuals_and_jacobian(theta):
        a, alpha, beta, e = theta
        u = a - alpha * lx - beta * ld                                 # log of the reducible term
        s = torch.sigmoid(u - e)                                       # its share of L̂
        r = torch.logaddexp(u, e) - ll                                 # (n,)
        J = torch.stack([s, -s * lx, -s * ld, 1 - s], 1)               # (n, 4): d log L̂ / d(a, α, β, e)
        return r, J

    # Starting points: for fixed (α, β) the law is linear in (A, E), so least squares gives them
    # in closed form. Scan a grid of (α, β), score each by the objective, refine the best few.
    grid = torch.linspace(-1.0, 2.0, 121, dtype=torch.float64, device=L.device)   # steps of 0.025; α < 0: worse
    al, be = torch.meshgrid(grid, grid, indexing="ij")
    al, be = al.reshape(-1, 1), be.reshape(-1, 1)                      # (G, 1)
    f = torch.exp(-al * lx - be * ld)                                  # (G, n): X^-α D^-β
    fm, lm = f.mean(1, keepdim=True), L.mean()
    A0 = ((f - fm) * (L - lm)).sum(1, keepdim=True) / ((f - fm) ** 2).sum(1, keepdim=True).clamp_min(1e-300)
    E0 = (lm - A0 * fm).clamp_min(1e-3 * float(L.min()))              # (G, 1) least squares in L, E > 0
    A0 = (((L - E0) * f).sum(1, keepdim=True) / (f * f).sum(1, keepdim=True)).clamp_min(1e-12)
    r0 = torch.logaddexp(A0.log() - al * lx - be * ld, E0.log()) - ll
    score = torch.where(r0.abs() <= delta, 0.5 * r0 * r0, delta * (r0.abs() - 0.5 * delta)).sum(1)
    starts = torch.cat([A0.log(), al, be, E0.log()], 1)[score.argsort()[:3]]

    # Refine each start by Levenberg-Marquardt on the Huber loss (iteratively reweighted: residuals
    # beyond δ get weight δ/|r|). The paper uses L-BFGS; on a dozen points LM reaches machine
    # precision in a few dozen cheap steps, where L-BFGS stalls on the badly scaled (a, α) valley.
    best = None
    for theta in starts:
        f_cur, lam = objective(theta), 1e-3
        for _ in range(200):
            r, J = residuals_and_jacobian(theta)
            w = torch.where(r.abs() <= delta, torch.ones_like(r), delta / r.abs())
            H, g = J.T @ (w[:, None] * J), J.T @ (w * r)               # (4, 4), (4,)
            while lam <= 1e12:                                         # damp until the step descends
                step = torch.linalg.solve(H + lam * torch.diag(H.diagonal().clamp_min(1e-12)), -g)
                f_new = objective(theta + step)
                if math.isfinite(f_new) and f_new <= f_cur:
                    break
                lam *= 4.0
            else:
                break                                                  # no step descends: at a minimum
            done = f_cur - f_new <= 1e-15 * max(f_cur, 1e-300) or float(step.abs().max()) < 1e-12
            theta, f_cur, lam = theta + step, f_new, max(lam / 3.0, 1e-12)
            if done:
                break
        if best is None or f_cur < best[0]:
            best = (f_cur, theta.clone())
    a, alpha, beta, e = best[1].tolist()
    params = {"A": math.exp(a), "alpha": alpha, "beta": beta, "E": math.exp(e), "objective": best[0]}
    params["mad"] = float((predict_loss(params, X, D) - L).abs().mean())
    return params
