"""A failing example as text of our own, the same whichever hypothesis version found it.

    format_counterexample("softmax_stable_large", {"x": x, "dim": 0})
        softmax_stable_large(x=array([89.], dtype=float32), dim=0)      the example as drawn
    format_calls([("run_softmax", ["x", "dim"], (x,), {"dim": 0})])
        import torch                                                   the implementation's calls,
        x = torch.tensor([89.], dtype=torch.float32)                   as torch code to paste
        run_softmax(x, dim=0)

`snapshot` copies a call's arguments as they went in; `written` tells where a call changed them
(the harness fails such a call: a function's inputs stay the caller's, and the pasted call
reproduces). Floats are written at full precision (the shortest decimal that reads back as the same float32), so
a pasted example reproduces the failure bit for bit.
"""
from __future__ import annotations

import re

import numpy as np
import torch


def snapshot(v):
    """A copy of a call's arguments for the report: tensors cloned, containers copied, others as is."""
    if isinstance(v, torch.Tensor):
        t = v.detach().clone()
        return t.requires_grad_() if v.requires_grad else t      # a gradient check's call pastes as one
    if isinstance(v, (list, tuple)):
        return type(v)(snapshot(x) for x in v) if not hasattr(v, "_fields") else v
    if isinstance(v, dict):
        return {k: snapshot(x) for k, x in v.items()}
    return v


def written(before, now, where: str) -> str:
    """'' when `now` holds the same tensors (values, NaNs, shapes, dtypes) as the snapshot `before`,
    else where the first difference is (`W0`, `params[1]`, `batch['ids']`). Modules are not compared:
    the steps that train one change it by contract."""
    if isinstance(now, torch.Tensor) and isinstance(before, torch.Tensor):
        now = now.detach()
        if now.shape != before.shape or now.dtype != before.dtype:
            return where
        if now.is_floating_point() or now.is_complex():
            same = (now == before) | (torch.isnan(now) & torch.isnan(before))
        else:
            same = now == before
        return "" if bool(same.all()) else where
    if isinstance(now, (list, tuple)) and isinstance(before, (list, tuple)) and len(now) == len(before):
        return next((w for i, (b, n) in enumerate(zip(before, now)) for w in [written(b, n, f"{where}[{i}]")] if w), "")
    if isinstance(now, dict) and isinstance(before, dict):
        return next((w for k in before if k in now for w in [written(before[k], now[k], f"{where}[{k!r}]")] if w), "")
    return ""


def _format_value(v) -> str:
    """A value as Python text that reproduces it bit for bit (arrays at full float precision)."""
    if isinstance(v, np.ndarray):
        with np.printoptions(threshold=10 ** 9, floatmode="unique", linewidth=100):
            return repr(v)
    if isinstance(v, tuple):
        return "(" + ", ".join(_format_value(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    if isinstance(v, list):
        return "[" + ", ".join(_format_value(x) for x in v) + "]"
    return repr(v)


def format_counterexample(name: str, kwargs: dict) -> str:
    """`prop(x=array([89.], dtype=float32), zp=True)`: the property's name and its
    failing arguments (values drawn inside it, from `data`, as the list of draws in order)."""
    args = [f"{k}={_format_value(v)}" for k, v in kwargs.items()]
    one_line = f"{name}({', '.join(args)})"
    if len(one_line) <= 100 and "\n" not in one_line:
        return one_line
    return f"{name}(\n" + "".join(f"    {a},\n".replace("\n ", "\n     ") for a in args) + ")"


def _torch_literal(t: torch.Tensor) -> str:
    """`torch.tensor([0.1, 89.0], dtype=torch.float32)`: every value exact (a float32 printed as the
    shortest decimal that reads back as the same float)."""
    dtype = str(t.dtype)
    if t.dtype.is_floating_point:
        with np.printoptions(threshold=10 ** 9, floatmode="unique", linewidth=100, sign="-"):
            body = np.array2string(t.detach().cpu().to(torch.float32 if t.dtype == torch.bfloat16 else t.dtype)
                                   .numpy(), separator=", ", threshold=10 ** 9)
    else:
        body = repr(t.tolist())
    if t.dim() == 0:
        body = body.strip("[]") or body
    return f"torch.tensor({body}, dtype={dtype}" + (", requires_grad=True)" if t.requires_grad else ")")


def _code_value(v, defs: dict, hint: str) -> str:
    """v as Python source; a tensor becomes a variable in `defs` ({name: its definition}), reused when
    an identical tensor was already defined under that name."""
    if isinstance(v, torch.Tensor):
        base = re.sub(r"\W", "_", hint) if hint else "t"
        base = base if base.isidentifier() else f"t_{base}"
        text, name = _torch_literal(v), base
        while name in defs and defs[name] != text:
            name += "_"
        defs[name] = text
        return name
    if isinstance(v, (list, tuple)) and not hasattr(v, "_fields"):
        items = [_code_value(x, defs, f"{hint}{i}") for i, x in enumerate(v)]
        return ("[" + ", ".join(items) + "]") if isinstance(v, list) else ("(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")")
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k!r}: {_code_value(x, defs, str(k))}" for k, x in v.items()) + "}"
    if isinstance(v, torch.nn.Module):
        defs[hint] = f"...  # a {type(v).__name__} the check built from the drawn values (see the example below)"
        return hint
    if isinstance(v, np.ndarray):
        return _code_value(torch.from_numpy(np.array(v)), defs, hint)
    return repr(v)


def format_calls(calls: list, limit: int = 4) -> str:
    """The impl's calls in the failing example as torch code to paste into a shell:

        import torch
        x = torch.tensor([89.0], dtype=torch.float32)
        run_softmax(x, dim=0)
    """
    if not calls:
        return ""
    lines = ["import torch"]
    if len(calls) > limit:
        lines.append(f"# ... {len(calls) - limit} earlier call(s) in this example not shown")
    defs: dict = {}
    for name, params, args, kwargs in calls[-limit:]:
        params = (list(params) + [f"arg{i}" for i in range(len(params), len(args))])[:len(args)]
        before = dict(defs)
        parts = [_code_value(a, defs, p) for a, p in zip(args, params)]
        parts += [f"{k}={_code_value(v, defs, k)}" for k, v in kwargs.items()]
        lines += [f"{k} = {d}" for k, d in defs.items() if before.get(k) != d]
        lines.append(f"{name}({', '.join(parts)})")
    return "\n".join(lines)
