"""`selfimprove compare` and `make compare`: several runs' models side by side on one held-out set."""

import json

import pyarrow.parquet as pq
import yaml

from selfimprove.pipeline.cli import main
from selfimprove.pipeline.config import load_config
from tests.conftest import ROOT


def _solved(cfg, k):
    rows = pq.read_table(sorted((cfg.iter_dir(k) / "eval").glob("part-*.parquet"))).to_pylist()
    return {r["problem_id"]: bool(r["correct"]) for r in rows}


def test_compare_tables_every_decoding_with_paired_gains(fake_config, tmp_path):
    """Two runs whose models answer differently (the test engine's answers follow run.seed), each
    evaluated greedily, by CoT-decoding and with 4 samples: the table has each run's figures and the
    second run's gain over the first, with the paired standard error of the per-problem differences."""
    evaluate = {"count": 30, "pass_at_k": {"n": 4, "k": [1, 4]}, "cot_decoding": {"k": 3}}
    cfgs = []
    for name, seed in (("first", 1), ("second", 7)):
        config = fake_config(run={"dir": str(tmp_path / name), "seed": seed}, evaluate=evaluate)
        config = config.rename(tmp_path / f"{name}.yaml")
        assert main(["evaluate", "--config", str(config), "--iter", "0"]) == 0
        cfgs.append(load_config(config))
    out = tmp_path / "cmp"
    assert main(["compare", str(tmp_path / "first"), str(tmp_path / "second"), "--iter", "0", "--out", str(out)]) == 0
    text = (out / "compare.md").read_text()
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "](compare.png)" in text
    assert "| CoT-decoding k=3 | maj@1 | maj@4 | pass@4 |" in text
    first, second = (_solved(c, 0) for c in cfgs)
    assert set(first) == set(second) and len(first) == 30
    diffs = [int(second[p]) - int(first[p]) for p in first]
    assert any(diffs), "the two runs must answer differently for the gain to be tested"
    mean = sum(diffs) / len(diffs)
    se = (sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs)) ** 0.5
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| first") or line.startswith("| second")}
    for name, cfg in zip(("first", "second"), cfgs):
        ev = json.loads((cfg.iter_dir(0) / "eval" / "eval.json").read_text())
        row = rows[name]
        assert f"| {100 * ev['accuracy']:.1f}% ({ev['correct']}/30) |" in row
        assert f"| {100 * ev['cot_decoding']['accuracy']:.1f}% ± {100 * ev['cot_decoding']['stderr']:.1f} |" in row
        assert f"| {100 * ev['pass_at_k']['values']['4']:.1f}% ± {100 * ev['pass_at_k']['stderr']['4']:.1f} |" in row
    assert f"| {100 * mean:+.1f} ± {100 * se:.1f} |" in rows["second"]


def test_compare_names_the_run_that_has_no_evaluation(fake_config, tmp_path, capsys):
    config = fake_config(evaluate={"count": 6})
    assert main(["evaluate", "--config", str(config), "--iter", "0"]) == 0
    missing = tmp_path / "never-run"
    assert main(["compare", str(tmp_path / "run"), str(missing), "--iter", "0", "--out", str(tmp_path / "cmp")]) == 1
    err = capsys.readouterr().err
    assert str(missing) in err and "no finished evaluation" in err
    assert not (tmp_path / "cmp" / "compare.md").exists()


def test_compare_configs_differ_only_in_what_they_compare():
    """`make compare` samples once and copies the data stages to the other runs: that is sound only
    while the three configs agree on everything before training and on the evaluation."""
    arms = {arm: yaml.safe_load((ROOT / "configs" / f"compare-{arm}.yaml").read_text()) for arm in ("sft", "dpo", "grpo")}
    for arm, data in arms.items():
        assert data["run"].pop("name") == f"compare-{arm}"
        assert load_config(ROOT / "configs" / f"compare-{arm}.yaml").train.method == arm
        data.pop("train")
    assert arms["sft"] == arms["dpo"] == arms["grpo"]
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    for section in ("task", "sample", "rationalize", "dedup", "export"):
        assert arms["sft"][section] == demo[section], section
    assert yaml.safe_load((ROOT / "configs" / "compare-sft.yaml").read_text())["train"] == demo["train"]
