"""Lesson 06 (bottleneck adapters): the reference `run_*` functions and their conformance checks.

The reference functions, computed by minift's own code:

    run_adapter(h, W_down, b_down, W_up, b_up, activation="relu", scaling=1.0)
                                             h + scaling (f(h W_down^T + b_down) W_up^T + b_up)
"""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st

from minift.peft.adapters import ACTIVATIONS, Bottleneck

from .harness import assert_close, gelu64, output, property_check, tensor, tensor_arg
from .strategies import MAX_B, MAX_D, arrays, f32


# ---- the reference functions --------------------------------------------------------------------

def run_adapter(h: torch.Tensor, W_down: torch.Tensor, b_down: torch.Tensor, W_up: torch.Tensor,
                b_up: torch.Tensor, activation: str = "relu", scaling: float = 1.0) -> torch.Tensor:
    """A series bottleneck adapter (Houlsby et al., 2019), as `minift.peft.adapters.SeriesAdapterLinear`
    applies it to a sublayer's output h:

        out = h + scaling · ( f(h W_down^T + b_down) W_up^T + b_up )

    nn.Linear layout: W_down (m, C), b_down (m,), W_up (C, m), b_up (C,); the paper's "h W_down" is
    h @ W_down.T here. f: "relu", "gelu" (tanh approximation), "silu", "tanh" or "identity".
    h: (N, C). Returns (N, C). With W_up = 0 and b_up = 0 the output is h exactly."""
    h, W_down, b_down = tensor_arg("h", h), tensor_arg("W_down", W_down), tensor_arg("b_down", b_down)
    W_up, b_up = tensor_arg("W_up", W_up), tensor_arg("b_up", b_up)
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


# ---- the checks ----------------------------------------------------------------------------------

_ACT64 = {
    "relu": lambda z: np.maximum(z, 0.0),
    "gelu": gelu64,
    "silu": lambda z: z / (1.0 + np.exp(-z)),
    "tanh": np.tanh,
    "identity": lambda z: z,
}


@st.composite
def _adapter_inputs(draw):
    """h (N, C), W_down (m, C), b_down (m,), W_up (C, m), b_up (C,), activation, scaling."""
    n, C, mb = draw(st.integers(1, 2 * MAX_B)), draw(st.integers(1, MAX_D)), draw(st.integers(1, MAX_D))
    return dict(h=draw(arrays((n, C), f32(-3, 3))), W_down=draw(arrays((mb, C), f32(-1, 1))),
                b_down=draw(arrays((mb,), f32(-1, 1))), W_up=draw(arrays((C, mb), f32(-1, 1))),
                b_up=draw(arrays((C,), f32(-1, 1))), activation=draw(st.sampled_from(sorted(_ACT64))),
                scaling=float(draw(st.one_of(st.sampled_from([1.0, 4.0]), f32(-4, 4)))))


def _every_activation() -> list:
    """One example per activation, every weight nonzero: random draws may pair an activation with
    weights that hide it (W_up = 0, z = 0), so each one is also checked where it shows."""
    f = lambda *rows: np.array(rows, np.float32)
    fixed = dict(h=f([0.5, -1.5, 2.0], [1.0, 0.25, -0.75]), W_down=f([0.3, -0.7, 0.2], [-0.4, 0.1, 0.9]),
                 b_down=f(0.1, -0.2), W_up=f([0.5, -0.3], [0.2, 0.8], [-0.6, 0.4]), b_up=f(0.05, -0.1, 0.2), scaling=2.0)
    return [dict(inp={**fixed, "activation": a}) for a in sorted(_ACT64)]


@property_check("run_adapter", lesson=6, examples=60, explicit=_every_activation(), inp=_adapter_inputs())
def adapter_matches_formula(adapter, inp):
    """adapter(h, W_down, b_down, W_up, b_up, activation, scaling) equals h + scaling (f(h W_down^T
    + b_down) W_up^T + b_up) in float64 (nn.Linear layout; f relu, gelu (tanh approximation), silu,
    tanh or identity)."""
    h, Wd, bd, Wu, bu = (inp[k].astype(np.float64) for k in ("h", "W_down", "b_down", "W_up", "b_up"))
    f, s = inp["activation"], inp["scaling"]
    z = h @ Wd.T + bd                                                  # (N, m)
    expected = h + s * (_ACT64[f](z) @ Wu.T + bu)
    what = f"run_adapter(h, W_down, b_down, W_up, b_up, activation={f!r}, scaling={s!r})"
    y = output(adapter(*(tensor(inp[k]) for k in ("h", "W_down", "b_down", "W_up", "b_up")), activation=f, scaling=s),
               h.shape, what)
    zb = np.abs(h) @ np.abs(Wd).T + np.abs(bd)                         # |z| bound; |f'| <= 1.1 for all f
    bound = np.abs(h) + abs(s) * ((np.abs(_ACT64[f](z)) + zb) @ np.abs(Wu).T + np.abs(bu))
    assert_close(y, expected, f"{what} vs h + scaling (f(h W_down^T + b_down) W_up^T + b_up)",
                 atol=1e-5 * bound + 1e-6, rtol=0)


@property_check("run_adapter", lesson=6, examples=40, inp=_adapter_inputs())
def adapter_zero_up_is_identity(adapter, inp):
    """an adapter with W_up = 0 and b_up = 0 (its initialisation) is an exact no-op: the output is h,
    bit for bit, for any W_down, b_down, activation and scaling."""
    h = inp["h"]
    Wu, bu = np.zeros_like(inp["W_up"]), np.zeros_like(inp["b_up"])
    what = f"run_adapter(h, W_down, b_down, W_up=0, b_up=0, activation={inp['activation']!r}, " \
           f"scaling={inp['scaling']!r})"
    y = output(adapter(tensor(h), tensor(inp["W_down"]), tensor(inp["b_down"]), tensor(Wu), tensor(bu),
                     activation=inp["activation"], scaling=inp["scaling"]), h.shape, what)
    assert_close(y, h, f"{what} vs h (a zero up-projection adds exactly 0)", atol=0, rtol=0)
