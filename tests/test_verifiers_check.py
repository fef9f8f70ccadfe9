"""`selfimprove verifiers list|check`: the accuracy report users run on their own labelled cases."""

import json

import pytest

from tests.conftest import SHARED, selfimprove
from selfimprove.verifiers.check import load_cases


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


def test_check_names_the_file_and_line_of_a_malformed_case(tmp_path):
    cases = tmp_path / "cases.jsonl"
    cases.write_text('{"gold": "1", "pred": "1", "expected": true}\n\n{"gold": "2", "pred": "2", "expected": tru\n')
    proc = selfimprove("verifiers", "check", "--verifier", "math", "--cases", cases, check=False)
    assert proc.returncode == 1, proc
    assert f"{cases} line 3: not valid JSON" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("line, problem", [
    ('[1, 2]', "line 2: a case must be a JSON object, got list"),
    ('5', "line 2: a case must be a JSON object, got int"),
    ('{"gold": "1", "pred": "1", "expected": "false"}', "line 2: expected must be true or false, got 'false'"),
    ('{"model_output": "x", "label": true}', "line 2: needs {gold, pred, expected} or {problem, gold_answer and/or "
                                             "metadata, model_output, label}; it has {label, model_output}"),
    ('{"model_output": "x", "label": true, "metadata": "tests"}', "line 2: metadata must be an object"),
    ('{"gold_answer": "1", "model_output": 7, "label": true}', "line 2: model_output must be a string, got int"),
])
def test_load_cases_says_what_is_wrong_where(tmp_path, line, problem):
    cases = tmp_path / "cases.jsonl"
    cases.write_text('{"gold": "1", "pred": "1", "expected": true}\n' + line + "\n")
    with pytest.raises(ValueError) as e:
        load_cases(cases)
    assert str(e.value).startswith(f"{cases} line 2: ") and problem in str(e.value), str(e.value)


def test_cases_help_mentions_metadata():
    out = selfimprove("verifiers", "check", "--help").stdout
    assert "metadata" in " ".join(out.split())
