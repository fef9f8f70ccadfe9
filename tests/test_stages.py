"""Each stage on small data, driven by the deterministic test engine (tests/fake_engine.py)."""

import json

import pyarrow.parquet as pq
import pytest

from selfimprove.pipeline.cli import DATA_STAGES, main
from selfimprove.pipeline.config import load_config
from selfimprove.pipeline.stages import reader, run_stage, stage_dir
from selfimprove.pipeline.stages.dedup import select
from selfimprove.pipeline.stages.export import split_of


def _run_all(config_path, *overrides):
    assert main(["run", "--config", str(config_path), *sum((["--set", o] for o in overrides), [])]) == 0
    return load_config(config_path, list(overrides))


def test_full_iteration_funnel_and_invariants(fake_config, capsys):
    cfg = _run_all(fake_config())
    out = capsys.readouterr().out
    assert "funnel" in out and "exported" in out
    problems, samples, verified, selected = (reader(cfg, 1, s) for s in ("prepare", "sample", "verify", "dedup"))
    assert problems.rows == 20 and samples.rows == 20 * 4 and verified.rows == samples.rows
    v = verified.read_all().to_pylist()
    assert {(r["problem_id"], r["sample_idx"]) for r in v} == {(p, i) for p in problems.read_all()["problem_id"].to_pylist() for i in range(4)}
    assert {r["status"] for r in v} <= {"correct", "wrong", "no_answer", "timeout", "error"}
    kept = selected.read_all().to_pylist()
    assert kept and all(r["status"] == "correct" for r in kept)
    stats = json.loads((stage_dir(cfg, 1, "export") / "stats.json").read_text())
    f = stats["funnel"]
    assert f["problems"] == 20 and f["samples"] == 80 and f["kept"] == len(kept) == f["exported"]
    assert f["correct"] == sum(r["status"] == "correct" for r in v) >= f["kept"]
    assert len(stats["pass_rates"]) == 20


def test_export_loads_with_datasets_and_every_row_is_verified(fake_config):
    import datasets

    cfg = _run_all(fake_config(), "export.validation_fraction=0.3")
    export = stage_dir(cfg, 1, "export")
    ds = datasets.load_dataset(str(export))
    assert set(ds) == {"train", "validation"}
    rows = list(ds["train"]) + list(ds["validation"])
    gold = {r["problem_id"]: r["answer"] for r in reader(cfg, 1, "prepare").read_all().to_pylist()}
    correct = {(r["problem_id"], r["sample_idx"]) for r in reader(cfg, 1, "verify").read_all().to_pylist() if r["status"] == "correct"}
    assert rows
    for r in rows:
        assert (r["problem_id"], r["sample_idx"]) in correct
        assert r["answer"] == gold[r["problem_id"]]
        assert [m["role"] for m in r["prompt"]] == ["user"] and [m["role"] for m in r["completion"]] == ["assistant"]
        assert "messages" not in r
        assert r["iteration"] == 1 and r["task"] == "arithmetic" and r["verifier"] == "numeric"
    train_pids = {r["problem_id"] for r in ds["train"]}
    val_pids = {r["problem_id"] for r in ds["validation"]}
    assert not train_pids & val_pids, "a problem's rationales never sit in both splits"
    assert all(split_of(p, 0.3) == "validation" for p in val_pids)
    names = sorted(p.name for p in export.glob("*.parquet") if not p.name.startswith("_"))
    assert [n for n in names if n.startswith("sft-")] == ["sft-train-00000-of-00001.parquet", "sft-validation-00000-of-00001.parquet"]
    assert {n.split("-")[0] for n in names} == {"sft", "preference", "prompts"}


def test_dedup_removes_exact_duplicates_and_caps_deterministically(fake_config):
    cfg = _run_all(fake_config(), "dedup.max_per_problem=1")
    verified = reader(cfg, 1, "verify").read_all()
    kept, removed = select(verified, 1, cfg.run.seed)
    again, _ = select(verified, 1, cfg.run.seed)
    assert kept.equals(again)
    assert removed["exact_duplicate"] > 0  # the test engine answers in identical pairs
    per_problem = {}
    for pid in kept["problem_id"].to_pylist():
        per_problem[pid] = per_problem.get(pid, 0) + 1
    assert max(per_problem.values()) == 1
    solved = {r["problem_id"] for r in verified.to_pylist() if r["status"] == "correct"}
    assert set(per_problem) == solved, "every solved problem keeps a rationale"


def test_rerun_is_up_to_date_and_changed_config_refuses(fake_config, capsys):
    path = fake_config()
    _run_all(path)
    capsys.readouterr()
    _run_all(path)
    assert capsys.readouterr().out.count("up to date") == len(DATA_STAGES)
    assert main(["sample", "--config", str(path), "--set", "sample.n=2"]) == 1
    assert "--force" in capsys.readouterr().err
    assert main(["sample", "--config", str(path), "--set", "sample.n=2", "--force"]) == 0
    cfg = load_config(path, ["sample.n=2"])
    assert reader(cfg, 1, "sample").rows == 20 * 2
    # verify now sees a different input and refuses to mix it with the old verdicts
    assert main(["verify", "--config", str(path), "--set", "sample.n=2"]) == 1


def test_engine_failure_becomes_a_reject_not_a_crash(fake_config, tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in [
        {"question": "What is 2 + 2?", "answer": "4"},
        {"question": "FAIL-ME please", "answer": "1"},
        {"question": "What is 3 + 3?", "answer": "6"},
    ]))
    cfg = _run_all(fake_config(task={"name": "columns", "path": str(src)}))
    samples = reader(cfg, 1, "sample")
    assert samples.rows == 2 * 4
    rej = samples.rejects().to_pylist()
    assert len(rej) == 1 and "failed" in rej[0]["reason"]


def test_stage_before_its_input_exists_fails_clearly(fake_config, capsys):
    assert main(["verify", "--config", str(fake_config())]) == 1
    assert "not finished" in capsys.readouterr().err  # names the stage to run first


def test_two_exports_load_their_own_rows(fake_config, tmp_path):
    """`datasets` caches local folders by name: each export must still load its own rows."""
    import datasets

    loaded = []
    for n in (2, 4):
        cfg = _run_all(fake_config(run={"dir": str(tmp_path / f"run{n}")}), f"sample.n={n}")
        ds = datasets.load_dataset(str(stage_dir(cfg, 1, "export")))
        assert len(ds["train"]) + len(ds["validation"]) == reader(cfg, 1, "export").manifest["stats"]["funnel"]["exported"]
        loaded.append(sorted((r["problem_id"], r["sample_idx"]) for r in ds["train"]))
    assert loaded[0] != loaded[1]
