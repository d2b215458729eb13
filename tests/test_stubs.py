"""The exercise stubs teach without telling: each points to the README section and equation that
explain it, and nothing in a stub file (docstrings, comments, messages) is code that gives the
answer away: no operator or slicing expression copied from minift/, no `@` products, slices, bit
shifts or torch calls written as formulas."""
import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted(p for p in (ROOT / "lessons").iterdir() if (p / "exercise.py").is_file())

MESSAGE = re.compile(r'^(?P<fn>[\w.]+): not written yet; lessons/(?P<dir>\d\d_\w+)/README\.md, '
                     r'"(?P<section>[^"]+)", equation \((?P<eq>\d+\.\d+)\), says what it computes$')

CODE_LIKE = {                                   # what a formula written as code looks like
    "a matrix product written with @": re.compile(r"[\w)\]]\s*@\s*[\w(]"),
    "a slice": re.compile(r"\[(?:[^\]\n]*[\s,])?-?\w*:-?\w*(?::-?\w*)?\s*(?:,[^\]\n]*)?\]"),
    "a bit shift": re.compile(r"<<|>>"),
    "a tensor method or torch call": re.compile(r"\.(float|double|half|to|view|reshape|transpose|unsqueeze|"
                                                r"sum|mean|exp|log|softmax|masked_fill|gather|clamp)\(|torch\.\w+\("),
}


def _stubs(tree: ast.Module):
    """(qualified name, node) of every function whose body raises NotImplementedError."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for sub in node.body:
                if isinstance(sub, ast.FunctionDef):
                    sub.qual = f"{node.name}.{sub.name}"
        if isinstance(node, ast.FunctionDef) and any(
                isinstance(n, ast.Raise) and n.exc is not None and "NotImplementedError" in ast.unparse(n.exc)
                for n in ast.walk(node)):
            yield getattr(node, "qual", node.name), node


def _text_of(source: str, node) -> str:
    """The docstrings, string constants and comments of a function: what a learner reads in a stub."""
    seg = ast.get_source_segment(source, node)
    parts = [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    parts += [t.string for t in tokenize.generate_tokens(io.StringIO(seg).readline) if t.type == tokenize.COMMENT]
    return "\n".join(parts)


def _minift_expressions() -> set[str]:
    """Every product, quotient, call-in-an-operator and slicing expression in minift/, whitespace
    removed, >= 12 chars (a bare sum of two names, `prompt_len + response_len`, is a shape, not an answer)."""
    found = set()
    for path in (ROOT / "minift").rglob("*.py"):
        src = path.read_text()
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.BinOp) or (isinstance(node, ast.Subscript)
                                               and any(isinstance(n, ast.Slice) for n in ast.walk(node.slice))):
                seg = ast.get_source_segment(src, node) or ""
                flat = re.sub(r"\s+", "", seg)
                if len(flat) >= 12 and "\n" not in seg and re.search(r"[@*/%|&(\[]|<<|>>", flat):   # not a bare sum
                    found.add(flat)
    return found


EXPRESSIONS = _minift_expressions()


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda p: p.name)
def test_every_stub_points_to_its_readme_section_and_equation(lesson):
    source = (lesson / "exercise.py").read_text()
    readme = (lesson / "README.md").read_text()
    headings = {m.group(1).strip() for m in re.finditer(r"^#{2,4} (.+)$", readme, re.M)}
    stubs = list(_stubs(ast.parse(source)))
    runs = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name.startswith("run_")]
    assert runs and {n.name for n in runs} <= {q for q, _ in stubs}, "every run_* function is a stub"
    for qual, node in stubs:
        raises = [n for n in ast.walk(node) if isinstance(n, ast.Raise) and "NotImplementedError" in ast.unparse(n.exc)]
        for r in raises:
            args = r.exc.args if isinstance(r.exc, ast.Call) else []
            assert args and isinstance(args[0], ast.Constant), f"{qual}: NotImplementedError needs its message"
            m = MESSAGE.match(args[0].value)
            assert m, f"{qual}: the message must read like {MESSAGE.pattern!r}, got {args[0].value!r}"
            assert m["fn"] == qual and m["dir"] == lesson.name, (qual, m["fn"], m["dir"])
            assert m["section"] in headings, f"{qual}: README has no section {m['section']!r}"
            assert f"({m['eq']})" in readme, f"{qual}: README has no equation ({m['eq']})"
            assert m["eq"].split(".")[0] == str(int(lesson.name[:2])), f"{qual}: equation ({m['eq']}) is not this lesson's"


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda p: p.name)
def test_no_stub_gives_its_answer_away(lesson):
    source = (lesson / "exercise.py").read_text()
    tree = ast.parse(source)
    texts = {qual: _text_of(source, node) for qual, node in _stubs(tree)}
    texts["the module docstring"] = ast.get_docstring(tree) or ""
    flat_file = re.sub(r"\s+", "", "\n".join(texts.values()))
    copied = sorted(e for e in EXPRESSIONS if e in flat_file)
    assert not copied, f"{lesson.name}/exercise.py repeats minift's code: {copied[:5]}"
    for qual, text in texts.items():
        for what, pattern in CODE_LIKE.items():
            hit = pattern.search(text)
            assert not hit, f"{lesson.name}/exercise.py, {qual}: {what} ({hit.group(0)!r}): write the maths, not the code"


def test_the_code_detectors_can_fail():
    """Each detector fires on the kind of line the stubs used to carry."""
    samples = {"a matrix product written with @": ["(W0.float() + scaling * (B.float() @ A.float()))", "softmax(s) @ v"],
               "a slice": ["(codes[0::2] << 4) | codes[1::2]", "x[:, None]", "h[..., :k]", "ids[:w]", "a[1:-1]"],
               "a bit shift": ["hi << 4", "b >> 4"],
               "a tensor method or torch call": ["x.float().exp()", "torch.where(m, a, b)"]}
    for what, texts in samples.items():
        assert all(CODE_LIKE[what].search(t) for t in texts), what
    prose = ["[ block 0: keys (C) | values (C) ]", "W = W0 + s·B·A", "x_t (B, T, C)", "softmax(q·k / √D)",
             "tokens_{b, t+1}", "user@example"]
    assert not [t for t in prose for what, pat in CODE_LIKE.items() if what != "a matrix product written with @" and pat.search(t)]
    assert not CODE_LIKE["a matrix product written with @"].search("W = W0 + s·B·A")
    assert "(W0.float()+scaling*(B.float()@A.float())).to(W0.dtype)" in EXPRESSIONS or \
        any("@" in e for e in EXPRESSIONS)                               # minift's products are collected
