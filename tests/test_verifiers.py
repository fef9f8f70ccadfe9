import importlib.metadata
import json
import time
from pathlib import Path

import pytest

from selfimprove.verifiers import Verdict, available_verifiers, get_verifier
from selfimprove.verifiers.base import ENTRY_POINT_GROUP

EQUIV = Path(__file__).resolve().parents[2] / "shared" / "data" / "equiv"


def check(verifier, gold, text, status):
    verdict = verifier.verify({"question": "q", "answer": gold, "metadata": {}}, {"text": text})
    assert verdict.status == status, verdict
    assert verdict.score == (1.0 if status == "correct" else 0.0)
    assert verdict.reason
    return verdict


# --- registry and interface -------------------------------------------------------------------


def test_registry_and_specs():
    found = available_verifiers()
    assert {"numeric", "math"} <= set(found)
    assert get_verifier("numeric").name == "numeric"
    assert get_verifier("math").name == "math"
    sleepy = get_verifier("tests.helpers_verifiers:SleepyVerifier", {"echo": "hi "})
    assert sleepy.verify({}, {"text": "x"}).reason == "echo hi x"
    assert sleepy.name == "tests.helpers_verifiers:SleepyVerifier"


@pytest.mark.parametrize(
    "spec, params, message",
    [
        ("nope", None, "unknown verifier 'nope'; available: .*math.*numeric"),
        ("numeric", {"rel_tol": 1e-3, "tolerance": 1}, "unknown parameter.*tolerance.*allowed: allow_leading_zeros, methods, rel_tol"),
        ("numeric", {"rel_tol": "small"}, "rel_tol"),
        ("math", {"methods": ["boxed", "vibes"]}, "unknown extraction method"),
        ("tests.helpers_verifiers:Missing", None, "cannot load verifier"),
        ("no_such_module:Thing", None, "cannot load verifier"),
        ("selfimprove.verifiers.base:clip", None, "not a Verifier subclass"),
    ],
)
def test_bad_specs_and_params_are_value_errors(spec, params, message):
    with pytest.raises(ValueError, match=message):
        get_verifier(spec, params)


def test_entry_point_verifiers(monkeypatch):
    ep = importlib.metadata.EntryPoint("sleepy", "tests.helpers_verifiers:SleepyVerifier", ENTRY_POINT_GROUP)
    real = importlib.metadata.entry_points

    def entry_points(**kwargs):
        return [ep] if kwargs.get("group") == ENTRY_POINT_GROUP else real(**kwargs)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    assert available_verifiers()["sleepy"] == "entry point tests.helpers_verifiers:SleepyVerifier"
    assert get_verifier("sleepy").verify({}, {"text": "a"}).status == "correct"


def test_fingerprint_has_effective_params():
    fp = get_verifier("numeric", {"rel_tol": 1e-4}).fingerprint()
    assert fp == {
        "name": "numeric",
        "version": "2",
        "params": {"methods": ["boxed", "answer_is", "hash", "last_number"], "rel_tol": 1e-4, "allow_leading_zeros": True},
    }
    assert json.loads(json.dumps(fp)) == fp
    assert get_verifier("numeric").fingerprint() != fp
    assert get_verifier("math", {"methods": ("boxed",)}).params()["methods"] == ["boxed"]


def test_verdict_status_is_checked():
    with pytest.raises(ValueError):
        Verdict("maybe", 0.5, None, "?")


@pytest.mark.parametrize("name", ["numeric", "math"])
@pytest.mark.parametrize("gold", [None, "", "  "])
def test_missing_gold_is_an_error(name, gold):
    verdict = check(get_verifier(name), gold, "\\boxed{5}", "error")
    assert verdict == Verdict("error", 0.0, "5", "problem has no gold answer")


@pytest.mark.parametrize("name", ["numeric", "math"])
@pytest.mark.parametrize("text", ["I am not sure.", "", "\\boxed{}", "The answer is 5. \\boxed{5"])
def test_no_final_answer(name, text):
    assert check(get_verifier(name), "5", text, "no_answer").reason == "no final answer found"


# --- numeric ----------------------------------------------------------------------------------

NUMERIC_CASES = [
    ("72", "She has 8 * 9 = 72 apples.\n#### 72", "correct"),
    ("72", "The answer is $72$.", "correct"),
    ("10000", "\\boxed{10{,}000}", "correct"),
    ("10000", "\\boxed{10\\,000}", "correct"),
    ("10000", "#### 10,000", "correct"),
    ("5", "\\boxed{\\$5}", "correct"),
    ("5", "The answer is 5 dollars.", "correct"),
    ("12", "The answer is 12 apples.", "correct"),
    ("50", "\\boxed{50\\%}", "correct"),
    ("13", "\\boxed{\\text{13}}", "correct"),
    ("40", "\\boxed{40 \\text{ feet}}", "correct"),
    ("16", "\\boxed{016}", "correct"),
    ("-3", "so the change is \\(-3\\).", "correct"),
    ("0.75", "\\boxed{\\frac{3}{4}}", "correct"),
    ("0.75", "\\boxed{\\dfrac34}", "correct"),
    ("3/4", "#### 0.75", "correct"),
    ("918.5", "\\boxed{918\\frac{1}{2}}", "correct"),
    ("1/3", "\\boxed{0.3333333}", "correct"),  # within rel_tol of a non-integer
    ("5", "\\boxed{5.0}", "correct"),
    ("5", "\\boxed{5.001}", "wrong"),
    ("1000000", "\\boxed{999999.9999}", "wrong"),  # an integer must match exactly
    ("1/3", "\\boxed{0.33}", "wrong"),
    ("5", "\\boxed{5 million}", "wrong"),
    ("1", "\\boxed{1 1/2}", "wrong"),
    ("5", "\\boxed{five}", "wrong"),
    ("5", "\\boxed{2+3}", "wrong"),
    ("5", "\\boxed{" + "9" * 150 + "}", "wrong"),
    ("5", "\\boxed{" + "1" * 5000 + "}", "wrong"),
]


@pytest.mark.parametrize("gold, text, status", NUMERIC_CASES)
def test_numeric(gold, text, status):
    check(get_verifier("numeric"), gold, text, status)


def test_numeric_reasons():
    numeric = get_verifier("numeric")
    assert check(numeric, "42", "\\boxed{42}", "correct").reason == "boxed answer 42 == gold 42"
    assert check(numeric, "42", "#### 41", "wrong").reason == "hash answer 41 != gold 42"
    assert check(numeric, "5", "\\boxed{five}", "wrong").reason == "extracted answer is not a number: five"
    verdict = check(numeric, "\\sqrt{2}", "\\boxed{1.414}", "error")
    assert verdict.reason == "gold answer is not numeric: \\sqrt{2}"


def test_numeric_params():
    assert check(get_verifier("numeric", {"allow_leading_zeros": False}), "16", "\\boxed{016}", "wrong")
    assert check(get_verifier("numeric", {"rel_tol": 0}), "1/3", "\\boxed{0.3333333}", "wrong")
    assert check(get_verifier("numeric", {"methods": ["hash"]}), "5", "\\boxed{5}", "no_answer")


# --- math -------------------------------------------------------------------------------------

MATH_CASES = [
    # known Math-Verify false positives
    ("2021", "\\boxed{\\pm 2021}", "wrong"),
    ("\\pm 2021", "\\boxed{2021}", "wrong"),
    ("\\frac{1}{2004!}", "\\boxed{\\frac{1}{2006!}}", "wrong"),
    ("1/2004!", "\\boxed{1/2006!}", "wrong"),
    ("10^{-10}", "\\boxed{10^{-12}}", "wrong"),
    ("1", "\\boxed{1 1/2}", "wrong"),
    ("81", "\\boxed{(x+y)^2=81}", "wrong"),
    ("\\sin^2 t", "\\boxed{\\sin^2 x}", "wrong"),
    ("2", "\\boxed{2s}", "wrong"),  # Math-Verify drops single-letter "units"
    ("2s", "\\boxed{2}", "wrong"),
    ("5r^5", "\\boxed{5}", "wrong"),
    # known false negatives
    ("16", "\\boxed{016}", "correct"),
    ("10000", "\\boxed{10{,}000}", "correct"),
    ("13", "\\boxed{\\text{13}}", "correct"),
    ("\\frac{1}{2004!}", "\\boxed{\\frac{1}{2004!}}", "correct"),
    ("\\pm 2021", "\\boxed{2021, -2021}", "correct"),
    ("\\sin^2t", "\\boxed{\\sin^2 t}", "correct"),
    ("a + b + c", "\\boxed{c+b+a}", "correct"),
    ("\\tan \\frac{x}{2}", "\\boxed{\\tan(x/2)}", "correct"),
    ("5\\sqrt{2}", "\\boxed{5\\sqrt{2}\\text{ cm}}", "correct"),
    ("3", "\\boxed{\\log_2 8}", "correct"),
    ("\\infty", "\\boxed{\\infty}", "correct"),
    # ordinary symbolic work
    ("315", "\\boxed{\\frac{7!}{16}}", "correct"),
    ("\\frac{\\sqrt{3}}{3}", "\\boxed{\\frac{1}{\\sqrt{3}}}", "correct"),
    ("x^2+2x+1", "The answer is $(x+1)^2$.", "correct"),
    ("x^2+2x+1", "\\boxed{x^2+2x+2}", "wrong"),
    ("(-\\infty,1)\\cup(1,\\infty)", "\\boxed{(-\\infty, 1) \\cup (1, \\infty)}", "correct"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\boxed{\\begin{pmatrix}1\\\\2\\end{pmatrix}}", "correct"),
    ("5", "\\boxed{x = 5}", "correct"),
    ("\\frac{3+2\\sqrt{3}}{3}", "\\boxed{1 + \\frac{2\\sqrt{3}}{3}}", "correct"),
    ("\\frac{3+2\\sqrt{3}}{3}", "\\boxed{\\frac{2\\sqrt{3}+4}{3}}", "wrong"),
    ("\\text{(A)}", "\\boxed{A}", "correct"),
    ("0", "\\boxed{[answer]}", "wrong"),
    # hostile answers end quickly, without computing
    ("7", "\\boxed{9^{9^{9^{9^{9}}}}}", "wrong"),
    ("7", "\\boxed{2^{1000000000}}", "wrong"),
    ("7", "\\boxed{(10^{10})!}", "wrong"),
    ("7", "\\boxed{100000!}", "wrong"),
    ("7", "\\boxed{" + "(" * 100 + "7" + ")" * 100 + "}", "wrong"),
    ("7", "\\boxed{" + "\\frac{1}{" * 200 + "7" + "}" * 200 + "}", "wrong"),
]


@pytest.mark.parametrize("gold, text, status", MATH_CASES)
def test_math(gold, text, status):
    started = time.monotonic()
    check(get_verifier("math"), gold, text, status)
    assert time.monotonic() - started < 10  # hard limit; the real cost is milliseconds


def test_math_errors_and_reasons():
    math = get_verifier("math")
    assert check(math, "\\frac{", "\\boxed{5}", "error").reason == "gold answer could not be parsed: \\frac{"
    assert check(math, "42", "\\boxed{42}", "correct").reason == "boxed answer 42 == gold 42"
    verdict = check(math, "\\frac12", "The answer is $0.5$.", "correct")
    assert verdict.extracted == "$0.5$"
    assert "math-verify" not in verdict.reason  # plain numbers take the exact numeric path


# --- agreement with the shared development set ------------------------------------------------

# The labels of labelled_outputs come from NeMo-Skills' grader, which reads only the last
# \boxed{}. These correct final answers are marked another way, so the label says False.
LABEL_READS_ONLY_BOXED = {
    841: "last number: '... is worth \\$675: \\[ V = \\$675 \\]'",
    898: "\\fbox{958}",
}


def _rows(name):
    path = EQUIV / name
    if not path.exists():
        pytest.skip(f"{path} not found: the shared data set lives in ../shared/data beside the repo")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_agreement_on_answer_pairs():
    math = get_verifier("math")
    agree, false_positives, total = 0, [], 0
    for row in _rows("answer_pairs.jsonl"):
        if row["caveat"]:
            continue  # a library convention, not an equivalence
        total += 1
        if row["gold"] is None or row["pred"] is None:
            correct = False  # no answer: never correct
        else:  # these are answers already, so no extraction
            correct = math.compare(row["gold"], row["pred"]).status == "correct"
        agree += correct == row["expected"]
        if correct and not row["expected"]:
            false_positives.append(row["id"])
    assert false_positives == []
    assert agree / total >= 0.95, f"agreement {agree}/{total}"


def test_agreement_on_labelled_outputs():
    math = get_verifier("math")
    rows = _rows("labelled_outputs.jsonl")
    agree, false_positives = 0, set()
    for row in rows:
        problem = {"question": row["problem"], "answer": row["gold_answer"], "metadata": {}}
        correct = math.verify(problem, {"text": row["model_output"]}).status == "correct"
        agree += correct == row["label"]
        if correct and not row["label"] and not row["review_flag"]:
            false_positives.add(row["id"])
    assert false_positives <= set(LABEL_READS_ONLY_BOXED), false_positives - set(LABEL_READS_ONLY_BOXED)
    assert agree / len(rows) >= 0.97, f"agreement {agree}/{len(rows)}"
