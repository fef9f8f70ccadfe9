"""The derivation verifier: a right answer from wrong or missing work is not a right rationale."""

import pytest

from selfimprove.verifiers import get_verifier

PROBLEM = {"question": "Lily has 3 books. Now she has 5 times as many. How many books?", "answer": "15"}


def verdict(text, **params):
    return get_verifier("derivation", params).verify(PROBLEM, {"text": text})


@pytest.mark.parametrize("text", [
    "Lily has 3 * 5 = 15 books.\nThe answer is 15.",
    "She had 3 books, then 3 \\times 5 = 15.\nThe answer is 15.",
    "3 x 5 = 15 books now. The answer is 15.",
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May and <<48+24=72>>72 in all.\n#### 72",
])
def test_worked_answers_pass(text):
    expected = "72" if "####" in text else "15"
    result = verdict(text)
    assert result.status == "correct" and result.extracted == expected


@pytest.mark.parametrize("text, reason", [
    # the answer from nowhere: every step holds, none gives 15 (a lucky guess, seen in real samples)
    ("Lily has 3 * 2 = 6 books.\nLily has 5 * 2 = 10 books.\nThe answer is 15.", "no calculation produces"),
    # a false step on the way, even if the last one is right
    ("3 * 4 = 13, and 3 * 5 = 15.\nThe answer is 15.", "false calculation: 3*4 = 13"),
    # the hint restated with no work at all
    ("The answer is 15. Lily has fifteen books because she has five times as many.", "no calculation produces"),
])
def test_unworked_or_false_work_fails(text, reason):
    result = verdict(text)
    assert result.status == "wrong" and reason in result.reason


def test_no_final_answer_is_never_accepted():
    assert verdict("3 * 5 = 15").status == "no_answer"
    assert verdict("3 * 5 = 15. The answer is fifteen.").status == "wrong"


def test_min_steps_zero_only_checks_that_the_steps_hold():
    assert verdict("The answer is 15.", min_steps=0).status == "correct"
    assert verdict("3 * 4 = 13. The answer is 15.", min_steps=0).status == "wrong"
    with pytest.raises(ValueError, match="min_steps"):
        get_verifier("derivation", {"min_steps": -1})


def test_combined_with_numeric_both_must_hold():
    both = get_verifier("all_of", {"verifiers": ["numeric", "derivation"]})
    assert both.verify(PROBLEM, {"text": "3 * 5 = 15. The answer is 15."}).status == "correct"
    assert both.verify(PROBLEM, {"text": "3 * 6 = 18. The answer is 18."}).status == "wrong"  # worked, wrong
    assert both.verify(PROBLEM, {"text": "3 * 2 = 6. The answer is 15."}).status == "wrong"  # right, unworked
