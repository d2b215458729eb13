"""Shared hypothesis strategies and small independent references for the tests."""
from __future__ import annotations

import math

import torch
from hypothesis import strategies as st

from minift.model import GPT, GPTConfig


@st.composite
def gpt_configs(draw, max_layer=2, max_block=16):
    n_head = draw(st.integers(1, 3))
    head_dim = draw(st.sampled_from([4, 8] if n_head == 1 else [2, 4, 8]))  # n_embd >= 4: a LayerNorm
                                                                            # over 2 features is only a sign
    return GPTConfig(vocab_size=draw(st.integers(5, 40)), block_size=draw(st.integers(6, max_block)),
                     n_layer=draw(st.integers(1, max_layer)), n_head=n_head, n_embd=n_head * head_dim,
                     bias=draw(st.booleans()))


def tiny_model(cfg: GPTConfig, seed: int = 0, dtype=torch.float64) -> GPT:
    """A model with every weight random (biases and norms too), so no term hides behind a zero.
    float64 by default: equivalence properties are then checked at float64 rounding (1e-10),
    where an ill-conditioned tiny LayerNorm cannot blur a real difference."""
    torch.manual_seed(seed)
    m = GPT(cfg)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0, 0.3)
    return m.to(dtype).eval()


def reference_forward(cfg: GPTConfig, sd: dict, idx: torch.Tensor, conv1d: bool = False) -> torch.Tensor:
    """GPT-2 written out in float64 with an explicit loop over query positions.

    sd: the tensors by GPT-2 names without the "transformer." prefix ("wte.weight", "h.0.ln_1.weight", ...).
    conv1d: weights stored (in, out) as GPT-2's Conv1D (x @ W), else (out, in) as nn.Linear (x @ W^T).
    """
    d = {k: v.double() for k, v in sd.items()}
    eps = cfg.layer_norm_epsilon

    def lin(x, name):
        W = d[name + ".weight"]
        y = x @ W if conv1d else x @ W.T
        return y + d[name + ".bias"] if name + ".bias" in d else y

    def ln(x, name):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        y = (x - mu) / torch.sqrt(var + eps) * d[name + ".weight"]
        return y + d[name + ".bias"] if name + ".bias" in d else y

    def gelu(x):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

    B, T = idx.shape
    C, H = cfg.n_embd, cfg.n_head
    D = C // H
    x = d["wte.weight"][idx] + d["wpe.weight"][torch.arange(T)]
    for l in range(cfg.n_layer):
        p = f"h.{l}."
        q, k, v = lin(ln(x, p + "ln_1"), p + "attn.c_attn").split(C, dim=-1)
        out = torch.zeros(B, T, C, dtype=torch.float64)
        for h in range(H):
            sl = slice(h * D, (h + 1) * D)
            for t in range(T):                                   # query t sees keys 0..t
                s = q[:, t, sl].unsqueeze(1) @ k[:, : t + 1, sl].transpose(1, 2) / math.sqrt(D)  # (B,1,t+1)
                w = torch.softmax(s, dim=-1)
                out[:, t, sl] = (w @ v[:, : t + 1, sl]).squeeze(1)
        x = x + lin(out, p + "attn.c_proj")
        x = x + lin(gelu(lin(ln(x, p + "ln_2"), p + "mlp.c_fc")), p + "mlp.c_proj")
    x = ln(x, "ln_f")
    return x @ d["wte.weight"].T


class CharTok:
    """Toy tokenizer with minift's interface: one token per character (ids 4..23), specials 0-3."""
    eos_id, pad_id, prompt_id, response_id = 1, 0, 2, 3

    def encode(self, s):
        return [4 + (ord(c) % 20) for c in s]

    def encode_prompt(self, p):
        return [self.prompt_id] + self.encode(p) + [self.response_id]

    def encode_pair(self, p, r):
        a, b = self.encode_prompt(p), self.encode(r) + [self.eos_id]
        return a + b, [0] * len(a) + [1] * len(b)

    def decode(self, ids):
        return "".join(chr(ord("a") + (i - 4) % 26) for i in ids)
