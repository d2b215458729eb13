"""Prefix tuning: learned keys and values that every token attends to, in every layer (Li & Liang,
2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation").

The model stays frozen. Each block l gets P extra key/value pairs in front of the sequence's own,
per head h; attention in block l becomes

    Attn_l(x) = softmax( Q [K_l^pre ; K]^T / sqrt(D) + M ) [V_l^pre ; V]
                K_l^pre, V_l^pre: (H, P, D)      K, V: (H, T, D)      Q: (H, T, D)

The prefix is always visible (M is 0 on its P columns); among the real tokens M stays causal and
hides padding. The prefix has no token and no position: the real tokens keep positions 0..T-1,
so with P = 0 the model is the base model exactly (the only exact no-op: a prefix of length >= 1
always takes some attention away from the real tokens). Hugging Face PEFT stores the same P_θ (below)
but passes it as a KV cache, so there the real tokens take positions P..P+T-1 (tests/test_interop.py).

All prefixes together are one matrix P_θ of shape (P, L · 2 · C), a "virtual token" per row
(C = H D). The paper found training P_θ directly unstable, and reparameterises it:

    P_θ[i, :] = MLP_θ(P'_θ[i, :]) = W_2 tanh(W_1 P'_θ[i, :] + b_1) + b_2
                P'_θ: (P, k)   W_1: (m, k)   W_2: (L 2 C, m)

Only P'_θ and the MLP train. After training the MLP is evaluated once and thrown away
(`fold_prefix`): inference keeps P · L · 2 · C numbers, the same as training P_θ directly.

Initialisation: random (P'_θ ~ N(0, 1) and nn.Linear's init; or P_θ ~ N(0, init_std²)), or, as
the paper recommends, from the activations of real words: `init_ids` = P token ids, whose keys and
values the frozen model computes at positions 0..P-1 become the starting prefix (with the MLP: W_2
solved by least squares so that MLP(P'_θ) equals them). Such a prefix is exactly attention to those
tokens as a context, except that the real tokens' positions restart at 0.

Lengths: the prefix takes no position, but the pretrained model never attended to more than
block_size keys, so prefix + sequence must fit: n_prefix + (past + new tokens) <= block_size.

In minift the prefix lives in a `PrefixEncoder` attached to the GPT as `prefix` (in a classifier:
`body.prefix`), and a forward pre-hook on that GPT passes its output through GPT.forward's
`prefix_kv` door. `model.generate`, the KV cache and the task heads therefore work unchanged; the
cache holds the real tokens only, and the prefix is supplied again at every step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn

from ..model import GPT, build_attention_mask
from ..validate import check_bool, check_float, check_int, check_token_ids
from .common import AdapterLayer, MethodConfig, adapter_layers, detached_state, freeze_all_but_adapters, record, remove_hooks


@dataclass
class PrefixConfig(MethodConfig):
    """P trained key/value positions in every block; with `reparam`, through the paper's MLP."""

    n_prefix: int = 10                   # P, virtual tokens per block
    reparam: bool = True                 # P_θ = MLP(P'_θ) while training (the paper); False: P_θ itself
    embed_dim: Optional[int] = None      # k, columns of P'_θ; None = n_embd
    hidden: int = 32                     # m, the MLP's hidden width
    init_std: float = 1.0                # reparam=False: P_θ ~ N(0, init_std^2) (base keys have std ~ 2)
    init_ids: Optional[Sequence[int]] = None   # n_prefix token ids: start from their keys/values (below)
    include_head: bool = True            # keep a task head (head.*) trainable
    method = "prefix"                    # its name in an adapter file
    family = "additive"                     # minift/taxonomy.py: adds modules or tokens the base does not have

    def __post_init__(self):
        check_int(self, "n_prefix", self.n_prefix, lo=1, hint=" (a length-0 prefix is the base model: don't apply one)")
        check_int(self, "hidden", self.hidden, lo=1)
        check_int(self, "embed_dim", self.embed_dim, lo=1, optional=True, hint=" (None: n_embd)")
        check_bool(self, "reparam", self.reparam)
        check_float(self, "init_std", self.init_std, lo=0, lo_open=True)
        check_bool(self, "include_head", self.include_head)
        self.init_ids = check_token_ids(self, "init_ids", self.init_ids, self.n_prefix, "n_prefix")

    def apply(self, model: nn.Module) -> list[str]:
        return apply_prefix(model, self)


def prefix_parameter_count(n_layer: int, n_embd: int, n_prefix: int, reparam: bool = False,
                           embed_dim: Optional[int] = None, hidden: int = 32) -> int:
    """P_θ: P L 2 C.  Reparameterised: P'_θ (P k) + W_1, b_1 (m k + m) + W_2, b_2 (L 2 C m + L 2 C)."""
    out = n_layer * 2 * n_embd
    if not reparam:
        return n_prefix * out
    k = n_embd if embed_dim is None else embed_dim
    return n_prefix * k + hidden * k + hidden + out * hidden + out


class PrefixEncoder(AdapterLayer):
    """Produces the per-layer prefix keys and values: n_layer pairs of (1, H, P, D)."""

    def __init__(self, n_layer: int, n_head: int, n_embd: int, cfg: PrefixConfig, device=None, dtype=None):
        super().__init__()
        self.n_layer, self.n_head, self.head_dim, self.n_prefix = n_layer, n_head, n_embd // n_head, cfg.n_prefix
        self.reparam = cfg.reparam
        kw = dict(device="cpu", dtype=dtype)       # drawn from the CPU stream, then moved (below): the same
        if self.reparam:                           # initial prefix on every device
            k = n_embd if cfg.embed_dim is None else cfg.embed_dim
            self.embedding = nn.Parameter(torch.randn(cfg.n_prefix, k, **kw))             # P'_θ (P, k)
            self.mlp = nn.Sequential(nn.Linear(k, cfg.hidden, **kw), nn.Tanh(),           # W_1, tanh
                                     nn.Linear(cfg.hidden, n_layer * 2 * n_embd, **kw))   # W_2: -> L 2 C
        else:
            self.kv = nn.Parameter(cfg.init_std * torch.randn(                        # P_θ, per block:
                n_layer, 2, n_head, cfg.n_prefix, self.head_dim, **kw))                  # (L, 2, H, P, D)
        if device is not None:
            self.to(device)

    @torch.no_grad()
    def init_from(self, kv: torch.Tensor) -> None:
        """Start from given keys/values (L, 2, H, P, D), e.g. the base model's own for real tokens
        (the paper's initialisation). Reparameterised: b_2 = 0 and W_2 solves Z W_2^T = rows by least
        squares, Z = tanh(P' W_1^T + b_1) (P, m): exact when m >= P (Z has full row rank)."""
        if not self.reparam:
            self.kv.copy_(kv)
            return
        rows = kv.permute(3, 0, 1, 2, 4).reshape(self.n_prefix, -1)        # (P, L 2 C): key_values inverted
        Z = self.mlp[1](self.mlp[0](self.embedding))                       # (P, m)
        # on the CPU: gelsd (SVD-based, right for a rank-deficient Z) exists only there; Z is tiny (P, m)
        W2t = torch.linalg.lstsq(Z.double().cpu(), rows.double().cpu(), driver="gelsd").solution   # (m, L 2 C)
        self.mlp[2].weight.copy_(W2t.T.to(self.mlp[2].weight.dtype))
        self.mlp[2].bias.zero_()

    @property
    def reserved_positions(self) -> int:
        """Key positions the prefix takes in every layer (GPT.generate checks them)."""
        return self.n_prefix if self.adapter_enabled else 0

    def adapter_names(self) -> list[str]:
        if self.reparam:
            return ["embedding"] + [f"mlp.{n}" for n, _ in self.mlp.named_parameters()]
        return ["kv"]

    def key_values(self) -> torch.Tensor:
        """All keys and values as one tensor (L, 2, H, P, D): [l, 0] keys of block l, [l, 1] values."""
        if not self.reparam:
            return self.kv
        P, L, H, D = self.n_prefix, self.n_layer, self.n_head, self.head_dim
        rows = self.mlp(self.embedding)                                    # P_θ = MLP(P'_θ)  (P, L 2 C)
        return rows.view(P, L, 2, H, D).permute(1, 2, 3, 0, 4)             # (L, 2, H, P, D)

    def forward(self) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """The `prefix_kv` GPT.forward takes: n_layer pairs (K_l^pre, V_l^pre), each (1, H, P, D)."""
        return tuple((kv[0][None], kv[1][None]) for kv in self.key_values().unbind(0))

    @torch.no_grad()
    def fold(self) -> None:
        """Evaluate the MLP once and keep only its output P_θ (L, 2, H, P, D): same outputs, the
        inference size. No-op if not reparameterised."""
        if not self.reparam:
            return
        kv = self.key_values().detach().clone().contiguous()
        del self.embedding, self.mlp
        self.kv, self.reparam = nn.Parameter(kv), False

    def remove_from(self, model: nn.Module, name: str) -> None:
        parent_name, _, child = name.rpartition(".")
        gpt = model.get_submodule(parent_name) if parent_name else model
        _unhook(gpt)
        delattr(gpt, child)

    def extra_repr(self) -> str:
        what = f"P'(P, {self.embedding.shape[1]}) -> MLP" if self.reparam else "plain"
        return f"P={self.n_prefix}, layers={self.n_layer}, heads={self.n_head}, head_dim={self.head_dim}, {what}"


# ---- the hook: GPT.forward(..., prefix_kv=encoder()) ------------------------------------------

def _supply_prefix(gpt: GPT, args: tuple, kwargs: dict):
    """Forward pre-hook on a GPT carrying a `prefix`: fill in `prefix_kv`. It looks the encoder up
    on the module it is called for, so a deep copy of the model uses its own copy."""
    enc = gpt._modules.get("prefix")
    if not isinstance(enc, PrefixEncoder) or not enc.adapter_enabled:
        return None                                                        # the base model, exactly
    if kwargs.get("prefix_kv") is not None:
        raise ValueError("prefix_kv was passed to a model that carries a prefix (apply_prefix); pass none, "
                         "or remove_adapters(model) first")
    x = args[0] if args else kwargs.get("idx")
    x = kwargs.get("inputs_embeds") if x is None else x
    past = kwargs.get("past_kv")
    seen = (x.shape[1] if isinstance(x, torch.Tensor) and x.dim() >= 2 else 0) + \
        (past[0][0].shape[2] if past else 0)
    if enc.n_prefix + seen > gpt.config.block_size:
        raise ValueError(f"prefix length n_prefix={enc.n_prefix} + sequence length {seen} must fit "
                         f"block_size={gpt.config.block_size}")
    kwargs["prefix_kv"] = enc()
    return args, kwargs


def _unhook(gpt: nn.Module) -> None:
    remove_hooks(gpt, lambda fn: fn is _supply_prefix)


def _the_gpt(model: nn.Module) -> tuple[str, GPT]:
    gpts = [(n, m) for n, m in model.named_modules() if isinstance(m, GPT)]
    if len(gpts) != 1:
        raise ValueError(f"apply_prefix: expected exactly one GPT inside {type(model).__name__} (the model itself "
                         f"or a classifier's body), found {len(gpts)}")
    return gpts[0]


def apply_prefix(model: nn.Module, cfg: PrefixConfig) -> list[str]:
    """Attach a PrefixEncoder to the GPT in `model` (a GPT, or a classifier with the GPT as `body`),
    freeze everything else (a task head stays trainable unless cfg.include_head is False). Returns
    the adapted module name: ["prefix"] or ["body.prefix"]."""
    if not isinstance(cfg, PrefixConfig):
        raise TypeError(f"apply_prefix: cfg must be a PrefixConfig, got {type(cfg).__name__}")
    gname, gpt = _the_gpt(model)
    name = f"{gname}.prefix" if gname else "prefix"
    if "prefix" in gpt._modules:
        raise ValueError(f"apply_prefix: {name} exists already; remove_adapters(model) first")
    c = gpt.config
    if cfg.n_prefix + 1 > c.block_size:
        raise ValueError(f"prefix length n_prefix={cfg.n_prefix} + sequence length (at least 1) must fit "
                         f"block_size={c.block_size}")
    w = gpt.lm_head.weight
    enc = PrefixEncoder(c.n_layer, c.n_head, c.n_embd, cfg, device=w.device, dtype=w.dtype)
    if cfg.init_ids is not None:                     # the base's own keys/values, tokens at 0..P-1
        if max(cfg.init_ids) >= c.vocab_size:
            raise ValueError(f"PrefixConfig.init_ids holds token id {max(cfg.init_ids)} outside "
                             f"[0, vocab_size={c.vocab_size})")
        was_training = gpt.training
        with torch.no_grad():
            cache = gpt.eval()(torch.tensor([cfg.init_ids], device=w.device), use_cache=True).past_kv
        gpt.train(was_training)
        enc.init_from(torch.stack([torch.stack([k[0], v[0]]) for k, v in cache]))   # (L, 2, H, P, D)
    gpt.add_module("prefix", enc)
    gpt.register_forward_pre_hook(_supply_prefix, with_kwargs=True)
    freeze_all_but_adapters(model, cfg.include_head)
    return record(model, cfg, [name])


def prefix_modules(model: nn.Module) -> list[tuple[str, PrefixEncoder]]:
    return list(adapter_layers(model, PrefixEncoder))


def prefix_state_dict(model: nn.Module) -> dict:
    """Only the prefix tensors (P'_θ and the MLP, or the folded P_θ), by full name."""
    return detached_state(model, PrefixEncoder)


def fold_prefix(model: nn.Module) -> None:
    """Fold every reparameterised prefix into plain keys/values (P_θ = MLP(P'_θ), evaluated once),
    and note it in the record, so save_adapter writes (and load_adapter rebuilds) the folded form."""
    for _, m in prefix_modules(model):
        m.fold()
    for rec in getattr(model, "peft_methods", None) or []:
        if rec["method"] == "prefix":
            rec["config"] = {**rec["config"], "reparam": False}


@torch.no_grad()
def prefix_attention_mass(model: nn.Module, idx: torch.Tensor, attention_mask: Optional[torch.Tensor] = None
                          ) -> torch.Tensor:
    """For looking at: the attention probability each block's heads put on the P prefix keys,
    averaged over the real query tokens. Returns (n_layer, n_head), each entry in [0, 1]."""
    _, gpt = _the_gpt(model)
    enc = gpt._modules.get("prefix")
    if not isinstance(enc, PrefixEncoder):
        raise ValueError("prefix_attention_mass: the model carries no prefix; apply_prefix(model, cfg) first")
    out = gpt(idx, attention_mask=attention_mask, output_hidden_states=True, return_logits=False)
    B, T = idx.shape
    am = torch.ones_like(idx) if attention_mask is None else attention_mask.to(torch.long)
    mask = build_attention_mask(am, T, enc.n_prefix)                       # (B, 1, T, P + T)
    H, D, C = enc.n_head, enc.head_dim, gpt.config.n_embd
    rows = []
    for l, (pk, _) in enumerate(enc()):
        block = gpt.transformer.h[l]
        q, k, _ = block.attn.c_attn(block.ln_1(out.hidden_states[l])).split(C, dim=2)
        q, k = (t.view(B, T, H, D).transpose(1, 2) for t in (q, k))        # (B, H, T, D)
        k = torch.cat([pk.expand(B, -1, -1, -1).to(k.dtype), k], dim=2)    # (B, H, P + T, D)
        w = (q @ k.transpose(-2, -1) / math.sqrt(D)).masked_fill(~mask, float("-inf")).softmax(-1)
        on_prefix = w[..., :enc.n_prefix].sum(-1)                          # (B, H, T)
        real = am[:, None, :].bool().expand_as(on_prefix)                  # average over real queries
        rows.append(torch.where(real, on_prefix, 0.0).sum((0, 2)) / real.sum((0, 2)))   # (H,)
    return torch.stack(rows)                                               # (L, H)
