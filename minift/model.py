"""The GPT: a GPT-2-shaped decoder-only transformer, small enough to read in one sitting.

Architecture (Radford et al., 2019, "Language Models are Unsupervised Multitask Learners"):
pre-LayerNorm blocks, GELU (tanh approximation), learned absolute positions, and the output
projection tied to the token embedding.

    h_0     = W_te[idx] + W_pe[pos]                            (B, T, C)
    a_l     = h_{l-1} + Attn(LN_1(h_{l-1}))                    (B, T, C)
    h_l     = a_l + MLP(LN_2(a_l))                             (B, T, C)
    logits  = LN_f(h_L) W_te^T                                 (B, T, V)

    Attn(x) = softmax(Q K^T / sqrt(d) + M) V,  [Q K V] = x W_qkv  (one fused c_attn)
    MLP(x)  = GELU(x W_fc) W_proj                              C -> 4C -> C

Module names follow GPT-2 (`transformer.h.3.attn.c_attn`, ...) so that checkpoints, LoRA target
patterns and adapter files read the same as in the wider ecosystem.

The three doors the fine-tuning methods use:
- `prefix_kv`: per-layer extra keys/values that every query attends to (prefix tuning);
- `inputs_embeds`: feed embeddings instead of token ids (prompt tuning's soft prompts);
- `output_hidden_states`: every layer's hidden states out (task heads, ReFT, distillation).

Padding is given by `attention_mask` (1 = real token, 0 = pad). Positions are counted over real
tokens only, so a left-padded, right-padded or unpadded sequence gets the same logits at its
real tokens. Targets follow nanoGPT's convention: `targets[b, t]` is the token that should
follow `idx[b, t]`, and -100 means "no loss here".
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .validate import check_bool, check_float, check_int, check_multiple

IGNORE_INDEX = -100

# Past keys/values: one (k, v) pair per layer, each (B, n_head, L, head_dim).
KVCache = tuple[tuple[torch.Tensor, torch.Tensor], ...]


@dataclass
class GPTConfig:
    vocab_size: int = 4096
    block_size: int = 256      # the longest sequence (context) the position table covers
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            check_int(self, name, getattr(self, name), lo=1)
        check_multiple(self, "n_embd", self.n_embd, self.n_head, "n_head")
        check_float(self, "dropout", self.dropout, 0, 1, hi_open=True)
        check_bool(self, "bias", self.bias)
        check_float(self, "layer_norm_epsilon", self.layer_norm_epsilon, lo=0, lo_open=True)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig field(s) {unknown}; expected a subset of {sorted(known)}")
        return cls(**d)

    def fingerprint(self) -> str:
        """sha256 of the architecture (dropout excluded: it does not change the weights' meaning).
        Adapter files store it to refuse loading onto a different base model."""
        d = {k: v for k, v in self.to_dict().items() if k != "dropout"}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class GPTOutput:
    logits: Optional[torch.Tensor]                         # (B, T, V); None if not asked for
    loss: Optional[torch.Tensor] = None                    # scalar, mean over non-ignored targets
    hidden_states: Optional[tuple[torch.Tensor, ...]] = None  # n_layer + 1 of (B, T, C)
    past_kv: Optional[KVCache] = None                      # the cache, extended by this call


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """Upcast half precision to float32 for softmax/log-softmax; leave float32/float64 alone."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


# ----------------------------------------------------------------------------------------------
# Attention


def causal_attention(q, k, v, mask=None, dropout_p: float = 0.0):
    """softmax(Q K^T / sqrt(d) + M) V through `F.scaled_dot_product_attention`.

    q: (B, H, T, D); k, v: (B, H, S, D) with S >= T, the last T keys being the queries' own.
    mask: None for plain causal attention (S == T), else a boolean (B or 1, 1, T, S) with True =
    may attend. Returns (B, H, T, D).
    """
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


def check_mask_values(attention_mask: torch.Tensor) -> None:
    """A padding mask holds 0 (padding) and 1 (real token) only: 0.5 or 2 is a bug upstream, not a weight."""
    bad = (attention_mask != 0) & (attention_mask != 1)
    if bool(bad.any()):
        raise ValueError(f"attention_mask must hold only 0 (padding) and 1 (real token), "
                         f"found {attention_mask[bad][0].item()!r}")


def check_target_ids(targets, n: int, what: str = "targets", of: str = "vocab_size") -> None:
    """Integer ids in [0, n), or IGNORE_INDEX (no loss): our error, not an IndexError or a CUDA assert."""
    if not isinstance(targets, torch.Tensor) or targets.is_floating_point() or targets.is_complex() \
            or targets.dtype == torch.bool:
        raise TypeError(f"{what} must be an integer tensor of ids ({IGNORE_INDEX}: no loss), got "
                        f"{getattr(targets, 'dtype', type(targets).__name__)}")
    kept = targets[targets != IGNORE_INDEX]
    if kept.numel() and (kept.min() < 0 or kept.max() >= n):
        bad = int(kept.max() if kept.max() >= n else kept.min())
        raise ValueError(f"{what} hold {bad}, outside [0, {of}={n}) and not {IGNORE_INDEX} (no loss)")


def build_attention_mask(key_mask: torch.Tensor, T: int, n_prefix: int = 0) -> torch.Tensor:
    """The boolean attention mask for T queries that are the last T of the keys.

    key_mask: (B, S) 1 = real key, 0 = padding, over cached + current tokens (S = L_past + T).
    Query i (absolute index S - T + i) may attend key j when j <= its own index and j is real;
    it may always attend itself, so a padding query still has one key and never yields NaN.
    Prefix keys (n_prefix of them, in front) are visible to every query.
    Returns (B, 1, T, n_prefix + S) bool.
    """
    B, S = key_mask.shape
    q_pos = torch.arange(S - T, S, device=key_mask.device)                 # (T,)
    k_pos = torch.arange(S, device=key_mask.device)                        # (S,)
    causal = k_pos[None, :] <= q_pos[:, None]                              # (T, S)
    allowed = causal[None] & key_mask[:, None, :].bool()                   # (B, T, S)
    allowed = allowed | (k_pos[None, :] == q_pos[:, None])[None]           # self always visible
    if n_prefix:
        allowed = torch.cat([allowed.new_ones(B, T, n_prefix), allowed], dim=2)
    return allowed[:, None]                                                # (B, 1, T, P + S)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.n_embd = cfg.n_head, cfg.n_embd
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # fused [W_q W_k W_v]
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.attn_dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, mask=None, past=None, prefix=None):
        B, T, C = x.shape
        H = self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)                           # 3 x (B, T, C)
        q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)                             # (B, H, L+T, D)
            v = torch.cat([past[1], v], dim=2)
        present = (k, v)                                                   # the new cache entry
        if prefix is not None:                                             # prefix tuning's door
            pk, pv = prefix
            k = torch.cat([pk.expand(B, -1, -1, -1).to(k.dtype), k], dim=2)  # (B, H, P+L+T, D)
            v = torch.cat([pv.expand(B, -1, -1, -1).to(v.dtype), v], dim=2)
        y = causal_attention(q, k, v, mask, self.attn_dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)                   # (B, T, C)
        return self.resid_dropout(self.c_proj(y)), present


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))  # (B, T, C)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x, mask=None, past=None, prefix=None):
        a, present = self.attn(self.ln_1(x), mask, past, prefix)
        x = x + a                                                          # a_l = h + Attn(LN_1 h)
        x = x + self.mlp(self.ln_2(x))                                     # h_l = a_l + MLP(LN_2 a_l)
        return x, present


# ----------------------------------------------------------------------------------------------
# The model


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
            ln_f=nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon, bias=cfg.bias),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight                  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():                            # GPT-2: scale residual
            if name.endswith("c_proj.weight"):                             # projections by
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer)) # 1/sqrt(2 L)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Unique parameters (the tied embedding counted once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # ---- input checks: the user's terms, before any matmul can fail --------------------------

    def _check_inputs(self, idx, inputs_embeds, targets, attention_mask, past_kv, prefix_kv):
        cfg = self.config
        if (idx is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of idx (token ids) or inputs_embeds")
        if idx is not None:
            if not isinstance(idx, torch.Tensor) or idx.dtype not in (torch.long, torch.int32, torch.int64):
                raise TypeError(f"idx must be an integer tensor of token ids, got "
                                f"{getattr(idx, 'dtype', type(idx).__name__)}")
            if idx.dim() != 2:
                raise ValueError(f"idx must have shape (batch, time), got {tuple(idx.shape)}")
            if idx.numel() and (idx.min() < 0 or idx.max() >= cfg.vocab_size):
                raise ValueError(f"idx holds token id {int(idx.max() if idx.max() >= cfg.vocab_size else idx.min())}"
                                 f" outside [0, vocab_size={cfg.vocab_size})")
            B, T = idx.shape
        else:
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != cfg.n_embd:
                raise ValueError(f"inputs_embeds must have shape (batch, time, n_embd={cfg.n_embd}), "
                                 f"got {tuple(inputs_embeds.shape)}")
            B, T = inputs_embeds.shape[:2]
        L = 0
        if past_kv is not None:
            if len(past_kv) != cfg.n_layer:
                raise ValueError(f"past_kv has {len(past_kv)} layers, expected n_layer={cfg.n_layer}")
            L = past_kv[0][0].shape[2]
        if L + T > cfg.block_size:
            raise ValueError(f"sequence length {L + T} (past {L} + new {T}) exceeds the context "
                             f"block_size={cfg.block_size}")
        if attention_mask is not None:
            if tuple(attention_mask.shape) != (B, L + T):
                raise ValueError(f"attention_mask must have shape (batch, past + time)=({B}, {L + T}), "
                                 f"got {tuple(attention_mask.shape)}")
            check_mask_values(attention_mask)
        if targets is not None:
            check_target_ids(targets, cfg.vocab_size)
            if tuple(targets.shape) != (B, T):
                raise ValueError(f"targets must have shape (batch, time)=({B}, {T}), got {tuple(targets.shape)}")
        if prefix_kv is not None:
            if len(prefix_kv) != cfg.n_layer:
                raise ValueError(f"prefix_kv has {len(prefix_kv)} layers, expected n_layer={cfg.n_layer}")
            P = prefix_kv[0][0].shape[2]
            for i, (pk, pv) in enumerate(prefix_kv):
                for name, t in (("keys", pk), ("values", pv)):
                    if t.dim() != 4 or t.shape[0] not in (1, B) or t.shape[1] != cfg.n_head \
                            or t.shape[2] != P or t.shape[3] != cfg.head_dim:
                        raise ValueError(f"prefix_kv[{i}] {name} must have shape (1 or {B}, n_head={cfg.n_head}, "
                                         f"{P}, head_dim={cfg.head_dim}), got {tuple(t.shape)}")
        return B, T, L

    # ---- forward -----------------------------------------------------------------------------

    def forward(self, idx=None, targets=None, *, attention_mask=None, prefix_kv=None,
                inputs_embeds=None, past_kv=None, output_hidden_states=False, use_cache=None,
                return_logits=True):
        """Logits for every position; loss when `targets` is given.

        idx: (B, T) token ids, or inputs_embeds: (B, T, C).
        attention_mask: (B, L + T), 1 = real token, 0 = padding, over past + current tokens.
        prefix_kv: n_layer pairs (k, v) of shape (1 or B, n_head, P, head_dim), always visible.
        past_kv: the cache a previous call returned (L tokens). The cache is returned when
        `use_cache` is true (default: whenever past_kv is given).
        return_logits=False skips the vocabulary projection (task heads only need hidden states).
        """
        B, T, L = self._check_inputs(idx, inputs_embeds, targets, attention_mask, past_kv, prefix_kv)
        tr = self.transformer
        if attention_mask is None:
            pos = torch.arange(L, L + T, device=self.lm_head.weight.device).expand(B, T)  # (B, T)
            mask = None if (L == 0 and prefix_kv is None) else build_attention_mask(
                torch.ones(B, L + T, dtype=torch.bool, device=pos.device), T,
                0 if prefix_kv is None else prefix_kv[0][0].shape[2])
        else:
            am = attention_mask.to(torch.long)
            pos = (am.cumsum(1) - 1).clamp(min=0)[:, L:]                   # real tokens: 0, 1, 2 ...
            mask = build_attention_mask(am, T, 0 if prefix_kv is None else prefix_kv[0][0].shape[2])
        x = tr.wte(idx) if inputs_embeds is None else inputs_embeds         # (B, T, C)
        x = tr.drop(x + tr.wpe(pos))                                       # h_0 = W_te[idx] + W_pe[pos]
        hidden = [x] if output_hidden_states else None
        want_cache = past_kv is not None if use_cache is None else use_cache
        presents = [] if want_cache else None
        for i, block in enumerate(tr.h):
            x, present = block(x, mask,
                               None if past_kv is None else past_kv[i],
                               None if prefix_kv is None else prefix_kv[i])
            if want_cache:
                presents.append(present)
            if output_hidden_states and i < len(tr.h) - 1:
                hidden.append(x)
        x = tr.ln_f(x)                                                     # (B, T, C)
        if output_hidden_states:
            hidden.append(x)                  # as in GPT-2: the last entry is after ln_f
        if not return_logits:
            if targets is not None:
                raise ValueError("targets need logits: do not pass return_logits=False with targets")
            return GPTOutput(None, None, tuple(hidden) if hidden else None,
                             tuple(presents) if want_cache else None)
        logits = self.lm_head(x)                                           # (B, T, V)
        loss = None
        if targets is not None:
            if bool((targets != IGNORE_INDEX).any()):
                loss = F.cross_entropy(at_least_fp32(logits.reshape(-1, logits.size(-1))), targets.reshape(-1),
                                       ignore_index=IGNORE_INDEX)
            else:  # nothing to predict (e.g. a batch of truncated prompts): zero, not NaN; an empty
                loss = logits.flatten()[:0].sum()   # sum (not logits.sum() * 0, which a NaN logit makes NaN)
        return GPTOutput(logits, loss, tuple(hidden) if hidden else None,
                         tuple(presents) if want_cache else None)

    @torch.no_grad()
    def attention_weights(self, idx, layer: int) -> torch.Tensor:
        """The attention probabilities of block `layer` for unpadded idx (B, T): (B, H, T, T).

        SDPA never materialises them, so this recomputes softmax(Q K^T / sqrt(d) + causal mask)
        explicitly, for looking at, not for training.
        """
        if not 0 <= layer < self.config.n_layer:
            raise ValueError(f"layer={layer} must be in [0, n_layer={self.config.n_layer})")
        out = self(idx, output_hidden_states=True)
        block = self.transformer.h[layer]
        x = block.ln_1(out.hidden_states[layer])                           # (B, T, C)
        B, T, C = x.shape
        H = self.config.n_head
        q, k, _ = block.attn.c_attn(x).split(C, dim=2)
        q, k = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k))   # (B, H, T, D)
        scores = q @ k.transpose(-2, -1) / math.sqrt(C // H)               # (B, H, T, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        return scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)

    # ---- generation --------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, *, temperature: float = 0.0, top_k: Optional[int] = None,
                 eos_token_id: Optional[int] = None, pad_token_id: Optional[int] = None,
                 attention_mask=None, prefix_kv=None, use_cache: bool = True,
                 generator: Optional[torch.Generator] = None):
        """Continue each row of idx (B, T) by up to max_new_tokens tokens.

        temperature 0 is greedy (argmax); otherwise sample from softmax(logits / temperature),
        restricted to the top_k most likely tokens when top_k is given. A row stops at
        eos_token_id (which is kept); later slots are filled with pad_token_id (default: eos).
        Padding may be on either side: rows are left-aligned internally, which positions
        counted over real tokens make harmless. Returns only the new tokens: (B, N), N <= max_new_tokens.
        """
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={max_new_tokens!r} must be a non-negative integer")
        if temperature < 0:
            raise ValueError(f"temperature={temperature} must be >= 0 (0 means greedy)")
        if top_k is not None and not (isinstance(top_k, int) and top_k >= 1):
            raise ValueError(f"top_k={top_k!r} must be a positive integer or None")
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (batch, time), got {tuple(idx.shape)}")
        B, T = idx.shape
        # positions a method takes in front of the tokens (a soft prompt's or a prefix's): a submodule
        # that uses them says so with a `reserved_positions` attribute
        n_res = sum(int(getattr(m, "reserved_positions", 0)) for m in self.modules() if m is not self)
        if n_res + T + max_new_tokens > self.config.block_size:
            taken = f" + {n_res} positions taken by a prefix or soft prompt" if n_res else ""
            raise ValueError(f"prompt length {T} + max_new_tokens {max_new_tokens}{taken} exceeds the context "
                             f"block_size={self.config.block_size}")
        if attention_mask is not None:
            if tuple(attention_mask.shape) != (B, T):
                raise ValueError(f"attention_mask must have shape {(B, T)}, got {tuple(attention_mask.shape)}")
            check_mask_values(attention_mask)
            # left-align: padding first, real tokens last, order among each kept (stable sort)
            order = torch.sort(attention_mask.to(torch.long), dim=1, stable=True).indices
            idx, attention_mask = idx.gather(1, order), attention_mask.gather(1, order).to(torch.long)
        else:
            attention_mask = torch.ones_like(idx)
        fill = eos_token_id if pad_token_id is None else pad_token_id
        done = torch.zeros(B, dtype=torch.bool, device=idx.device)
        out, past, seq, mask = [], None, idx, attention_mask
        step_in = idx
        for _ in range(max_new_tokens):
            if use_cache:
                o = self(step_in, attention_mask=mask, prefix_kv=prefix_kv, past_kv=past, use_cache=True)
                past = o.past_kv
            else:
                o = self(seq, attention_mask=mask, prefix_kv=prefix_kv)
            logits = at_least_fp32(o.logits[:, -1, :])                     # (B, V)
            if temperature == 0:
                nxt = logits.argmax(dim=-1)                                # (B,)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits, dim=-1)                          # (B, V)
                if generator is not None and generator.device != probs.device:
                    probs = probs.cpu()                                    # draw where the generator lives (a CPU
                nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1).to(idx.device)   # one: reproducible)
            if fill is not None:
                nxt = torch.where(done, torch.full_like(nxt, fill), nxt)
            out.append(nxt)
            if eos_token_id is not None:
                done = done | (nxt == eos_token_id)
                if bool(done.all()):
                    break
            step_in = nxt[:, None]                                         # (B, 1)
            seq = torch.cat([seq, step_in], dim=1)
            mask = torch.cat([mask, torch.ones_like(step_in)], dim=1)
        if not out:
            return idx.new_zeros(B, 0)
        return torch.stack(out, dim=1)                                     # (B, N)
