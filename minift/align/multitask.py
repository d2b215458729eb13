"""Multitask and sequential fine-tuning: mixing tasks, staging them, and measuring what is forgotten.

Multitask training (T5: Raffel et al., 2020, section 3.5.2; mT5: Xue et al., 2021) draws every
example from a mixture of K task sets of sizes n_1 .. n_K. Each draw picks task i with probability

    p_i = min(n_i, K_cap)^(1/T) / Σ_j min(n_j, K_cap)^(1/T)      T > 0 the temperature, K_cap the cap

    T = 1, no cap     examples-proportional: every example is equally likely (big sets dominate)
    T = 1, cap K_cap  T5's "examples-proportional mixing with limit K": no set counts as more than K_cap
    T → ∞             equal mixing: p_i = 1/K whatever the sizes (small sets are repeated a lot)
    1 < T < ∞         in between (mT5 samples languages with T = 1/0.3 ≈ 3.3)

then an example of task i: within a task, examples are taken in epochs (a fresh shuffle per pass),
so after c draws of task i every example has been seen ⌊c/n_i⌋ or ⌈c/n_i⌉ times.

Sequential fine-tuning trains stage after stage (domain text -> task A -> task B ...) and measures
every skill after every stage: the score matrix R, R[i, j] = score of task j after stage i. What a
later stage destroys is catastrophic forgetting (McCloskey & Cohen, 1989); two measures of it, for
K tasks trained in order, one per stage (task j at stage j, higher scores better):

    forgetting f_j = max_{l < K-1} R[l, j] - R[K-1, j]          j < K-1   (Chaudhry et al., 2018)
    BWT           = 1/(K-1) Σ_{j < K-1} (R[K-1, j] - R[j, j])            (Lopez-Paz & Ranzato, 2017)

Two answers, both here. Replay (rehearsal; Robins, 1995): at stage k a fraction rho of the training
examples is drawn from the earlier stages' data (a mixture over them, as above), the rest from
stage k, for the same steps. Per-task adapters (Houlsby et al., 2019; LoRA, Hu et al., 2021): the
base is frozen, each stage trains its own LoRA and saves it, and each task is scored with its own
adapter loaded: the weights a task uses are never touched again, so its score cannot move. The
price is a router: at inference you must know which task a prompt belongs to.

Losses here are per-example means, L = (1/B) Σ_b mean_{t ∈ R_b} -log p(y_t | y_<t) (R_b: the target
positions of example b; logits (B, T, V), targets (B, T)), so that a
64-token domain window and a 3-token answer count once each when a batch mixes them (the token
mean of minift.train.lm_loss would give the window about 20 times the answer's weight).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..model import IGNORE_INDEX, at_least_fp32, check_target_ids
from ..peft.common import disable_adapters, remove_adapters
from ..peft.io import load_adapter, save_adapter
from ..peft.lora import LoRAConfig, apply_lora
from ..train import TrainConfig, model_device, stack_collate, to_device, train
from ..validate import check_choice, check_float, check_int
from .logps import check_finite, zero_masked

STRATEGIES = ("proportional", "equal", "temperature")


# ---- the mixture ------------------------------------------------------------------------------

def _sizes(sizes) -> tuple[list, list[int]]:
    """(names, sizes) of a {name: size} mapping, or (None, sizes) of a sequence; every size an int >= 1."""
    names = list(sizes) if isinstance(sizes, Mapping) else None
    vals = [sizes[k] for k in names] if names is not None else list(sizes)
    if not vals:
        raise ValueError("mixture: sizes is empty; give the size of at least one task set")
    for k, n in zip(names or range(len(vals)), vals):
        if isinstance(n, bool) or int(n) != n or n < 1:
            raise ValueError(f"mixture: task {k!r} has size {n!r}; every task set needs an integer size >= 1 "
                             f"(an empty set cannot be sampled)")
    return names, [int(n) for n in vals]


def mixture_weights(sizes, temperature: float = 1.0, cap: Optional[int] = None):
    """p_i = min(n_i, cap)^(1/T) / Σ_j min(n_j, cap)^(1/T). sizes: {name: n_i} (returns {name: p_i}) or
    a sequence (returns a list). temperature: T > 0, math.inf for equal mixing; cap: None or an int >= 1."""
    names, n = _sizes(sizes)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"mixture: temperature={temperature!r} must be > 0 (1 = proportional, math.inf = equal)")
    if cap is not None and (isinstance(cap, bool) or int(cap) != cap or cap < 1):
        raise ValueError(f"mixture: cap={cap!r} must be None or an integer >= 1 (T5's limit K_cap)")
    m = [min(x, cap) if cap is not None else x for x in n]                 # min(n_i, K_cap)
    logs = [math.log(x) / temperature for x in m]                          # (1/T) log min(n_i, K_cap)
    top = max(logs)
    w = [math.exp(v - top) for v in logs]                                  # shifted: no overflow for huge n
    p = [x / sum(w) for x in w]
    return dict(zip(names, p)) if names is not None else p


@dataclass
class MixtureConfig:
    """How to mix task sets: "proportional" (T = 1), "equal" (T = inf) or "temperature" (T given),
    each optionally capped at `cap` examples per set (K_cap; T5's "limit K")."""
    strategy: str = "proportional"
    temperature: float = 2.0                  # used by "temperature" only
    cap: Optional[int] = None

    def __post_init__(self):
        check_choice(self, "strategy", self.strategy, STRATEGIES)
        check_float(self, "temperature", self.temperature, lo=0, lo_open=True, finite=False,
                    hint=" (1 = proportional, math.inf = equal)")
        check_int(self, "cap", self.cap, lo=1, optional=True, hint=" (T5's limit K_cap)")

    @property
    def T(self) -> float:
        return {"proportional": 1.0, "equal": math.inf}.get(self.strategy, self.temperature)

    def weights(self, sizes):
        return mixture_weights(sizes, self.T, self.cap)


def sample_mixture(sizes: Mapping[str, int], weights: Mapping[str, float], n: int,
                   seed: int = 0) -> list[tuple[str, int]]:
    """n draws (task, example index): task ~ Categorical(weights), then the task's next example in
    epochs of fresh permutations. Deterministic for a seed. Tasks of weight 0 are never drawn."""
    unknown = sorted(set(weights) - set(sizes))
    if unknown:
        raise ValueError(f"sample_mixture: unknown task(s) {unknown} in weights; the task sets are {list(sizes)}")
    names, _ = _sizes({k: sizes[k] for k in weights})
    p = torch.tensor([float(weights[k]) for k in names], dtype=torch.float64, device="cpu")   # drawn on the CPU
    if not torch.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"sample_mixture: weights {dict(weights)} must be finite, >= 0, and not all 0")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"sample_mixture: n={n!r} must be an integer >= 1")
    g = torch.Generator().manual_seed(int(seed))
    tasks = torch.multinomial(p / p.sum(), n, replacement=True, generator=g).tolist()   # (n,) task ids
    perm = {i: torch.randperm(sizes[k], generator=g, device="cpu").tolist() for i, k in enumerate(names)}
    pos = dict.fromkeys(perm, 0)
    out = []
    for i in tasks:
        if pos[i] == len(perm[i]):                                         # a new epoch of task i
            perm[i], pos[i] = torch.randperm(len(perm[i]), generator=g, device="cpu").tolist(), 0
        out.append((names[i], perm[i][pos[i]]))
        pos[i] += 1
    return out


class MixtureDataset(Dataset):
    """n items drawn from several datasets by sample_mixture: item k is datasets[task_k][index_k].
    Train on it for steps x batch = n examples and each drawn example is used once."""

    def __init__(self, datasets: Mapping[str, Dataset], weights: Mapping[str, float], n: int, seed: int = 0):
        if not datasets:
            raise ValueError("MixtureDataset: no datasets")
        self.datasets = dict(datasets)
        self.draws = sample_mixture({k: len(d) for k, d in self.datasets.items()}, weights, n, seed)

    def __len__(self) -> int:
        return len(self.draws)

    def __getitem__(self, k: int):
        task, i = self.draws[k]
        return self.datasets[task][i]

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(self.datasets, 0)
        for task, _ in self.draws:
            out[task] += 1
        return out


def replay_weights(current: str, earlier: Mapping[str, int], fraction: float,
                   mix: Optional[MixtureConfig] = None) -> dict[str, float]:
    """Stage weights with replay: 1 - rho on the current stage, rho split over the earlier stages'
    sets by `mix` (default proportional to their sizes)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"replay fraction={fraction!r} must be in [0, 1): the current stage needs some of the batch")
    if fraction == 0 or not earlier:
        return {current: 1.0}
    w = (mix or MixtureConfig()).weights(dict(earlier))
    return {current: 1.0 - fraction, **{k: fraction * v for k, v in w.items()}}


# ---- the loss, the stages, the score matrix ---------------------------------------------------

def per_example_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(1/B') Σ_b mean_{t: targets[b, t] != -100} -log softmax(logits[b, t])[targets[b, t]], over the B'
    rows that have a target. logits: (B, T, V); targets: (B, T). Returns a scalar. Logits must be finite
    where there is a target; elsewhere (padding, prompts) they may hold anything: they are selected out."""
    if logits.dim() != 3 or tuple(targets.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"per_example_nll: logits must be (B, T, V) and targets (B, T), got "
                         f"{tuple(logits.shape)} and {tuple(targets.shape)}")
    check_target_ids(targets, logits.shape[-1], "per_example_nll: targets", of="V")
    m = targets != IGNORE_INDEX                                            # (B, T) where loss is taken
    if not m.any():
        raise ValueError("per_example_nll: no target (every entry is -100)")
    check_finite("logits", logits, m, "per_example_nll")
    logits = zero_masked(at_least_fp32(logits), m)                          # no value, no gradient off the targets
    nll = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX,
                          reduction="none")                                 # (B, T), 0 where ignored
    n = m.sum(1)                                                           # (B,) targets per example
    per = nll.sum(1) / n.clamp(min=1)                                      # (B,) mean NLL per example
    return per[n > 0].mean()                                               # ()


def example_loss(model, batch):
    """The loss_fn for minift.train.train: per_example_nll of the model's logits on the batch (moved
    to the model's device)."""
    batch = to_device(batch, model_device(model))
    logits = model(batch["idx"], attention_mask=batch.get("attention_mask")).logits   # (B, T, V)
    return per_example_nll(logits, batch["targets"]), {}


@dataclass
class Stage:
    """One stage of a sequential run: train on `data` (items {"idx", "targets"}) for `steps` at `lr`."""
    name: str
    data: Dataset
    steps: int
    lr: float = 1e-3

    def __post_init__(self):
        if len(self.data) < 1:
            raise ValueError(f"Stage {self.name!r}: its data set is empty")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"Stage {self.name!r}: steps={self.steps!r} must be an integer >= 1")
        check_float(self, "lr", self.lr, lo=0, lo_open=True)


@dataclass
class Column:
    """One column of the score matrix: fn(model) -> score. `stage` names the stage that teaches it
    (per-task adapters score it with that stage's adapter; None: the base, adapters off)."""
    fn: Callable
    stage: Optional[str] = None
    higher_is_better: bool = True


def _score(model, columns: Mapping[str, Column], adapters: Mapping[str, str]) -> dict[str, float]:
    out = {}
    for name, col in columns.items():
        if not adapters:                                                   # full fine-tuning: one model
            out[name] = float(col.fn(model))
        elif col.stage in adapters:                                        # the task's own adapter
            load_adapter(model, adapters[col.stage])
            out[name] = float(col.fn(model))
        else:                                                              # not trained yet: the base
            with disable_adapters(model):
                out[name] = float(col.fn(model))
    return out


def run_stages(model, stages: Sequence[Stage], columns: Mapping[str, Column], *, batch_size: int = 8,
               replay: float = 0.0, replay_mix: Optional[MixtureConfig] = None, lora: Optional[LoRAConfig] = None,
               folder: Optional[str] = None, collate_fn: Callable = stack_collate, seed: int = 0,
               before: Optional[dict] = None, progress: bool = True) -> dict:
    """Train `model` stage by stage and score every column before the first stage and after each.

    replay: the fraction rho of each later stage's examples drawn from the earlier stages' data.
    lora: per-task adapters instead of full fine-tuning: each stage gets a fresh LoRA on the frozen
    base, saved to folder/<stage name>; columns are scored with their own stage's adapter.
    before: the scores of `model` as given, if already measured (they are then not measured again).
    Returns {"rows": ["base", stage names ...], "scores": [{column: score} per row], "seconds" and
    "cpu_seconds" of each stage's training, "counts": [{set: examples drawn} per stage],
    "adapters": {stage: folder}}."""
    if not stages:
        raise ValueError("run_stages: no stages")
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"run_stages: stage names {names} must be distinct")
    if lora is not None and (folder is None or replay):
        raise ValueError("run_stages: per-task adapters (lora=...) need a folder to save them in, and no replay "
                         "(each adapter sees only its own stage)")
    first = dict(before) if before is not None else _score(model, columns, {})
    out = {"rows": ["base"], "scores": [first], "seconds": [], "cpu_seconds": [], "counts": [], "adapters": {}}
    for k, st in enumerate(stages):
        if lora is not None:                                               # a fresh adapter per stage
            remove_adapters(model)
            torch.manual_seed(seed + k)                                    # its A init
            apply_lora(model, lora)
        earlier = {s.name: s.data for s in stages[:k]} if replay else {}
        w = replay_weights(st.name, {n: len(d) for n, d in earlier.items()}, replay, replay_mix)
        data = MixtureDataset({st.name: st.data, **earlier}, w, st.steps * batch_size, seed + k)
        cfg = TrainConfig(steps=st.steps, batch_size=batch_size, lr=st.lr, warmup_steps=max(1, st.steps // 10),
                          seed=seed + k, progress=progress, desc=st.name)
        t0, c0 = time.perf_counter(), time.process_time()
        train(model, data, cfg, loss_fn=example_loss, collate_fn=collate_fn)
        out["seconds"].append(time.perf_counter() - t0)
        out["cpu_seconds"].append(time.process_time() - c0)               # robust on a shared machine
        out["counts"].append(data.counts())
        if lora is not None:
            out["adapters"][st.name] = os.path.join(folder, st.name)
            save_adapter(model, out["adapters"][st.name])
        out["rows"].append(st.name)
        out["scores"].append(_score(model, columns, out["adapters"]))
    return out


def _square(R) -> torch.Tensor:
    R = torch.as_tensor(R, dtype=torch.float64, device="cpu")             # a table of Python scores
    if R.dim() != 2 or R.shape[0] != R.shape[1] or R.shape[0] < 2:
        raise ValueError(f"score matrix R must be (K, K) with K >= 2 (row i = after stage i, column j = task j "
                         f"trained at stage j), got shape {tuple(R.shape)}")
    if not torch.isfinite(R).all():
        raise ValueError("score matrix R holds NaN or inf")
    return R


def forgetting(R) -> torch.Tensor:
    """f_j = max_{l < K-1} R[l, j] - R[K-1, j] for the K-1 tasks before the last (Chaudhry et al.)."""
    R = _square(R)
    K = R.shape[0]
    return R[:K - 1, :K - 1].max(dim=0).values - R[K - 1, :K - 1]          # (K-1,)


def backward_transfer(R) -> torch.Tensor:
    """BWT = 1/(K-1) Σ_{j<K-1} (R[K-1, j] - R[j, j]): < 0 is forgetting (Lopez-Paz & Ranzato)."""
    R = _square(R)
    K = R.shape[0]
    return (R[K - 1, :K - 1] - R.diagonal()[:K - 1]).mean()                # ()


def stage_matrix(run: dict, columns: Mapping[str, Column]) -> torch.Tensor:
    """The square R of a run_stages result: rows after each stage, the columns of those stages in stage
    order (one column per stage, taken with its sign flipped where lower is better)."""
    by_stage = {c.stage: (n, c) for n, c in columns.items() if c.stage is not None}
    missing = [s for s in run["rows"][1:] if s not in by_stage]
    if missing:
        raise ValueError(f"stage_matrix: stage(s) {missing} have no column")
    cols = [by_stage[s] for s in run["rows"][1:]]
    return torch.tensor([[sc[n] if c.higher_is_better else -sc[n] for n, c in cols] for sc in run["scores"][1:]],
                        dtype=torch.float64, device="cpu")                 # Python scores: a CPU table
