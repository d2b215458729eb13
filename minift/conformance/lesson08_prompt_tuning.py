"""Lesson 08 (prompt tuning): the reference `run_*` functions and their conformance checks.

The reference `run_*` functions: plain tensors and hyperparameters in, tensors out, computed by
minift's own module (`minift/peft/prompt.py`).

    run_soft_prompt(embeds, prompt, attention_mask)   ([P ; embeds], [1 ; mask])   (B, n+T, C), (B, n+T)
    run_prompt_init_from_text(token_embeds, n)         P_i = E[i mod m]: the text cut or repeated to n rows
    run_prompt_positions(attention_mask, n)            positions 0..n-1 for P, real tokens counted on from n
    run_prompt_loss(logits, targets, n)                next-token loss of the prompted logits, P skipped

The checks, registered into `CHECKS` with lesson="lesson08". Expected values are computed here
independently (float64 numpy or a textbook construction), never by calling minift's reference
functions.

The rules checked: P is prepended (never appended, never added), the mask gets n ones in front,
the text initialisation is the text cut or repeated (row i = row i mod m), the real tokens'
positions shift by n, and the loss pairs logits[b, n + t] with targets[b, t] (nothing shifted).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import assume, strategies as st
from hypothesis.extra import numpy as hnp

from minift.model import IGNORE_INDEX, at_least_fp32
from minift.peft.prompt import prepend_soft_prompt, prompt_positions, text_init_rows

from .harness import assert_close, output, property_check, tensor, tensor_arg
from .strategies import MAX_B, MAX_D, MAX_T, MAX_V, arrays, f32


# ---- the reference functions --------------------------------------------------------------------

def _n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n={n!r} must be an integer >= 0 (the number of virtual tokens)")
    return n


def run_soft_prompt(embeds: torch.Tensor, prompt: torch.Tensor, attention_mask: torch.Tensor):
    """What SoftPrompt.pre feeds the GPT: (inputs_embeds, attention_mask) = ([P ; embeds], [1 ; mask]).
    embeds (B, T, C) float, prompt (n, C) (n may be 0), attention_mask (B, T) of 0/1.
    Returns ((B, n + T, C), (B, n + T))."""
    embeds, prompt, attention_mask = tensor_arg("embeds", embeds), tensor_arg("prompt", prompt), \
        tensor_arg("attention_mask", attention_mask)
    if embeds.dim() != 3 or prompt.dim() != 2 or prompt.shape[1] != embeds.shape[2] \
            or tuple(attention_mask.shape) != tuple(embeds.shape[:2]):
        raise ValueError(f"run_soft_prompt: expected embeds (B, T, C), prompt (n, C), attention_mask (B, T); got "
                         f"{tuple(embeds.shape)}, {tuple(prompt.shape)}, {tuple(attention_mask.shape)}")
    x, mask, _ = prepend_soft_prompt(embeds, prompt, attention_mask)
    return x, mask


def run_prompt_init_from_text(token_embeds: torch.Tensor, n: int) -> torch.Tensor:
    """The "text" initialisation: row i of P is row (i mod m) of the text's token embeddings (m, C):
    the first n if m >= n, the text repeated if m < n. m = 0 or n < 1 raises ValueError. Returns (n, C)."""
    token_embeds = tensor_arg("token_embeds", token_embeds)
    if token_embeds.dim() != 2:
        raise ValueError(f"run_prompt_init_from_text: token_embeds must be (m, C), got {tuple(token_embeds.shape)}")
    if isinstance(n, bool) or not isinstance(n, int):
        raise ValueError(f"n={n!r} must be an integer >= 1")
    rows = text_init_rows(token_embeds.shape[0], n)                        # ValueError on m = 0 or n < 1
    return token_embeds[torch.tensor(rows, dtype=torch.long)].clone()


def run_prompt_positions(attention_mask: torch.Tensor, n: int) -> torch.Tensor:
    """The position of every slot of the prompted sequence (B, n + T): P at 0 .. n-1, each real token
    (mask 1) at n + the number of real tokens before it. Padding slots: any value (they are masked)."""
    attention_mask = tensor_arg("attention_mask", attention_mask)
    if attention_mask.dim() != 2:
        raise ValueError(f"run_prompt_positions: attention_mask must be (B, T), got {tuple(attention_mask.shape)}")
    return prompt_positions(attention_mask, _n(n))


def run_prompt_loss(logits: torch.Tensor, targets: torch.Tensor, n: int) -> torch.Tensor:
    """The loss of a prompted forward: logits (B, n + T, V) over [P ; tokens], targets (B, T) of the
    real tokens (-100 = no loss). Mean over counted targets of -log softmax(logits[b, n + t])[targets[b, t]]:
    the targets are extended with n -100 in front (SoftPrompt.pre), never shifted. Returns a scalar."""
    logits, targets = tensor_arg("logits", logits), tensor_arg("targets", targets)
    n = _n(n)
    if logits.dim() != 3 or targets.dim() != 2 or logits.shape[0] != targets.shape[0] \
            or logits.shape[1] != n + targets.shape[1]:
        raise ValueError(f"run_prompt_loss: expected logits (B, n + T, V) and targets (B, T) with n={n}; got "
                         f"{tuple(logits.shape)} and {tuple(targets.shape)}")
    x = logits.new_zeros(logits.shape[0], targets.shape[1], 1)
    _, _, t = prepend_soft_prompt(x, logits.new_zeros(n, 1), None, targets.long())   # (B, n + T)
    return F.cross_entropy(at_least_fp32(logits.reshape(-1, logits.shape[-1])), t.reshape(-1),
                           ignore_index=IGNORE_INDEX)


# ---- the checks ----------------------------------------------------------------------------------

MAX_N = 6                                                                   # virtual tokens


@st.composite
def _prompt_inputs(draw, min_n: int = 0):
    """embeds (B, T, C), prompt (n, C), attention_mask (B, T) of 0/1 (any pattern, padding anywhere)."""
    B, T, C = draw(st.integers(1, MAX_B)), draw(st.integers(1, MAX_T)), draw(st.integers(1, MAX_D))
    n = draw(st.integers(min_n, MAX_N))
    return dict(embeds=draw(arrays((B, T, C), f32(-3, 3))), prompt=draw(arrays((n, C), f32(-3, 3))),
                mask=draw(hnp.arrays(np.int64, (B, T), elements=st.integers(0, 1))), n=n)


def _pair(y, what: str):
    if not isinstance(y, (tuple, list)) or len(y) != 2:
        raise AssertionError(f"{what} must return a pair (inputs_embeds, attention_mask), got {type(y).__name__}")
    return y


def _soft_prompt64(embeds, prompt, mask):
    """[P ; embeds] and [1 ; mask], built row by row."""
    B, T, C = embeds.shape
    n = prompt.shape[0]
    x = np.zeros((B, n + T, C))
    m = np.zeros((B, n + T))
    for b in range(B):
        for i in range(n):
            x[b, i], m[b, i] = prompt[i], 1.0
        for t in range(T):
            x[b, n + t], m[b, n + t] = embeds[b, t], mask[b, t]
    return x, m


@property_check("run_soft_prompt", lesson=8, examples=50, inp=_prompt_inputs(min_n=1))
def soft_prompt_prepends(soft, inp):
    """soft_prompt(embeds, P, mask) returns [P ; embeds] (P in front of every row, unchanged)
    and the mask with n ones in front, exactly."""
    e, p, m = inp["embeds"], inp["prompt"], inp["mask"]
    x64, m64 = _soft_prompt64(e.astype(np.float64), p.astype(np.float64), m)
    what = f"run_soft_prompt(embeds {e.shape}, prompt {p.shape}, attention_mask)"
    x, mask = _pair(soft(tensor(e), tensor(p), torch.tensor(m)), what)
    assert_close(output(x, x64.shape, what + "[0]"), x64, f"{what}: inputs_embeds vs [P ; embeds]", atol=0, rtol=0)
    assert_close(output(mask, m64.shape, what + "[1]", None), m64, f"{what}: mask vs [1 ... 1 ; mask]", atol=0, rtol=0)


@property_check("run_soft_prompt", lesson=8, examples=30, inp=_prompt_inputs())
def soft_prompt_length_zero_is_identity(soft, inp):
    """a length-0 prompt (0, C) is the identity: embeds and mask come back unchanged (the only prompt
    that leaves the model as it was)."""
    e, m = inp["embeds"], inp["mask"]
    empty = np.zeros((0, e.shape[2]), np.float32)
    what = f"run_soft_prompt(embeds {e.shape}, prompt (0, {e.shape[2]}), attention_mask)"
    x, mask = _pair(soft(tensor(e), tensor(empty), torch.tensor(m)), what)
    assert_close(output(x, e.shape, what + "[0]"), e, f"{what}: inputs_embeds vs embeds", atol=0, rtol=0)
    assert_close(output(mask, m.shape, what + "[1]", None), m, f"{what}: mask vs mask", atol=0, rtol=0)


@property_check("run_prompt_init_from_text", lesson=8, examples=50, m=st.integers(1, 2 * MAX_N),
                n=st.integers(1, 2 * MAX_N), C=st.integers(1, MAX_D), data=st.data())
def prompt_init_from_text_rule(init, m, n, C, data):
    """prompt_init_from_text(E (m, C), n) has row i = E[i mod m]: the first n token embeddings when m
    >= n, the text repeated when m < n."""
    E = data.draw(arrays((m, C), f32(-3, 3)), label="token_embeds")
    expected = np.stack([E[i % m] for i in range(n)]).astype(np.float64)   # cut, or cycle through the text
    what = f"run_prompt_init_from_text(token_embeds ({m}, {C}), n={n})"
    assert_close(output(init(tensor(E), n), (n, C), what), expected, f"{what} vs row i = token_embeds[i mod m]",
                 atol=0, rtol=0)


@property_check("run_prompt_init_from_text", lesson=8, examples=20, C=st.integers(1, MAX_D),
                n=st.integers(1, MAX_N), bad_n=st.integers(-2, 0), m=st.integers(1, MAX_N))
def prompt_init_from_text_rejects_empty(init, C, n, bad_n, m):
    """an empty text (m = 0 tokens) or n < 1 raises ValueError (no silent empty or random prompt)."""
    for E, k, what in ((np.zeros((0, C), np.float32), n, f"token_embeds (0, {C}), n={n}"),
                       (np.ones((m, C), np.float32), bad_n, f"token_embeds ({m}, {C}), n={bad_n}")):
        try:
            init(tensor(E), k)
        except ValueError:
            continue
        raise AssertionError(f"run_prompt_init_from_text({what}) returned instead of raising ValueError")


@property_check("run_prompt_positions", lesson=8, examples=50, inp=_prompt_inputs())
def prompt_positions_shift_by_n(pos_fn, inp):
    """prompt_positions(mask, n): the virtual tokens sit at 0 .. n-1 and every real token at n
    + the number of real tokens before it (padding on any side is skipped)."""
    m, n = inp["mask"], inp["n"]
    B, T = m.shape
    what = f"run_prompt_positions(attention_mask {m.tolist()}, n={n})"
    got = output(pos_fn(torch.tensor(m), n), (B, n + T), what, torch.int64)   # ids for an embedding lookup
    for b in range(B):
        want = list(range(n))                                           # the prompt: 0 .. n-1
        seen = 0
        for t in range(T):
            if m[b, t]:
                want.append(n + seen)                                   # a real token: counted on from n
                seen += 1
        slots = list(range(n)) + [n + t for t in range(T) if m[b, t]]
        assert_close(got[b, slots], np.array(want, np.float64), f"{what}, row {b} at the prompt and real "
                     f"slots", atol=0, rtol=0)


@st.composite
def _loss_inputs(draw):
    B, T, V, n = draw(st.integers(1, MAX_B)), draw(st.integers(1, MAX_T)), draw(st.integers(2, MAX_V)), \
        draw(st.integers(0, MAX_N))
    logits = draw(arrays((B, n + T, V), f32(-5, 5)))
    targets = draw(hnp.arrays(np.int64, (B, T), elements=st.integers(0, V - 1))).copy()
    ignored = draw(st.lists(st.integers(0, B * T - 1), unique=True, max_size=B * T - 1))   # at least one counted
    targets.reshape(-1)[ignored] = -100                                     # some targets ignored
    return dict(logits=logits, targets=targets, n=n)


def _prompt_loss64(logits, targets, n):
    """mean over counted (b, t) of -log softmax(logits[b, n + t])[targets[b, t]]."""
    terms = []
    for b in range(targets.shape[0]):
        for t in range(targets.shape[1]):
            if targets[b, t] != -100:
                z = logits[b, n + t].astype(np.float64)
                lse = z.max() + np.log(np.exp(z - z.max()).sum())
                terms.append(lse - z[targets[b, t]])
    return float(np.mean(terms))


def _scalar_tensor(y, what):
    if not isinstance(y, torch.Tensor) or y.numel() != 1:
        raise AssertionError(f"{what} must return a scalar tensor, got {type(y).__name__} "
                             f"{tuple(getattr(y, 'shape', ()))}")
    return float(y.detach().double())


@property_check("run_prompt_loss", lesson=8, examples=50, inp=_loss_inputs())
def prompt_loss_matches_formula(loss, inp):
    """prompt_loss(logits (B, n+T, V), targets (B, T), n) equals the mean over counted targets of -log
    softmax(logits[b, n + t])[targets[b, t]] in float64: no shift, P carries no loss."""
    lg, tg, n = inp["logits"], inp["targets"], inp["n"]
    what = f"run_prompt_loss(logits {lg.shape}, targets {tg.tolist()}, n={n})"
    got = _scalar_tensor(loss(tensor(lg), torch.tensor(tg), n), what)
    assert_close(np.array(got), np.array(_prompt_loss64(lg, tg, n)), f"{what} vs the float64 formula",
                 atol=1e-5, rtol=1e-5)


@property_check("run_prompt_loss", lesson=8, examples=40, inp=_loss_inputs(), data=st.data())
def prompt_loss_ignores_virtual_positions(loss, inp, data):
    """the n virtual positions carry no loss: replacing logits[:, :n] by anything leaves the loss
    unchanged (a shift by one would read position n - 1)."""
    lg, tg, n = inp["logits"], inp["targets"], inp["n"]
    assume(n >= 1)
    other = lg.copy()
    other[:, :n] = data.draw(arrays(other[:, :n].shape, f32(-50, 50)), label="new logits at the prompt")
    what = f"run_prompt_loss(logits {lg.shape}, targets {tg.tolist()}, n={n})"
    a = _scalar_tensor(loss(tensor(lg), torch.tensor(tg), n), what)
    b = _scalar_tensor(loss(tensor(other), torch.tensor(tg), n), what + " with new logits at the n prompt positions")
    assert_close(np.array(b), np.array(a), f"{what}: the loss moved when only the prompt's logits changed",
                 atol=1e-6, rtol=1e-6)
