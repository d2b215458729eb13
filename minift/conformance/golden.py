"""Golden vectors: fixed inputs and minift's outputs for every checked run_* function, in files.

The property checks (lesson*.py) need Python: they call an implementation's run_* functions. Golden
vectors do not. They are the inputs the checks drew (derandomized, a few per check) and what
minift's reference returned, stored as

    DIR/index.json            {"format": 1, "cases": [{"id", "adapter", "check", "args", "kwargs",
                               "output", "atol", "rtol"}, ...],
                               "unrecorded": {"run_train": "its inputs include a GPT", ...}}
    DIR/tensors.safetensors   every tensor the index refers to, by key

A value in the index is encoded as one of
    {"tensor": KEY}                       a tensor stored under KEY (dtype and shape in the file)
    {"value": 3.5} / {"value": "mean"}    a JSON number, bool or string
    {"value": "inf", "float": true}       a float JSON cannot write: "inf", "-inf" or "nan"
    {"none": true}
    {"list": [...]} / {"tuple": [...]} / {"dict": {"name": ..., ...}}   nesting of the above

so an implementation in any language reads index.json and tensors.safetensors, calls its own
version of each case's function ("adapter": its run_* name) on "args"/"kwargs", and writes its
outputs in the same layout: its own index.json {"format": 1, "cases": [...]}, where each case needs
only its "id" and its "output" (or {"error": "why"} for a call that failed; a case left out, or
without "output", counts as missing), and its own tensors.safetensors. Then

    minift verify --golden DIR            compares DIR's outputs with minift's, case by case:
                                          |got - expected| <= atol + rtol |expected| for floats,
                                          integers and booleans exactly; tensors' dtypes, shapes
                                          and the nesting exactly (a float32 output written as
                                          float64, or uint8 codes as int64, is a mismatch)

`minift golden` regenerates data/golden/ from the reference; `minift golden --impl FILE --out DIR`
runs a Python implementation on the golden inputs and writes DIR in the layout above (the way
to produce DIR from Python, and how the tests check that a wrong implementation is caught; a
function FILE does not define is left without outputs, so its cases count as missing).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import settings

from . import reference
from .harness import CHECKS, run_check, select
from .runner import load_impl

FORMAT = 1
GOLDEN_DIR = Path(__file__).resolve().parents[2] / "data" / "golden"
PER_CHECK = 3                       # cases recorded per (check, run_* function): its first calls,
VARIED = 2                          # and the most varied of its next ones
CANDIDATES = 12                     # calls looked at per (check, function): the first 3 and the next 9
ATOL, RTOL = 1e-5, 1e-4             # float32 outputs; integer and bool outputs must match exactly
TOLERANCES = {                      # functions whose outputs go through long float32 reductions
    "run_gpt_block": (1e-4, 1e-3), "run_quant_lora_matmul": (1e-4, 1e-3),
}


SEEDED = {"run_random_mask", "run_sample_mixture"}      # their outputs are draws from torch's seeded streams
DRAWN = ("its output is a draw from torch's random number streams, which no other implementation (nor every torch "
         "version) reproduces")


class Unsupported(TypeError):
    """A value golden files cannot hold (a module, a function, a config object): the case is skipped."""


# ---- encoding values -------------------------------------------------------------------------

def encode(value, key: str, tensors: dict):
    """A Python value as index JSON; tensors go into `tensors` under keys derived from `key`."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        if t.is_complex() or t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            raise Unsupported(f"tensor dtype {t.dtype}")
        tensors[key] = t.clone()
        return {"tensor": key}
    if isinstance(value, np.ndarray):
        return encode(torch.from_numpy(np.ascontiguousarray(value)), key, tensors)
    if value is None:
        return {"none": True}
    if isinstance(value, (bool, int, float, str)) and not isinstance(value, np.generic):
        if isinstance(value, float) and not np.isfinite(value):
            return {"value": repr(value), "float": True}
        return {"value": value}
    if isinstance(value, np.generic):
        return encode(value.item(), key, tensors)
    if isinstance(value, (list, tuple)):
        kind = "list" if isinstance(value, list) else "tuple"
        return {kind: [encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": {k: encode(v, f"{key}.{k}", tensors) for k, v in value.items()}}
    raise Unsupported(f"a {type(value).__name__}")


def decode(obj, tensors: dict):
    """The inverse of `encode` (tensors looked up in `tensors`); ValueError for anything else."""
    if not isinstance(obj, dict):
        raise ValueError(f"golden file: a value must be a JSON object such as {{\"value\": 3}}, got {json.dumps(obj)[:80]}")
    kinds = {"tensor": str, "list": list, "tuple": list, "dict": dict}
    for kind, want in kinds.items():
        if kind in obj and not isinstance(obj[kind], want):
            raise ValueError(f"golden file: {{\"{kind}\": ...}} holds a {type(obj[kind]).__name__}, expected a "
                             f"{want.__name__}: {json.dumps(obj)[:80]}")
    if "tensor" in obj:
        if obj["tensor"] not in tensors:
            raise ValueError(f"golden file refers to tensor {obj['tensor']!r}, which tensors.safetensors lacks")
        return tensors[obj["tensor"]].clone()
    if "none" in obj:
        return None
    if "value" in obj:
        return float(obj["value"]) if obj.get("float") else obj["value"]
    if "list" in obj:
        return [decode(v, tensors) for v in obj["list"]]
    if "tuple" in obj:
        return tuple(decode(v, tensors) for v in obj["tuple"])
    if "dict" in obj:
        return {k: decode(v, tensors) for k, v in obj["dict"].items()}
    raise ValueError(f"golden file: cannot decode {json.dumps(obj)[:80]}")


# ---- recording the reference -----------------------------------------------------------------

class _Recorder:
    """Stands in for an implementation: forwards run_* calls to `impl` and keeps the first CANDIDATES
    calls of each run_* function per check whose arguments and output can be stored; `chosen()`
    keeps PER_CHECK + VARIED of them."""

    def __init__(self, impl):
        self._impl, self.cases, self._tensors, self.check = impl, [], {}, ""
        self._count: dict = {}
        self.unsupported: dict = {}          # run_* name -> why a call of it could not be stored

    def __getattr__(self, name):
        fn = getattr(self._impl, name)
        if not name.startswith("run_") or not callable(fn):
            return fn

        def call(*args, **kwargs):
            k = (self.check, name)
            case, local = None, {}
            if name in SEEDED:
                self.unsupported.setdefault(name, DRAWN)
            elif self._count.get(k, 0) < CANDIDATES:
                cid = f"{self.check}.{name}.{self._count.get(k, 0)}"
                try:                                              # the inputs before the call can touch them
                    case = {"id": cid, "adapter": name, "check": self.check,
                            "args": encode(list(args), f"{cid}.args", local),
                            "kwargs": encode(dict(kwargs), f"{cid}.kwargs", local)}
                except Unsupported as e:
                    case = None
                    self.unsupported.setdefault(name, f"its inputs include {e}")
            out = fn(*args, **kwargs)
            if case is not None:
                try:
                    case["output"] = encode(out, f"{case['id']}.output", local)
                except Unsupported as e:
                    self.unsupported.setdefault(name, f"its output includes {e}")
                    return out
                case["atol"], case["rtol"] = TOLERANCES.get(name, (ATOL, RTOL))
                case["_variety"] = _variety(list(args) + list(kwargs.values()))
                self.cases.append(case)
                self._tensors.update(local)
                self._count[k] = self._count.get(k, 0) + 1
            return out
        return call

    def chosen(self) -> tuple[list, dict]:
        """Per (check, function): the first PER_CHECK calls (hypothesis starts with the simplest inputs
        and the edges: zeros, one element, the explicit examples), then the VARIED most varied of the
        others (`_variety`), in call order, with ids numbered 0.. again; and their tensors."""
        groups: dict = {}
        for c in self.cases:
            groups.setdefault((c["check"], c["adapter"]), []).append(c)
        keep = set()
        for cs in groups.values():
            rest = sorted(range(PER_CHECK, len(cs)), key=lambda i: (-cs[i]["_variety"], i))[:VARIED]
            keep |= {id(cs[i]) for i in [*range(min(PER_CHECK, len(cs))), *rest]}
        cases, tensors, renumber = [], {}, {}
        for c in self.cases:
            if id(c) not in keep:
                continue
            n = renumber.setdefault((c["check"], c["adapter"]), 0)
            renumber[(c["check"], c["adapter"])] += 1
            old, new = c["id"], f"{c['check']}.{c['adapter']}.{n}"
            c = {k: v for k, v in c.items() if k != "_variety"} | {"id": new}
            c = json.loads(json.dumps(c).replace(f'"{old}.', f'"{new}.'))       # its tensor keys follow its id
            tensors |= {new + k[len(old):]: v for k, v in self._tensors.items() if k.startswith(old + ".")}
            cases.append(c)
        return cases, tensors


def _variety(values) -> int:
    """How much a call's inputs hold: distinct values over its tensors plus its distinct numbers, so
    that golden cases are not all zeros and rank 1 (the simplest examples come first)."""
    seen: set = set()
    count = 0
    for v in values:
        if isinstance(v, torch.Tensor) and v.numel():
            count += int(torch.unique(v.detach().reshape(-1).float()).numel())
        elif isinstance(v, (list, tuple)):
            count += _variety(list(v))
        elif isinstance(v, dict):
            count += _variety(list(v.values()))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and v not in seen:
            seen.add(v)
            count += 1 + (abs(v) not in (0, 1))
    return count


def _write(out_dir: Path, cases: list, tensors: dict, unrecorded: dict | None = None) -> None:
    """index.json + tensors.safetensors, written to a temporary folder and moved into place."""
    from safetensors.torch import save_file
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".golden-", dir=out_dir.parent))
    try:
        save_file(tensors, str(tmp / "tensors.safetensors"))
        index = {"format": FORMAT, "cases": cases} | ({"unrecorded": unrecorded} if unrecorded else {})
        (tmp / "index.json").write_text(json.dumps(index, indent=1) + "\n")
        for f in tmp.iterdir():
            f.chmod(0o644)
        tmp.chmod(0o755)                                         # mkdtemp makes it private
        if out_dir.exists():
            old = out_dir.with_name(out_dir.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def _few_examples():
    """Checks run derandomized with a handful of examples (the same inputs on every machine)."""
    settings.register_profile("minift-golden", max_examples=CANDIDATES + 1, derandomize=True, deadline=None,
                              database=None, print_blob=False)
    settings.register_profile("minift-golden-before", settings.default)    # to put back afterwards
    settings.load_profile("minift-golden")
    try:
        yield
    finally:
        settings.load_profile("minift-golden-before")


def generate(out_dir=GOLDEN_DIR, only=None) -> dict:
    """Run the selected checks against minift's reference, record the cases, write out_dir.
    With `only` and an existing golden folder in out_dir, the selected checks' cases replace theirs
    and every other check's cases are kept as they are. Returns {"cases": n (written), "adapters": n
    (run_* functions recorded), "skipped": [selected functions never recorded]}. A function whose every
    call takes or returns what the files cannot hold (a model, an optimizer) is listed in index.json's
    "unrecorded", with the reason."""
    names = select(only)
    rec = _Recorder(reference)
    torch.manual_seed(0)
    with _few_examples():
        for name in names:
            rec.check = name
            res = run_check(CHECKS[name], rec)
            if not res.passed:
                raise RuntimeError(f"minift's reference fails its own check {name}: {res.error}")
    rec.cases, rec._tensors = rec.chosen()
    cases, tensors, unrecorded = rec.cases, rec._tensors, rec.unsupported
    if only is not None and (Path(out_dir) / "index.json").is_file():
        cases, tensors, unrecorded = _merged(Path(out_dir), set(names), rec)
    used = {c["adapter"] for c in cases}
    _write(Path(out_dir), cases, tensors, {n: why for n, why in sorted(unrecorded.items()) if n not in used})
    recorded, wanted = {c["adapter"] for c in rec.cases}, {CHECKS[n].adapter for n in names}
    return {"cases": len(cases), "adapters": len(used), "skipped": sorted(wanted - recorded)}


def _merged(golden_dir: Path, replaced: set, rec: "_Recorder") -> tuple[list, dict, dict]:
    """The folder's cases with those of the `replaced` checks swapped for the new recording, in the
    order of CHECKS (as a whole regeneration writes them), their tensors, and "unrecorded"."""
    old, old_tensors = load(golden_dir)
    kept = [c for c in old if c["check"] not in replaced]
    ids = {c["id"] for c in kept}                             # a case's tensors are keyed "{id}.args...", "{id}.output"
    tensors = {k: v for k, v in old_tensors.items() if ".".join(k.split(".")[:3]) in ids} | rec._tensors
    order = {name: i for i, name in enumerate(CHECKS)}
    cases = sorted(kept + rec.cases, key=lambda c: order.get(c["check"], len(order)))    # stable: calls keep their order
    unrecorded = json.loads((golden_dir / "index.json").read_text()).get("unrecorded", {}) | rec.unsupported
    return cases, tensors, unrecorded


def load(golden_dir=GOLDEN_DIR) -> tuple[list, dict]:
    """(cases, tensors) of a golden folder; ValueError naming what is missing or malformed."""
    from safetensors.torch import load_file
    d = Path(golden_dir)
    idx, ten = d / "index.json", d / "tensors.safetensors"
    for f in (idx, ten):
        if not f.is_file():
            raise ValueError(f"golden folder {d}: no {f.name} (expected index.json and tensors.safetensors)")
    try:
        meta = json.loads(idx.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{idx} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("cases"), list):
        raise ValueError(f"{idx}: expected {{'format': {FORMAT}, 'cases': [...]}}")
    try:
        tensors = load_file(str(ten))
    except Exception as e:                                  # safetensors' own error type: a cut or foreign file
        raise ValueError(f"{ten} is not a readable safetensors file ({type(e).__name__}: {e})") from None
    return meta["cases"], tensors


def _selected(cases: list, only) -> list:
    """The cases of the checks `only` selects (harness.select's names), or all of them for None."""
    if only is None:
        return cases
    names = set(select(only))
    return [c for c in cases if c.get("check") in names]


def run_impl(impl, out_dir, golden_dir=GOLDEN_DIR, only=None) -> dict:
    """Call `impl` (a module or a path to a .py file with run_* functions) on every golden input (of
    the checks `only` selects) and write its outputs to out_dir in the golden layout. A case that
    raises is written with {"error": "..."} as its output; one whose function impl lacks, without an
    output (missing). Returns {"cases": n written, "missing": [functions impl lacks], "missing_cases": n
    of the cases without an output}."""
    if isinstance(impl, (str, os.PathLike)):
        impl = load_impl(impl)
    cases, tensors = load(golden_dir)
    cases = _selected(cases, only)
    out_cases, out_tensors, missing = [], {}, []
    for c in cases:
        fn = getattr(impl, c["adapter"], None)
        new = {k: v for k, v in c.items() if k != "output"}
        if not callable(fn):
            missing += [c["adapter"]] * (c["adapter"] not in missing)
            out_cases.append(new)
            continue
        try:
            y = fn(*decode(c["args"], tensors), **decode(c["kwargs"], tensors))
            local: dict = {}
            new["output"] = encode(y, f"{c['id']}.output", local)
            out_tensors.update(local)
        except Exception as e:                                       # noqa: BLE001 - reported per case
            new["output"] = {"error": f"{type(e).__name__}: {e}"[:300]}
        out_cases.append(new)
    _write(Path(out_dir), out_cases, out_tensors)
    return {"cases": len(out_cases), "missing": missing,
            "missing_cases": sum("output" not in c for c in out_cases)}


# ---- comparing -------------------------------------------------------------------------------

def compare(expected, got, atol: float, rtol: float, where: str = "output") -> str:
    """'' when `got` matches `expected` (decoded values), else what differs first."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"{where}: expected a tensor, got {type(got).__name__}"
        if tuple(got.shape) != tuple(expected.shape):
            return f"{where}: shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
        if got.dtype != expected.dtype:                             # values are never compared after a cast
            g, e = (str(t.dtype).removeprefix("torch.") for t in (got, expected))
            return f"{where}: dtype {g}, expected {e}"
        if expected.dtype.is_floating_point:
            e, g = expected.double(), got.double()
            bad = ~((g - e).abs() <= atol + rtol * e.abs()) & ~(g == e) & ~(torch.isnan(e) & torch.isnan(g))   # inf == inf
            if bool(bad.any()):
                i = int(torch.nonzero(bad.flatten())[0])
                return (f"{where}: {int(bad.sum())} of {bad.numel()} values off; first at flat index {i}: "
                        f"got {g.flatten()[i].item():.7g}, expected {e.flatten()[i].item():.7g} "
                        f"(atol {atol:g}, rtol {rtol:g})")
            return ""
        if not torch.equal(got, expected):
            i = int(torch.nonzero((got != expected).flatten())[0])
            return (f"{where}: {int((got != expected).sum())} of {got.numel()} integer values differ; first at flat "
                    f"index {i}: got {got.flatten()[i].item()}, expected {expected.flatten()[i].item()}")
        return ""
    if isinstance(expected, (list, tuple)):
        if not isinstance(got, (list, tuple)) or len(got) != len(expected):
            return f"{where}: expected a sequence of {len(expected)}, got {type(got).__name__}" + (
                f" of {len(got)}" if isinstance(got, (list, tuple)) else "")
        for i, (e, g) in enumerate(zip(expected, got)):
            msg = compare(e, g, atol, rtol, f"{where}[{i}]")
            if msg:
                return msg
        return ""
    if isinstance(expected, dict):
        if not isinstance(got, dict) or set(got) != set(expected):
            return f"{where}: expected keys {sorted(expected)}, got {sorted(got) if isinstance(got, dict) else type(got).__name__}"
        for k in expected:
            msg = compare(expected[k], got[k], atol, rtol, f"{where}[{k!r}]")
            if msg:
                return msg
        return ""
    if isinstance(expected, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        ok = got == expected or abs(got - expected) <= atol + rtol * abs(expected) or (
            np.isnan(expected) and np.isnan(got))
        return "" if ok else f"{where}: got {got!r}, expected {expected!r} (atol {atol:g}, rtol {rtol:g})"
    if isinstance(expected, bool) != isinstance(got, bool):
        return f"{where}: got {got!r}, expected {expected!r} (a boolean and a number)"
    return "" if got == expected else f"{where}: got {got!r}, expected {expected!r}"


def verify(candidate_dir, golden_dir=GOLDEN_DIR, only=None) -> list[dict]:
    """Compare a candidate folder's outputs with the golden ones (the cases of the checks `only`
    selects, default all): one row per case, {"id", "adapter", "status": PASS | FAIL | MISSING, "error"}."""
    ref_cases, ref_t = load(golden_dir)
    ref_cases = _selected(ref_cases, only)
    got_cases, got_t = load(candidate_dir)
    got = {c["id"]: c for c in got_cases if isinstance(c, dict) and isinstance(c.get("id"), str)}
    rows = []
    for c in ref_cases:
        row = {"id": c["id"], "adapter": c["adapter"], "status": "PASS", "error": ""}
        g = got.get(c["id"])
        if g is None or "output" not in g:
            row["status"], row["error"] = "MISSING", "no output for this case"
        elif isinstance(g["output"], dict) and "error" in g["output"]:
            row["status"], row["error"] = "FAIL", str(g["output"]["error"])
        else:
            try:
                msg = compare(decode(c["output"], ref_t), decode(g["output"], got_t), c["atol"], c["rtol"])
            except ValueError as e:
                msg = str(e)
            if msg:
                row["status"], row["error"] = "FAIL", msg
        rows.append(row)
    return rows
