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


def _trained(cfg, k, rows):
    """Iteration k's train stage as compare reads it (its manifest): the test engine never loads a model."""
    model = cfg.iter_dir(k) / "model"
    model.mkdir(parents=True)
    (model / "_manifest.json").write_text(json.dumps({"stats": {"method": "sft", "train_rows": rows, "steps": 1}}))
    (model / "_SUCCESS").write_text("")


def test_compare_over_iterations_by_difficulty(tmp_path):
    """The demo-hard comparison in small: a run with difficulty-aware sampling beside one without, two
    iterations each, on the test engine whose one-step answers are right far more often than its
    three-step ones. Per bucket and iteration, compare.md shows each model's accuracy and its paired
    gain over the base model and over the first run on that bucket's held-out problems only, what
    each run drew (first round + extra rounds + hinted) and what it solved and exported per bucket."""
    from tests.conftest import write_config

    runs = {}
    # the test engine's answers follow run.seed: two seeds, so the two runs' models answer differently
    for name, seed, until in (("plain", 1, {}), ("hard", 7, {"until_correct": {"enabled": True, "policy": "prop2diff",
                                                                               "k": 4, "max_samples": 8}})):
        path = write_config(tmp_path / f"{name}.yaml", {
            "run": {"dir": str(tmp_path / name), "problems_per_shard": 8, "seed": seed},
            "task": {"name": "arithmetic", "arithmetic": {"count": 24, "max_steps": 3}},
            "sample": {"engine": "tests.hard_engine:HardEngine", "n": 4, **until},
            "verify": {"workers": 2}, "rationalize": {"enabled": True}, "evaluate": {"count": 40}})
        cfg = load_config(path)
        assert main(["evaluate", "--config", str(path), "--iter", "0"]) == 0
        for k in (1, 2):
            assert main(["run", "--config", str(path), "--iter", str(k)]) == 0
            _trained(cfg, k, rows=json.loads((cfg.iter_dir(k) / "export" / "stats.json").read_text())["funnel"]["exported"])
            assert main(["evaluate", "--config", str(path), "--iter", str(k)]) == 0
        runs[name] = cfg
    out = tmp_path / "cmp"
    assert main(["compare", str(tmp_path / "plain"), str(tmp_path / "hard"), "--iter", "1", "2", "--out", str(out)]) == 0
    text = (out / "compare.md").read_text()
    assert "## Iteration 1" in text and "## Iteration 2" in text and "## By difficulty" in text
    assert (out / "compare_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "](compare_curve.png)" in text

    def rows(cfg, k):
        return pq.read_table(sorted((cfg.iter_dir(k) / "eval").glob("part-*.parquet"))).to_pylist()

    def paired(a, b):
        diffs = [int(b[p]) - int(a[p]) for p in a]
        mean = sum(diffs) / len(diffs)
        return mean, (sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs)) ** 0.5

    base = {r["problem_id"]: (r["correct"], json.loads(r["metadata"])["steps"]) for r in rows(runs["plain"], 0)}
    for k in (1, 2):
        for name, cfg in runs.items():
            mine = {r["problem_id"]: r["correct"] for r in rows(cfg, k)}
            first = {r["problem_id"]: r["correct"] for r in rows(runs["plain"], k)}
            export = json.loads((cfg.iter_dir(k) / "export" / "stats.json").read_text())["by_difficulty"]
            for steps in sorted({s for _, s in base.values()}):
                ids = [p for p, (_, s) in base.items() if s == steps]
                acc = sum(mine[p] for p in ids) / len(ids)
                gain, se = paired({p: base[p][0] for p in ids}, {p: mine[p] for p in ids})
                vs_first = "" if name == "plain" else "{:+.1f} ± {:.1f}".format(
                    *(100 * x for x in paired({p: first[p] for p in ids}, {p: mine[p] for p in ids})))
                b = export[f"steps={steps}"]
                assert (f"| steps={steps} | {k} | {name} | {100 * acc:.1f}% | {100 * (acc * (1 - acc) / len(ids)) ** 0.5:.1f} "
                        f"| {len(ids)} | {100 * gain:+.1f} ± {100 * se:.1f} | {vs_first} | {b['solved']}/{b['problems']} "
                        f"| {b['exported']} |") in text
            sample = json.loads((cfg.iter_dir(k) / "samples" / "_manifest.json").read_text())
            hinted = json.loads((cfg.iter_dir(k) / "rationalized" / "_manifest.json").read_text())["rows"]
            extra = sample["stats"].get("until_correct", {}).get("extra_samples", 0)
            assert (extra > 0) == (name == "hard")
            drawn = " + ".join([str(sample["rows"] - extra)] + [f"{extra} extra"] * bool(extra) + [f"{hinted} hinted"] * bool(hinted))
            section = text.split(f"## Iteration {k}")[1].split("##")[0]
            assert f"| {name} | sft: " in section and f"| {drawn} |" in section
            for b in export.values():  # extra rounds solve problems the first round did not; without them, none
                assert b["solved"] >= b["solved_first_round"]
            assert (sum(b["solved"] - b["solved_first_round"] for b in export.values()) > 0) == (name == "hard")
    assert any(line.startswith("| steps=") and line.split(" | ")[7].strip() not in ("", "+0.0 ± 0.0")
               for line in text.splitlines()), "the runs must answer differently for the paired gains to be tested"


def test_demo_hard_differs_from_the_demo_only_in_until_correct():
    """`make demo-hard` reads its comparison as the effect of difficulty-aware sampling: sound only
    while its config is the demo's in everything else."""
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    hard = yaml.safe_load((ROOT / "configs" / "demo-hard.yaml").read_text())
    until = hard["sample"].pop("until_correct")
    assert until["enabled"] is True and "until_correct" not in demo["sample"]
    assert hard == demo
    cfg = load_config(ROOT / "configs" / "demo-hard.yaml")
    assert cfg.sample.until_correct.max_samples == 2 * cfg.sample.n  # the README's stated budget
