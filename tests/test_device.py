"""Device and dtype follow the inputs (DESIGN.md, "How a method is written"), in three ways:

    static          every torch tensor factory call in minift/ (torch.zeros, arange, randn, tensor ...)
                    names its device, or is moved right after (`torch.randn(..., generator=g).to(x)`), or
                    sits in the allowlist below with its reason. A call without one is made on the
                    default device (the CPU) whatever the model is on: the bug class of
                    "indices should be either on cpu or on the same device".
    dtype (CPU)     every method on a float64 GPT trains with train() and keeps its trainable tensors
                    float64: the CPU proxy for device-following (a tensor built with the default dtype
                    is the same bug as one built on the default device). bf16 autocast trains on the CPU.
    CUDA = CPU      (where there is a GPU) every method trains 3 steps from the same init on cuda and
                    on the cpu, and the losses and trainable tensors agree within float32 rounding.
"""
import ast
import importlib
import math
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from minift.model import GPT, GPTConfig
from minift.peft.common import adapter_state_dict, apply_config
from minift.peft.selective import SelectiveConfig
from minift.quant.nf4 import dequantize_nf4, quantize_nf4
from minift.quant.qlora import QLoRAConfig, merge_and_unload_qlora
from minift.train import TrainConfig, to_device, train
from minift.vision import ViT, ViTConfig, image_items, image_loss, shapes
from strategies import tiny_model
from test_method_contract import METHODS

pytestmark = pytest.mark.core
PACKAGE = Path(__file__).resolve().parents[1] / "minift"

# ---- the static check ---------------------------------------------------------------------------

FACTORIES = {"tensor", "as_tensor", "zeros", "ones", "empty", "full", "arange", "range", "randn", "rand",
             "randint", "randperm", "linspace", "logspace", "eye", "tril_indices", "triu_indices",
             "empty_strided", "normal", "sparse_coo_tensor"}
# (torch.tril / torch.triu are not here: they take a tensor and keep its device.)

# Modules that only ever compute on the CPU, with the reason. Paths relative to the repository.
ALLOW_FILES = {
    "minift/conformance/": "the lesson graders: reference formulas and example data in float64 on the CPU, "
                           "compared with a student's function called on CPU tensors",
    "minift/figures.py": "draws PNGs with matplotlib from CPU numbers",
    "minift/scaling.py": "fits scaling laws to a handful of float64 numbers on the CPU",
}
# Single calls elsewhere, by (file, enclosing function's qualified name): the reason. None is needed so
# far; an entry that no longer matches a call fails the test.
ALLOW: dict = {}


def _kw_with_device(scope: ast.AST) -> set:
    """Names bound in `scope` (a function, or a module's top level) to dict(device=...) or {"device": ...}:
    a `**kw` that carries the device."""
    names = set()
    for node in (ast.walk(scope) if not isinstance(scope, ast.Module) else scope.body):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            v = node.value
            call = isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "dict" \
                and any(k.arg == "device" for k in v.keywords)
            literal = isinstance(v, ast.Dict) and any(isinstance(k, ast.Constant) and k.value == "device" for k in v.keys)
            if call or literal:
                names.add(node.targets[0].id)
    return names


def factory_calls_without_device(src: str) -> list[tuple[int, str, str]]:
    """(line, enclosing qualified name, source) of every torch.<factory>(...) call in `src` that names no
    device: no device= (directly or through a **kw bound to dict(device=...)) and not moved by a .to(...)
    applied to the expression that holds it."""
    tree = ast.parse(src)
    parent = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []

    def scope_of(node):
        names, scope = [], None
        while node in parent:
            node = parent[node]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.append(node.name)
                if scope is None and not isinstance(node, ast.ClassDef):
                    scope = node
        return ".".join(reversed(names)) or "<module>", scope or tree

    def moved(node) -> bool:                  # inside X in X.to(...), within the same expression
        while node in parent and not isinstance(parent[node], ast.stmt):
            p = parent[node]
            if isinstance(p, ast.Attribute) and p.attr == "to" and p.value is node and \
                    isinstance(parent.get(p), ast.Call) and parent[p].func is p:
                return True
            node = p
        return False

    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
                and node.func.attr in FACTORIES):
            continue
        if any(k.arg == "device" for k in node.keywords) or moved(node):
            continue
        qual, scope = scope_of(node)
        splat = {k.value.id for k in node.keywords if k.arg is None and isinstance(k.value, ast.Name)}
        if splat & (_kw_with_device(scope) | _kw_with_device(tree)):
            continue
        found.append((node.lineno, qual, ast.get_source_segment(src, node).splitlines()[0]))
    return found


# The detector's planted example: `good` must pass, `bad` and `Layer` must be flagged, line by line.
PLANTED = '''
import torch
def good(x, g):
    kw = dict(device=x.device, dtype=x.dtype)
    a = torch.zeros(3, device=x.device) + torch.arange(4, **kw)
    b = (torch.randn(3, generator=g, dtype=torch.float64) * 2).to(x)     # drawn on the CPU, moved
    return x.new_zeros(3), torch.zeros_like(x), torch.tril(x), a, b
def bad(x):
    kw = dict(dtype=x.dtype)
    mask = torch.ones(4, 4, dtype=torch.bool).tril()
    return torch.tensor([1.0, 2.0])[x], mask, torch.zeros(2, **kw), torch.arange(3).to(x) + torch.eye(2)
class Layer:
    def __init__(self, n):
        self.code = torch.linspace(-1, 1, n)
'''


def test_the_detector_finds_a_factory_call_without_a_device():
    found = sorted(factory_calls_without_device(PLANTED))
    assert [(line, qual) for line, qual, _ in found] == [(10, "bad"), (11, "bad"), (11, "bad"), (11, "bad"),
                                                          (14, "Layer.__init__")]
    assert {s.split("(")[0] for _, _, s in found} >= {"torch.ones", "torch.tensor", "torch.eye", "torch.linspace"}


def _offenders() -> tuple[list[str], set]:
    bad, used = [], set()
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).as_posix()
        if any(rel.startswith(f) for f in ALLOW_FILES):
            continue
        for line, qual, text in factory_calls_without_device(path.read_text()):
            if (rel, qual) in ALLOW:
                used.add((rel, qual))
            else:
                bad.append(f"{rel}:{line} ({qual}): {text.strip()}")
    return bad, used


def test_every_tensor_factory_call_in_minift_names_its_device():
    bad, used = _offenders()
    assert not bad, ("these calls create a tensor on the default device (the CPU) whatever the model is on; "
                     "pass device= (and dtype=) of the tensors they work with, build them with x.new_*(...) / "
                     "torch.*_like(x), draw on a CPU generator and .to(x) right after, or add the call to "
                     "tests/test_device.py's ALLOW with its reason:\n  " + "\n  ".join(bad))
    assert used == set(ALLOW), f"allowlist entries that match no call any more: {sorted(set(ALLOW) - used)}"


def test_nf4_dequantizes_where_its_state_lives():
    """The code table follows the state's device: checked on the meta device here (a second device every
    CPU build has), where a table built on the CPU fails to index exactly as it does on cuda."""
    w = torch.randn(4, 32, generator=torch.Generator().manual_seed(0), device="cpu")
    st_ = quantize_nf4(w, block_size=16, double_quant=True)
    for name, t in st_.tensors().items():
        setattr(st_, name, t.to("meta"))
    out = dequantize_nf4(st_, torch.float64)
    assert out.device.type == "meta" and out.dtype == torch.float64 and out.shape == w.shape


def test_to_device_moves_every_tensor_and_leaves_the_rest_alone():
    batch = {"idx": torch.ones(2, 3, dtype=torch.long), "text": "hi", "n": 3, "none": None,
             "pair": (torch.zeros(2), [torch.ones(1), "x"])}
    out = to_device(batch, "meta")                                        # a device every CPU build has
    assert out["idx"].device.type == "meta" and out["idx"].dtype == torch.long
    assert out["pair"][0].device.type == "meta" and out["pair"][1][0].device.type == "meta"
    assert isinstance(out["pair"], tuple) and isinstance(out["pair"][1], list)
    assert (out["text"], out["n"], out["none"], out["pair"][1][1]) == ("hi", 3, None, "x")
    assert batch["idx"].device.type == "cpu"                              # the input is not changed


# ---- every method, trained: dtype on the CPU, and CUDA against the CPU -----------------------------

CFG = GPTConfig(vocab_size=24, block_size=12, n_layer=2, n_head=2, n_embd=8)
VIT = ViTConfig(image_size=12, patch_size=4, n_layer=1, n_head=2, n_embd=8)
SELECTIVE = {"full": SelectiveConfig(patterns=["."]), "bitfit": SelectiveConfig(param_types=["bias"])}
ALL = sorted(METHODS) + sorted(SELECTIVE) + ["vit"]


def _lm_data(n=8, T=8):
    """Token sequences with a learnable pattern (each token the previous + 1), CPU tensors."""
    g = torch.Generator().manual_seed(0)
    start = torch.randint(0, CFG.vocab_size, (n, 1), generator=g, device="cpu")
    seq = (start + torch.arange(T + 1, device="cpu")) % CFG.vocab_size
    return [{"idx": s[:-1], "targets": s[1:]} for s in seq]


def _config(method, data):
    """The method's config: one draw from tests/test_method_contract.py's table (None: the ViT)."""
    if method == "vit":
        return None
    return SELECTIVE.get(method) or data.draw(METHODS[method].configs, label="cfg")


def _setup(method, cfg, dtype, device):
    """(model, dataset, loss_fn): the base built on the CPU from seed 0, moved, then the method applied
    there, so every device starts from the same init (methods draw their init on the CPU)."""
    if method == "vit":
        torch.manual_seed(0)
        model = ViT(VIT).to(device=device, dtype=dtype)
        images, labels = shapes(8, image_size=VIT.image_size)
        return model, image_items(images.to(dtype), labels), image_loss
    model = tiny_model(CFG, dtype=dtype).to(device)
    apply_config(model, cfg)
    return model, _lm_data(), None


def _train(model, dataset, loss_fn, steps, **kw):
    cfg = TrainConfig(steps=steps, batch_size=4, lr=kw.pop("lr", 1e-2), warmup_steps=0, progress=False, **kw)
    return train(model, dataset, cfg, **({"loss_fn": loss_fn} if loss_fn else {}))


def _trainable(model) -> dict:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", ALL)
@settings(deadline=None, max_examples=1)
@given(data=st.data())
def test_every_method_trains_in_float64_and_stays_float64(method, data):
    model, dataset, loss_fn = _setup(method, _config(method, data), torch.float64, "cpu")
    hist = _train(model, dataset, loss_fn, steps=2)
    assert len(hist) == 2 and all(math.isfinite(r["loss"]) for r in hist)
    trainable = _trainable(model)
    assert trainable and {n: p.dtype for n, p in trainable.items()} == {n: torch.float64 for n in trainable}
    own = adapter_state_dict(model) if method in METHODS else {}
    assert all(p.dtype == torch.float64 for p in own.values() if p.is_floating_point())


def test_bf16_autocast_trains_on_the_cpu_close_to_float32():
    """bf16 keeps 8 significant bits (relative rounding 2^-8 = 0.4%): over 5 steps on this tiny model
    the losses stay within 2e-2 (relative) of the float32 run's, while the parameters stay float32."""
    def run(autocast):
        torch.manual_seed(0)
        model = GPT(CFG)
        hist = _train(model, _lm_data(), None, steps=5, autocast=autocast)
        return [r["loss"] for r in hist], model
    ref, _ = run(None)
    got, model = run("bf16")
    assert got != ref                                                     # bf16 really ran
    assert all(math.isclose(a, b, rel_tol=2e-2) for a, b in zip(got, ref)), (got, ref)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert got[-1] < got[0]


def test_loss_scaling_changes_nothing_but_the_scale(monkeypatch):
    """The fp16 path's GradScaler, run on the CPU (fp16 autocast itself needs CUDA): the scale S = 2^16
    is a power of two, so S L backpropagated and divided by S gives the same gradients bit for bit (no
    overflow at this size), hence the same SGD steps as the run without scaling. (SGD: a step that
    forgot to unscale would be 2^16 times too long; AdamW would hide it, being scale-invariant.)"""
    loop = importlib.import_module("minift.train")             # the module (minift.train is also the function)
    scalers = []

    def with_scaler(cfg, device):
        scalers.append(torch.amp.GradScaler("cpu"))
        return nullcontext(), scalers[-1]

    def run(scaled):
        torch.manual_seed(0)
        model = GPT(CFG)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with monkeypatch.context() as mp:
            if scaled:
                mp.setattr(loop, "autocast_context", with_scaler)
            hist = train(model, _lm_data(), TrainConfig(steps=3, batch_size=4, lr=0.1, warmup_steps=0,
                                                        progress=False), optimizer=opt)
        return [r["loss"] for r in hist], [p.detach().clone() for p in model.parameters()]
    (loss_a, params_a), (loss_b, params_b) = run(False), run(True)
    assert scalers and scalers[0].get_scale() == 2.0 ** 16               # the scaler was used, no overflow
    assert loss_a == loss_b and all(torch.equal(a, b) for a, b in zip(params_a, params_b))


def test_autocast_is_checked():
    with pytest.raises(ValueError, match="autocast"):
        TrainConfig(autocast="float16")
    with pytest.raises(ValueError, match="bf16"):                         # fp16 on the CPU: use bf16
        _train(GPT(CFG), _lm_data(), None, steps=1, autocast="fp16")


# Float32 on two devices: cuBLAS and the CPU's BLAS sum in different orders, so every matmul differs by a
# few float32 ulps (relative 1e-7 .. 1e-6); three SGD steps carry that forward linearly. SGD, not AdamW:
# Adam divides by sqrt(v), so a gradient entry near 0 whose rounding differs would move by a whole lr on
# one device and not the other. Losses: rtol 1e-4 / atol 1e-5; trainable tensors: rtol 1e-3 / atol 1e-5.
LOSS_TOL, PARAM_TOL = dict(rtol=1e-4, atol=1e-5), dict(rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("method", ALL)
@settings(deadline=None, max_examples=1)
@given(data=st.data())
def test_cuda_trains_like_the_cpu(method, data, cuda_device):
    runs, cfg = {}, _config(method, data)                                # one config, both devices
    for device in ("cpu", cuda_device):
        model, dataset, loss_fn = _setup(method, cfg, torch.float32, device)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        tcfg = TrainConfig(steps=3, batch_size=4, lr=0.1, warmup_steps=0, progress=False)
        hist = train(model, dataset, tcfg, optimizer=opt, **({"loss_fn": loss_fn} if loss_fn else {}))
        assert all(p.device.type == torch.device(device).type for p in model.parameters())
        runs[str(device)] = ([r["loss"] for r in hist], model)
    (loss_cpu, cpu), (loss_gpu, gpu) = runs["cpu"], runs[str(cuda_device)]
    torch.testing.assert_close(torch.tensor(loss_gpu), torch.tensor(loss_cpu), **LOSS_TOL)
    if method == "loftq":                     # SVD factors are unique up to a sign per rank: compare s B A
        from minift.quant.qlora import QLoRALinear
        pairs = [(a.delta_weight(), b.delta_weight()) for a, b in zip(cpu.modules(), gpu.modules())
                 if isinstance(a, QLoRALinear)]
    else:
        t_cpu, t_gpu = _trainable(cpu), _trainable(gpu)
        assert t_cpu.keys() == t_gpu.keys()
        pairs = [(t_cpu[n], t_gpu[n]) for n in t_cpu]
    for a, b in pairs:
        torch.testing.assert_close(b.cpu(), a, **PARAM_TOL)



def test_a_qlora_layer_merges_into_a_float_layer_of_its_own_dtype_and_device(device):
    model = tiny_model(CFG, dtype=torch.float64).to(device)
    apply_config(model, QLoRAConfig(r=2, targets=["mlp.c_fc"], qkv=None, block_size=16))
    merge_and_unload_qlora(model)
    fc = model.transformer.h[0].mlp.c_fc
    assert type(fc) is torch.nn.Linear and fc.weight.dtype == torch.float64 and fc.weight.device.type == device.type


def _function_scoped_fixtures_of_given_tests(items) -> list:
    """(test, fixture) for each @given test and each fixture among its arguments that is function-scoped,
    unless the test's settings suppress HealthCheck.function_scoped_fixture: the pairs hypothesis fails
    at run time ("uses a function-scoped fixture"), which for a GPU-only test happens on a GPU only."""
    found = []
    for item in items:
        fn = getattr(item, "obj", None)
        if not hasattr(fn, "hypothesis"):
            continue
        suppressed = getattr(fn, "_hypothesis_internal_use_settings", settings.default).suppress_health_check
        if HealthCheck.function_scoped_fixture in suppressed:
            continue
        # the fixtures as hypothesis looks them up (without @pytest.mark.parametrize's pseudo-fixtures)
        info = item.session._fixturemanager.getfixtureinfo(node=item, func=item.function, cls=None)
        for name in info.argnames:
            defs = info.name2fixturedefs.get(name)
            if defs and defs[-1].scope == "function":
                found.append((item.nodeid, name))
    return found


def test_no_given_test_takes_a_function_scoped_fixture(request):
    """Hypothesis fails a @given test whose arguments include a function-scoped fixture, but only when
    the test runs; tests that skip without a GPU (cuda_device, the kernels' cuda_ext) would fail on a GPU
    alone. Checked here on every collected test, wherever the suite runs."""
    assert _function_scoped_fixtures_of_given_tests(request.session.items) == []
