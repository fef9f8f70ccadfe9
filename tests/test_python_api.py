"""docs/python-api.md runs: its code cells, in order, as a notebook kernel would run them.

The cells are executed in one fresh Python process started with `python -c` in a temporary
directory, in the namespace of its `__main__` (so a class defined in a cell is `__main__:Name`,
and `''`, the working directory, is on sys.path, as in a Jupyter kernel), and a cell starting
with `%%writefile NAME` writes NAME as Jupyter's magic does. The only change the test makes: after
the cell that defines `overrides`, it appends `sample.engine=tests.fake_engine:FakeEngine`, so the
run samples with the deterministic test engine instead of vLLM. Cells preceded by an HTML comment
`<!-- not tested: why -->` are not run (they convert or train the real model); the names they use
are checked to exist.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import json
import os
import re
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from tests.conftest import FAKE, ROOT

DOC = ROOT / "docs" / "python-api.md"
FENCE = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)
NOT_TESTED = re.compile(r"<!--\s*not tested\b.*?-->\s*$", re.DOTALL)
TEST_CELL = f"overrides.append({'sample.engine=' + FAKE!r})   # the test samples with its deterministic engine"

# Runs the cells (a JSON list of sources, argv[1]) in __main__'s namespace; writes the names
# defined at the end to argv[2]. A failing cell is printed with its traceback.
RUNNER = r"""
import json, sys, traceback, __main__
cells, names_out = json.load(open(sys.argv[1])), sys.argv[2]
for i, source in enumerate(cells):
    print(f"=== cell {i}", flush=True)
    try:
        if source.startswith("%%writefile "):
            first, _, body = source.partition("\n")
            with open(first.split(None, 1)[1].strip(), "w") as f:
                f.write(body)
        else:
            exec(compile(source, f"<cell {i}>", "exec"), vars(__main__))
    except BaseException:
        print(f"cell {i} failed:\n{source}", flush=True)
        traceback.print_exc()
        sys.exit(1)
with open(names_out, "w") as f:
    json.dump(sorted(vars(__main__)), f)
"""


def doc_cells() -> list[tuple[str, bool]]:
    """(source, tested) of every ```python block of the doc, in order."""
    text = DOC.read_text()
    cells = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n")
        tested = not NOT_TESTED.search(before.rsplit("\n", 1)[-1])
        cells.append((m.group(1), tested))
    return cells


def cells_to_run() -> list[str]:
    run, hooked = [], False
    for source, tested in doc_cells():
        if not tested:
            continue
        run.append(source)
        if not hooked and re.search(r"^overrides = \[", source, re.MULTILINE):
            run.append(TEST_CELL)
            hooked = True
    assert hooked, "no cell of docs/python-api.md defines `overrides = [...]`: the test cannot swap the engine"
    return run


@pytest.fixture(scope="module")
def notebook(tmp_path_factory):
    """Run the doc's cells once; (working directory, output, names defined at the end)."""
    work = tmp_path_factory.mktemp("notebook")
    (work / "cells.json").write_text(json.dumps(cells_to_run()))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_DATASETS_CACHE": str(work / ".hf-datasets"),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(work / "cells.json"), str(work / "names.json")],
                          cwd=work, env=env, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"a cell of docs/python-api.md failed:\n{output[-6000:]}"
    return work, output, set(json.loads((work / "names.json").read_text()))


def test_every_cell_runs_and_the_run_is_complete(notebook):
    work, output, _ = notebook
    run = work / "runs" / "notebook" / "iter-1"
    for stage_dir in ("problems", "samples", "verified", "rationalized", "selected", "export"):
        assert (run / stage_dir / "_SUCCESS").exists(), stage_dir
    assert (work / "runs" / "notebook" / "report.md").exists()
    assert "funnel" in output and "configs: sft" in output
    assert "accuracy" in output and "precision" in output  # verifiers check's report


def test_the_plugged_verifier_judged_the_run(notebook):
    work, _, _ = notebook
    assert (work / "my_verifiers.py").exists()
    verified = work / "runs" / "notebook" / "iter-1" / "verified"
    rows = pq.read_table(sorted(verified.glob("part-*.parquet"))).to_pylist()
    assert rows and {r["verifier"] for r in rows} == {"answer_line"}
    for r in rows:  # the test engine ends with "The answer is G." when right, "The answer is G1." when wrong
        right = r["text"].endswith(f"The answer is {r['gold']}.")
        assert r["status"] == ("correct" if right else "wrong"), r
    exported = pq.read_table(sorted((work / "runs" / "notebook" / "iter-1" / "export").glob("sft-*.parquet")))
    assert exported.num_rows and set(exported["verifier"].to_pylist()) == {"answer_line"}


def test_a_verifier_defined_in_a_cell_fails_in_the_workers_as_documented(notebook):
    _, output, _ = notebook
    assert "__main__:InNotebook" in output
    assert "failed to start in a worker" in output and "has no attribute 'InNotebook'" in output


def test_cells_not_run_use_names_that_exist(notebook):
    """The cells the test skips import what exists and use only names the run defined."""
    _, _, defined = notebook
    skipped = [source for source, tested in doc_cells() if not tested]
    assert skipped
    for source in skipped:
        tree = ast.parse(source)
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"
                    imported.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                imported.update((a.asname or a.name).split(".")[0] for a in node.names)
        assigned = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                assert node.id in defined | imported | assigned or hasattr(builtins, node.id), \
                    f"a cell not run uses {node.id!r}, which no cell defines:\n{source}"
