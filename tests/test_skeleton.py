"""One skeleton for every shard-mapping stage: a toy stage gets resume, commits and checks for free,
and the layers never import upward."""

import ast
from pathlib import Path

import pyarrow as pa
import pytest

from selfimprove.pipeline.config import load_config
from selfimprove.pipeline.runs import InvariantError, check, stage_dir
from selfimprove.pipeline.skeleton import MappedStage, ShardOutput, run_mapped
from selfimprove.pipeline.store import StageReader, StageWriter, part_name
from tests.conftest import ROOT


class Doubler(MappedStage):
    """A stage that exists only here: each number of the prepared shard, doubled."""

    name, source = "sample", "prepare"
    worked: list[str] = []

    def fingerprint(self) -> dict:
        return {"input": self.input.output_hash, "factor": 2}

    def work(self, names):
        for name in names:
            Doubler.worked.append(name)
            x = self.input.read_shard(name)["x"].to_pylist()
            if self.cfg.run.name == "crash" and name == part_name(1):
                raise RuntimeError("killed mid-stage")
            yield name, ShardOutput(pa.table({"x": [2 * v for v in x]}))

    def check_total(self, writer, names):
        check(sum(writer.done[n]["rows"] for n in names) == self.input.rows, "doubler: rows lost")


def _prepared(tmp_path, name="toy"):
    cfg = load_config(None, [f"run.dir={tmp_path / 'run'}", f"run.name={name}"])
    with StageWriter(stage_dir(cfg, 1, "prepare"), "prepare", {"toy": 1}, "cfg") as w:
        for i in range(3):
            w.write_shard(part_name(i), pa.table({"x": [i, i + 10]}))
        w.finish([part_name(i) for i in range(3)])
    return cfg


def test_a_new_stage_gets_resume_commits_and_checks_from_the_skeleton(tmp_path, capsys):
    Doubler.worked = []
    crash = _prepared(tmp_path, "crash")
    with pytest.raises(RuntimeError, match="killed mid-stage"):
        run_mapped(Doubler(crash, 1))
    assert not (stage_dir(crash, 1, "sample") / "_SUCCESS").exists()
    cfg = crash.model_copy(update={"run": crash.run.model_copy(update={"name": "toy"})})
    Doubler.worked = []
    manifest = run_mapped(Doubler(cfg, 1))  # resumed: the committed shard is not worked on again
    assert Doubler.worked == [part_name(1), part_name(2)]
    assert StageReader(stage_dir(cfg, 1, "sample")).read_all()["x"].to_pylist() == [0, 20, 2, 22, 4, 24]
    assert manifest["rows"] == 6 and "sample: 6 rows" in capsys.readouterr().out
    Doubler.worked = []
    run_mapped(Doubler(cfg, 1))  # up to date: nothing worked on
    assert Doubler.worked == []


def test_a_broken_invariant_leaves_the_stage_unfinished(tmp_path):
    class Lossy(Doubler):
        def work(self, names):
            for name, out in super().work(names):
                yield name, ShardOutput(out.rows.slice(0, 1))

    cfg = _prepared(tmp_path)
    with pytest.raises(InvariantError, match="doubler: rows lost"):
        run_mapped(Lossy(cfg, 1))
    assert not (stage_dir(cfg, 1, "sample") / "_SUCCESS").exists()


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


def test_no_stage_imports_a_stage_and_no_executor_or_layer_imports_one():
    stages = {p.stem for p in (ROOT / "pipeline" / "stages").glob("*.py") if p.stem != "__init__"}
    modules = [p for p in (ROOT / "pipeline").rglob("*.py") if p.name != "cli.py"]
    offenders = [f"{p.relative_to(ROOT)} imports {name}" for p in modules for name in _imports(p)
                 if any(name == f"selfimprove.pipeline.stages.{s}" or name.startswith(f"selfimprove.pipeline.stages.{s}.")
                        for s in stages)]
    assert not offenders, offenders
