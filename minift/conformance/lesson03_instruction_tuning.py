"""Lesson 03 (instruction tuning): the reference `run_*` functions and their conformance checks.

The reference functions, computed by minift's own code:

    run_response_loss_mask(prompt_len, response_len, train_on_prompt=False)   which targets count
    run_sft_loss(logits, targets)                          mean CE over targets != -100 (0 if none)
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minift.model import IGNORE_INDEX, at_least_fp32
from minift.tasks import SFTDataset
from minift.tokenizer import Tokenizer

from .harness import assert_close, output, property_check, tensor, tensor_arg
from .strategies import MAX_B, MAX_T, MAX_V, arrays, f32, shared


# ---- the reference functions --------------------------------------------------------------------

class _OneTokenPerChar(Tokenizer):
    """minift's Tokenizer (its encode_prompt / encode_pair template) over a toy encode: one token
    per character, so a prompt of n - 2 characters gives prompt_len = n ids (markers included).
    Leading whitespace rides on the first token, as in byte-level BPE (" parrot" is one token), so
    the space encode_pair puts before a response adds none."""

    def __init__(self):                                    # no BPE file: only the ids the template needs
        self.eos_id, self.pad_id, self.prompt_id, self.response_id = 0, 1, 2, 3

    def encode(self, text: str) -> list[int]:
        return [4] * len(text.lstrip())


def run_response_loss_mask(prompt_len: int, response_len: int, train_on_prompt: bool = False) -> list[int]:
    """Which *targets* of an SFT example take loss, as `minift.tasks.SFTDataset` builds them.

        ids     = [<|prompt|>] prompt [<|response|>]  response  [<|endoftext|>]
                  \\______ prompt_len ids ________/  response_len   EOS
        targets = ids[1:]                                       (prompt_len + response_len targets)
        mask    = [0] * (prompt_len - 1) + [1] * (response_len + 1)     (1 = trained on)

    prompt_len >= 2 counts both markers; response_len >= 0 excludes the EOS. train_on_prompt=True
    (the ablation): every target counts. Returns a list of 0/1 ints."""
    for name, v, lo in (("prompt_len", prompt_len, 2), ("response_len", response_len, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"run_response_loss_mask: {name}={v!r} must be an int >= {lo}")
    n = prompt_len + response_len + 1                                      # ids, EOS included
    item = SFTDataset(_OneTokenPerChar(), [("p" * (prompt_len - 2), "r" * response_len)], block_size=n,
                      train_on_prompt=bool(train_on_prompt))[0]
    return [int(t != IGNORE_INDEX) for t in item["targets"].tolist()]


def run_sft_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The SFT loss of a padded batch, as `GPT.forward(idx, targets)` computes it:

        L = -(1/N) sum over (b, t) with targets[b, t] != -100 of log softmax(logits[b, t])[targets[b, t]]

    N counts the kept targets of the *whole batch* (a token-weighted mean: a long response weighs
    more than a short one). targets are already shifted (targets[b, t] is the token after idx[b, t]);
    -100 marks prompt and padding. logits: (B, T, V) float; targets: (B, T) integer.
    Returns a scalar; 0 (not NaN) when no target counts."""
    logits, targets = tensor_arg("logits", logits), tensor_arg("targets", targets)
    if logits.dim() != 3 or targets.dim() != 2 or tuple(targets.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"run_sft_loss: expected logits (B, T, V) and targets (B, T), got "
                         f"{tuple(logits.shape)} and {tuple(targets.shape)}")
    targets = targets.long()
    if not bool((targets != IGNORE_INDEX).any()):                          # GPT.forward's convention
        return logits.sum() * 0.0
    return F.cross_entropy(at_least_fp32(logits.reshape(-1, logits.size(-1))), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX)


# ---- the checks ----------------------------------------------------------------------------------

def _mask_list(y, n: int, what: str) -> list:
    """The impl's mask as a list of n ints in {0, 1} (a list, tuple or 1-D tensor is accepted)."""
    if isinstance(y, torch.Tensor):
        y = y.reshape(-1).tolist() if y.dim() <= 1 else y
    if not isinstance(y, (list, tuple)):
        raise AssertionError(f"{what} must return a list of 0/1 ints, got {type(y).__name__}")
    if len(y) != n:
        raise AssertionError(f"{what} returned {len(y)} values, expected one per target: "
                             f"prompt_len + response_len = {n}")
    if any(isinstance(v, bool) or v not in (0, 1) for v in y):
        raise AssertionError(f"{what} = {list(y)} must hold only the ints 0 and 1")
    return [int(v) for v in y]


@property_check("run_response_loss_mask", lesson=3, examples=60, prompt_len=st.integers(2, 40),
                response_len=st.integers(0, 20))
def response_loss_mask_layout(mask_fn, prompt_len, response_len):
    """response_loss_mask(P, R) marks the P + R targets ids[1:] of [<|prompt|>] prompt [<|response|>]
    response [EOS] (P prompt ids, markers included; R response tokens): 0 for the P - 1 targets
    inside the prompt, then 1 for the R response tokens and the EOS."""
    what = f"run_response_loss_mask(prompt_len={prompt_len}, response_len={response_len})"
    got = _mask_list(mask_fn(prompt_len, response_len), prompt_len + response_len, what)
    # the token sequence, position by position, and which of its targets are response or EOS
    kinds = ["marker"] + ["prompt"] * (prompt_len - 2) + ["marker"] + ["response"] * response_len + ["eos"]
    want = [int(k in ("response", "eos")) for k in kinds[1:]]          # targets = ids[1:]
    if got != want:
        bad = next(i for i, (g, w) in enumerate(zip(got, want)) if g != w)
        raise AssertionError(f"{what} = {got}, expected {want}: target {bad} is the token at position "
                             f"{bad + 1} ({kinds[bad + 1]}), which must {'' if want[bad] else 'not '}"
                             f"take loss")


EOS, PROMPT, RESPONSE = 0, 2, 3                     # marker ids, apart from the content ids 4..50


@property_check("run_response_loss_mask", lesson=3, examples=40,
                prompt=st.lists(st.integers(4, 50), max_size=30),
                response=st.lists(st.integers(4, 50), max_size=15))
def response_loss_mask_selects_response(mask_fn, prompt, response):
    """the mask selects exactly the response and its EOS from real sequences: [ids[t + 1] for t where
    mask[t] = 1] equals response + [EOS], and with train_on_prompt=True every one of the P + R
    targets counts."""
    ids = [PROMPT] + prompt + [RESPONSE] + response + [EOS]
    P, R = len(prompt) + 2, len(response)
    what = f"run_response_loss_mask(prompt_len={P}, response_len={R})"
    mask = _mask_list(mask_fn(P, R), P + R, what)
    picked = [ids[t + 1] for t, m in enumerate(mask) if m]
    if picked != response + [EOS]:
        raise AssertionError(f"{what}: on ids {ids} the targets with mask 1 are {picked}, expected the "
                             f"response and EOS {response + [EOS]}")
    what_all = f"run_response_loss_mask(prompt_len={P}, response_len={R}, train_on_prompt=True)"
    full = _mask_list(mask_fn(P, R, train_on_prompt=True), P + R, what_all)
    if full != [1] * (P + R):
        raise AssertionError(f"{what_all} = {full}: without the mask every target takes loss")


def sft_loss64(logits: np.ndarray, targets: np.ndarray) -> float:
    """The naive loop: every (b, t) whose target is not -100 adds logsumexp(z) - z[target]; the sum
    is divided by the number of such targets in the whole batch; 0 if there are none."""
    B, T, V = logits.shape
    total, n = 0.0, 0
    for b in range(B):
        for t in range(T):
            y = int(targets[b, t])
            if y == -100:
                continue
            z = logits[b, t]
            m = z.max()
            total += m + math.log(np.exp(z - m).sum()) - z[y]
            n += 1
    return total / n if n else 0.0


def _sft_inputs(key: str, lo: float, hi: float) -> dict:
    """logits (B, T, V) float32 and targets (B, T) int64 in [0, V) or -100 (prompt / padding)."""
    shape = shared(st.tuples(st.integers(1, MAX_B), st.integers(1, MAX_T), st.integers(1, MAX_V)), key)
    logits = shape.flatmap(lambda s: arrays(s, f32(lo, hi)))
    targets = shape.flatmap(lambda s: hnp.arrays(np.int64, s[:2], elements=st.one_of(
        st.integers(0, s[2] - 1), st.just(-100))))
    return dict(logits=logits, targets=targets)


@property_check("run_sft_loss", lesson=3, examples=60, **_sft_inputs("sft1", -20, 20))
def sft_loss_matches_formula(loss_fn, logits, targets):
    """sft_loss(logits, targets) equals the mean over the whole batch of -log softmax(logits[b,
    t])[targets[b, t]] for targets != -100 (one token-weighted mean, not a mean of per-sequence
    means), and 0 (not NaN) when every target is -100; float64 loop."""
    loss = output(loss_fn(tensor(logits), torch.tensor(targets)), (), "run_sft_loss(logits, targets)")
    assert_close(loss, sft_loss64(logits.astype(np.float64), targets),
                 f"run_sft_loss vs mean over the {int((targets != -100).sum())} targets != -100 of "
                 f"-log softmax(logits)[target]", atol=1e-5, rtol=1e-5)


@property_check("run_sft_loss", lesson=3, examples=50, **_sft_inputs("sft2", -1e4, 1e4),
                other=shared(st.tuples(st.integers(1, MAX_B), st.integers(1, MAX_T), st.integers(1, MAX_V)),
                             "sft2").flatmap(lambda s: arrays(s, f32(-1e3, 1e3))))
def sft_loss_ignores_prompt_and_padding(loss_fn, logits, targets, other):
    """prompt and padding positions (target -100) do not count: new logits there (up to |1e3|) leave
    the loss unchanged, the loss is finite for logits up to |1e4|, and a batch's loss is
    the token-weighted average of its rows' losses."""
    what = "run_sft_loss(logits, targets)"
    loss = output(loss_fn(tensor(logits), torch.tensor(targets)), (), what)
    assert_close(loss, sft_loss64(logits.astype(np.float64), targets), f"{what} for large logits "
                 f"vs the float64 log-sum-exp formula", atol=1e-3, rtol=1e-5)
    changed = np.where((targets == -100)[..., None], other, logits)
    loss_changed = output(loss_fn(tensor(changed), torch.tensor(targets)), (),
                          "run_sft_loss with new logits where targets == -100")
    assert_close(loss_changed, loss, f"{what}, logits changed where targets == -100, vs unchanged",
                 atol=1e-6, rtol=1e-6)
    n = (targets != -100).sum(axis=1)                                   # (B,) counted targets per row
    rows = [output(loss_fn(tensor(logits[b:b + 1]), torch.tensor(targets[b:b + 1])), (), f"run_sft_loss on row {b}")
            for b in range(len(n))]
    want = float(np.dot(n, rows) / n.sum()) if n.sum() else 0.0
    assert_close(loss, want, f"{what} vs sum_b n_b loss(row b) / sum_b n_b (n_b = targets != -100 in "
                 f"row b: {n.tolist()})", atol=1e-3, rtol=1e-5)
