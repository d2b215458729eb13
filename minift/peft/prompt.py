"""Prompt tuning: n learned "soft prompt" vectors in front of the input (Lester et al., 2021, "The
Power of Scale for Parameter-Efficient Prompt Tuning").

The whole model stays frozen. What trains is a matrix P (n, C) of n virtual tokens that are never
words: they are fed through `inputs_embeds` in front of the real tokens' embeddings,

    X = [P ; W_te[idx]]                        (B, n + T, C)     P broadcast over the batch
    h_0 = X + W_pe[pos]                        pos = 0 .. n-1 for P, then n, n+1, ... for the tokens
    logits = GPT(X)[:, n:]                     (B, T, V)         the n virtual positions are cut off

Positions: the virtual tokens are ordinary (real, unpadded) tokens to the model, so GPT-2's learned
positions count them: P sits at 0 .. n-1 and the real tokens *shift* to n .. n+T-1. This is what
Hugging Face PEFT does, and it makes a prompt initialised from a text's embeddings *exactly* the
same model as the base model with that text typed in front (tests/test_prompt.py proves it). The
price: n + T must fit block_size.

The ONE place that knows about the virtual tokens is the hook pair on the GPT (`SoftPrompt.pre` and
`SoftPrompt.post`): before forward it prepends P, prepends n ones to attention_mask and n
IGNORE_INDEX to targets; after forward it strips the n positions from logits and hidden states.
The caller (the train loop, the task heads, `generate`, every metric) sees (B, T, ...) as before:
the loss counts exactly the caller's targets (the virtual positions have none), and nothing is
shifted. A call with past_kv continues a cache that already holds P: nothing is prepended again,
only the attention mask gets its n ones. The cache itself is returned whole (n + L positions).

Initialisation (Lester et al. compare the three; `PromptConfig.init`):
    "random"  P ~ N(0, std(W_te)^2): random, at the scale of the embedding table
    "vocab"   P_i = W_te[v_i], v_i n distinct token ids drawn uniformly (the paper: from the 5,000
              most frequent; our tiny vocabulary has no frequency list)
    "text"    P_i = W_te[t_(i mod m)] for the text's m token ids t: the first n tokens if m >= n,
              the text repeated if m < n (PEFT's rule)

Only P (n C numbers, C = n_embd) trains, and a task head if the model has one. Length 0 is the only
no-op: any prompt changes the model's output from step 0 (a text prompt is a typed text).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model import GPT, IGNORE_INDEX
from ..validate import check_bool, check_choice, check_int, check_str, check_token_ids
from .common import AdapterLayer, MethodConfig, adapter_layers, freeze_all_but_adapters, record, remove_hooks

INITS = ("random", "vocab", "text")


@dataclass
class PromptConfig(MethodConfig):
    """n_tokens soft-prompt vectors, initialised by `init` ("random", "vocab" or "text"). A text
    init needs `init_text` and the tokenizer (apply_prompt(model, cfg, tokenizer=tok)), or the
    text's token ids in `init_ids` (apply_prompt records them, so that load_adapter needs no
    tokenizer). Everything but the prompt is frozen (a task head stays trainable unless
    include_head=False)."""

    n_tokens: int = 16                          # n, the number of virtual tokens
    init: str = "vocab"                         # "random" | "vocab" | "text"
    init_text: Optional[str] = None             # init="text": the text whose embeddings start P
    init_ids: Optional[Sequence[int]] = None    # init="text": its token ids (filled by apply_prompt)
    seed: int = 0                               # for "random" and "vocab"
    include_head: bool = True                   # keep a task head (head.*) trainable
    method = "prompt"                           # its name in an adapter file
    family = "additive"                     # minift/taxonomy.py: adds modules or tokens the base does not have

    def __post_init__(self):
        check_int(self, "n_tokens", self.n_tokens, lo=1, hint=" (virtual tokens; n + length must fit block_size)")
        check_choice(self, "init", self.init, INITS)
        check_int(self, "seed", self.seed, lo=0)
        check_bool(self, "include_head", self.include_head)
        if self.init_text is not None and not check_str(self, "init_text", self.init_text).strip():
            raise ValueError(f"PromptConfig.init_text={self.init_text!r} is empty; give a text with at least one "
                             f"token, e.g. 'Tag the names of people and towns'")
        self.init_ids = check_token_ids(self, "init_ids", self.init_ids)
        if self.init == "text" and self.init_text is None and self.init_ids is None:
            raise ValueError("PromptConfig(init='text') needs init_text (a non-empty text) or init_ids (its token ids)")
        if self.init != "text" and (self.init_text is not None or self.init_ids is not None):
            raise ValueError(f"PromptConfig.init_text / init_ids are only used with init='text', "
                             f"not init={self.init!r}")

    def apply(self, model: nn.Module, tokenizer=None) -> list[str]:
        return apply_prompt(model, self, tokenizer)


# ---- the maths, as plain functions (the conformance run_* functions call these) -------------------

def text_init_rows(m: int, n: int) -> list[int]:
    """Which of a text's m tokens starts each of the n prompt vectors: i mod m (cut or repeated)."""
    if m < 1:
        raise ValueError(f"the init text has m={m} tokens; it needs at least one")
    if n < 1:
        raise ValueError(f"n_tokens={n} must be >= 1")
    return [i % m for i in range(n)]                                       # P_i = E[t_(i mod m)]


def prepend_soft_prompt(embeds: torch.Tensor, prompt: torch.Tensor, attention_mask=None, targets=None):
    """X = [P ; embeds], mask = [1 ; mask], targets = [-100 ; targets]. embeds (B, T, C), prompt
    (n, C), mask and targets (B, T) or None. Returns (X (B, n+T, C), mask, targets). n = 0 returns
    the inputs unchanged."""
    B, n = embeds.shape[0], prompt.shape[0]
    if n == 0:
        return embeds, attention_mask, targets
    P = prompt.to(embeds.dtype)[None].expand(B, -1, -1)                    # (B, n, C)
    x = torch.cat([P, embeds], dim=1)                                      # (B, n + T, C)
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask.new_ones(B, n), attention_mask], dim=1)   # (B, n + T)
    if targets is not None:
        targets = torch.cat([targets.new_full((B, n), IGNORE_INDEX), targets], dim=1)       # no loss on P
    return x, attention_mask, targets


def prompt_positions(attention_mask: torch.Tensor, n: int) -> torch.Tensor:
    """The positions the GPT gives the prompted sequence (B, n + T): 0 .. n-1 for P, then the real
    tokens counted on from n (the model's rule: positions count real tokens; P counts as real)."""
    am = torch.cat([attention_mask.new_ones(attention_mask.shape[0], n), attention_mask], dim=1).long()
    return (am.cumsum(1) - 1).clamp(min=0)                                 # (B, n + T)


def nearest_tokens(prompt: torch.Tensor, wte: torch.Tensor, k: int = 1):
    """For each prompt vector, the k vocabulary tokens with the largest cosine similarity to it:
    (values (n, k), ids (n, k)). What the model "sees", read through the embedding table."""
    cos = F.normalize(prompt.detach().double(), dim=-1) @ F.normalize(wte.detach().double(), dim=-1).T   # (n, V)
    return cos.topk(k, dim=-1)


# ---- the layer: P and the hook pair that hides it -------------------------------------------------

class SoftPrompt(AdapterLayer):
    """P (n, C), attached to a GPT as `soft_prompt`, with a forward pre-hook (prepend) and a forward
    hook (strip) on that GPT. `adapter_enabled = False` skips both: the GPT is the base model."""

    def __init__(self, prompt: torch.Tensor):
        super().__init__()
        self.prompt = nn.Parameter(prompt)                                 # P (n, C)
        self._pending = False                                              # this call prepended P

    @property
    def n_tokens(self) -> int:
        return self.prompt.shape[0]

    def adapter_names(self) -> list[str]:
        return ["prompt"]

    @property
    def reserved_positions(self) -> int:
        """Context positions the prompt takes in front of the tokens (GPT.generate checks them)."""
        return self.n_tokens if self.adapter_enabled else 0

    def pre(self, gpt: GPT, args: tuple, kwargs: dict):
        """Before GPT.forward: prepend P (or, with past_kv, only extend the mask)."""
        self._pending = False
        if not self.adapter_enabled:
            return None
        kw = dict(kwargs)
        for i, name in enumerate(("idx", "targets")[:len(args)]):         # forward(idx, targets, *, ...)
            kw[name] = args[i]
        idx, emb, mask, past = kw.get("idx"), kw.get("inputs_embeds"), kw.get("attention_mask"), kw.get("past_kv")
        if (idx is None) == (emb is None) or not isinstance(idx if idx is not None else emb, torch.Tensor):
            return None                                                    # GPT.forward names the mistake
        n, bs = self.n_tokens, gpt.config.block_size
        if past is not None:                                               # the cache already holds P
            L, T = past[0][0].shape[2], (idx if idx is not None else emb).shape[1]
            if L + T > bs:
                raise ValueError(f"soft prompt n_tokens={n} + sequence length {L + T - n} (cached + new) must "
                                 f"fit block_size={bs}; the prompt takes {n} of the {bs} positions")
            if mask is not None and mask.shape[1] == L - n + T:            # the caller's mask: real tokens only
                kw["attention_mask"] = torch.cat([mask.new_ones(mask.shape[0], n), mask], dim=1)
            return (), kw
        gpt._check_inputs(idx, emb, kw.get("targets"), mask, None, kw.get("prefix_kv"))   # the caller's terms
        T = (idx if idx is not None else emb).shape[1]
        if n + T > bs:
            raise ValueError(f"soft prompt n_tokens={n} + sequence length {T} = {n + T} must fit block_size={bs}")
        x = gpt.transformer.wte(idx) if emb is None else emb              # (B, T, C)
        x, kw["attention_mask"], kw["targets"] = prepend_soft_prompt(x, self.prompt, mask, kw.get("targets"))
        kw["idx"], kw["inputs_embeds"] = None, x                           # (B, n + T, C)
        self._pending = True
        return (), kw

    def post(self, gpt: GPT, args: tuple, kwargs: dict, out):
        """After GPT.forward: cut the n virtual positions off logits and hidden states."""
        if not self._pending:
            return None
        self._pending = False
        n = self.n_tokens
        return dataclasses.replace(
            out, logits=None if out.logits is None else out.logits[:, n:],                         # (B, T, V)
            hidden_states=None if out.hidden_states is None else tuple(h[:, n:] for h in out.hidden_states))

    def remove_from(self, model: nn.Module, name: str) -> None:
        """Delete P and the two hooks from the GPT that holds it."""
        parent_name, _, child = name.rpartition(".")
        gpt = model.get_submodule(parent_name) if parent_name else model
        remove_hooks(gpt, lambda fn: getattr(fn, "__self__", None) is self)   # the hooks bound to this prompt
        delattr(gpt, child)

    def extra_repr(self) -> str:
        return f"n_tokens={self.n_tokens}, n_embd={self.prompt.shape[1]}"


# ---- surgery ---------------------------------------------------------------------------------------

def _find_gpt(model: nn.Module) -> tuple[str, GPT]:
    for name, m in model.named_modules():                                  # the model, or a head's body
        if isinstance(m, GPT):
            return name, m
    raise ValueError(f"apply_prompt: {type(model).__name__} contains no GPT (the model itself or a task head's .body)")


@torch.no_grad()
def init_prompt(wte: torch.Tensor, cfg: PromptConfig, ids: Optional[Sequence[int]] = None) -> torch.Tensor:
    """P (n, C) for the config: random at the table's scale, n vocabulary rows, or the text's rows."""
    V, C = wte.shape
    n, g = cfg.n_tokens, torch.Generator().manual_seed(cfg.seed)
    if cfg.init == "random":
        std = wte.double().std().item()
        P = torch.randn(n, C, generator=g, dtype=torch.float64, device="cpu")       # the CPU generator's draw,
        return (P * std).to(wte)                                           # moved: N(0, std(W_te)^2) on wte's device
    if cfg.init == "vocab":
        rows = torch.randperm(V, generator=g, device="cpu")[:n] if n <= V else \
            torch.randint(0, V, (n,), generator=g, device="cpu")          # drawn on the CPU, moved below
        return wte[rows.to(wte.device)].clone()                            # P_i = W_te[v_i]
    bad = [i for i in ids if i >= V]
    if bad:
        raise ValueError(f"PromptConfig.init_ids holds token id {bad[0]} outside [0, vocab_size={V})")
    rows = [ids[j] for j in text_init_rows(len(ids), n)]
    return wte[torch.tensor(rows, device=wte.device)].clone()             # P_i = W_te[t_(i mod m)]


def apply_prompt(model: nn.Module, cfg: PromptConfig, tokenizer=None) -> list[str]:
    """Attach a soft prompt to the GPT in `model` (a GPT, or a classifier's .body), hook it in and
    freeze everything else (a task head stays trainable unless cfg.include_head is False). A text
    init is encoded with `tokenizer` (anything with .encode(text) -> ids) unless cfg.init_ids is
    given. Returns the name of the new module: ["soft_prompt"] or ["body.soft_prompt"]."""
    if not isinstance(cfg, PromptConfig):
        raise TypeError(f"apply_prompt: cfg must be a PromptConfig, got {type(cfg).__name__}")
    gname, gpt = _find_gpt(model)
    if hasattr(gpt, "soft_prompt"):
        raise ValueError(f"apply_prompt: {gname or 'the model'} already has a soft prompt; applying prompt tuning "
                         f"twice is not supported (remove_adapters(model) first)")
    bs = gpt.config.block_size
    if cfg.n_tokens >= bs:
        raise ValueError(f"soft prompt n_tokens={cfg.n_tokens} must be < block_size={bs}: n + sequence length must "
                         f"fit the context, and n leaves no room for a single token")
    ids = cfg.init_ids
    if cfg.init == "text" and ids is None:
        if tokenizer is None or not callable(getattr(tokenizer, "encode", None)):
            raise ValueError("PromptConfig(init='text') needs the tokenizer: apply_prompt(model, cfg, tokenizer=tok)")
        ids = tuple(int(i) for i in tokenizer.encode(cfg.init_text))
        if not ids:
            raise ValueError(f"PromptConfig.init_text={cfg.init_text!r} encodes to no token")
    wte = gpt.transformer.wte.weight
    layer = SoftPrompt(init_prompt(wte, cfg, ids))
    gpt.soft_prompt = layer
    gpt.register_forward_pre_hook(layer.pre, with_kwargs=True)
    gpt.register_forward_hook(layer.post, with_kwargs=True)
    name = f"{gname}.soft_prompt" if gname else "soft_prompt"
    freeze_all_but_adapters(model, cfg.include_head)
    return record(model, dataclasses.replace(cfg, init_ids=ids), [name])


def prompt_layers(model: nn.Module) -> list[tuple[str, SoftPrompt]]:
    return list(adapter_layers(model, SoftPrompt))


def prompt_state_dict(model: nn.Module) -> dict:
    """Only the soft prompts' tensors, by full name ("soft_prompt.prompt", "body.soft_prompt.prompt")."""
    return {f"{n}.prompt": m.prompt.detach() for n, m in prompt_layers(model)}
