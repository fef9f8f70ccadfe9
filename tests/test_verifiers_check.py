"""`selfimprove verifiers list|check`: the accuracy report users run on their own labelled cases."""

import json

from tests.conftest import SHARED, selfimprove


def test_list_shows_builtins():
    out = selfimprove("verifiers", "list").stdout
    assert "numeric" in out and "math" in out and "built-in" in out


def test_check_counts_false_positives_and_negatives(tmp_path):
    cases = tmp_path / "cases.jsonl"
    cases.write_text("\n".join(json.dumps(r) for r in [
        {"gold": "16", "pred": "016", "expected": True},
        {"gold": "10000", "pred": "10{,}000", "expected": True},
        {"gold": "2021", "pred": "\\pm 2021", "expected": False},
        {"gold": "7", "pred": "7", "expected": False},   # mislabelled on purpose: a false positive
        {"gold": "3", "pred": "4", "expected": True},    # mislabelled on purpose: a false negative
        {"problem": "p", "gold_answer": "5", "model_output": "So the answer is \\boxed{5}.", "label": True},
    ]))
    out = selfimprove("verifiers", "check", "--verifier", "math", "--cases", cases, "--json").stdout
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["n"] == 6
    assert figures["false_positives"] == 1 and figures["false_negatives"] == 1
    assert figures["accuracy"] == round(4 / 6, 4)
    assert "line 4: false_positive" in out and "line 5: false_negative" in out


def test_shared_answer_pairs_meet_the_bar():
    out = selfimprove("verifiers", "check", "--verifier", "math", "--cases",
                      SHARED / "equiv" / "answer_pairs.jsonl", "--json").stdout
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["accuracy"] >= 0.95 and figures["false_positives"] == 0
