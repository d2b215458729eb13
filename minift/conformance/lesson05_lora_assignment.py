"""Lesson 05's assignment, "LoRA from scratch": the reference `run_*` functions and their checks.

    run_lora_layer(linear, r, alpha, dropout=0.0)          a LoRA layer wrapping `linear` (part 1)
    run_apply_lora(model, targets, r, alpha, dropout=0.0)  targeted nn.Linear layers replaced, the rest frozen (part 2)
    run_merge_lora(model), run_unmerge_lora(model)         s B A folded into every adapted weight, and back (part 3)

The layer's contract (what the checks read): `weight` and `bias` (the wrapped layer's, frozen),
`lora_A` (r, in) and `lora_B` (out, r) (the only trainable tensors, B = 0 at the start), `scaling`
= alpha / r, `merge()`, `unmerge()`. The references are minift's (`minift.peft.lora`); the checks
compare with float64 formulas written out here (a numpy GPT forward for the model-level ones).
"""
from __future__ import annotations

import re

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import strategies as st

from minift.model import GPT, GPTConfig
from minift.peft.lora import LoRAConfig, LoRALinear, apply_lora, merge_lora, unmerge_lora

from .harness import assert_close, gpt_block64, layer_norm64, output, property_check

LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


# ---- the reference functions --------------------------------------------------------------------

def run_lora_layer(linear: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> nn.Module:
    """`minift.peft.lora.LoRALinear(linear, r, alpha, dropout)` with the wrapped weight and bias frozen:

        h = x W0^T + b + s · (dropout(x) A^T) B^T,   s = alpha / r,   A (r, in) random, B (out, r) = 0"""
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"run_lora_layer: linear must be an nn.Linear, got {type(linear).__name__}")
    layer = LoRALinear(linear, int(r), float(alpha), float(dropout))
    for p in (layer.weight, layer.bias):
        if p is not None:
            p.requires_grad = False
    return layer


def run_apply_lora(model: nn.Module, targets, r: int, alpha: float, dropout: float = 0.0) -> nn.Module:
    """`minift.peft.lora.apply_lora`: every nn.Linear whose module name ends with one of `targets`
    (whole dot-separated parts: "mlp.c_fc" matches "transformer.h.0.mlp.c_fc", "h.1.attn.c_proj" only
    block 1's) becomes a LoRA layer; every other parameter is frozen. Returns the model."""
    if isinstance(targets, str) or not targets:
        raise ValueError(f"run_apply_lora: targets must be a non-empty list of module-name suffixes, got {targets!r}")
    suffixes = [rf"(^|\.){re.escape(t)}$" for t in targets]                # whole dot-separated parts at the end
    apply_lora(model, LoRAConfig(r=int(r), alpha=float(alpha), dropout=float(dropout), targets=suffixes, qkv=None,
                                 include_head=False))
    return model


def run_merge_lora(model: nn.Module) -> nn.Module:
    """`minift.peft.lora.merge_lora`: W <- W0 + s B A in every LoRA layer (a no-op on a merged one)."""
    merge_lora(model)
    return model


def run_unmerge_lora(model: nn.Module) -> nn.Module:
    """`minift.peft.lora.unmerge_lora`: W <- W - s B A in every merged LoRA layer (a no-op otherwise)."""
    unmerge_lora(model)
    return model


# ---- part 1: the layer --------------------------------------------------------------------------

def _linear(fin, fout, bias, seed):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(fin, fout, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(fout, fin, generator=g) * 0.5)
        if bias:
            lin.bias.copy_(torch.randn(fout, generator=g) * 0.5)
    return lin


LAYER = st.fixed_dictionaries(dict(fin=st.integers(1, 8), fout=st.integers(1, 8), bias=st.booleans(),
                                   alpha=st.sampled_from([1.0, 3.0, 8.0, 16.0]), seed=st.integers(0, 10 ** 6),
                                   n=st.integers(1, 5))).flatmap(
    lambda d: st.integers(1, min(d["fin"], d["fout"])).map(lambda r: {**d, "r": r}))


def _trainable(m: nn.Module) -> set:
    return {n for n, p in m.named_parameters() if p.requires_grad}


def _param(m: nn.Module, name: str, shape, what: str) -> torch.Tensor:
    p = getattr(m, name, None)
    if not isinstance(p, torch.Tensor):
        raise AssertionError(f"{what} has no tensor `{name}`; the layer keeps {name} {shape} as an attribute")
    if tuple(p.shape) != tuple(shape):
        raise AssertionError(f"{what}.{name} has shape {tuple(p.shape)}, expected {tuple(shape)}")
    return p


@torch.no_grad()
def _set(p: torch.Tensor, value: torch.Tensor) -> None:
    p.copy_(value.to(p.dtype))


@property_check("run_lora_layer", lesson=5, examples=30, d=LAYER)
def lora_layer_starts_as_base(lora_layer, d):
    """lora_layer(linear, r, alpha) keeps linear's weight and bias as its own `weight` and `bias`, frozen;
    its only trainable tensors are lora_A (r, in), not all zero, and lora_B (out, r) = 0; scaling =
    alpha / r; and its output is bit for bit linear's."""
    lin = _linear(d["fin"], d["fout"], d["bias"], d["seed"])
    W, b = lin.weight.detach().clone(), None if lin.bias is None else lin.bias.detach().clone()
    r, alpha = d["r"], d["alpha"]
    what = f"run_lora_layer(nn.Linear({d['fin']}, {d['fout']}, bias={d['bias']}), r={r}, alpha={alpha})"
    layer = lora_layer(lin, r, alpha)
    if not isinstance(layer, nn.Module):
        raise AssertionError(f"{what} must return an nn.Module, got {type(layer).__name__}")
    if _trainable(layer) != {"lora_A", "lora_B"}:
        raise AssertionError(f"{what}: the trainable parameters are {sorted(_trainable(layer))}; expected exactly "
                             f"['lora_A', 'lora_B'] (freeze the wrapped weight and bias)")
    A = _param(layer, "lora_A", (r, d["fin"]), what)
    B = _param(layer, "lora_B", (d["fout"], r), what)
    if not torch.equal(_param(layer, "weight", W.shape, what).detach(), W) or (
            b is not None and not torch.equal(_param(layer, "bias", b.shape, what).detach(), b)):
        raise AssertionError(f"{what}: `weight` and `bias` must be the wrapped layer's, unchanged")
    if torch.count_nonzero(B) or not torch.count_nonzero(A) or not torch.isfinite(A).all():
        raise AssertionError(f"{what}: at the start B must be 0 and A random (finite, not all 0); got "
                             f"{int(torch.count_nonzero(B))} nonzero in B, {int(torch.count_nonzero(A))} in A")
    if abs(float(getattr(layer, "scaling", float("nan"))) - alpha / r) > 1e-12 * alpha:
        raise AssertionError(f"{what}: scaling = {getattr(layer, 'scaling', None)!r}, expected alpha / r = {alpha / r!r}")
    x = torch.randn(d["n"], d["fin"], generator=torch.Generator().manual_seed(d["seed"] + 1))
    y = output(layer(x), (d["n"], d["fout"]), f"{what}(x)")
    assert_close(y, F.linear(x, W, b).double().numpy(), f"{what}(x) at the start vs linear(x), bit for bit",
                 atol=0, rtol=0)


def _branch64(x, A, B, s, keep=None, p=0.0):
    xd = x if keep is None else x * keep / (1.0 - p)
    return s * ((xd @ A.T) @ B.T)


@property_check("run_lora_layer", lesson=5, examples=30, d=LAYER)
def lora_layer_forward_matches_formula(lora_layer, d):
    """with lora_A and lora_B set to any values, in eval mode, lora_layer(linear, r, alpha)(x) equals x W0^T
    + b + (alpha / r) (x A^T) B^T in float64, and a backward pass reaches A and B only."""
    lin = _linear(d["fin"], d["fout"], d["bias"], d["seed"])
    r, alpha, n = d["r"], d["alpha"], d["n"]
    layer = lora_layer(lin, r, alpha)
    what = f"run_lora_layer(nn.Linear({d['fin']}, {d['fout']}, bias={d['bias']}), r={r}, alpha={alpha})"
    g = torch.Generator().manual_seed(d["seed"] + 2)
    A, B, x = torch.randn(r, d["fin"], generator=g), torch.randn(d["fout"], r, generator=g), torch.randn(n, d["fin"], generator=g)
    _set(_param(layer, "lora_A", A.shape, what), A)
    _set(_param(layer, "lora_B", B.shape, what), B)
    y_t = layer.eval()(x)
    y = output(y_t, (n, d["fout"]), f"{what}(x) with A, B set")
    W, x64, A64, B64 = (t.detach().double().numpy() for t in (lin.weight, x, A, B))
    b64 = 0.0 if lin.bias is None else lin.bias.detach().double().numpy()
    s = alpha / r
    expected = x64 @ W.T + b64 + _branch64(x64, A64, B64, s)
    bound = np.abs(x64) @ np.abs(W).T + np.abs(b64) + _branch64(np.abs(x64), np.abs(A64), np.abs(B64), s)
    assert_close(y, expected, f"{what}(x) vs x W0^T + b + (alpha / r) (x A^T) B^T", atol=1e-5 * bound + 1e-6, rtol=0)
    y_t.sum().backward()
    if layer.lora_A.grad is None or layer.lora_B.grad is None or lin.weight.grad is not None:
        raise AssertionError(f"{what}: after backward, lora_A and lora_B need a gradient and the frozen weight none")


@property_check("run_lora_layer", lesson=5, examples=20, d=LAYER, p=st.sampled_from([0.25, 0.5]))
def lora_layer_dropout_on_branch_only(lora_layer, d, p):
    """lora_layer(linear, r, alpha, dropout=p): in training mode the dropout (inverted: kept inputs
    scaled by 1 / (1 - p)) hits only the branch's input, so with B = 0 the output is linear's bit for
    bit, and over 4,000 copies of one x the mean output is x W0^T + b + s (x A^T) B^T (within 6
    standard errors); in eval mode there is no dropout."""
    lin = _linear(d["fin"], d["fout"], d["bias"], d["seed"])
    r, alpha = d["r"], d["alpha"]
    s = alpha / r
    layer = lora_layer(lin, r, alpha, p)
    what = f"run_lora_layer(nn.Linear({d['fin']}, {d['fout']}, bias={d['bias']}), r={r}, alpha={alpha}, dropout={p})"
    g = torch.Generator().manual_seed(d["seed"] + 3)
    x = (torch.rand(1, d["fin"], generator=g) + 0.5).expand(4000, -1).contiguous()    # one row, 4,000 draws
    base = F.linear(x, lin.weight, lin.bias).detach()
    torch.manual_seed(d["seed"])
    y0 = output(layer.train()(x), base.shape, f"{what}, train mode, B = 0")
    assert_close(y0, base.double().numpy(), f"{what}: in train mode with B = 0, dropout must not touch the base "
                                            f"path (linear(x), bit for bit)", atol=0, rtol=0)
    A, B = torch.randn(r, d["fin"], generator=g), torch.randn(d["fout"], r, generator=g)
    _set(_param(layer, "lora_A", A.shape, what), A)
    _set(_param(layer, "lora_B", B.shape, what), B)
    W, x64, A64, B64 = (t.detach().double().numpy() for t in (lin.weight, x[:1], A, B))
    b64 = 0.0 if lin.bias is None else lin.bias.detach().double().numpy()
    expected = x64 @ W.T + b64 + _branch64(x64, A64, B64, s)                         # (1, out)
    scale = np.abs(x64) @ np.abs(W).T + np.abs(b64) + _branch64(np.abs(x64), np.abs(A64), np.abs(B64), abs(s))
    y_eval = output(layer.eval()(x[:1]), (1, d["fout"]), f"{what}, eval mode")
    assert_close(y_eval, expected, f"{what} in eval mode (no dropout) vs x W0^T + b + s (x A^T) B^T",
                 atol=1e-5 * scale + 1e-6, rtol=0)
    torch.manual_seed(d["seed"] + 4)
    y = output(layer.train()(x), base.shape, f"{what}, train mode")
    per_input = s * x64[0][:, None] * (A64.T @ B64.T)                                 # (in, out): input i's share
    sem = np.sqrt((per_input ** 2).sum(axis=0) * p / (1 - p) / x.shape[0])            # std error of the mean
    assert_close(y.mean(axis=0), expected[0], f"{what}: mean over 4,000 dropout draws vs the undropped output "
                 f"(a kept input is scaled by 1 / (1 - p))", atol=6 * sem + 1e-4 * scale[0], rtol=0)
    if np.allclose(y, y[:1], atol=1e-6 * scale.max(), rtol=0):
        raise AssertionError(f"{what}: in train mode all 4,000 outputs are the same: no dropout was applied")


# ---- part 2: the surgery ------------------------------------------------------------------------

@st.composite
def _gpt_case(draw):
    """(config, seed, targets, r, alpha): a tiny random GPT and a LoRA setting for it."""
    L, C = draw(st.integers(1, 2)), draw(st.sampled_from([8, 12, 16]))
    cfg = GPTConfig(vocab_size=24, block_size=12, n_layer=L, n_head=2, n_embd=C)
    extra = [f"h.{i}.{m}" for i in range(L) for m in ("attn.c_proj", "mlp.c_fc")]
    targets = draw(st.lists(st.sampled_from(list(LINEARS) + extra), min_size=1, max_size=3, unique=True))
    return cfg, draw(st.integers(0, 10 ** 6)), targets, draw(st.integers(1, 4)), draw(st.sampled_from([1.0, 4.0, 16.0]))


def _gpt(cfg: GPTConfig, seed: int) -> GPT:
    """Every weight random (biases and norms too), float32, eval mode."""
    torch.manual_seed(seed)
    m = GPT(cfg)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(torch.empty_like(p).uniform_(0.5, 1.5) if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight"))
                    else torch.randn_like(p) * 0.3)
    return m.eval()


def _idx(cfg, seed):
    return torch.randint(0, cfg.vocab_size, (2, 6), generator=torch.Generator().manual_seed(seed))


def _targeted(model: nn.Module, targets) -> list[str]:
    """The nn.Linear module names that end with a target, in whole dot-separated parts."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and any(
        n == t or n.endswith("." + t) for t in targets)]


def _logits(model, idx, what) -> torch.Tensor:
    out = model(idx)
    y = getattr(out, "logits", out)
    if not isinstance(y, torch.Tensor):
        raise AssertionError(f"{what}: the model's forward no longer returns logits ({type(out).__name__})")
    return y


def _applied(apply, case):
    cfg, seed, targets, r, alpha = case
    model, base = _gpt(cfg, seed), _gpt(cfg, seed)
    what = f"run_apply_lora(GPT(n_layer={cfg.n_layer}, n_embd={cfg.n_embd}), targets={targets}, r={r}, alpha={alpha})"
    got = apply(model, list(targets), r, alpha, 0.0)
    if not isinstance(got, nn.Module):
        raise AssertionError(f"{what} must return the model, got {type(got).__name__}")
    return got.eval(), base, _targeted(base, targets), what


def _lora_tensors(model, names, what):
    """(A, B) of every adapted module, by module name, read from the model's parameters."""
    params = dict(model.named_parameters())
    out = {}
    for n in names:
        if f"{n}.lora_A" not in params or f"{n}.lora_B" not in params:
            raise AssertionError(f"{what}: {n} has no parameters {n}.lora_A and {n}.lora_B")
        out[n] = params[f"{n}.lora_A"], params[f"{n}.lora_B"]
    return out


@torch.no_grad()
def _perturb(pairs: dict, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for A, B in pairs.values():
        for t in (A, B):
            t.copy_(0.3 * torch.randn(t.shape, generator=g).to(t.dtype))


def gpt64(cfg: GPTConfig, sd: dict, idx: np.ndarray) -> np.ndarray:
    """The GPT forward in numpy float64 from a state dict of (possibly updated) weights: embeddings,
    the blocks (harness.gpt_block64), ln_f, and the tied output layer."""
    f = {k: v.detach().to(torch.float64).numpy() for k, v in sd.items()}
    T = idx.shape[1]
    x = f["transformer.wte.weight"][idx] + f["transformer.wpe.weight"][np.arange(T)][None]
    for i in range(cfg.n_layer):
        pre = f"transformer.h.{i}."
        x = gpt_block64(x, {k[len(pre):]: torch.from_numpy(v) for k, v in f.items() if k.startswith(pre)},
                        cfg.n_head, cfg.layer_norm_epsilon)
    x = layer_norm64(x, f["transformer.ln_f.weight"], f["transformer.ln_f.bias"], cfg.layer_norm_epsilon)
    return x @ f["transformer.wte.weight"].T


def _merged64(base: nn.Module, pairs: dict, s: float) -> dict:
    """The base's state dict with W0 + s B A (float64) in place of every adapted weight."""
    sd = {k: v.detach().double() for k, v in base.state_dict().items()}
    for n, (A, B) in pairs.items():
        sd[f"{n}.weight"] = sd[f"{n}.weight"] + s * (B.detach().double() @ A.detach().double())
    return sd


def _logit_tol(y: np.ndarray) -> float:
    return 2e-4 * (1.0 + float(np.abs(y).max()))                    # float32 through LayerNorms and softmaxes


@property_check("run_apply_lora", lesson=5, examples=15, case=_gpt_case())
def apply_lora_starts_as_base(apply, case):
    """apply_lora(model, targets, r, alpha) returns the model with its logits bit for bit the base
    model's (B = 0), on a tiny random GPT with 1-2 blocks."""
    model, base, _, what = _applied(apply, case)
    idx = _idx(case[0], case[1])
    y = _logits(model, idx, what)
    if not torch.equal(y.detach(), base(idx).logits.detach()):
        raise AssertionError(f"{what}: at the start the logits must equal the base model's bit for bit; max |diff| "
                             f"{float((y - base(idx).logits).abs().max()):.3g}")


@property_check("run_apply_lora", lesson=5, examples=15, case=_gpt_case())
def apply_lora_trains_only_A_B(apply, case):
    """after apply_lora(model, targets, r, alpha) exactly the lora_A and lora_B of the targeted linear
    layers train (sum of r (in + out) numbers; a target is a suffix of whole name parts), every base
    tensor keeps its name and value, and a backward pass reaches A and B only."""
    model, base, names, what = _applied(apply, case)
    r = case[3]
    want = {f"{n}.{t}" for n in names for t in ("lora_A", "lora_B")}
    got = _trainable(model)
    if got != want:
        raise AssertionError(f"{what}: trainable {sorted(got)}, expected {sorted(want)} (missing "
                             f"{sorted(want - got)}, unexpected {sorted(got - want)})")
    count = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad)
    mods = dict(base.named_modules())
    expected = sum(r * (mods[n].in_features + mods[n].out_features) for n in names)
    if count != expected:
        raise AssertionError(f"{what}: {count} trainable numbers, expected sum of r (in + out) = {expected}")
    sd = model.state_dict()
    for k, v in base.state_dict().items():
        if k not in sd or not torch.equal(sd[k], v):
            raise AssertionError(f"{what}: base tensor {k} is {'missing' if k not in sd else 'changed'}")
    for n, m in model.named_modules():
        if n in mods and isinstance(mods[n], nn.Linear) and n not in names and type(m) is not nn.Linear:
            raise AssertionError(f"{what}: {n} is not targeted and must stay a plain nn.Linear, got {type(m).__name__}")
    _logits(model, _idx(case[0], case[1]), what).sum().backward()
    wrong = [n for n, p in model.named_parameters() if (p.grad is not None) != (n in want)]
    if wrong:
        raise AssertionError(f"{what}: after backward, a gradient must reach exactly lora_A and lora_B; wrong for {wrong[:4]}")


@property_check("run_apply_lora", lesson=5, examples=15, case=_gpt_case())
def apply_lora_forward_matches_formula(apply, case):
    """with every lora_A, lora_B of apply_lora(model, targets, r, alpha) set to random values, the logits
    equal a float64 GPT forward whose targeted weights are W0 + (alpha / r) B A."""
    _, base, _, what, pairs, idx, y = _perturbed(apply, case)
    cfg, r, alpha = case[0], case[3], case[4]
    expected = gpt64(cfg, _merged64(base, pairs, alpha / r), idx.numpy())
    assert_close(output(torch.from_numpy(y), expected.shape, f"{what}, logits with A, B set", None), expected, f"{what}: logits vs a float64 GPT with W0 + (alpha / r) B A", atol=_logit_tol(expected),
                 rtol=0)


@property_check("run_apply_lora", lesson=5, examples=10, case=_gpt_case())
def apply_lora_step_moves_output(apply, case):
    """one training step (AdamW's first: each trainable tensor moves by 0.1 sign(gradient)) on the
    cross-entropy of apply_lora's model makes B nonzero, changes the logits, and leaves every base
    tensor as it was."""
    model, base, names, what = _applied(apply, case)
    cfg, seed = case[0], case[1]
    idx, tgt = _idx(cfg, seed), _idx(cfg, seed + 1)
    y0 = _logits(model, idx, what).detach()
    F.cross_entropy(_logits(model, idx, what).flatten(0, 1), tgt.flatten()).backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and p.grad is not None:
                p.sub_(0.1 * torch.sign(p.grad))                     # AdamW's first step: lr sign(g)
    pairs = _lora_tensors(model, names, what)
    if not any(torch.count_nonzero(B) for _, B in pairs.values()):
        raise AssertionError(f"{what}: after one training step every lora_B is still 0 (is B trainable?)")
    if torch.allclose(_logits(model, idx, what).detach(), y0, atol=1e-6, rtol=0):
        raise AssertionError(f"{what}: one training step did not change the logits")
    sd = model.state_dict()
    for k, v in base.state_dict().items():
        if k not in sd or not torch.equal(sd[k], v):
            raise AssertionError(f"{what}: after the step the frozen base tensor {k} is {'missing' if k not in sd else 'changed'}")


_NER: dict = {}
E2E = dict(targets=list(LINEARS), r=4, alpha=16.0, steps=30, batch=16, lr=1e-2, n_eval=40, f1=0.70)


@property_check("run_apply_lora", lesson=5, examples=1, seed=st.just(0))
def apply_lora_learns_ner(apply, seed):
    """end to end: lesson 05's NER task (TinyWorld, the shipped base, a TokenClassifier whose head stays
    FROZEN at its random start, so only LoRA learns), apply_lora(body, every linear layer, r=4,
    alpha=16), 30 AdamW steps of 16 sentences at lr 1e-2: entity F1 >= 0.70 on the first 40 val sentences."""
    from minift import world
    from minift.heads import TokenClassifier, classifier_loss, ner_splits, predict_tags
    from minift.pretrain import load_base
    from minift.tasks import collate_fn, entity_f1
    from minift.train import TrainConfig, train
    e = E2E
    if "data" not in _NER:                                           # the task's encodings, read once
        tok = load_base()[1]
        _NER["data"] = tok, ner_splits(tok, 128, e["n_eval"])
    tok, (ner, items, train_items) = _NER["data"]
    base = load_base()[0]                                            # a fresh base: the impl changes it
    torch.manual_seed(seed)
    clf = TokenClassifier(base, len(world.NER_TAGS))
    what = f"run_apply_lora(body, {e['targets']}, r={e['r']}, alpha={e['alpha']})"
    body = apply(clf.body, list(e["targets"]), e["r"], e["alpha"], 0.0)
    if body is not clf.body:
        clf.body = body
    for p in clf.head.parameters():
        p.requires_grad = False                                      # only LoRA may learn
    if not any(p.requires_grad for p in clf.parameters()):
        raise AssertionError(f"{what}: nothing in the body is trainable (are lora_A and lora_B trainable?)")
    col = collate_fn(tok.pad_id)
    train(clf, train_items, TrainConfig(steps=e["steps"], batch_size=e["batch"], lr=e["lr"], warmup_steps=3, seed=seed,
                                        progress=False), loss_fn=classifier_loss, collate_fn=col)
    pred = predict_tags(clf, items["val"], col, world.NER_TAGS)
    f1 = entity_f1(pred, [x["tags"] for x in ner["val"]])["f1"]
    if not f1 >= e["f1"]:
        raise AssertionError(f"{what}: after {e['steps']} steps, val entity F1 {f1:.3f} < the target {e['f1']}")


# ---- part 3: merge and unmerge ------------------------------------------------------------------

def _weight(sd: dict, n: str) -> torch.Tensor:
    if f"{n}.weight" not in sd:
        raise AssertionError(f"the model has no tensor {n}.weight: keep the wrapped layer's weight as `weight`")
    return sd[f"{n}.weight"]


def _same(got, model):
    return model if got is None else got                         # an impl may return None (in place)


def _perturbed(apply, case):
    """apply_lora's model with every A, B set to random values, and its logits then (float64)."""
    model, base, names, what = _applied(apply, case)
    pairs = _lora_tensors(model, names, what)
    _perturb(pairs, case[1])
    idx = _idx(case[0], case[1])
    return model, base, names, what, pairs, idx, _logits(model, idx, what).detach().double().numpy()


@property_check("run_merge_lora", "run_apply_lora", lesson=5, examples=15, case=_gpt_case())
def merge_lora_matches_unmerged(merge, apply, case):
    """merge_lora after apply_lora (A, B set to random values) makes every targeted `weight` W0 + (alpha
    / r) B A (float64, float32 rounding) and leaves the logits those of the unmerged model; merging
    twice changes nothing."""
    model, base, names, what, pairs, idx, before = _perturbed(apply, case)
    r, alpha = case[3], case[4]
    merged = _same(merge(model), model)
    want = _merged64(base, pairs, alpha / r)
    sd = merged.state_dict()
    for n in names:
        W0, (A, B) = base.state_dict()[f"{n}.weight"].double(), pairs[n]
        bound = W0.abs() + (alpha / r) * (B.detach().double().abs() @ A.detach().double().abs())
        assert_close(_weight(sd, n).double().numpy(), want[f"{n}.weight"].numpy(),
                     f"run_merge_lora: {n}.weight vs W0 + (alpha / r) B A", atol=1e-6 * bound.numpy() + 1e-7, rtol=0)
    after = output(_logits(merged.eval(), idx, what), before.shape, "the merged model's logits")
    assert_close(after, before, f"{what}, then run_merge_lora: merged logits vs unmerged", atol=_logit_tol(before), rtol=0)
    once = {k: v.clone() for k, v in merged.state_dict().items()}
    again = _same(merge(merged), merged)
    if any(not torch.equal(v, once[k]) for k, v in again.state_dict().items()):
        raise AssertionError("run_merge_lora on a merged model must change nothing (merge once)")


@property_check("run_unmerge_lora", "run_apply_lora", "run_merge_lora", lesson=5, examples=15, case=_gpt_case())
def unmerge_lora_restores_base(unmerge, apply, merge, case):
    """unmerge_lora after merge_lora gives every targeted weight W0 back (float32 rounding of W0 +
    |s| |B| |A|) and the unmerged logits; then training on (A, B) changes the logits again."""
    model, base, names, what, pairs, idx, before = _perturbed(apply, case)
    r, alpha = case[3], case[4]
    m = _same(merge(model), model)
    u = _same(unmerge(m), m)
    sd = u.state_dict()
    for n in names:
        W0, (A, B) = base.state_dict()[f"{n}.weight"].double(), pairs[n]
        bound = W0.abs() + (alpha / r) * (B.detach().double().abs() @ A.detach().double().abs())
        assert_close(_weight(sd, n).double().numpy(), W0.numpy(), f"run_unmerge_lora(run_merge_lora(...)): "
                     f"{n}.weight vs W0", atol=2.0 ** -21 * bound.numpy() + 1e-30, rtol=0)
    after = output(_logits(u.eval(), idx, what), before.shape, "the unmerged model's logits")
    assert_close(after, before, "logits after merge then unmerge vs before", atol=_logit_tol(before), rtol=0)
    with torch.no_grad():
        for _, B in pairs.values():
            B.mul_(2.0)                                              # the unmerged layer must read B again
    moved = _logits(u, idx, what).detach().double().numpy()
    if np.allclose(moved, before, atol=_logit_tol(before), rtol=0):
        raise AssertionError("after unmerge, changing lora_B does not change the logits: the layer must use its "
                             "branch again (is it still marked as merged?)")


@property_check("run_unmerge_lora", "run_apply_lora", lesson=5, examples=10, case=_gpt_case())
def unmerge_lora_unmerged_is_noop(unmerge, apply, case):
    """unmerge_lora on a model that was never merged changes nothing: every tensor and the logits stay
    bit for bit (A, B set to random values)."""
    model, _, _, what, _, idx, y0 = _perturbed(apply, case)
    sd0 = {k: v.clone() for k, v in model.state_dict().items()}
    u = _same(unmerge(model), model)
    if any(not torch.equal(v, sd0[k]) for k, v in u.state_dict().items()) or not np.array_equal(
            _logits(u, idx, what).detach().double().numpy(), y0):
        raise AssertionError(f"{what}, then run_unmerge_lora without a merge: the model changed (unmerge only "
                             f"undoes a merge)")
