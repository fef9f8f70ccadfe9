"""Find the answer where a reader would: a formula in a concluding sentence, matrices in any of the
usual environments, relations in any of the usual spellings, units in \\text / \\textnormal /
\\mathrm, decimal commas where they cannot be thousands separators.

tests/cases/answer_recall.jsonl holds answer pairs (the prediction handed over as a boxed final
answer, as `verifiers check` does) and whole outputs, written for these tests, with wrong ones of
the same shapes. The shared development sets must keep their recall and gain no false positive;
real reference solutions (GSM8K, MATH) must all still be accepted.
"""

import json
from pathlib import Path

import pytest

from tests.conftest import SHARED
from selfimprove.verifiers import get_verifier
from selfimprove.verifiers.extract import find_answer, sentence_math
from selfimprove.verifiers.math import formula_of_sentence
from selfimprove.verifiers.numeric import parse_number

CASES = Path(__file__).parent / "cases" / "answer_recall.jsonl"
ROWS = [json.loads(line) for line in CASES.read_text(encoding="utf-8").splitlines() if line.strip()]
# Outputs in labelled_outputs.jsonl that are right but labelled wrong (the source's grader reads only
# the last \boxed{}) or flagged for review: the only "false positives" allowed there.
KNOWN_MISLABELLED = {823, 841, 898}


def _verify(name, gold, text):
    return get_verifier(name).verify({"question": "q", "answer": gold, "metadata": {}}, {"text": text, "finish_reason": "stop"})


def _case(row):
    if "pred" in row:
        return row["gold"], f"The final answer is $\\boxed{{{row['pred']} }}$", row["expected"]
    return row["gold_answer"], row["model_output"], row["label"]


@pytest.mark.parametrize("row", ROWS, ids=[r["id"] for r in ROWS])
def test_cases(row):
    gold, text, expected = _case(row)
    verdict = _verify("math", gold, text)
    assert (verdict.status == "correct") == expected, verdict


def test_the_case_file_covers_every_kind_both_ways():
    for kind in ("prose", "matrix", "relation", "unit", "decimal_comma"):
        assert {_case(r)[2] for r in ROWS if r["kind"] == kind} == {True, False}, kind


def test_formula_of_a_sentence():
    assert sentence_math("Therefore $x \\geq 5$ is the solution.") == "x \\geq 5"
    assert sentence_math("We first find $a = 2$. So the answer is \\(a + 1\\).") == "a + 1"
    assert sentence_math("If $x = 3$, then $y = 5$.") is None  # two formulas: which one?
    assert sentence_math("It is $5$. Then we stop.") is None  # not the concluding sentence
    assert sentence_math("So:\n\n\\[ 7 \\]", inline_only=True) is None  # a display alone is no sentence
    assert formula_of_sentence("The largest $n$ is 34.") == "34"  # what the sentence says it is
    assert formula_of_sentence("x^2 + 1") == "x^2 + 1"
    assert find_answer("We find that $x \\lt 3$.", ("last_math", "last_number")).answer == "x \\lt 3"


def test_decimal_commas_only_where_they_cannot_separate_thousands():
    assert parse_number("1,5", decimal_comma=True) == parse_number("1.5")
    assert parse_number("0,111", decimal_comma=True) == parse_number("0.111")
    assert parse_number("1000,99 kg", decimal_comma=True) == parse_number("1000.99")
    assert parse_number("1,500", decimal_comma=True) == 1500
    assert parse_number("1,5") is None  # a gold answer "1,5" may be a list
    assert parse_number("0,111") is None  # no thousands grouping starts with 0
    assert parse_number("12 345 678") == 12345678 and parse_number("1 1/2") is None


@pytest.fixture(scope="module")
def shared_results():
    """(name, file) -> list of (row, correct) for math and numeric on the shared sets."""
    results = {}
    for file, gold_key, text_of, label_key in [
        ("answer_pairs.jsonl", "gold", lambda r: f"The final answer is $\\boxed{{{r['pred']} }}$", "expected"),
        ("labelled_outputs.jsonl", "gold_answer", lambda r: r["model_output"], "label"),
    ]:
        path = SHARED / "equiv" / file
        if not path.exists():
            pytest.skip(f"{path} not found: the shared data set lives in ../shared/data beside the repo")
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if not r.get("caveat") and r.get(gold_key) is not None]
        for name in ("math", "numeric"):
            results[name, file] = [(r, _verify(name, str(r[gold_key]), text_of(r)).status == "correct", r[label_key])
                                   for r in rows]
    return results


def test_shared_sets_keep_recall_and_gain_no_false_positive(shared_results):
    # Measured before these changes: math missed nothing on either set; numeric missed 17 (symbolic
    # gold answers it cannot read) on each.
    baseline_misses = {"math": 0, "numeric": 17}
    for (name, file), results in shared_results.items():
        misses = [r["id"] for r, correct, label in results if label and not correct]
        false_positives = {r["id"] for r, correct, label in results if correct and not label}
        assert len(misses) <= baseline_misses[name], (name, file, misses)
        assert false_positives <= KNOWN_MISLABELLED, (name, file, false_positives - KNOWN_MISLABELLED)


@pytest.mark.parametrize("name, file, field", [("numeric", "gsm8k/test.jsonl", "answer"), ("math", "math/test.jsonl", "solution")])
def test_reference_solutions_are_all_accepted(name, file, field):
    """Human-written solutions state their answers clearly: none may be refused as ambiguous."""
    path = SHARED / file
    if not path.exists():
        pytest.skip(f"{path} not found")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    refused = []
    for row in rows:
        gold = row["answer"].split("####")[-1].strip() if name == "numeric" else row["answer"]
        verdict = _verify(name, gold, row[field])
        if verdict.status != "correct":
            refused.append((gold, verdict.reason))
    assert refused == []
