"""Lesson 03 (instruction tuning): the reference `run_*` functions and their conformance checks.

The reference functions, computed by minift's own code:

    run_response_loss_mask(prompt_len, response_len, train_on_prompt=False)   which targets count
    run_sft_loss(logits, targets)                          mean CE over targets != -100 (0 if none)
    run_format_instruction(example, style="full")          the prompt with / without its instruction
    run_encode_chat(turns, max_len=None, last_turn_only=False)   a dialogue's ids and loss mask
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minift.align.chat import encode_chat
from minift.model import IGNORE_INDEX, at_least_fp32
from minift.tasks import SFTDataset, format_example
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


def run_format_instruction(example: dict, style: str = "full") -> tuple[str, str]:
    """(prompt, response) of one Natural-Instructions example (fields "task", "definition",
    "positive" and "negative" = {"input", "output", "reason"}, "input", "output"), as
    `minift.tasks.format_example("instructions", example, style=style)` writes it:

        full:   "Definition: {definition}\n"
                "Positive example. Input: {pi} Output: {po} Reason: {pr}\n"
                "Negative example. Input: {ni} Output: {no} Reason: {nr}\n"
                "Now do the task. Input: {input}"
        name:   "Task: {task}\nInput: {input}"           (FLAN's dataset-name ablation)
        plain:  "Input: {input}"                          (input -> output: no instruction at all)

    and the response is {output} in every style."""
    return format_example("instructions", example, style=style)


class _IdsAsChars(Tokenizer):
    """minift's Tokenizer (its encode_prompt / encode_pair template) over a toy encode: token id i
    is the character chr(0x100 + i), so a list of ids round-trips through text. Leading whitespace
    is dropped, as it rides on the first token in byte-level BPE (the space encode_pair puts before
    a response adds no token)."""

    def __init__(self):                                    # no BPE file: only the ids the template needs
        self.eos_id, self.pad_id, self.prompt_id, self.response_id = 0, 1, 2, 3

    def encode(self, text: str) -> list[int]:
        return [ord(c) - 0x100 for c in text.lstrip()]


def run_encode_chat(turns: list, max_len=None, last_turn_only: bool = False) -> tuple[list[int], list[int]]:
    """(ids, loss_mask) of a dialogue, as `minift.align.chat.encode_chat` builds them, on token ids:
    turns is a list of (user_ids, assistant_ids), content ids >= 4; the markers are <|prompt|> = 2,
    <|response|> = 3, <|endoftext|> = 0. Every turn becomes

        [2] u [3] a [0]        mask  0 (|u| + 2 times), then 1 (|a| + 1 times: the reply and its EOS)

    and the turns are concatenated. last_turn_only: the mask is 0 on every turn but the last.
    max_len: the oldest whole turns are dropped until the ids fit; ValueError if the last turn
    alone is longer than max_len."""
    text = [{"user": "".join(chr(0x100 + int(i)) for i in u), "assistant": "".join(chr(0x100 + int(i)) for i in a)}
            for u, a in turns]
    return encode_chat(_IdsAsChars(), text, max_len, last_turn_only)


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


# ---- run_format_instruction ------------------------------------------------------------------------

_TEXT = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,'?", min_size=1, max_size=14)
_DEMO = st.fixed_dictionaries({"input": _TEXT, "output": _TEXT, "reason": _TEXT})
_INSTRUCTION = st.fixed_dictionaries({
    "task": st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=16), "definition": _TEXT,
    "positive": _DEMO, "negative": _DEMO, "input": _TEXT, "output": _TEXT})


def _pair(y, what: str) -> tuple[str, str]:
    if not (isinstance(y, (tuple, list)) and len(y) == 2 and all(isinstance(v, str) for v in y)):
        raise AssertionError(f"{what} must return a (prompt, response) pair of str, got {y!r:.120}")
    return y[0], y[1]


@property_check("run_format_instruction", lesson=3, examples=60, example=_INSTRUCTION)
def format_instruction_layout(fmt_fn, example):
    """format_instruction(example, style) writes the full Natural-Instructions prompt ("Definition: ...",
    the positive and the negative example with their reasons, "Now do the task. Input: ..."), the
    task-name prompt "Task: {task}\nInput: {input}" and the plain prompt "Input: {input}", each with
    the response example["output"]."""
    e, pos, neg = example, example["positive"], example["negative"]
    want = {"full": "Definition: " + e["definition"] + "\n"
                    + "Positive example. Input: " + pos["input"] + " Output: " + pos["output"] + " Reason: "
                    + pos["reason"] + "\n"
                    + "Negative example. Input: " + neg["input"] + " Output: " + neg["output"] + " Reason: "
                    + neg["reason"] + "\n"
                    + "Now do the task. Input: " + e["input"],
            "name": "Task: " + e["task"] + "\nInput: " + e["input"],
            "plain": "Input: " + e["input"]}
    for style, prompt in want.items():
        what = f"run_format_instruction(example, style={style!r})"
        got = _pair(fmt_fn(example, style=style) if style != "full" else fmt_fn(example), what)
        if got != (prompt, e["output"]):
            raise AssertionError(f"{what} = {got!r}, expected {(prompt, e['output'])!r} (example = {example!r})")


@property_check("run_format_instruction", lesson=3, examples=40, example=_INSTRUCTION,
                marks=st.permutations(["@DEF@", "@POS@", "@NEG@"]))
def format_instruction_plain_drops_the_instruction(fmt_fn, example, marks):
    """the stripped prompts keep the instance and nothing of the instruction: with marked definition
    and demonstrations, neither the "name" nor the "plain" prompt holds a mark, both end with the full
    prompt's last line's "Input: {input}", and the response is the same in all three styles."""
    e = dict(example, definition=example["definition"] + marks[0],
             positive=dict(example["positive"], reason=marks[1] + example["positive"]["reason"]),
             negative=dict(example["negative"], input=marks[2] + example["negative"]["input"]))
    got = {s: _pair(fmt_fn(e, style=s), f"run_format_instruction(example, style={s!r})") for s in ("full", "name", "plain")}
    if any(m not in got["full"][0] for m in marks):
        raise AssertionError(f"the full prompt {got['full'][0]!r} lost part of the instruction {marks}")
    for s in ("name", "plain"):
        left = [m for m in marks if m in got[s][0]]
        if left:
            raise AssertionError(f"run_format_instruction(example, style={s!r}) = {got[s][0]!r} still holds "
                                 f"{left}: a stripped prompt keeps no definition and no demonstration")
        if not got[s][0].endswith("Input: " + e["input"]) or not got["full"][0].endswith("Input: " + e["input"]):
            raise AssertionError(f"style={s!r}: prompt {got[s][0]!r} must end, as the full one does, with "
                                 f"{'Input: ' + e['input']!r}")
    if len({r for _, r in got.values()}) != 1 or got["plain"][1] != e["output"]:
        raise AssertionError(f"the responses differ between styles or from the output {e['output']!r}: "
                             f"{ {s: r for s, (_, r) in got.items()} }")


# ---- run_encode_chat ---------------------------------------------------------------------------------

_TURNS = st.lists(st.tuples(st.lists(st.integers(4, 50), max_size=6), st.lists(st.integers(4, 50), max_size=6)),
                  min_size=1, max_size=4)


def _chat64(turns, max_len, last_turn_only):
    """The ids and mask from the format's definition, turn by turn (first principles, no minift)."""
    blocks = []
    for k, (u, a) in enumerate(turns):
        trained = int(not last_turn_only or k == len(turns) - 1)
        blocks.append(([PROMPT] + list(u) + [RESPONSE] + list(a) + [EOS],
                       [0] * (len(u) + 2) + [trained] * (len(a) + 1)))
    first = 0
    while max_len is not None and sum(len(ids) for ids, _ in blocks[first:]) > max_len:
        first += 1                                                       # drop the oldest whole turn
    return [i for ids, _ in blocks[first:] for i in ids], [m for _, ms in blocks[first:] for m in ms]


def _chat_out(y, what: str) -> tuple[list, list]:
    if not (isinstance(y, (tuple, list)) and len(y) == 2):
        raise AssertionError(f"{what} must return (ids, loss_mask), got {y!r:.120}")
    return tuple([int(v) for v in (x.reshape(-1).tolist() if isinstance(x, torch.Tensor) else x)] for x in y)


@property_check("run_encode_chat", lesson=3, examples=60, turns=_TURNS, last_turn_only=st.booleans())
def encode_chat_layout(chat_fn, turns, last_turn_only):
    """encode_chat(turns) is [<|prompt|>] u [<|response|>] a [<|endoftext|>] for every turn, end to end,
    with the loss mask 1 on every assistant token and its end-of-turn EOS and 0 on the user's turn and
    the markers; with last_turn_only=True only the last turn's reply and EOS are 1."""
    what = f"run_encode_chat({turns}, last_turn_only={last_turn_only})"
    got = _chat_out(chat_fn(turns, None, last_turn_only), what)
    want = _chat64(turns, None, last_turn_only)
    if got != want:
        raise AssertionError(f"{what} = (ids {got[0]}, mask {got[1]}), expected (ids {want[0]}, mask {want[1]})")


@property_check("run_encode_chat", lesson=3, examples=60, turns=_TURNS, cut=st.floats(0, 1), last_turn_only=st.booleans())
def encode_chat_drops_whole_turns(chat_fn, turns, cut, last_turn_only):
    """with max_len, encode_chat drops the oldest *whole* turns until the dialogue fits (never part of a
    turn, so every kept turn starts with <|prompt|> and the last one is intact), and raises ValueError
    when the last turn alone is longer than max_len."""
    last = len(turns[-1][0]) + len(turns[-1][1]) + 3                    # ids of the last turn alone
    total = sum(len(u) + len(a) + 3 for u, a in turns)
    max_len = last + int(cut * (total - last))
    what = f"run_encode_chat({turns}, max_len={max_len}, last_turn_only={last_turn_only})"
    got = _chat_out(chat_fn(turns, max_len, last_turn_only), what)
    want = _chat64(turns, max_len, last_turn_only)
    if got != want:
        raise AssertionError(f"{what} = (ids {got[0]}, mask {got[1]}), expected (ids {want[0]}, mask {want[1]}): "
                             f"the oldest whole turns go until the rest fits in {max_len}")
    try:
        chat_fn(turns, last - 1, last_turn_only)
    except ValueError:
        return
    raise AssertionError(f"run_encode_chat({turns}, max_len={last - 1}) did not raise ValueError: the last turn "
                         f"alone is {last} ids")
