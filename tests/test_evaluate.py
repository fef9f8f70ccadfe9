"""The evaluate stage: its own held-out problems, accuracy with stderr, the overlap guard."""

import json
import math

import pytest

from selfimprove.pipeline.cli import main
from selfimprove.pipeline.config import DEFAULT_MODEL_DIR, load_config
from selfimprove.pipeline.stages import reader, stage_dir
from selfimprove.pipeline.engines import Request, SamplingParams
from selfimprove.pipeline.stages.evaluate import heldout_task, pass_at_k
from selfimprove.pipeline.tasks import get_task, render_prompt
from tests.fake_engine import FakeEngine
from tests.conftest import ROOT, selfimprove, write_config


def _eval(cfg, k=0):
    return json.loads((stage_dir(cfg, k, "evaluate") / "eval.json").read_text())


def test_accuracy_and_breakdown_agree_with_the_verdicts(fake_config, capsys):
    config = fake_config(evaluate={"count": 12})
    assert main(["evaluate", "--config", str(config), "--iter", "0"]) == 0
    cfg = load_config(config)
    result = _eval(cfg)
    rows = reader(cfg, 0, "evaluate").read_all().to_pylist()
    # its own problems, from the held-out seed range: never the run's training problems
    assert [r["problem_id"] for r in rows] == [f"arith-{1_000_000 + i}" for i in range(12)]
    assert not stage_dir(cfg, 0, "prepare").exists()
    correct = sum(r["status"] == "correct" for r in rows)
    assert 0 < correct < 12  # the fake engine gets about 2/3 right
    assert result["n"] == 12 and result["correct"] == correct and result["accuracy"] == round(correct / 12, 4)
    p = correct / 12
    assert result["stderr"] == round(math.sqrt(p * (1 - p) / 12), 4)
    steps = result["by"]["steps"]
    assert sum(v["n"] for v in steps.values()) == 12 and sum(v["correct"] for v in steps.values()) == correct
    assert set(steps) <= {"1", "2"}
    assert "greedy accuracy" in capsys.readouterr().out
    assert main(["evaluate", "--config", str(config), "--iter", "0"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_refuses_held_out_problems_that_are_training_problems(fake_config, tmp_path, capsys):
    config = fake_config()  # training problems: arith-0 .. arith-19
    assert main(["prepare", "--config", str(config)]) == 0
    capsys.readouterr()
    # the same seed range: same ids
    assert main(["evaluate", "--config", str(config), "--iter", "0", "--set", "evaluate.seed_offset=15"]) == 1
    err = capsys.readouterr().err
    assert "5 of 200 held-out problems are also training problems (same id: arith-15, arith-16" in err
    # other ids, but training questions word for word
    question = reader(load_config(config), 1, "prepare").read_all()["question"][3].as_py()
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text(json.dumps({"question": question, "answer": "1", "id": "other-1"}) + "\n"
                       + json.dumps({"question": "What is 2 + 2?", "answer": "4", "id": "other-2"}) + "\n")
    config = fake_config(evaluate={"task": {"name": "columns", "path": str(heldout), "columns": {"id": "id"}}})
    assert main(["evaluate", "--config", str(config), "--iter", "0"]) == 1
    assert "1 of 2 held-out questions are also training questions, e.g. other-1" in capsys.readouterr().err
    assert not (stage_dir(load_config(config), 0, "evaluate") / "_SUCCESS").exists()


def test_a_chance_repeat_of_a_training_question_is_left_out(fake_config, tmp_path):
    """The generator draws the same small problem now and then: that one is left out, with its reason."""
    config = fake_config()
    assert main(["prepare", "--config", str(config)]) == 0
    question = reader(load_config(config), 1, "prepare").read_all()["question"][3].as_py()
    heldout = tmp_path / "heldout.jsonl"
    lines = [{"question": question, "answer": "1", "id": "repeat"}]
    lines += [{"question": f"Ava has {i} apples. She buys {i} more apples. How many apples does Ava have now?",
               "answer": str(2 * i), "id": f"fresh-{i}"} for i in range(100, 124)]
    heldout.write_text("".join(json.dumps(x) + "\n" for x in lines))
    config = fake_config(evaluate={"task": {"name": "columns", "path": str(heldout), "columns": {"id": "id"}}})
    assert main(["evaluate", "--config", str(config), "--iter", "0"]) == 0
    cfg = load_config(config)
    assert _eval(cfg)["n"] == 24 and _eval(cfg)["left_out"] == 1
    assert "repeat" not in reader(cfg, 0, "evaluate").read_all()["problem_id"].to_pylist()
    reasons = reader(cfg, 0, "evaluate").rejects().to_pylist()
    assert [(r["problem_id"], r["reason"]) for r in reasons] == [("repeat", "held-out question repeats training problem arith-3: left out")]


def test_iteration_without_a_trained_model_names_the_command(fake_config, capsys):
    assert main(["evaluate", "--config", str(fake_config()), "--iter", "2"]) == 1
    assert "make iterate ITER=2" in capsys.readouterr().err


def test_pass_at_k_counts_each_problems_samples_across_shards(fake_config):
    """Greedy and pass@k passes each stream every shard through the engine; each row gets its own counts."""
    config = fake_config(run={"problems_per_shard": 5}, evaluate={"count": 12, "pass_at_k": {"n": 4, "k": [1, 4]}})
    assert main(["evaluate", "--config", str(config), "--iter", "0"]) == 0
    cfg = load_config(config)
    rows = reader(cfg, 0, "evaluate").read_all().to_pylist()
    assert len(rows) == 12 and len(list(stage_dir(cfg, 0, "evaluate").glob("part-*.parquet"))) == 3

    engine = FakeEngine(cfg.model_copy(update={"task": heldout_task(cfg)}))
    for row in rows:  # the fake engine is deterministic: ask it again, count the right answers
        request = Request(row["problem_id"], render_prompt(heldout_task(cfg), get_task(heldout_task(cfg)), row["question"]))
        (result,) = engine.generate([request], SamplingParams.of(cfg.sample, n=4))
        expected = sum(c.text.endswith(f"The answer is {row['answer']}.") for c in result.completions)
        assert row["samples"] == 4 and row["samples_correct"] == expected, row["problem_id"]
    values = _eval(cfg)["pass_at_k"]["values"]
    assert values["1"] == round(sum(r["samples_correct"] for r in rows) / 48, 4)
    assert values["4"] == round(sum(r["samples_correct"] > 0 for r in rows) / 12, 4)
    assert 0 < values["1"] < values["4"]


def test_pass_at_k_estimator():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 1, 4) == 1.0


@pytest.mark.engine
def test_base_model_on_a_handful_of_problems(tmp_path):
    """Iteration 0, the real engine and model: greedy accuracy with stderr, and pass@k."""
    config = write_config(tmp_path / "c.yaml", {
        "run": {"dir": str(tmp_path / "run")},
        "model": {"path": str(ROOT / DEFAULT_MODEL_DIR)},
        "evaluate": {"count": 6, "max_tokens": 96, "pass_at_k": {"n": 3, "k": [1, 3]}},
    })
    out = selfimprove("evaluate", "--config", config, "--iter", 0).stdout
    assert "greedy accuracy" in out
    cfg = load_config(config)
    result = _eval(cfg)
    assert result["n"] == 6 and 0 <= result["accuracy"] <= 1 and result["stderr"] >= 0
    rows = reader(cfg, 0, "evaluate").read_all().to_pylist()
    assert len(rows) == 6 and all(r["text"] and r["completion_tokens"] > 0 for r in rows)
    assert sum(r["correct"] for r in rows) == result["correct"]
    assert all(r["samples"] == 3 and 0 <= r["samples_correct"] <= 3 for r in rows)
    values = result["pass_at_k"]["values"]
    assert 0 <= values["1"] <= values["3"] <= 1
    assert values["3"] == round(sum(r["samples_correct"] > 0 for r in rows) / 6, 4)
    maj = result["maj_at_k"]
    assert set(maj["values"]) == set(maj["stderr"]) == {"1", "3"} and maj["values"]["1"] == values["1"]
    assert all(len(r["sample_answers"]) == len(r["sample_correct"]) == 3 for r in rows)


def test_maj_at_k_from_the_same_samples_kept_per_row_and_across_a_resume(fake_config, capsys):
    """maj@k for each k, with stderr, from the n samples pass@k drew; each row keeps the samples'
    answers and verdicts, so the figure is recomputed from the shards, and a resume keeps it."""
    from tests.test_self_consistency import brute_force

    config = fake_config(run={"problems_per_shard": 5}, evaluate={"count": 12, "pass_at_k": {"n": 4, "k": [1, 2, 4]}})
    assert main(["evaluate", "--config", str(config), "--iter", "0"]) == 0
    assert "maj@4" in capsys.readouterr().out
    cfg = load_config(config)
    rows = reader(cfg, 0, "evaluate").read_all().to_pylist()
    for row in rows:  # the fake engine answers the gold answer, or gold followed by 1
        assert len(row["sample_answers"]) == len(row["sample_correct"]) == 4
        assert sum(row["sample_correct"]) == row["samples_correct"]
        assert [a == (row["answer"] if ok else row["answer"] + "1") for a, ok in
                zip(row["sample_answers"], row["sample_correct"])] == [True] * 4, row
    result = _eval(cfg)
    maj = result["maj_at_k"]
    assert set(maj["values"]) == set(maj["stderr"]) == {"1", "2", "4"} and maj["n"] == 4
    for k in (1, 2, 4):  # C(4, k) <= 2000: the exact average over subsets
        per_problem = [brute_force(r["sample_answers"], r["sample_correct"], k) for r in rows]
        mean = sum(per_problem) / 12
        assert maj["values"][str(k)] == round(mean, 4)
        se = math.sqrt(sum((v - mean) ** 2 for v in per_problem) / 11 / 12)
        assert maj["stderr"][str(k)] == round(se, 4) and se > 0
    # one sample votes alone: maj@1 is pass@1; with two, a 1-1 tie goes to the first sample
    assert maj["values"]["1"] == result["pass_at_k"]["values"]["1"]
    assert maj["values"]["4"] <= result["pass_at_k"]["values"]["4"]
    assert set(result["pass_at_k"]["stderr"]) == {"1", "2", "4"}

    # interrupted after two of the three shards: the resume redoes one and the figures stay
    folder = stage_dir(cfg, 0, "evaluate")
    for name in ("_SUCCESS", "_manifest.json", "part-00002.parquet"):
        (folder / name).unlink()
    kept = (folder / "part-00000.parquet").stat().st_mtime_ns
    assert main(["evaluate", "--config", str(config), "--iter", "0"]) == 0
    assert (folder / "part-00000.parquet").stat().st_mtime_ns == kept and (folder / "part-00002.parquet").exists()
    assert _eval(cfg)["maj_at_k"] == maj and _eval(cfg)["pass_at_k"] == result["pass_at_k"]


def test_maj_at_k_list_of_its_own_and_fingerprints(fake_config):
    """maj_at_k may name its own ks; without pass@k the fingerprint is what it was before maj@k."""
    from selfimprove.pipeline.stages.evaluate import evaluate_part

    cfg = load_config(fake_config())
    # what earlier versions dumped: the section without the fields added since (cot_decoding)
    assert evaluate_part(cfg) == cfg.evaluate.model_dump(mode="json", exclude={"task", "count", "seed_offset", "cot_decoding"})
    on = load_config(fake_config(evaluate={"pass_at_k": {"n": 4, "k": [1, 4]}}))
    own = load_config(fake_config(evaluate={"pass_at_k": {"n": 4, "k": [1, 4], "maj_at_k": [3]}}))
    assert "maj_at_k" not in evaluate_part(on)["pass_at_k"] and evaluate_part(own)["pass_at_k"]["maj_at_k"] == [3]
    # with pass@k, the rows gained per-sample answers: evaluations made before are stale
    before = on.evaluate.model_dump(mode="json", exclude={"task": True, "count": True, "seed_offset": True,
                                                          "pass_at_k": {"maj_at_k"}})
    assert evaluate_part(on) != before
    with pytest.raises(ValueError, match=r"pass_at_k.maj_at_k: every k must be between 1 and n=4 \(got \[5\]\)"):
        load_config(fake_config(evaluate={"pass_at_k": {"n": 4, "k": [1], "maj_at_k": [5]}}))

    config = fake_config(evaluate={"count": 6, "pass_at_k": {"n": 4, "k": [1, 4], "maj_at_k": [3]}})
    assert main(["evaluate", "--config", str(config), "--iter", "0"]) == 0
    result = _eval(load_config(config))
    assert set(result["maj_at_k"]["values"]) == {"3"} and set(result["pass_at_k"]["values"]) == {"1", "4"}


def test_rows_without_sample_answers_are_refused_by_name():
    from selfimprove.pipeline.stages.evaluate import majority_values

    row = {"problem_id": "arith-7", "samples": 4, "samples_correct": 2, "sample_answers": None, "sample_correct": None}
    with pytest.raises(ValueError, match="row arith-7 has no per-sample answers for maj@k"):
        majority_values([row], [1], run_seed=0)


def test_cot_decoding_answers_each_problem_beside_greedy_with_its_most_confident_path(fake_config, capsys):
    """evaluate.cot_decoding: each row also gets the most confident of k greedy paths (by the
    verifier's extracted answer, never its verdict), greedy's own path where none has an answer."""
    from tests.test_cot_decoding import _expected

    config = fake_config(evaluate={"count": 12, "cot_decoding": {"k": 5}, "pass_at_k": {"n": 4, "k": [1, 4]}})
    assert main(["evaluate", "--config", str(config), "--iter", "0"]) == 0
    cfg = load_config(config)
    result, rows = _eval(cfg), reader(cfg, 0, "evaluate").read_all().to_pylist()
    assert "CoT-decoding (k=5)" in capsys.readouterr().out
    served = cfg.model_copy(deep=True)
    served.task = heldout_task(cfg)  # the engine serves the held-out problems, as evaluate's does
    engine, task = FakeEngine(served), get_task(served.task)
    for r in rows:
        req = Request(r["problem_id"], render_prompt(served.task, task, r["question"]))
        ranked = _expected(engine, req, 5)
        best = ranked[0][0] if ranked[0][1] is not None else 1
        assert r["cot_text"] == engine.branch_text(req, best) and r["cot_branch_rank"] == best, r["problem_id"]
        assert r["samples"] == 4, "pass@k still samples beside it"
    cot = result["cot_decoding"]
    assert cot["k"] == 5 and cot["n"] == 12 and cot["correct"] == sum(r["cot_correct"] for r in rows)
    assert cot["chose_greedy_path"] < 12, "some problem's most confident path is not greedy's, so both are tested"
    paired = [float(r["cot_correct"]) - float(r["correct"]) for r in rows]
    assert cot["minus_greedy"]["value"] == round(sum(paired) / 12, 4)
    assert result["correct"] == sum(r["status"] == "correct" for r in rows)
    from selfimprove.pipeline.stages import report

    text = report.run(cfg).read_text()
    assert "## Held-out accuracy (greedy, CoT-decoding, maj@k, pass@k)" in text
    assert f"| CoT-decoding k=5 | maj@1 | maj@4 | pass@4 |" in text
    assert f" {100 * cot['accuracy']:.1f}% ± {100 * cot['stderr']:.1f} |" in text
    # the sample stage's strategy is not evaluate's: setting it leaves this evaluation up to date
    again = fake_config(evaluate={"count": 12, "cot_decoding": {"k": 5}, "pass_at_k": {"n": 4, "k": [1, 4]}},
                        sample={"strategy": "cot_decoding", "cot_k": 5, "n": 4})
    assert main(["evaluate", "--config", str(again), "--iter", "0"]) == 0
    assert "up to date" in capsys.readouterr().out
