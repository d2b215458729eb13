"""The shape of the package: imports flow one way with no cycles, methods stay independent, files stay
readable. Imports are read from the source (every `import`, also inside functions), not executed."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "minift"

# Lowest first. A module may import from its own layer or a lower one; never from a higher one.
LAYERS = {
    "minift.validate": 0, "minift.report": 0, "minift.distributed": 0,
    # the model, its data and the one training loop every method uses
    "minift.model": 1, "minift.checkpoint": 1, "minift.tokenizer": 1, "minift.world": 1, "minift.tasks": 1,
    "minift.heads": 1, "minift.train": 1, "minift.vision": 1,
    # the methods, one file each
    "minift.peft": 2, "minift.quant": 2, "minift.align": 2,
    # what is built on the methods: accounting, the course's experiments, the conformance suite
    "minift.memory": 3, "minift.pretrain": 3, "minift.scaling": 3, "minift.bench": 3, "minift.bench_gpu": 3, "minift.course": 3,
    "minift.measure": 3, "minift.method_bench": 3,
    "minift.evals": 3, "minift.sentiment": 3, "minift.conformance": 3, "minift.figures": 3, "minift.notebook": 3,
    "minift.taxonomy": 3,
    "minift.cli": 4,
    "minift": 4,                                  # the package's __init__ re-exports the basics
}
# What a method may import of the other methods: their package's shared code, and the compositions
# the course teaches.
SHARED = {"minift.peft.common", "minift.align.logps", "minift.align.preference"}
COMPOSES = {
    "minift.quant.qlora": {"minift.peft.lora", "minift.quant.int8", "minift.quant.nf4", "minift.quant.ops"},  # QLoRA
    "minift.quant.ops": {"minift.quant.int8", "minift.quant.nf4"},   # the kernels of both formats
    "minift.peft.io": {"*"},                                  # the adapter file formats name every method
    "minift.align.multitask": {"minift.peft.lora", "minift.peft.io"},  # one LoRA adapter per task
    "minift.align.onpolicy": {"minift.align.ppo"},            # samples answers with PPO's sampler
}


def _modules() -> dict:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return out


MODULES = _modules()


def _owner(name: str) -> str:
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _imports(mod: str) -> set:
    path, is_pkg = MODULES[mod]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "minift"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".")[: len(mod.split(".")) - (node.level - (1 if is_pkg else 0))]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "minift":
                continue
            for a in node.names:                 # `from minift.peft import lora` imports the module
                found.add(f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target)
    return {_owner(t) for t in found} - {mod}


GRAPH = {m: _imports(m) for m in MODULES}


def _layer(mod: str) -> int:
    name = mod
    while name not in LAYERS:
        assert "." in name, f"{mod} is in no layer of tests/test_structure.py: place it"
        name = name.rsplit(".", 1)[0]
    return LAYERS[name]


def _method(mod: str):
    parts = mod.split(".")
    return mod if len(parts) == 3 and parts[1] in ("peft", "quant", "align") else None


def test_the_import_graph_is_read():
    assert {"minift.peft.lora", "minift.model"} <= set(GRAPH)
    assert "minift.model" in GRAPH["minift.peft.prefix"]            # a known import, so the parser works


def test_imports_flow_one_way():
    upward = [f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
              for m, ts in GRAPH.items() for t in ts if _layer(t) > _layer(m)]
    assert not upward, "imports must flow from the model up to the cli:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):                                # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    # A package's __init__ importing its own submodules is not a cycle of its own making.
    cycles = [c for c in cycles if not all(x.startswith(c[0] + ".") or x == c[0] for x in c)]
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_a_method_never_imports_another_method():
    bad = []
    for m, ts in GRAPH.items():
        if _method(m) is None:
            continue
        for t in ts:
            if _method(t) is None or t in SHARED or t == m:
                continue
            allowed = COMPOSES.get(m, set())
            if "*" not in allowed and t not in allowed:
                bad.append(f"{m} imports {t}")
    assert not bad, "methods are independent (tests/test_structure.py lists the compositions):\n" + "\n".join(bad)


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG.parent)))
def test_no_library_file_is_over_500_lines(path):
    n = len(path.read_text().splitlines())
    assert n <= 500, f"{path.relative_to(PKG.parent)} has {n} lines: split it along its sections"
