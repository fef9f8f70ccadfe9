"""STaR rationalization: unsolved problems get a hinted second round; the hint never reaches the export."""

import json

import pytest

from selfimprove.pipeline.cli import main
from selfimprove.pipeline.config import load_config
from selfimprove.pipeline.stages import reader, stage_dir


def _run(config, *overrides):
    assert main(["run", "--config", str(config), *sum((["--set", o] for o in overrides), [])]) == 0
    return load_config(config, list(overrides))


@pytest.fixture
def rationalized_run(fake_config):
    config = fake_config(task={"name": "arithmetic", "arithmetic": {"count": 60}}, rationalize={"enabled": True})
    return config, _run(config)


def test_unsolved_problems_get_hinted_rationales_without_the_hint(rationalized_run):
    _, cfg = rationalized_run
    verified = reader(cfg, 1, "verify").read_all().to_pylist()
    solved = {r["problem_id"] for r in verified if r["status"] == "correct"}
    unsolved = {r["problem_id"] for r in verified} - solved
    assert unsolved, "the test config must leave some problems unsolved"
    hinted = reader(cfg, 1, "rationalize").read_all().to_pylist()
    assert {r["problem_id"] for r in hinted} == unsolved  # only unsolved problems, all of them
    assert all(r["rationalized"] and r["sample_idx"] >= cfg.sample.n for r in hinted)
    for r in hinted:
        prompt = json.loads(r["prompt"])
        assert "correct answer is" not in prompt[-1]["content"]
        if r["text"].startswith("The answer is"):  # merely copies the hint: filtered, with its reason
            assert r["status"] == "wrong" and "copies the hint" in r["reason"]
        else:
            assert r["status"] == "correct"


def test_export_holds_rationalized_rows_flagged_and_hint_free(rationalized_run):
    import datasets

    _, cfg = rationalized_run
    export = stage_dir(cfg, 1, "export")
    rows = [row for split in datasets.load_dataset(str(export)).values() for row in split]
    hinted = [r for r in rows if r["rationalized"]]
    assert hinted and len(hinted) < len(rows)
    for r in rows:
        assert all("correct answer is" not in m["content"] for m in r["prompt"] + r["completion"])
    funnel = json.loads((export / "stats.json").read_text())["funnel"]
    assert funnel["rationalized_exported"] == len(hinted)
    assert funnel["rationalized_correct"] >= len(hinted)


def test_rationalized_share_is_capped_and_counted(fake_config):
    config = fake_config(task={"name": "arithmetic", "arithmetic": {"count": 60}},
                         rationalize={"enabled": True, "max_share": 0.05})
    cfg = _run(config)
    funnel = json.loads((stage_dir(cfg, 1, "export") / "stats.json").read_text())["funnel"]
    assert funnel["rationalized_over_share"] > 0
    assert funnel["rationalized_exported"] <= 0.05 * funnel["exported"]
    # dedup applies the cap (a rule of its own), so selected/ is exactly what is exported
    assert funnel["exported"] == funnel["kept"]
    removed = json.loads((stage_dir(cfg, 1, "dedup") / "stats.json").read_text())["removed"]
    assert removed["over_rationalized_share"] == funnel["rationalized_over_share"]


def test_off_by_default_writes_empty_shards(fake_config):
    cfg = _run(fake_config())
    hinted = reader(cfg, 1, "rationalize")
    assert hinted.rows == 0 and len(hinted.shards) == len(reader(cfg, 1, "verify").shards)


def test_hint_must_name_the_answer(fake_config):
    with pytest.raises(Exception, match="rationalize.hint"):
        load_config(fake_config(rationalize={"enabled": True, "hint": "try harder"}))
