"""Lesson 16's assignment (a contrastive training step): the reference `run_*` functions and their checks.

    run_embed_batch(model, idx, attention_mask, pooling)          a GPT's pooled sentence embeddings  (B, C)
    run_contrastive_step(model, batch, temperature, lr, symmetric)  one SGD step of InfoNCE; returns the loss

`run_embed_batch` is `minift.align.contrastive.embed`: the GPT run with the attention mask, its last
hidden states (after ln_f) pooled over the real tokens (the last one, or the mean), differentiable.
`run_contrastive_step` is `minift.align.contrastive.contrastive_loss` on a `pair_collate` batch
(rows: N anchors, N positives, M hard negatives; last-token embeddings; InfoNCE with in-batch
negatives at temperature τ, one-way or symmetric) followed by one plain gradient-descent step
θ ← θ − lr ∇_θ L.

The checks, registered into `CHECKS` with lesson="lesson16". The model's forward is the given: the
checks read its hidden states (`output_hidden_states=True`) and compute everything after them
themselves, in float64: the pooling as a loop over rows, the loss with `info_nce64` (lesson 16's
anchor-by-anchor loop), and the SGD step's gradient by autograd on a float64 copy of the model
with the pooling and the loss written out here (not minift's).

    run_embed_batch        the float64 pooling of the model's masked hidden states; a sentence's
                           embedding is the same alone and inside a padded batch (left or right,
                           any ids at the pads); differentiable, and no gradient reaches a pad's id
    run_contrastive_step   the loss is the float64 InfoNCE of the embeddings (one-way, symmetric,
                           with and without hard negatives); the new parameters are θ − lr ∇L,
                           whatever stale .grad the model held; a small step lowers the loss; the
                           padding side and the pads' ids change neither the loss nor the step
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from hypothesis import assume
from hypothesis import strategies as st

from minift.align.contrastive import ContrastiveConfig, contrastive_loss, embed
from minift.model import GPT, GPTConfig

from .harness import assert_close, output, property_check, scalar, sgd_step, tensor_arg
from .lesson16_contrastive import info_nce64

# ---- the reference functions --------------------------------------------------------------------


def run_embed_batch(model: torch.nn.Module, idx: torch.Tensor, attention_mask: torch.Tensor,
                    pooling: str = "last") -> torch.Tensor:
    """One embedding per row of idx (B, T), as `minift.align.contrastive.embed`: the GPT run on idx
    with attention_mask (B, T) (1 = real token, 0 = padding, on either side), its last hidden
    states h (B, T, C) (after ln_f) pooled over the real tokens: h at the last one (pooling="last")
    or their mean ("mean"). Returns (B, C), differentiable in the model's parameters."""
    idx, attention_mask = tensor_arg("idx", idx), tensor_arg("attention_mask", attention_mask)
    return embed(model, idx, attention_mask, pooling)


def run_contrastive_step(model: torch.nn.Module, batch: dict, temperature: float, lr: float,
                         symmetric: bool = False) -> torch.Tensor:
    """One contrastive training step on a `pair_collate` batch {"idx" (2N + M, T), "attention_mask"
    (2N + M, T), "n_pairs": N} whose rows are N anchors, their N positives, then M hard negatives:

        e_r = h_{r, last real t}      (the model's last hidden states, run with the attention mask)
        L   = InfoNCE(a = e_{0..N−1}, b = e_{N..2N−1}, negatives = e_{2N..}, τ, symmetric)
        θ  ← θ − lr ∇_θ L             for every parameter that requires grad (plain SGD)

    Returns L before the step (a 0-dim tensor)."""
    if not isinstance(batch, dict) or not {"idx", "attention_mask", "n_pairs"} <= set(batch):
        raise TypeError("run_contrastive_step: batch must be a dict with idx, attention_mask and n_pairs")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"run_contrastive_step: lr={lr!r} must be a number > 0")
    cfg = ContrastiveConfig(temperature=temperature, pooling="last", symmetric=bool(symmetric), dropout=0.0)
    loss, _ = contrastive_loss(cfg)(model, batch)
    return sgd_step(loss, model, lr)                                  # θ ← θ − lr ∇L


# ---- inputs ----------------------------------------------------------------------------------------

V_TINY, T_TINY = 13, 7
SEEDS = st.integers(0, 2 ** 16)


def tiny_gpt(seed: int) -> GPT:
    """A 1-layer GPT (n_embd 8, vocab 13, no dropout) with every weight random from `seed`, so its
    hidden states are far from flat."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=V_TINY, block_size=T_TINY + 2, n_layer=1, n_head=2, n_embd=8, dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(0.5 + torch.rand(p.shape, generator=g) if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight"))
                    else 0.4 * torch.randn(p.shape, generator=g))
    return model


def sentences(seed: int, n: int) -> list[list[int]]:
    """n random sentences of 1 .. T_TINY token ids in 1 .. V − 2 (the id V − 1 never occurs in a sentence)."""
    g = torch.Generator().manual_seed(seed + 1)
    out = []
    for _ in range(n):
        length = int(torch.randint(1, T_TINY + 1, (1,), generator=g))
        out.append(torch.randint(1, V_TINY - 1, (length,), generator=g).tolist())
    return out


def pad(rows: list[list[int]], left: bool, pad_id: int = 0, extra: int = 0, junk_seed=None):
    """(idx, attention_mask), both (len(rows), max length + extra) int64: each row's tokens at the right
    end (left padding) or the left end; the pads hold pad_id, or random ids when junk_seed is given."""
    T = max(len(r) for r in rows) + extra
    idx = torch.full((len(rows), T), pad_id, dtype=torch.long)
    if junk_seed is not None:
        idx = torch.randint(0, V_TINY, (len(rows), T), generator=torch.Generator().manual_seed(junk_seed))
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(T - len(r), T) if left else slice(0, len(r))
        idx[i, sl], mask[i, sl] = torch.tensor(r), 1
    return idx, mask


def _hidden64(model, idx, mask) -> np.ndarray:
    """The model's last hidden states (B, T, C), run with the mask, as float64 numpy."""
    with torch.no_grad():
        out = model(idx, attention_mask=mask, output_hidden_states=True, return_logits=False)
    return out.hidden_states[-1].double().numpy()


def _pool64(h: np.ndarray, mask: np.ndarray, pooling: str) -> np.ndarray:
    """Row by row: h at the last t with mask 1, or the mean of h over the t with mask 1."""
    rows = []
    for b in range(h.shape[0]):
        real = [t for t in range(h.shape[1]) if mask[b, t] == 1]
        rows.append(h[b, real[-1]] if pooling == "last" else sum(h[b, t] for t in real) / len(real))
    return np.stack(rows)


# ---- the checks: run_embed_batch -------------------------------------------------------------------

@property_check("run_embed_batch", lesson=16, examples=10, seed=SEEDS, B=st.integers(1, 4), left=st.booleans(),
                pooling=st.sampled_from(["last", "mean"]))
def embed_batch_pools_the_last_hidden_states(fn, seed, B, left, pooling):
    """run_embed_batch(model, idx, attention_mask, pooling) is the float64 pooling of the model's last
    hidden states (after ln_f, the model run WITH the attention mask): h at each row's last real token
    ("last") or the mean of h over its real tokens ("mean"), left or right padding."""
    model = tiny_gpt(seed)
    idx, mask = pad(sentences(seed, B), left)
    want = _pool64(_hidden64(model, idx, mask), mask.numpy(), pooling)
    what = f"run_embed_batch(model, idx {tuple(idx.shape)}, attention_mask {mask.tolist()}, {pooling!r})"
    got = output(fn(model, idx.clone(), mask.clone(), pooling), want.shape, what)
    assert_close(got, want, f"{what} vs the {pooling} real token's hidden state, in float64", atol=1e-5, rtol=1e-5)


@property_check("run_embed_batch", lesson=16, examples=10, seed=SEEDS, B=st.integers(2, 4), left=st.booleans(),
                extra=st.integers(0, 2), pooling=st.sampled_from(["last", "mean"]))
def embed_batch_padding_does_not_leak(fn, seed, B, left, extra, pooling):
    """padding never changes a sentence's embedding: each sentence embedded alone (a batch of one, no
    padding) equals its row of a padded batch, padded on either side, with extra pad columns and
    random token ids at the pads."""
    model = tiny_gpt(seed)
    rows = sentences(seed, B)
    idx, mask = pad(rows, left, extra=extra, junk_seed=seed + 7)
    what = f"run_embed_batch(model, idx {idx.tolist()}, attention_mask {mask.tolist()}, {pooling!r})"
    batch = output(fn(model, idx, mask, pooling), (B, 8), what)
    for i, r in enumerate(rows):
        one = torch.tensor([r])
        alone = output(fn(model, one, torch.ones_like(one), pooling), (1, 8), f"run_embed_batch on sentence {i} alone")
        assert_close(batch[i], alone[0], f"{what}: row {i} vs the same sentence embedded alone", atol=1e-5, rtol=1e-5)


@property_check("run_embed_batch", lesson=16, examples=10, seed=SEEDS, B=st.integers(1, 4), left=st.booleans(),
                pooling=st.sampled_from(["last", "mean"]))
def embed_batch_gradient_reaches_real_tokens_only(fn, seed, B, left, pooling):
    """the embeddings are differentiable in the model's parameters (training backpropagates through
    them): the gradient of their sum reaches the token embedding rows of the sentences' tokens, and
    is exactly 0 on the row of an id that sits only at pad positions."""
    model = tiny_gpt(seed)
    idx, mask = pad(sentences(seed, B), left, pad_id=V_TINY - 1, extra=1)     # V − 1: a pad-only id
    what = f"run_embed_batch(model, idx {idx.tolist()}, attention_mask {mask.tolist()}, {pooling!r})"
    e = fn(model, idx, mask, pooling)
    output(e, (B, 8), what)
    if not e.requires_grad:
        raise AssertionError(f"{what} is not differentiable (no grad_fn): do not run the model under torch.no_grad()")
    model.zero_grad(set_to_none=True)
    e.sum().backward()
    g = model.transformer.wte.weight.grad
    if g is None:
        raise AssertionError(f"{what}: no gradient reached the token embedding wte")
    real = sorted(set(idx[mask == 1].tolist()))
    if not all(float(g[t].abs().sum()) > 0 for t in real):
        raise AssertionError(f"{what}: the token embedding rows {real} of the real tokens got no gradient")
    leak = float(g[V_TINY - 1].abs().max())
    if leak != 0.0:
        raise AssertionError(f"{what}: the pad-only id {V_TINY - 1} got a gradient of size {leak!r}; padding leaks")


# ---- the checks: run_contrastive_step --------------------------------------------------------------

def step_batch(seed: int, n_pairs: int, n_neg: int, left: bool, extra: int = 0, junk: bool = False) -> dict:
    """A pair_collate batch: 2 n_pairs + n_neg random sentences (anchors, positives, negatives)."""
    idx, mask = pad(sentences(seed, 2 * n_pairs + n_neg), left, extra=extra, junk_seed=seed + 11 if junk else None)
    return {"idx": idx, "attention_mask": mask, "n_pairs": n_pairs}


def _copy(batch: dict) -> dict:
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _loss64(model, batch, tau, symmetric) -> float:
    """InfoNCE (info_nce64, anchor by anchor) of the float64 last-token embeddings."""
    m = batch["attention_mask"].numpy()
    e = _pool64(_hidden64(model, batch["idx"], batch["attention_mask"]), m, "last")
    N = batch["n_pairs"]
    return info_nce64(e[:N], e[N:2 * N], tau, e[2 * N:] if len(e) > 2 * N else None, symmetric)


def _loss_torch64(model64, batch, tau, symmetric) -> torch.Tensor:
    """The same loss in float64 torch (differentiable): last-token rows, unit rows, logsumexp − diagonal."""
    h = model64(batch["idx"], attention_mask=batch["attention_mask"], output_hidden_states=True,
                return_logits=False).hidden_states[-1]                              # (R, T, C) float64
    m = batch["attention_mask"]
    last = [max(t for t in range(m.shape[1]) if m[r, t] == 1) for r in range(m.shape[0])]
    e = torch.stack([h[r, t] for r, t in enumerate(last)])                           # (R, C)
    u = e / e.pow(2).sum(-1, keepdim=True).sqrt()
    N = batch["n_pairs"]
    S = u[:N] @ torch.cat([u[N:2 * N], u[2 * N:]]).T / tau                           # (N, N + M)
    loss = (torch.logsumexp(S, 1) - S[range(N), range(N)]).mean()
    if symmetric:
        S2 = u[N:2 * N] @ u[:N].T / tau                                              # b_i against the a_j
        loss = 0.5 * (loss + (torch.logsumexp(S2, 1) - S2[range(N), range(N)]).mean())
    return loss


TAUS = st.sampled_from([0.1, 0.5, 1.0])


@property_check("run_contrastive_step", lesson=16, examples=10, seed=SEEDS, N=st.integers(1, 3), M=st.integers(0, 2),
                tau=TAUS, symmetric=st.booleans(), left=st.booleans())
def contrastive_step_loss_matches_float64(fn, seed, N, M, tau, symmetric, left):
    """the loss run_contrastive_step(model, batch, τ, lr, symmetric) returns is the float64 InfoNCE of the
    model's last-token embeddings before the step: anchors = rows 0..N−1, positives = rows N..2N−1, hard
    negatives = the rest (candidates for the anchors only), one-way or symmetric, left or right padding."""
    model = tiny_gpt(seed)
    batch = step_batch(seed, N, M, left)
    want = _loss64(model, batch, tau, symmetric)
    what = f"run_contrastive_step(model, batch of {N} pairs + {M} negatives, temperature={tau}, lr=0.1, " \
           f"symmetric={symmetric})"
    assert_close(scalar(fn(model, _copy(batch), tau, 0.1, symmetric), what), want,
                 f"{what} vs the float64 InfoNCE of the embeddings", atol=1e-5 / tau, rtol=1e-5)


@property_check("run_contrastive_step", lesson=16, examples=10, seed=SEEDS, N=st.integers(2, 3), M=st.integers(0, 2),
                tau=TAUS, symmetric=st.booleans(), lr=st.sampled_from([0.05, 0.3]))
def contrastive_step_is_one_sgd_step(fn, seed, N, M, tau, symmetric, lr):
    """the step is plain gradient descent on this batch's loss: every parameter becomes θ − lr ∇_θ L,
    ∇L the gradient of the float64 loss (autograd on a float64 copy of the model), whatever stale
    gradient the model's .grad held before (set here to 1 on every parameter)."""
    model = tiny_gpt(seed)
    batch = step_batch(seed, N, M, left=bool(seed % 2))
    m64 = copy.deepcopy(model).double()
    _loss_torch64(m64, batch, tau, symmetric).backward()
    want = {k: (p.detach() - lr * p.grad).numpy() for k, p in m64.named_parameters()}
    for p in model.parameters():
        p.grad = torch.ones_like(p)                                # a stale gradient from "before"
    what = f"run_contrastive_step(model, batch of {N} pairs + {M} negatives, temperature={tau}, lr={lr}, " \
           f"symmetric={symmetric})"
    fn(model, _copy(batch), tau, lr, symmetric)
    for k, p in model.named_parameters():
        assert_close(p.detach().double().numpy(), want[k], f"{what}: {k} after the step vs θ − lr ∇L",
                     atol=1e-6 + 1e-4 * lr / tau, rtol=1e-5)


@property_check("run_contrastive_step", lesson=16, examples=10, seed=SEEDS, N=st.integers(2, 3), M=st.integers(0, 2),
                tau=TAUS, symmetric=st.booleans())
def contrastive_step_lowers_the_loss(fn, seed, N, M, tau, symmetric):
    """one small step (lr = 0.002 τ) lowers the float64 InfoNCE of the batch: the step goes down the
    gradient, not up it, and it moves the model (for sentences that all differ: two equal candidates,
    e.g. two positives [5], make the loss log 2 with a zero gradient, and no step lowers it)."""
    sents = sentences(seed, 2 * N + M)
    assume(len({tuple(x) for x in sents}) == len(sents))
    model = tiny_gpt(seed)
    batch = step_batch(seed, N, M, left=bool(seed % 2))
    before = _loss64(model, batch, tau, symmetric)
    lr = 0.002 * tau
    what = f"run_contrastive_step(model, batch of {N} pairs + {M} negatives, temperature={tau}, lr={lr:g}, " \
           f"symmetric={symmetric})"
    fn(model, _copy(batch), tau, lr, symmetric)
    after = _loss64(model, batch, tau, symmetric)
    if not after < before:
        raise AssertionError(f"{what}: the loss went from {before!r} to {after!r} after the step; it must fall")


@property_check("run_contrastive_step", lesson=16, examples=10, seed=SEEDS, N=st.integers(1, 3), M=st.integers(0, 2),
                tau=TAUS, symmetric=st.booleans(), extra=st.integers(1, 2))
def contrastive_step_padding_does_not_leak(fn, seed, N, M, tau, symmetric, extra):
    """the padding changes nothing: the same sentences right-padded with pad id 0, or left-padded with
    extra pad columns and random ids at the pads, give the same loss and the same parameters after
    the step."""
    results = []
    for left, ex, junk in ((False, 0, False), (True, extra, True)):
        model = tiny_gpt(seed)
        batch = step_batch(seed, N, M, left, ex, junk)
        what = f"run_contrastive_step(model, idx {batch['idx'].tolist()}, attention_mask " \
               f"{batch['attention_mask'].tolist()}, temperature={tau}, lr=0.1, symmetric={symmetric})"
        loss = scalar(fn(model, batch, tau, 0.1, symmetric), what)
        results.append((loss, {k: p.detach().double().numpy() for k, p in model.named_parameters()}, what))
    (l0, p0, _), (l1, p1, what) = results
    assert_close(l1, l0, f"{what}: the loss vs the same sentences right-padded with 0", atol=1e-5 / tau, rtol=1e-5)
    for k in p0:
        assert_close(p1[k], p0[k], f"{what}: {k} after the step vs the same step on the right-padded batch",
                     atol=1e-6 + 1e-5 / tau, rtol=1e-5)
