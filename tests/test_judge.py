"""Verifiers that need the engine or every sample, through the verify stage on the test engines.

tests/judge_engine.py samples like the FakeEngine (right answer "The answer is G.", wrong one
"The answer is G1.") and judges prompts in the judge's template by comparing numbers.
"""

import pytest

from selfimprove.pipeline.config import load_config
from selfimprove.pipeline.stages import reader, run_stage
from selfimprove.pipeline.stages.verify import JudgeStep, verify_table
from selfimprove.pipeline.store import StoreError
from selfimprove.verifiers import VerifyPool, get_verifier

JUDGE_ENGINE = "tests.judge_engine:JudgeEngine"


def stage_run(config_path, *overrides, force=False):
    cfg = load_config(config_path, list(overrides))
    for stage in ("prepare", "sample", "verify"):
        run_stage(stage, cfg, 1, force=force and stage == "verify")
    return cfg, reader(cfg, 1, "verify").read_all().to_pylist()


def numeric_status(row):
    return get_verifier("numeric").verify({"answer": row["gold"]}, {"text": row["text"]}).status


def test_judge_alone_through_the_stage(fake_config):
    path = fake_config(sample={"engine": JUDGE_ENGINE}, verify={"verifier": "judge"})
    cfg, rows = stage_run(path)
    assert len(rows) == 80
    assert {r["status"] for r in rows} == {"correct", "wrong"}
    for r in rows:
        assert r["status"] == numeric_status(r), r  # the test judge compares numbers
        assert r["verifier"] == "judge" and r["reason"].startswith("judge: VERDICT: ")
        assert r["extracted"] == r["text"].rsplit("The answer is ", 1)[1].rstrip(".")
    # another judge model is another fingerprint: the stage refuses to mix, and --force redoes it
    with pytest.raises(StoreError, match="verifier|judge"):
        stage_run(path, "verify.params={model: another-judge}")
    stage_run(path, "verify.params={model: another-judge}", force=True)


def test_fallback_sends_only_undecided_rows_to_the_judge(fake_config, capsys):
    chain = {"verifiers": ["numeric", {"verifier": "judge", "params": {"max_tokens": 32}}], "on_status": ["wrong"]}
    path = fake_config(sample={"engine": JUDGE_ENGINE}, verify={"verifier": "fallback", "params": chain})
    cfg, rows = stage_run(path)
    wrong = [r for r in rows if numeric_status(r) == "wrong"]
    assert wrong and len(wrong) < len(rows)
    for r in rows:
        if numeric_status(r) == "correct":
            assert r["status"] == "correct" and "judge" not in r["reason"]
        else:
            assert r["status"] == "wrong"
            assert r["reason"].startswith("fallback: numeric: answer_is answer") and "-> judge: judge: VERDICT: INCORRECT" in r["reason"]
    assert f"{len(wrong)} judged by the engine" in capsys.readouterr().out


def test_judge_step_calls_the_engine_once_per_shard_at_temperature_zero(fake_config):
    cfg = load_config(fake_config(sample={"engine": JUDGE_ENGINE}))
    for stage in ("prepare", "sample"):
        run_stage(stage, cfg, 1)
    samples, problems = reader(cfg, 1, "sample"), reader(cfg, 1, "prepare")
    name = samples.shards[0]["file"]
    gold = {r["problem_id"]: r for r in problems.read_shard(name).to_pylist()}
    table = samples.read_shard(name)
    verifier = get_verifier("all_of", {"verifiers": ["numeric", "judge"]})
    judge = JudgeStep(cfg, verifier)
    try:
        with VerifyPool(*verifier.rules_part(), workers=1) as pool:
            out = verify_table(table, gold, pool, verifier.name, judge=judge).to_pylist()
        assert judge.engine.calls == [(sum(numeric_status(r) == "correct" for r in out), 0.0, 1)]
    finally:
        judge.close()
    assert [r["sample_idx"] for r in out] == table["sample_idx"].to_pylist()
    for r in out:
        assert r["status"] == numeric_status(r)
        assert ("judge" in r["reason"]) == (r["status"] == "correct")  # all_of asks the judge only after numeric agreed


def test_a_judge_without_a_verdict_is_no_answer(fake_config):
    # the test judge gives no verdict when the reference is "no-verdict"
    cfg = load_config(fake_config(sample={"engine": JUDGE_ENGINE}))
    judge = JudgeStep(cfg, get_verifier("judge"))
    try:
        problem = {"problem_id": "p", "question": "q", "answer": "no-verdict", "metadata": {}}
        verdicts = judge.apply([(problem, [{"sample_idx": 0, "text": "The answer is 3.", "finish_reason": "stop"}])], None)
    finally:
        judge.close()
    assert verdicts[0][0].status == "no_answer" and verdicts[0][0].reason.startswith("judge gave no verdict")
    assert verdicts[0][0].extracted == "3"


def test_majority_through_the_stage_records_pseudo_labels(fake_config):
    path = fake_config(verify={"verifier": "majority", "params": {"min_share": 0.5, "min_votes": 3}})
    cfg, rows = stage_run(path)
    by_problem = {}
    for r in rows:
        by_problem.setdefault(r["problem_id"], []).append(r)
    labelled = 0
    for pid, group in by_problem.items():
        answers = [r["extracted"] for r in group]
        top = max(set(answers), key=answers.count)
        if answers.count(top) >= 3:
            labelled += 1
            assert all(r["reason"].startswith(f"pseudo-label {top}, share {answers.count(top) / 4:.2f}") for r in group)
            assert [r["status"] for r in group] == ["correct" if a == top else "wrong" for a in answers]
        else:
            assert all(r["reason"].startswith("no pseudo-label") and r["status"] == "wrong" for r in group)
    assert 0 < labelled < len(by_problem)
