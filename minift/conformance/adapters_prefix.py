"""Reference `run_*` adapters of lesson 07 (prefix tuning): plain tensors and hyperparameters in,
tensors out, computed by minift's own module (`minift/peft/prefix.py`) and the model's attention.

    run_prefix_attention(q, k, v, prefix_k, prefix_v)     causal attention where every query also
                                                          sees P prefix keys/values in front
    run_prefix_mlp(embedding, W1, b1, W2, b2, n_layer, n_head)   the reparameterisation
                                                          MLP(P') = W2 tanh(W1 P' + b1) + b2, laid out
                                                          as per-layer keys/values (L, 2, H, P, D)

`adapters.py` re-exports everything in `__all__`, so `minift.conformance.adapters` stays the one
reference implementation that `--impl` replaces.
"""
from __future__ import annotations

import torch

from minift.model import build_attention_mask, causal_attention
from minift.peft.prefix import PrefixConfig, PrefixEncoder

__all__: list[str] = ["run_prefix_attention", "run_prefix_mlp"]


def _tensor(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def run_prefix_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix_k: torch.Tensor,
                         prefix_v: torch.Tensor) -> torch.Tensor:
    """softmax(q [prefix_k ; k]^T / sqrt(D) + M) [prefix_v ; v], M causal over the real keys and 0 on
    the P prefix keys, as one block of `GPT.forward(..., prefix_kv=...)` computes it.
    q, k, v: (B, H, T, D); prefix_k, prefix_v: (B, H, P, D), P >= 0. Returns (B, H, T, D)."""
    q, k, v = _tensor("q", q), _tensor("k", k), _tensor("v", v)
    pk, pv = _tensor("prefix_k", prefix_k), _tensor("prefix_v", prefix_v)
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"run_prefix_attention: q, k, v must share one shape (B, H, T, D), got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    B, H, T, D = q.shape
    if pk.dim() != 4 or pk.shape != pv.shape or (pk.shape[0], pk.shape[1], pk.shape[3]) != (B, H, D):
        raise ValueError(f"run_prefix_attention: prefix_k, prefix_v must both be (B, H, P, D)=({B}, {H}, P, {D}), "
                         f"got {tuple(pk.shape)} and {tuple(pv.shape)}")
    P = pk.shape[2]
    mask = build_attention_mask(torch.ones(B, T, dtype=torch.bool, device=q.device), T, P)   # (B, 1, T, P + T)
    return causal_attention(q, torch.cat([pk.to(k.dtype), k], 2), torch.cat([pv.to(v.dtype), v], 2), mask)


def run_prefix_mlp(embedding: torch.Tensor, W1: torch.Tensor, b1: torch.Tensor, W2: torch.Tensor,
                   b2: torch.Tensor, n_layer: int, n_head: int) -> torch.Tensor:
    """The prefix tensors of a reparameterised `PrefixEncoder`: rows = W2 tanh(W1 P' + b1) + b2 for
    each of the P rows of P' (nn.Linear layout: embedding (P, k), W1 (m, k), b1 (m,), W2 (L 2 C, m),
    b2 (L 2 C,)), each row read as [layer][key, value][head][head_dim]. Returns (L, 2, H, P, D)."""
    E, W1, b1 = _tensor("embedding", embedding), _tensor("W1", W1), _tensor("b1", b1)
    W2, b2 = _tensor("W2", W2), _tensor("b2", b2)
    if E.dim() != 2 or W1.dim() != 2 or W2.dim() != 2:
        raise ValueError(f"run_prefix_mlp: embedding, W1, W2 must be matrices, got {tuple(E.shape)}, "
                         f"{tuple(W1.shape)}, {tuple(W2.shape)}")
    (P, k), m, out = E.shape, W1.shape[0], W2.shape[0]
    if out % (2 * n_layer * n_head):
        raise ValueError(f"run_prefix_mlp: W2 has {out} rows, not a multiple of 2 n_layer n_head = "
                         f"{2 * n_layer * n_head}")
    C = out // (2 * n_layer)
    if tuple(W1.shape) != (m, k) or tuple(b1.shape) != (m,) or tuple(W2.shape) != (out, m) \
            or tuple(b2.shape) != (out,):
        raise ValueError(f"run_prefix_mlp: expected W1 (m, k={k}), b1 (m,), W2 (L 2 C, m), b2 (L 2 C,); got "
                         f"{tuple(W1.shape)}, {tuple(b1.shape)}, {tuple(W2.shape)}, {tuple(b2.shape)}")
    enc = PrefixEncoder(n_layer, n_head, C, PrefixConfig(n_prefix=P, embed_dim=k, hidden=m), dtype=E.dtype)
    with torch.no_grad():
        for p, t in ((enc.embedding, E), (enc.mlp[0].weight, W1), (enc.mlp[0].bias, b1), (enc.mlp[2].weight, W2),
                     (enc.mlp[2].bias, b2)):
            p.copy_(t)
        return enc.key_values().clone()                                    # (L, 2, H, P, D)
