"""The reference `run_*` adapters: plain tensors and hyperparameters in, tensors out.

Each adapter reaches the function minift itself uses, so the conformance checks grade minift's
own code when no `--impl` is given. A student's file or another library's wrapper provides
functions with the same names and signatures; `minift verify --impl FILE` swaps them in.

    run_softmax(x, dim=-1)                         exp(x) / sum exp(x) along dim
    run_gelu(x)                                    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    run_layer_norm(x, weight, bias, eps=1e-5)      (x - mean) / sqrt(var + eps) * weight + bias, last dim
    run_cross_entropy(logits, targets, ignore_index=-100)   mean -log softmax(logits)[target]
    run_causal_attention(q, k, v)                  softmax(q k^T / sqrt(D) + causal mask) v
    run_gpt_block(x, params, n_head, eps=1e-5)     x + Attn(LN_1 x), then + MLP(LN_2 .)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from minift.model import Block, GPTConfig, causal_attention

__all__ = ["run_softmax", "run_gelu", "run_layer_norm", "run_cross_entropy",
           "run_causal_attention", "run_gpt_block"]


def _tensor(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def run_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """softmax along `dim` (what attention and sampling use). Any shape -> same shape."""
    return torch.softmax(_tensor("x", x), dim=dim)


def run_gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation (GPT-2's), as in `minift.model.MLP`. Any shape -> same shape."""
    return F.gelu(_tensor("x", x), approximate="tanh")


def run_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last dim (biased variance), as `nn.LayerNorm` in `minift.model.Block`.
    x: (..., C); weight, bias: (C,). Returns (..., C)."""
    x, weight, bias = _tensor("x", x), _tensor("weight", weight), _tensor("bias", bias)
    C = x.shape[-1] if x.dim() else 0
    if x.dim() == 0 or tuple(weight.shape) != (C,) or tuple(bias.shape) != (C,):
        raise ValueError(f"run_layer_norm: weight and bias must have shape (C,)=({C},) for x of shape "
                         f"{tuple(x.shape)}, got {tuple(weight.shape)} and {tuple(bias.shape)}")
    return F.layer_norm(x, (C,), weight.to(x.dtype), bias.to(x.dtype), eps)


def run_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                      ignore_index: int = -100) -> torch.Tensor:
    """Mean over non-ignored rows of -log softmax(logits)[target], as in `GPT.forward`.
    logits: (N, V) float; targets: (N,) integer. Returns a scalar."""
    logits, targets = _tensor("logits", logits), _tensor("targets", targets)
    if logits.dim() != 2 or targets.dim() != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(f"run_cross_entropy: expected logits (N, V) and targets (N,), got "
                         f"{tuple(logits.shape)} and {tuple(targets.shape)}")
    return F.cross_entropy(logits, targets.long(), ignore_index=ignore_index)


def run_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product causal attention, `minift.model.causal_attention` with no extra mask.
    q, k, v: (B, H, T, D). Returns (B, H, T, D)."""
    q, k, v = _tensor("q", q), _tensor("k", k), _tensor("v", v)
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"run_causal_attention: q, k, v must share one shape (B, H, T, D), got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    return causal_attention(q, k, v)


def run_gpt_block(x: torch.Tensor, params: dict, n_head: int, eps: float = 1e-5) -> torch.Tensor:
    """One GPT block in eval mode: a `minift.model.Block` loaded with `params`.

    x: (B, T, C). params: exactly the keys of `Block(cfg).state_dict()` (bias=True), nn.Linear
    layout, e.g. "attn.c_attn.weight" (3C, C). n_head must divide C. Returns (B, T, C).
    """
    x = _tensor("x", x)
    if x.dim() != 3:
        raise ValueError(f"run_gpt_block: x must have shape (B, T, C), got {tuple(x.shape)}")
    B, T, C = x.shape
    if not isinstance(n_head, int) or n_head < 1 or C % n_head:
        raise ValueError(f"run_gpt_block: n_head={n_head!r} must be a positive integer dividing C={C}")
    cfg = GPTConfig(vocab_size=1, block_size=max(T, 1), n_layer=1, n_head=n_head, n_embd=C,
                    dropout=0.0, bias=True, layer_norm_epsilon=eps)
    block = Block(cfg).to(device=x.device, dtype=x.dtype).eval()
    block.load_state_dict(params, strict=True)   # names every missing / unexpected / misshapen key
    with torch.no_grad():
        y, _ = block(x)
    return y                                                               # (B, T, C)


# ---- lesson 01: pretraining ------------------------------------------------------------------
#
#     run_next_token_loss(logits, tokens, loss_mask=None)   mean -log p(tokens[:, t+1] | logits[:, t])
#     run_lr_schedule(step, steps, warmup_steps, lr, min_lr_ratio)   minift.train.lr_at
#     run_perplexity(nll_sums, n_tokens)                    exp(sum nll / sum tokens)

from minift.model import IGNORE_INDEX, at_least_fp32  # noqa: E402
from minift.tasks import perplexity  # noqa: E402
from minift.train import TrainConfig, lr_at  # noqa: E402

__all__ += ["run_next_token_loss", "run_lr_schedule", "run_perplexity"]


def run_next_token_loss(logits: torch.Tensor, tokens: torch.Tensor,
                        loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy with minift's conventions (`SFTDataset` targets, `GPT.forward` loss):

        targets = tokens[:, 1:], -100 where loss_mask[:, 1:] == 0     the mask marks *targets*
        loss    = mean over kept (b, t) of -log softmax(logits[b, t])[targets[b, t]],  t < T - 1

    logits: (B, T, V) float; tokens: (B, T) integer; loss_mask: (B, T) of 0/1 or None (all count).
    Returns a scalar; 0 (not NaN) when no target counts, as `GPT.forward` does."""
    logits, tokens = _tensor("logits", logits), _tensor("tokens", tokens)
    if logits.dim() != 3 or tokens.dim() != 2 or tuple(tokens.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"run_next_token_loss: expected logits (B, T, V) and tokens (B, T), got "
                         f"{tuple(logits.shape)} and {tuple(tokens.shape)}")
    if loss_mask is not None and tuple(_tensor("loss_mask", loss_mask).shape) != tuple(tokens.shape):
        raise ValueError(f"run_next_token_loss: loss_mask must have tokens' shape {tuple(tokens.shape)}, "
                         f"got {tuple(loss_mask.shape)}")
    targets = tokens[:, 1:].long().clone()                                 # (B, T-1)
    if loss_mask is not None:
        targets[loss_mask[:, 1:] == 0] = IGNORE_INDEX
    if not bool((targets != IGNORE_INDEX).any()):
        return logits.sum() * 0.0                                          # nothing to predict
    V = logits.shape[-1]
    return F.cross_entropy(at_least_fp32(logits[:, :-1].reshape(-1, V)), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX)


def run_lr_schedule(step: int, steps: int, warmup_steps: int, lr: float, min_lr_ratio: float) -> float:
    """The learning rate at optimizer step `step` (0-based): `minift.train.lr_at`.

        step <  warmup:  lr (step + 1) / warmup
        step >= warmup:  lr_min + (lr - lr_min) (1 + cos(pi p)) / 2,  p = min(1, (step - warmup) / (steps - warmup))
    with lr_min = lr * min_lr_ratio. Returns a float."""
    cfg = TrainConfig(steps=steps, warmup_steps=warmup_steps, lr=lr, min_lr_ratio=min_lr_ratio,
                      progress=False)
    return float(lr_at(int(step), cfg))


def run_perplexity(nll_sums: torch.Tensor, n_tokens: torch.Tensor) -> float:
    """Perplexity of a corpus scored in batches, as `minift.train.evaluate_nll` + `minift.tasks.perplexity`:

        ppl = exp( sum_i nll_sums[i] / sum_i n_tokens[i] )      (token-weighted mean NLL, in nats)

    nll_sums: (N,) summed NLL of each batch; n_tokens: (N,) target tokens in each batch. Returns a float."""
    nll_sums, n_tokens = _tensor("nll_sums", nll_sums), _tensor("n_tokens", n_tokens)
    if nll_sums.shape != n_tokens.shape or nll_sums.dim() != 1:
        raise ValueError(f"run_perplexity: nll_sums and n_tokens must both have shape (N,), got "
                         f"{tuple(nll_sums.shape)} and {tuple(n_tokens.shape)}")
    count = float(n_tokens.double().sum())
    if count <= 0:
        raise ValueError("run_perplexity: n_tokens sums to 0; perplexity needs at least one token")
    return perplexity(float(nll_sums.double().sum()) / count)


# ---- lesson 02: task heads (full vs head-only fine-tuning) ---------------------------------------
#
#     run_last_token_pool(hidden, attention_mask)     hidden[b, max{t : mask[b, t] = 1}]      (B, C)
#     run_first_subtoken_labels(word_lengths, tags)   each word's tag on its first token, -100 elsewhere
#     run_entity_f1(pred_tags, gold_tags)             span-level micro F1 over BIO tag sequences

from minift.heads import encode_words, last_real_index  # noqa: E402
from minift.tasks import entity_f1  # noqa: E402

__all__ += ["run_last_token_pool", "run_first_subtoken_labels", "run_entity_f1"]


def run_last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The pooling of `minift.heads.SequenceClassifier`: each row's hidden state at its last real
    token, found with `minift.heads.last_real_index` (left, right or no padding alike).

    hidden: (B, T, C) float; attention_mask: (B, T) of 0/1, at least one 1 per row. Returns (B, C)."""
    hidden, attention_mask = _tensor("hidden", hidden), _tensor("attention_mask", attention_mask)
    if hidden.dim() != 3 or tuple(attention_mask.shape) != tuple(hidden.shape[:2]):
        raise ValueError(f"run_last_token_pool: expected hidden (B, T, C) and attention_mask (B, T), got "
                         f"{tuple(hidden.shape)} and {tuple(attention_mask.shape)}")
    B, T, _ = hidden.shape
    last = last_real_index(attention_mask, B, T, hidden.device)                 # (B,)
    return hidden[torch.arange(B, device=hidden.device), last]                   # (B, C)


class _LengthTokenizer:
    """A stand-in tokenizer for `encode_words`: a word of n letters is n tokens. (encode_words puts
    a space before every word but the first; the space is not a token here.)"""

    def encode(self, text: str) -> list[int]:
        return list(range(len(text.strip())))


def run_first_subtoken_labels(word_lengths: list, tags: list) -> list[int]:
    """Token labels of a pre-split sentence, as `minift.heads.encode_words` builds them for NER:
    word w is word_lengths[w] tokens; its first token gets tags[w], its other tokens -100.

    word_lengths: list of ints >= 1; tags: list of ints, as long. Returns a list of
    sum(word_lengths) ints."""
    word_lengths, tags = list(word_lengths), list(tags)
    if len(word_lengths) != len(tags):
        raise ValueError(f"run_first_subtoken_labels: {len(word_lengths)} word lengths but {len(tags)} tags")
    bad = [n for n in word_lengths if isinstance(n, bool) or not isinstance(n, int) or n < 1]
    if bad:
        raise ValueError(f"run_first_subtoken_labels: word lengths must be ints >= 1, got {bad[0]!r}")
    _, labels, _ = encode_words(_LengthTokenizer(), ["x" * n for n in word_lengths], [int(t) for t in tags])
    return labels


def run_entity_f1(pred_tags: list, gold_tags: list) -> float:
    """Span-level micro F1 of `minift.tasks.entity_f1` over BIO sequences (a list of tag lists):
    a predicted span counts when its type, start and end all match a gold span;
    F1 = 2 P R / (P + R), P = tp / #pred spans, R = tp / #gold spans, 0 when undefined."""
    return float(entity_f1(pred_tags, gold_tags)["f1"])


# ---- lesson 04: selective fine-tuning (BitFit, layers, components) -----------------------------
#
#     run_bitfit_select(names)                 the names BitFit trains: every bias, and the task head
#     run_layer_select(names, layers)          the parameters of the chosen blocks (negative from the end) + head
#     run_trainable_share(shapes, trainable)   sum of trainable sizes / sum of all sizes

import torch.nn as nn  # noqa: E402

from minift.peft.selective import SelectiveConfig, bitfit, select, trainable_report  # noqa: E402

__all__ += ["run_bitfit_select", "run_layer_select", "run_trainable_share"]


def _module_with(shapes: dict) -> nn.Module:
    """A module whose parameters are exactly `shapes` (dotted name -> shape), built as nested
    submodules, so minift's selection code sees the names a real model would give."""
    root = nn.Module()
    for name, shape in shapes.items():
        if not isinstance(name, str) or not name or any(not part for part in name.split(".")):
            raise ValueError(f"parameter name {name!r} must be a non-empty dotted name like 'transformer.h.0.ln_1.bias'")
        *path, leaf = name.split(".")
        m = root
        for part in path:
            if part not in m._modules:
                m.add_module(part, nn.Module())
            m = m._modules[part]
        m.register_parameter(leaf, nn.Parameter(torch.zeros(tuple(shape))))
    return root


def run_bitfit_select(names: list) -> list[str]:
    """The parameter names `minift.peft.selective.bitfit` leaves trainable: every name whose last
    part is `bias`, and every parameter of a task head (a `head` module: `head.weight`,
    `body.head.bias`; not `lm_head`). Order does not matter."""
    return bitfit(_module_with({n: (1,) for n in names}))


def run_layer_select(names: list, layers: list) -> list[str]:
    """`minift.peft.selective.select(model, SelectiveConfig(layers=layers))`: the parameters of
    blocks `transformer.h.<i>` for i in layers (negative i counts from the end: -1 is the last of
    n_layer = 1 + the largest block index in names), plus a task head's (`head.*`). Order does not matter."""
    return select(_module_with({n: (1,) for n in names}), SelectiveConfig(layers=list(layers)))


def run_trainable_share(shapes: dict, trainable: list) -> float:
    """The share of trainable parameters `minift.peft.selective.trainable_report` reports:
    sum over trainable names of prod(shape) / sum over all names of prod(shape).

    shapes: name -> shape tuple (() is a scalar, 1 parameter); trainable: some of the names."""
    unknown = [n for n in trainable if n not in shapes]
    if unknown:
        raise ValueError(f"run_trainable_share: trainable name(s) {unknown} are not in shapes")
    model = _module_with(shapes)
    keep = set(trainable)
    for n, p in model.named_parameters():
        p.requires_grad = n in keep
    return float(trainable_report(model)["total"]["share"])


# ---- lesson 03: instruction tuning (SFT) ---------------------------------------------------------
#
#     run_response_loss_mask(prompt_len, response_len, train_on_prompt=False)   which targets count
#     run_sft_loss(logits, targets)                          mean CE over targets != -100 (0 if none)

from minift.tasks import SFTDataset  # noqa: E402
from minift.tokenizer import Tokenizer  # noqa: E402

__all__ += ["run_response_loss_mask", "run_sft_loss"]


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
    logits, targets = _tensor("logits", logits), _tensor("targets", targets)
    if logits.dim() != 3 or targets.dim() != 2 or tuple(targets.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"run_sft_loss: expected logits (B, T, V) and targets (B, T), got "
                         f"{tuple(logits.shape)} and {tuple(targets.shape)}")
    targets = targets.long()
    if not bool((targets != IGNORE_INDEX).any()):                          # GPT.forward's convention
        return logits.sum() * 0.0
    return F.cross_entropy(at_least_fp32(logits.reshape(-1, logits.size(-1))), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX)


# ---- lesson 05: LoRA (and DoRA) -----------------------------------------------------------------
#
#     run_lora_linear(x, W0, b, A, B, alpha, r, rslora=False)  x W0^T + b + s (x A^T) B^T, s = alpha/r (rsLoRA: alpha/sqrt(r))
#     run_lora_merge(W0, A, B, scaling)                        W0 + scaling B A in float32, cast back to W0's dtype
#     run_dora_linear(x, W0, b, A, B, m, alpha, r)             x W'^T + b, W' = m ⊙ (W0 + s B A) / ‖row of W0 + s B A‖

import torch.nn as nn  # noqa: E402,F811

from minift.peft.lora import LoRALinear  # noqa: E402

__all__ += ["run_lora_linear", "run_lora_merge", "run_dora_linear"]


def _lora_shapes(fn: str, x, W0, b, A, B, r=None):
    """Check the LoRA argument shapes in the user's terms; returns (in, out, r)."""
    if W0.dim() != 2:
        raise ValueError(f"{fn}: W0 must be (out, in) (nn.Linear layout), got {tuple(W0.shape)}")
    out_f, in_f = W0.shape
    r = A.shape[0] if r is None else r
    if tuple(A.shape) != (r, in_f) or tuple(B.shape) != (out_f, r):
        raise ValueError(f"{fn}: expected A (r, in)=({r}, {in_f}) and B (out, r)=({out_f}, {r}) for W0 "
                         f"{tuple(W0.shape)}, got A {tuple(A.shape)} and B {tuple(B.shape)}")
    if x is not None and x.shape[-1:] != (in_f,):
        raise ValueError(f"{fn}: x must be (..., in={in_f}), got {tuple(x.shape)}")
    if b is not None and tuple(b.shape) != (out_f,):
        raise ValueError(f"{fn}: b must be (out,)=({out_f},) or None, got {tuple(b.shape)}")
    return in_f, out_f, r


def _lora_layer(W0, b, A, B, alpha, r, rslora=False, m=None) -> LoRALinear:
    out_f, in_f = W0.shape
    lin = nn.Linear(in_f, out_f, bias=b is not None, device=W0.device, dtype=W0.dtype)
    with torch.no_grad():
        lin.weight.copy_(W0)
        if b is not None:
            lin.bias.copy_(b)
    layer = LoRALinear(lin, int(r), float(alpha), use_rslora=bool(rslora), use_dora=m is not None)
    with torch.no_grad():
        layer.lora_A.copy_(A)
        layer.lora_B.copy_(B)
        if m is not None:
            layer.lora_magnitude.copy_(m)
    return layer.eval()


def run_lora_linear(x: torch.Tensor, W0: torch.Tensor, b, A: torch.Tensor, B: torch.Tensor,
                    alpha: float, r: int, rslora: bool = False) -> torch.Tensor:
    """The LoRA layer's forward, `minift.peft.lora.LoRALinear` (no dropout, unmerged):

        h = x W0^T + b + s (x A^T) B^T,    s = alpha / r,   or alpha / sqrt(r) when rslora

    x: (N, in); W0: (out, in) frozen weight (nn.Linear layout); b: (out,) or None; A: (r, in);
    B: (out, r); 1 <= r <= min(in, out). Returns (N, out) in x's dtype."""
    x, W0, A, B = _tensor("x", x), _tensor("W0", W0), _tensor("A", A), _tensor("B", B)
    _lora_shapes("run_lora_linear", x, W0, b, A, B, r)
    with torch.no_grad():
        return _lora_layer(W0, b, A, B, alpha, r, rslora)(x)


def run_lora_merge(W0: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scaling: float) -> torch.Tensor:
    """The merged weight of `LoRALinear.merge`: W = W0 + scaling B A, computed in float32 and cast
    back to W0's dtype (so a bfloat16 W0 gives a bfloat16 W, rounded once).

    W0: (out, in); A: (r, in); B: (out, r). Returns (out, in), W0's dtype; W0 is not modified."""
    W0, A, B = _tensor("W0", W0), _tensor("A", A), _tensor("B", B)
    _, _, r = _lora_shapes("run_lora_merge", None, W0, None, A, B)
    layer = _lora_layer(W0.clone(), None, A, B, alpha=1.0, r=r)
    layer.scaling = float(scaling)                                         # s given directly
    layer.merge()
    return layer.weight.detach().clone()


def run_dora_linear(x: torch.Tensor, W0: torch.Tensor, b, A: torch.Tensor, B: torch.Tensor, m: torch.Tensor,
                    alpha: float, r: int) -> torch.Tensor:
    """DoRA's forward, `LoRALinear(use_dora=True)` (no dropout, unmerged):

        V  = W0 + s B A,  s = alpha / r                            (out, in)
        W' = m ⊙ V / ‖V‖   with ‖V‖ the L2 norm of each row of V     (one scale per output)
        h  = x W'^T + b

    x: (N, in); W0: (out, in); b: (out,) or None; A: (r, in); B: (out, r); m: (out,) magnitudes.
    Returns (N, out). (m = ‖W0‖ row-wise and B = 0 give the base layer back.)"""
    x, W0, A, B, m = _tensor("x", x), _tensor("W0", W0), _tensor("A", A), _tensor("B", B), _tensor("m", m)
    _, out_f, _ = _lora_shapes("run_dora_linear", x, W0, b, A, B, r)
    if tuple(m.shape) != (out_f,):
        raise ValueError(f"run_dora_linear: m must be (out,)=({out_f},), got {tuple(m.shape)}")
    with torch.no_grad():
        return _lora_layer(W0, b, A, B, alpha, r, m=m)(x)


# ---- lesson 06: bottleneck adapters -------------------------------------------------------------
#
#     run_adapter(h, W_down, b_down, W_up, b_up, activation="relu", scaling=1.0)
#                                             h + scaling (f(h W_down^T + b_down) W_up^T + b_up)

from minift.peft.adapters import ACTIVATIONS, Bottleneck  # noqa: E402

__all__ += ["run_adapter"]


def run_adapter(h: torch.Tensor, W_down: torch.Tensor, b_down: torch.Tensor, W_up: torch.Tensor,
                b_up: torch.Tensor, activation: str = "relu", scaling: float = 1.0) -> torch.Tensor:
    """A series bottleneck adapter (Houlsby et al., 2019), as `minift.peft.adapters.SeriesAdapterLinear`
    applies it to a sublayer's output h:

        out = h + scaling · ( f(h W_down^T + b_down) W_up^T + b_up )

    nn.Linear layout: W_down (m, C), b_down (m,), W_up (C, m), b_up (C,); the paper's "h W_down" is
    h @ W_down.T here. f: "relu", "gelu" (tanh approximation), "silu", "tanh" or "identity".
    h: (N, C). Returns (N, C). With W_up = 0 and b_up = 0 the output is h exactly."""
    h, W_down, b_down = _tensor("h", h), _tensor("W_down", W_down), _tensor("b_down", b_down)
    W_up, b_up = _tensor("W_up", W_up), _tensor("b_up", b_up)
    C = h.shape[-1]
    mb = W_down.shape[0] if W_down.dim() == 2 else -1
    if (W_down.dim() != 2 or tuple(W_down.shape) != (mb, C) or tuple(b_down.shape) != (mb,)
            or tuple(W_up.shape) != (C, mb) or tuple(b_up.shape) != (C,)):
        raise ValueError(f"run_adapter: for h (..., C={C}) expected W_down (m, C), b_down (m,), W_up (C, m), "
                         f"b_up (C,); got {tuple(W_down.shape)}, {tuple(b_down.shape)}, {tuple(W_up.shape)}, "
                         f"{tuple(b_up.shape)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"run_adapter: activation={activation!r} must be one of {sorted(ACTIVATIONS)}")
    ad = Bottleneck(C, mb, activation, scaling, device=h.device, dtype=h.dtype)
    with torch.no_grad():
        for p, v in ((ad.down.weight, W_down), (ad.down.bias, b_down), (ad.up.weight, W_up), (ad.up.bias, b_up)):
            p.copy_(v)
        return h + ad(h)                                                   # SeriesAdapterLinear: h + adapter(h)


# ---- lessons 07-13: one file each (adapters_<method>.py), gathered here ------------------------

from .adapters_prefix import *  # noqa: E402,F401,F403
from .adapters_prefix import __all__ as _all_prefix  # noqa: E402
from .adapters_prompt import *  # noqa: E402,F401,F403
from .adapters_prompt import __all__ as _all_prompt  # noqa: E402
from .adapters_masking import *  # noqa: E402,F401,F403
from .adapters_masking import __all__ as _all_masking  # noqa: E402
from .adapters_reft import *  # noqa: E402,F401,F403
from .adapters_reft import __all__ as _all_reft  # noqa: E402

from .adapters_quant import *  # noqa: E402,F401,F403
from .adapters_quant import __all__ as _all_quant  # noqa: E402
from .adapters_kernels import *  # noqa: E402,F401,F403
from .adapters_kernels import __all__ as _all_kernels  # noqa: E402

from .adapters_reward import *  # noqa: E402,F401,F403
from .adapters_reward import __all__ as _all_reward  # noqa: E402
from .adapters_ppo import *  # noqa: E402,F401,F403
from .adapters_ppo import __all__ as _all_ppo  # noqa: E402
from .adapters_dpo import *  # noqa: E402,F401,F403
from .adapters_dpo import __all__ as _all_dpo  # noqa: E402
from .adapters_contrastive import *  # noqa: E402,F401,F403
from .adapters_contrastive import __all__ as _all_contrastive  # noqa: E402
from .adapters_distill import *  # noqa: E402,F401,F403
from .adapters_distill import __all__ as _all_distill  # noqa: E402
from .adapters_multitask import *  # noqa: E402,F401,F403
from .adapters_multitask import __all__ as _all_multitask  # noqa: E402
from .adapters_distributed import *  # noqa: E402,F401,F403
from .adapters_distributed import __all__ as _all_distributed  # noqa: E402
from .adapters_choosing import *  # noqa: E402,F401,F403
from .adapters_choosing import __all__ as _all_choosing  # noqa: E402
from .adapters_vision import *  # noqa: E402,F401,F403
from .adapters_vision import __all__ as _all_vision  # noqa: E402
from .adapters_scaling import *  # noqa: E402,F401,F403
from .adapters_scaling import __all__ as _all_scaling  # noqa: E402

__all__ += _all_prefix + _all_prompt + _all_masking + _all_reft + _all_quant + _all_kernels
__all__ += _all_reward + _all_ppo + _all_dpo + _all_contrastive + _all_distill + _all_multitask + _all_distributed + _all_choosing + _all_vision + _all_scaling
