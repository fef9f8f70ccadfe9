"""sample.until_correct: difficulty-aware rejection sampling (DART-Math), on the deterministic
test engines of tests/hard_engine.py (a difficulty mix: one-step problems right 70% of the time,
three-step ones 6%)."""

import json
from collections import Counter, defaultdict

import pyarrow.parquet as pq
import pytest

from selfimprove.pipeline import schema
from selfimprove.pipeline.cli import main
from selfimprove.pipeline.config import ConfigError, load_config
from selfimprove.pipeline.generation import request_seed, sampling_fingerprint
from selfimprove.pipeline.stages import reader, stage_dir
from selfimprove.pipeline.stages.sample import SampleStage, round_size, target
from tests.conftest import selfimprove
from tests.test_resume import _kill_after_first_shard

HARD = "tests.hard_engine:HardEngine"
SEEDED = "tests.hard_engine:SeededHardEngine"
N, K, BUDGET = 2, 2, 9  # rounds of 2 samples, 2 correct wanted, at most 9 samples: the last round draws 1


def _config(make, engine=HARD, **until):
    return make(task={"name": "arithmetic", "arithmetic": {"count": 24, "max_steps": 3}},
                sample={"engine": engine, "n": N,
                        "until_correct": {"enabled": True, "k": K, "max_samples": BUDGET, **until}})


def _verdicts(cfg, stage="verify"):
    return reader(cfg, 1, stage).read_all().to_pylist()


def _steps(cfg):
    return {r["problem_id"]: json.loads(r["metadata"])["steps"] for r in reader(cfg, 1, "prepare").read_all().to_pylist()}


@pytest.fixture(scope="module")
def uniform_run(tmp_path_factory):
    """One full iteration with until_correct (uniform, k=2) and rationalization on, then the report."""
    from tests.conftest import write_config

    tmp = tmp_path_factory.mktemp("uc")
    path = write_config(tmp / "config.yaml", {
        "run": {"dir": str(tmp / "run"), "problems_per_shard": 8},
        "task": {"name": "arithmetic", "arithmetic": {"count": 24, "max_steps": 3}},
        "sample": {"engine": HARD, "n": N, "until_correct": {"enabled": True, "k": K, "max_samples": BUDGET}},
        "verify": {"workers": 2}, "rationalize": {"enabled": True}, "evaluate": {"count": 12},
    })
    assert main(["run", "--config", str(path)]) == 0
    assert main(["evaluate", "--config", str(path), "--iter", "0"]) == 0
    assert main(["report", "--config", str(path)]) == 0
    return load_config(path)


def test_target_and_round_size():
    assert [target("uniform", 3, c, 4) for c in range(5)] == [3] * 5
    # prop2diff: max(1, ceil(k x first-round fail rate))
    assert [target("prop2diff", 4, c, 4) for c in range(5)] == [4, 3, 2, 1, 1]
    assert target("prop2diff", 8, 1, 4) == 6
    assert [round_size(2, 9, r) for r in range(6)] == [2, 2, 2, 2, 1, 0]
    assert [round_size(4, 4, r) for r in range(2)] == [4, 0]
    assert request_seed(1, 1, "p") == request_seed(1, 1, "p", 0) != request_seed(1, 1, "p", 1) != request_seed(1, 1, "p", 2)


def test_config_refuses_a_budget_below_one_round(fake_config):
    with pytest.raises(ConfigError, match="max_samples"):
        load_config(fake_config(sample={"n": 4, "until_correct": {"enabled": True, "max_samples": 3}}))


def test_off_by_default_changes_nothing(fake_config, capsys):
    """Off (absent, or `enabled: false` whatever its other fields), the stage's fingerprint is
    that of a config without the option, so existing runs stay up to date; outputs are n per problem."""
    plain = load_config(fake_config())
    off = load_config(fake_config(sample={"until_correct": {"enabled": False, "k": 5, "max_samples": 64,
                                                            "policy": "prop2diff"}}))
    on = load_config(fake_config(sample={"until_correct": {"enabled": True}}))
    assert sampling_fingerprint(plain, 1, "x") == sampling_fingerprint(off, 1, "x") != sampling_fingerprint(on, 1, "x")
    path = fake_config(sample={"until_correct": {"enabled": False, "k": 5, "max_samples": 64}})
    assert main(["prepare", "--config", str(path)]) == 0
    assert main(["sample", "--config", str(path)]) == 0
    samples = reader(plain, 1, "sample")
    assert samples.rows == 20 * 4 and "until_correct" not in samples.manifest["stats"]
    assert all("rounds" not in s for s in samples.manifest["shards"])
    table = samples.read_all()
    assert table.schema.names == schema.SAMPLES.names
    assert Counter(table["problem_id"].to_pylist()) == Counter({p: 4 for p in set(table["problem_id"].to_pylist())})
    assert "until_correct" not in capsys.readouterr().out
    # and the plain config (no until_correct section at all) finds the stage up to date
    assert main(["sample", "--config", str(fake_config())]) == 0
    assert "up to date" in capsys.readouterr().out


def test_rounds_stop_at_target_and_the_budget_is_exact(uniform_run):
    cfg = uniform_run
    rows = _verdicts(cfg)
    by_problem = defaultdict(list)
    for r in rows:
        by_problem[r["problem_id"]].append(r)
    assert len(by_problem) == 24
    seen_extra = seen_budget = False
    for pid, samples in by_problem.items():
        samples.sort(key=lambda r: r["sample_idx"])
        drawn = len(samples)
        assert [r["sample_idx"] for r in samples] == list(range(drawn)), pid
        assert drawn <= BUDGET and (drawn % N == 0 or drawn == BUDGET)
        correct = sum(r["status"] == "correct" for r in samples)
        before_last = sum(r["status"] == "correct" for r in samples if r["sample_idx"] < (drawn - 1) // N * N)
        if drawn < BUDGET:
            assert correct >= K, pid  # stopped before the budget: it reached its target
            if drawn > N:
                assert before_last < K, f"{pid} got a round it did not need"
                seen_extra = True
        else:
            seen_budget |= correct < K
            assert before_last < K
        # rows of later rounds are new samples, not the first round's again
        if drawn > N:
            assert not {r["text"] for r in samples[N:]} <= {r["text"] for r in samples[:N]}, pid
    assert seen_extra and seen_budget, "the difficulty mix gives both outcomes"
    stats = reader(cfg, 1, "sample").manifest["stats"]["until_correct"]
    at_budget = sum(len(s) == BUDGET and sum(r["status"] == "correct" for r in s) < K for s in by_problem.values())
    assert stats["at_budget"] == at_budget and stats["reached_target"] == 24 - at_budget
    assert stats["rounds"] == 5 and stats["samples_per_round"][-1] == stats["problems_per_round"][-1]  # last round: 1 sample


def test_funnel_counts_every_extra_sample_exactly(uniform_run, capsys):
    cfg = uniform_run
    samples = reader(cfg, 1, "sample")
    journalled = [r for s in samples.manifest["shards"] for r in s["rounds"]]
    on_disk = sum(pq.read_metadata(stage_dir(cfg, 1, "sample") / s["file"]).num_rows for s in samples.manifest["shards"])
    stats = json.loads((stage_dir(cfg, 1, "export") / "stats.json").read_text())
    f, budget = stats["funnel"], stats["sample_budget"]
    assert f["samples"] == samples.rows == on_disk == sum(d for _, _, d in journalled)
    assert budget["samples_per_round"][0] == 24 * N and f["extra_samples"] == budget["extra_samples"] == sum(budget["samples_per_round"][1:])
    v = _verdicts(cfg)
    assert f["extra_correct"] == sum(r["status"] == "correct" and r["sample_idx"] >= N for r in v) > 0
    assert f["extra_problems"] == budget["extra_problems"] == len({r["problem_id"] for r in v if r["sample_idx"] >= N})
    kept = reader(cfg, 1, "dedup").read_all().to_pylist()
    assert f["extra_kept"] == sum(not r["rationalized"] and r["sample_idx"] >= N for r in kept)
    assert "extra_seconds" in budget and len(budget["seconds_per_round"]) == budget["rounds"]
    from selfimprove.pipeline.stages.export import print_funnel

    print_funnel(reader(cfg, 1, "export").manifest)
    out = capsys.readouterr().out
    assert "extra rounds" in out and f"{f['extra_samples']} extra samples" in out
    first_samples = next(line for line in out.splitlines() if line.strip().startswith("samples")).split()
    assert first_samples[1:3] == [str(24 * N), str(f["extra_samples"])]


def test_sample_idx_unique_across_sample_and_rationalize(uniform_run):
    cfg = uniform_run
    own, hinted = _verdicts(cfg), _verdicts(cfg, "rationalize")
    assert hinted, "some problem stayed unsolved, so rationalize sampled"
    keys = [(r["problem_id"], r["sample_idx"]) for r in own + hinted]
    assert len(keys) == len(set(keys))
    assert min(r["sample_idx"] for r in hinted) == BUDGET


def test_export_carries_difficulty_and_first_round_pass_rate(uniform_run):
    cfg = uniform_run
    steps = _steps(cfg)
    first = defaultdict(list)
    for r in _verdicts(cfg):
        if r["sample_idx"] < N:
            first[r["problem_id"]].append(r["status"] == "correct")
    export = stage_dir(cfg, 1, "export")
    sft = [r for p in sorted(export.glob("sft-*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert sft
    for r in sft:
        assert r["difficulty"] == f"steps={steps[r['problem_id']]}"
        assert r["first_round_pass_rate"] == round(sum(first[r["problem_id"]]) / N, 4)
    prompts = [r for p in sorted(export.glob("prompts-*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert {r["difficulty"] for r in prompts} == {f"steps={s}" for s in steps.values()}
    by = json.loads((export / "stats.json").read_text())["by_difficulty"]
    assert sum(b["exported"] for b in by.values()) == len(sft)
    assert sum(b["problems"] for b in by.values()) == 24
    assert by["steps=1"]["first_round_pass_rate"] > by["steps=3"]["first_round_pass_rate"]


def test_report_shows_difficulty_buckets(uniform_run):
    cfg = uniform_run
    text = (cfg.run_dir / "report.md").read_text()
    assert "## By difficulty" in text
    by = json.loads((stage_dir(cfg, 1, "export") / "stats.json").read_text())["by_difficulty"]
    for label, b in by.items():
        assert f"| 1 | {label} |" in text and f" {b['exported']} | {b['problems']} |" in text
    base = json.loads((cfg.iter_dir(0) / "eval" / "eval.json").read_text())["by"]["steps"]
    for value, r in base.items():
        assert f"| 0 | steps={value} | {100 * r['accuracy']:.1f}% |" in text
    funnel = json.loads((stage_dir(cfg, 1, "export") / "stats.json").read_text())["funnel"]
    assert f"| {funnel['extra_samples']} | {funnel['extra_correct']} |" in text


def test_prop2diff_gives_harder_problems_more_correct_samples(fake_config):
    """Per-request seeds (the GPU path): each round has its own seed; prop2diff's targets grow
    with the first-round fail rate, and harder problems end with more correct samples."""
    path = fake_config(task={"name": "arithmetic", "arithmetic": {"count": 24, "max_steps": 2}},
                       sample={"engine": SEEDED, "n": 4,
                               "until_correct": {"enabled": True, "policy": "prop2diff", "k": 4, "max_samples": 40}})
    assert main(["prepare", "--config", str(path)]) == 0
    assert main(["sample", "--config", str(path)]) == 0
    assert main(["verify", "--config", str(path)]) == 0
    cfg = load_config(path)
    by_problem = defaultdict(list)
    for r in _verdicts(cfg):
        by_problem[r["problem_id"]].append(r)
    first_rate, correct = {}, {}
    for pid, rows in by_problem.items():
        first_rate[pid] = sum(r["status"] == "correct" for r in rows if r["sample_idx"] < 4) / 4
        correct[pid] = sum(r["status"] == "correct" for r in rows)
        want = target("prop2diff", 4, round(first_rate[pid] * 4), 4)
        assert correct[pid] >= want or len(rows) == 40, pid
        seeds = {r["sample_idx"] // 4: r["seed"] for r in rows}
        assert seeds == {i: request_seed(cfg.run.seed, 1, pid, i) for i in seeds}  # a seed per (problem, round)
    hard = [correct[p] for p in correct if first_rate[p] <= 0.25]
    easy = [correct[p] for p in correct if first_rate[p] >= 0.75]
    assert hard and easy
    hard_targets = [target("prop2diff", 4, round(first_rate[p] * 4), 4) for p in correct if first_rate[p] <= 0.25]
    assert min(hard_targets) >= 3 and sum(hard) / len(hard) > 2
    # an easy problem needs at most one correct sample, which its first round gave: no extra rounds
    assert all(len(by_problem[p]) == 4 for p in correct if first_rate[p] >= 0.75)


def test_one_shard_at_a_time_as_a_ray_actor_works(fake_config):
    """The Ray executor rebuilds the stage, calls open() and work([name]) per shard: each call
    gives that shard with all its rounds, as the local waves do."""
    path = _config(fake_config)
    assert main(["prepare", "--config", str(path)]) == 0
    cfg = load_config(path)
    stage = SampleStage(cfg, 1)
    names = [s["file"] for s in stage.input.shards]
    stage.open()
    try:
        alone = [next(stage.work([name])) for name in names]
    finally:
        stage.close()
    assert [n for n, _ in alone] == names
    assert main(["sample", "--config", str(path)]) == 0
    for name, out in alone:
        assert out.rows.equals(pq.read_table(stage_dir(cfg, 1, "sample") / name))
        assert out.info["rounds"] == next(s for s in reader(cfg, 1, "sample").manifest["shards"] if s["file"] == name)["rounds"]


def test_sigkill_during_a_later_wave_then_resume(fake_config, tmp_path):
    """k=3 > n=2: no shard is done after round 1, so the first commit comes in a later wave; kill
    the stage right after it, run again: the samples equal an uninterrupted run's byte for byte."""
    def config(name):  # each its own file (fake_config writes one path)
        path = fake_config(run={"dir": str(tmp_path / name), "problems_per_shard": 4},
                           task={"name": "arithmetic", "arithmetic": {"count": 20, "max_steps": 3}},
                           sample={"engine": HARD, "n": 2, "until_correct": {"enabled": True, "k": 3, "max_samples": 8}})
        return path.rename(tmp_path / f"{name}.yaml")

    killed = config("killed")
    selfimprove("prepare", "--config", killed)
    samples_dir = _kill_after_first_shard(killed, {"FAKE_ENGINE_DELAY": "0.4"})
    journal = samples_dir / "_progress.jsonl"
    committed = {p.name: p.read_bytes() for p in samples_dir.glob("part-*.parquet")}
    assert committed and len(committed) < 5 and not (samples_dir / "_SUCCESS").exists()
    first = [json.loads(line) for line in journal.read_text().splitlines()]
    assert all(len(e["rounds"]) > 1 for e in first), "committed in a later wave"

    selfimprove("sample", "--config", killed)
    for name, data in committed.items():
        assert (samples_dir / name).read_bytes() == data, f"{name} was rewritten"

    clean = config("clean")
    selfimprove("prepare", "--config", clean)
    selfimprove("sample", "--config", clean)
    clean_dir = load_config(clean).iter_dir(1) / "samples"
    files = sorted(p.name for p in clean_dir.glob("part-*.parquet"))
    assert files == sorted(p.name for p in samples_dir.glob("part-*.parquet")) and len(files) == 5
    for name in files:
        assert (samples_dir / name).read_bytes() == (clean_dir / name).read_bytes(), name
    a, b = reader(load_config(killed), 1, "sample"), reader(load_config(clean), 1, "sample")
    assert a.rows == b.rows and a.manifest["stats"]["until_correct"]["samples_per_round"] == \
        b.manifest["stats"]["until_correct"]["samples_per_round"]
