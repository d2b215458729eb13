"""The shipped base model: a byte-level BPE tokenizer and a ~1M-parameter GPT pretrained on
TinyWorld's corpus, small enough to train on a 2-core laptop CPU in under ten minutes.

    minift pretrain                  # retrain both, write data/base/ (what is shipped)
    minift pretrain --size tiny      # the same recipe at another width/depth -> data/sizes/tiny/
    minift pretrain --fast           # a seconds-long run that checks the pipeline

`--size` (lesson 20, scaling) trains one of SIZES with the shipped tokenizer and the same recipe
(data, steps, batch, learning-rate schedule, seed), so the models differ only in shape. With
`--steps N --out data/sizes/tiny_N` it trains the tiny shape on fewer tokens: lesson 20's
pretraining-data axis (PRETRAIN_AMOUNTS, `pretraining_tokens`).

data/base/ holds tokenizer.json, model.safetensors and config.json; config.json records the
recipe and the measured validation perplexity and closed-book fact accuracy, so the numbers in
lesson 01's README can be traced to the run that produced the shipped weights.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Optional

import torch

from . import world
from .checkpoint import load_json, load_model, save_model
from .model import GPT, GPTConfig
from .tasks import LMDataset, collate
from .tokenizer import Tokenizer
from .train import TrainConfig, evaluate_nll, model_device, to_device, train

DATA_DIR = Path(os.environ.get("MINIFT_DATA", Path(__file__).resolve().parent.parent / "data"))
BASE_DIR = DATA_DIR / "base"

VOCAB_SIZE = 2048
SEQ_LEN = 256
BASE_CONFIG = dict(block_size=SEQ_LEN, n_layer=4, n_head=4, n_embd=128, dropout=0.0)
# Model sizes for lesson 20 (scaling), each pretrained by RECIPE on the same corpus. Head width is
# 32 throughout; "base" is the shipped model. Non-embedding parameters ~ 12 L C^2: 98k, 332k, 786k.
SIZES = {"tiny": dict(n_layer=2, n_head=2, n_embd=64),
         "small": dict(n_layer=3, n_head=3, n_embd=96),
         "base": dict(n_layer=4, n_head=4, n_embd=128)}
SIZES_DIR = DATA_DIR / "sizes"


# Lesson 20's pretraining-data axis: the tiny shape pretrained by RECIPE for fewer steps (the
# same warmup, a cosine decay over its own length), so it sees fewer pretraining tokens
# (steps x batch x SEQ_LEN) of the same corpus. Each is written by
#     minift pretrain --size tiny --steps N --out data/sizes/tiny_N
# and the 3000-step point of the axis is data/sizes/tiny itself.
PRETRAIN_AMOUNTS = {"tiny_375": ("tiny", 375), "tiny_750": ("tiny", 750)}


def size_dir(size: str) -> Path:
    """Where `minift pretrain --size SIZE` writes: data/base/ for "base", else data/sizes/SIZE/
    (also for the names of PRETRAIN_AMOUNTS, written with --out)."""
    if size not in SIZES and size not in PRETRAIN_AMOUNTS:
        raise ValueError(f"size={size!r} is not a model size; choose from {sorted(SIZES)} "
                         f"(or a pretraining amount of lesson 20: {sorted(PRETRAIN_AMOUNTS)})")
    return BASE_DIR if size == "base" else SIZES_DIR / size


def pretraining_tokens(folder) -> int:
    """Tokens a checkpoint saw in pretraining, from the recipe in its config.json: steps x batch
    x block_size (every window is full). Lesson 20's pretraining-data axis X = this number."""
    meta = load_json(os.path.join(str(folder), "config.json"))
    r, m = meta.get("recipe"), meta.get("model")
    if not isinstance(r, dict) or not isinstance(m, dict) or not {"steps", "batch_size"} <= set(r) \
            or "block_size" not in m:
        raise ValueError(f"{folder}/config.json records no pretraining recipe (steps, batch_size, block_size)")
    return int(r["steps"]) * int(r["batch_size"]) * int(r.get("grad_accum", 1)) * int(m["block_size"])


RECIPE = TrainConfig(steps=3000, batch_size=8, lr=3e-3, min_lr_ratio=0.05, warmup_steps=100,
                     weight_decay=0.1, grad_clip=1.0, seed=0, desc="pretrain")


# Cloze prompts for closed-book recall, one per (person, relation): the first phrasing of each
# relation in world.FACT_TEMPLATES, cut just before the value.
PROBES = {"home": ("{n} lives in", "{v}"), "job": ("{n} works as", "{av}"), "pet": ("{n} has a pet", "{v}"),
          "food": ("{n}'s favourite food is", "{v}"), "object": ("{n} owns", "{av}"),
          "friend": ("{n} is friends with", "{v}")}


def fact_probes(seed: int = 0) -> list[tuple[str, str]]:
    """(prompt, answer) for every fact of every TinyWorld person: ("Mara lives in", "Brookfield")."""
    out = []
    for p in world.get_world(seed).people:
        for rel, (prompt, answer) in PROBES.items():
            v = p.fact(rel)
            out.append((prompt.format(n=p.name), answer.format(v=v, av=world._a(v))))
    return out


def corpus_fingerprint(seed: int = 0) -> str:
    """sha256 of the pretraining corpus (train + val): what the base model depends on. Task sets
    may change without retraining the base; this corpus may not."""
    import hashlib
    import json
    h = hashlib.sha256()
    for split in world.CORPUS_SPLITS:
        h.update(json.dumps(world.pretrain_corpus(split, seed), ensure_ascii=False).encode())
    return h.hexdigest()


def load_base(folder: Optional[str] = None, device=None) -> tuple[GPT, Tokenizer]:
    """The shipped base model (eval mode) on `device` (a torch.device or "cpu", "cuda", "cuda:N";
    default the CPU) and its tokenizer. `folder`: another checkpoint of the same layout
    (lesson 20's sizes, `size_dir`)."""
    folder = str(folder or BASE_DIR)
    if not os.path.isfile(os.path.join(folder, "model.safetensors")):
        raise ValueError(f"no base model in {folder}; it is shipped in data/base/ (or run `minift pretrain`)")
    try:
        device = torch.device("cpu" if device is None else device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"load_base: device={device!r} is not a torch device ({e})") from None
    return load_model(folder).to(device).eval(), Tokenizer.load(os.path.join(folder, "tokenizer.json"))


@torch.no_grad()
def fact_accuracy(model: GPT, tok: Tokenizer, probes: list[tuple[str, str]], batch_size: int = 64) -> float:
    """Closed-book fact recall: the share of cloze prompts ("Mara lives in") whose greedy
    continuation starts with the right answer (" Brookfield")."""
    if not probes:
        raise ValueError("fact_accuracy: no probes")
    hits = 0
    for i in range(0, len(probes), batch_size):
        chunk = probes[i:i + batch_size]
        b = to_device(collate([{"idx": tok.encode(p)} for p, _ in chunk], tok.pad_id, side="left"), model_device(model))
        n_new = max(len(tok.encode(" " + a)) for _, a in chunk) + 1
        out = model.generate(b["idx"], n_new, attention_mask=b["attention_mask"], eos_token_id=tok.eos_id)
        for (_, answer), row in zip(chunk, out):
            hits += tok.decode(row.tolist(), skip_special_tokens=True).strip().startswith(answer)
    return hits / len(probes)


def evaluate_base(model: GPT, tok: Tokenizer, max_val_windows: Optional[int] = None) -> dict:
    val = LMDataset(tok, world.pretrain_corpus("val"), model.config.block_size)
    n = len(val) if max_val_windows is None else min(len(val), max_val_windows)
    nll = evaluate_nll(model, [val[i] for i in range(n)], batch_size=16)
    probes = fact_probes()
    return {"val_nll": nll, "val_ppl": math.exp(nll), "fact_accuracy": fact_accuracy(model, tok, probes),
            "n_fact_probes": len(probes)}


class ShippedModelError(ValueError):
    """pretrain() was asked to write where it must not: a run other than the recipe into the shipped
    model's folder (the default one), or an empty folder name."""


def pretrain(out: Optional[str] = None, steps: Optional[int] = None, fast: bool = False,
             size: Optional[str] = None) -> dict:
    """Train the tokenizer and base model (size None), or, with size, one model of SIZES on the
    shipped tokenizer (data/base/tokenizer.json), by the same recipe."""
    if size is not None and size not in SIZES:
        raise ValueError(f"size={size!r} is not a model size; choose from {sorted(SIZES)}")
    shipped = size_dir(size) if size else BASE_DIR
    if out is not None and not str(out).strip():
        raise ShippedModelError(f"out={out!r} names no folder")
    if out is None and (fast or steps not in (None, RECIPE.steps)):
        what = "fast=True (--fast)" if fast else f"steps={steps} (--steps {steps})"
        raise ShippedModelError(f"{what} is not the shipped recipe ({RECIPE.steps} steps): written to the default "
                                f"folder it would replace the shipped model in {shipped}/, which the lessons load. "
                                f"Give an out folder (--out DIR); --out {shipped} replaces the shipped model on purpose")
    out = str(shipped if out is None else out)
    t0 = time.perf_counter()
    texts = world.pretrain_corpus("train")
    if fast:
        texts = texts[:200]
    if size is not None and not fast:
        tok_path = BASE_DIR / "tokenizer.json"
        if not tok_path.is_file():
            raise ValueError(f"pretrain --size needs the shipped tokenizer {tok_path}; run `minift pretrain` first")
        tok = Tokenizer.load(str(tok_path))
        print(f"tokenizer: {tok.vocab_size} tokens, the shipped one ({tok_path})", flush=True)
    else:
        tok = Tokenizer.train(texts, vocab_size=512 if fast else VOCAB_SIZE)
        print(f"tokenizer: {tok.vocab_size} tokens, trained in {time.perf_counter() - t0:.1f}s", flush=True)
    shape = SIZES[size] if size else {}
    cfg = GPTConfig(vocab_size=tok.vocab_size, **{**BASE_CONFIG, **shape})
    if fast:
        cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=32)
    data = LMDataset(tok, texts, cfg.block_size)
    n = steps if steps is not None else 20 if fast else RECIPE.steps
    warmup = 2 if fast else RECIPE.warmup_steps
    if warmup >= n:                                  # a run too short for the warmup warms up for a tenth of it
        warmup = n // 10
    rc = TrainConfig(**{**RECIPE.__dict__, "steps": n, "warmup_steps": warmup})
    print(f"model: {cfg}\n{GPT(cfg).num_parameters():,} parameters; {len(data):,} windows of "
          f"{cfg.block_size} tokens; {rc.steps} steps x {rc.batch_size}", flush=True)
    torch.manual_seed(rc.seed)
    model = GPT(cfg)
    history = train(model, data, rc)
    metrics = evaluate_base(model, tok, max_val_windows=8 if fast else None)
    metrics.update(train_loss=history[-1]["loss"], train_seconds=round(time.perf_counter() - t0, 1))
    print(f"val perplexity {metrics['val_ppl']:.2f}, fact accuracy {metrics['fact_accuracy']:.1%} "
          f"({metrics['n_fact_probes']} probes), {metrics['train_seconds']}s", flush=True)
    save_model(model, out, extra={"recipe": {k: v for k, v in rc.__dict__.items() if k != "extra"},
                                  "metrics": metrics, "corpus_fingerprint": corpus_fingerprint(),
                                  **({"size": size} if size else {})},
               files={"tokenizer.json": tok.save})           # one atomic checkpoint: weights, config, tokenizer
    print(f"saved to {out}/", flush=True)
    return metrics


def recipe_differences(folder: Optional[str] = None) -> list[str]:
    """How the base checkpoint in `folder` (default: the shipped one) was made differently from the
    shipped recipe and shape, from its config.json: ["n_layer 1 (the recipe: 4)", "steps 20 (the recipe:
    3000)", ...]; [] when it is the recipe's. (`minift pretrain --out data/base --steps 20` leaves one.)"""
    cfg = load_json(os.path.join(str(folder or BASE_DIR), "config.json"))
    want_model = BASE_CONFIG
    want_recipe = {k: RECIPE.__dict__[k] for k in ("steps", "batch_size", "lr", "min_lr_ratio", "warmup_steps",
                                                    "weight_decay", "grad_clip", "seed")}
    return [f"{k} {got.get(k)} (the recipe: {v})"
            for got, want in ((cfg.get("model", {}), want_model), (cfg.get("recipe", {}), want_recipe))
            for k, v in want.items() if got.get(k) != v]


def base_metrics(folder: Optional[str] = None) -> dict:
    """The metrics recorded when the shipped base model was trained."""
    return load_json(os.path.join(str(folder or BASE_DIR), "config.json")).get("metrics", {})


def forgetting_probe(model: GPT, tok: Tokenizer, n_windows: int = 16, n_facts: int = 72) -> dict:
    """What fine-tuning may have cost the language model: perplexity on the first n_windows
    validation windows (128 tokens) of the original pretraining corpus, and closed-book fact
    accuracy on a fixed, evenly spread subset of n_facts probes. Compare before vs after."""
    val = LMDataset(tok, world.pretrain_corpus("val"), min(128, model.config.block_size))
    n = min(n_windows, len(val))
    nll = evaluate_nll(model, [val[i] for i in range(n)], batch_size=16)
    return {"pretrain_ppl": math.exp(nll), "fact_accuracy": fact_accuracy(model, tok, probe_subset(n_facts))}


def probe_subset(n: int) -> list[tuple[str, str]]:
    """n probes spread over people and relations: person i, relation i mod 6 (a fixed subset)."""
    probes, k = fact_probes(), len(PROBES)
    people = len(probes) // k
    return [probes[(i % people) * k + i % k] for i in range(min(n, len(probes)))]
