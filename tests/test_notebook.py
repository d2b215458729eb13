"""`minift notebook NN` (minift/notebook.py): every lesson becomes a valid nbformat 4 notebook whose
markdown is the README cut at its headings and whose code cells, run in order, are the walkthrough."""
import base64
import json
import re
from pathlib import Path

import pytest

from minift import cli, notebook

ROOT = Path(__file__).resolve().parent.parent
LESSONS = sorted(d for d in (ROOT / "lessons").glob("[0-9][0-9]_*") if (d / "walkthrough.py").is_file())
NOTEBOOKS = {d.name: notebook.build(d) for d in LESSONS}


def test_every_lesson_has_a_notebook():
    assert len(NOTEBOOKS) >= 23 and "05_lora" in NOTEBOOKS


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_the_notebook_has_the_keys_and_cells_of_nbformat_4(name):
    nb = json.loads(json.dumps(NOTEBOOKS[name]))                       # what the file holds: plain JSON
    assert nb["nbformat"] == 4 and isinstance(nb["nbformat_minor"], int)
    assert nb["metadata"]["kernelspec"]["name"] and nb["metadata"]["language_info"]["name"] == "python"
    ids = [c["id"] for c in nb["cells"]]
    if nb["nbformat_minor"] >= 5:
        assert len(set(ids)) == len(ids) and all(re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", i) for i in ids)
    for c in nb["cells"]:
        assert c["cell_type"] in ("markdown", "code") and c["metadata"] == {}
        assert isinstance(c["source"], list) and all(isinstance(x, str) for x in c["source"])
        assert all(x.endswith("\n") for x in c["source"][:-1]) and "".join(c["source"]).strip()
        if c["cell_type"] == "code":
            assert c["execution_count"] is None and c["outputs"] == []
    kinds = [c["cell_type"] for c in nb["cells"]]
    assert kinds.count("code") >= 3 and kinds.index("code") > kinds.index("markdown")    # README first, then code


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_nbformat_validates_the_notebook(name):
    nbformat = pytest.importorskip("nbformat")
    # nbformat's own schema check: it raises ValidationError on a notebook that breaks the format
    nbformat.validate(nbformat.reads(json.dumps(NOTEBOOKS[name]), as_version=4))


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_the_code_cells_are_the_walkthrough_and_compile(name):
    code = [("".join(c["source"])) for c in NOTEBOOKS[name]["cells"] if c["cell_type"] == "code"]
    compile("\n\n".join(code), f"{name}.ipynb", "exec")
    assert f'"lessons" / "{name}" / "walkthrough.py"' in code[0]                # the setup cell
    src = (ROOT / "lessons" / name / "walkthrough.py").read_text()
    stmts = lambda text: [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert stmts("\n".join(code[1:])) == stmts(src.replace('"""', '__doc__ = """', 1)), \
        "the cells, in order, hold every line of the walkthrough"


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_the_markdown_is_the_readme_cut_at_its_headings(name):
    md = ["".join(c["source"]) for c in NOTEBOOKS[name]["cells"] if c["cell_type"] == "markdown"]
    readme = (ROOT / "lessons" / name / "README.md").read_text()
    fenced, headings = False, []
    for line in readme.splitlines():
        fenced ^= line.lstrip().startswith(("```", "~~~"))
        if not fenced and re.match(r"#{1,6} ", line):
            headings.append(line)
    assert [m.splitlines()[0] for m in md if m.startswith("#")][:len(headings)] == headings
    assert all(h in "".join(md) for h in headings)


def test_a_hash_line_in_a_fenced_block_is_not_a_heading(tmp_path):
    cells = notebook.markdown_cells("# Title\n\ntext\n\n```bash\n# a comment\nls\n```\n\n## Next\nmore\n", tmp_path)
    assert ["".join(c["source"]).splitlines()[0] for c in cells] == ["# Title", "## Next"]


def test_figures_travel_as_attachments(tmp_path):
    png = b"\x89PNG\r\n\x1a\nnot really"
    (tmp_path / "fig.png").write_bytes(png)
    cells = notebook.markdown_cells("## Seen\n\n![the curve](fig.png)\n\n![gone](missing.png)\n", tmp_path)
    (cell,) = cells
    assert "![the curve](attachment:fig.png)" in cell["source"] and "![gone](missing.png)" in cell["source"]
    assert base64.b64decode(cell["attachments"]["fig.png"]["image/png"]) == png


def test_code_is_cut_between_statements_only():
    src = ('"""Doc."""\nX = 1\n\n# ' + "=" * 20 + '\nheader("1")\ny = (1,\n# ' + "=" * 20 +
           '\n     2)\n\n# the helper\ndef f():\n    return 1\n\n\nprint(f())\n')
    cells = notebook.code_cells(src)
    assert cells[0] == '__doc__ = """Doc."""'
    assert cells[1:] == ["X = 1", 'header("1")\ny = (1,\n# ' + "=" * 20 + "\n     2)",
                         "# the helper\ndef f():\n    return 1", "print(f())"]


def test_the_cli_writes_the_notebook(tmp_path, capsys):
    assert cli.main(["notebook", "00", "--out", str(tmp_path / "n.ipynb")]) == 0
    nb = json.loads((tmp_path / "n.ipynb").read_text())
    assert nb == json.loads(json.dumps(NOTEBOOKS["00_transformer"]))
    assert cli.main(["notebook", "0", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "00_transformer.ipynb").is_file() and "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["notebook", "99", "--out", str(tmp_path)])
