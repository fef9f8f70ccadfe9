"""A kept rationale reasons: an answer alone is never kept, whatever its length."""

import json

import pyarrow as pa

from selfimprove.pipeline import schema
from selfimprove.pipeline.config import DedupConfig
from selfimprove.pipeline.selection.reasoning import shows_work
from selfimprove.pipeline.stages.dedup import select_rows

QUESTION = "Tom has 5 apples and buys 3 more bags with 4 apples each. How many apples does Tom have?"


def test_answer_alone_is_not_a_rationale():
    for text in ["The answer is 17.", "1. The answer is 17.", "Sure! The answer is 17.", "17",
                 "\\boxed{17}", "#### 17", "Let me think step by step. The answer is 17.",
                 "I am confident.\n\nFinal answer: 17", "The answer is 17. The answer is 17.",
                 "Step 1: The answer is 17."]:
        assert not shows_work(text, "17", QUESTION), text


def test_a_step_of_any_kind_is_reasoning():
    for text in ["5 + 3 * 4 = 17. The answer is 17.",
                 "3 bags of 4 apples is 12 apples, and with his 5 that makes 17.\nThe answer is 17.",
                 "He buys 12 more apples. The answer is 17.",  # an intermediate quantity
                 "We have $x = 5 + 12$, so \\boxed{17}.",
                 "Tom's apples: 5 to start\n#### 17",
                 "\\frac{34}{2} gives \\boxed{17}"]:
        assert shows_work(text, "17", QUESTION), text


def test_non_numeric_answers_reason_in_the_problems_terms():
    q = "What is the capital of France? (A) Paris (B) Rome"
    assert shows_work("Paris is the capital city of France, so the answer is A.", "A", q)
    assert not shows_work("Let me think about it carefully. The answer is A.", "A", q)


def _rows(texts, extracted="17"):
    prompt = json.dumps([{"role": "user", "content": QUESTION}])
    rows = [{"problem_id": "p1", "sample_idx": i, "text": t, "status": "correct", "prompt": prompt,
             "gold": "17", "extracted": extracted, "model": "m", "verifier": "numeric"} for i, t in enumerate(texts)]
    return schema.table(rows, schema.VERIFIED)


def test_dedup_drops_answer_only_rows_counted_and_keeps_the_pass_rate():
    texts = ["The answer is 17.", "5 + 12 = 17. The answer is 17.", "1. The answer is 17."]
    sel = select_rows(_rows(texts), DedupConfig(max_per_problem=10), seed=1)
    assert sel.kept.column("text").to_pylist() == ["5 + 12 = 17. The answer is 17."]
    assert sel.removed["answer_only"] == 2
    assert sel.problems["p1"]["correct"] == 3  # the verifier's count: the rule drops rows, not verdicts
    off = select_rows(_rows(texts), DedupConfig(max_per_problem=10, require_work=False, paths=False), seed=1)
    assert off.kept.num_rows == 3


def test_a_problem_emptied_by_the_rule_says_so():
    sel = select_rows(_rows(["The answer is 17.", "#### 17"]), DedupConfig(max_per_problem=10), seed=1)
    assert sel.kept.num_rows == 0
    assert sel.problems["p1"]["emptied_by"] == ["answer_only"]
