"""Precision first: an output that states no single, clear final answer is never accepted.

tests/cases/answer_precision.jsonl holds outputs written for these tests, by kind: a final answer
taken back later ("retracted"), two different final answers ("two_answers"), a scale word that
changes the value ("scale_word"), an answer only inside code ("code_only"), an invisible,
combining or control character in the number ("invisible"). Every kind has wrong outputs (the
gold answer is the value a careless reader would take) and right ones of the same shape.
"""

import json
import time
from pathlib import Path

import pytest

from tests.conftest import selfimprove
from selfimprove.verifiers import get_verifier
from selfimprove.verifiers.extract import find_answer, mask_code, number_flaw
from selfimprove.verifiers.numeric import parse_number

CASES = Path(__file__).parent / "cases" / "answer_precision.jsonl"
ROWS = [json.loads(line) for line in CASES.read_text(encoding="utf-8").splitlines() if line.strip()]
# What a refusal's reason names, per kind (scale words are compared with their value instead).
REASON = {"retracted": "retracted", "two_answers": "ambiguous", "code_only": "code block", "invisible": "next to a digit"}


def verify(name, gold, text, metadata=None):
    verdict = get_verifier(name).verify({"question": "q", "answer": gold, "metadata": metadata or {}},
                                        {"text": text, "finish_reason": "stop"})
    assert verdict.reason
    return verdict


def test_the_case_file_covers_every_kind_both_ways():
    wrong = [r for r in ROWS if not r["label"]]
    assert len(wrong) >= 25
    for kind in [*REASON, "scale_word"]:
        labels = {r["label"] for r in ROWS if r["kind"] == kind}
        assert labels == {True, False}, kind


@pytest.mark.parametrize("name", ["numeric", "math"])
@pytest.mark.parametrize("row", ROWS, ids=[r["id"] for r in ROWS])
def test_cases(name, row):
    verdict = verify(name, row["gold_answer"], row["model_output"])
    if row["label"]:
        assert verdict.status == "correct", verdict
    elif row["kind"] in REASON:
        assert verdict.status == "no_answer" and REASON[row["kind"]] in verdict.reason, verdict
    else:  # a scale word is applied: "3 dozen" is compared as 36, never as 3
        assert verdict.status == "wrong" and "!= gold" in verdict.reason, verdict


def test_reasons_say_what_was_refused():
    assert verify("numeric", "18", "The answer is 18. Hmm, actually the final total is 23.").reason == \
        "no final answer: retracted: stated 18, later 23"
    assert "two different final answers in '6 or 8'" in verify("numeric", "6", "The answer is 6 or 8.").reason
    assert verify("numeric", "3", "So she bought 3 dozen.").reason == "last_number answer 36 != gold 3"
    assert "only inside a code block" in verify("numeric", "8", "Run it:\n```\nprint(8)\n```\n```\n8\n```").reason
    assert "U+200B" in verify("numeric", "4", "The answer is 4\u200b2.").reason
    assert verify("numeric", "5", "I am not sure.").reason == "no final answer found"


@pytest.mark.parametrize("text", [
    "The answer is 7. So the total is 7 apples.",                 # a restatement
    "3 + 4 = 7, 7 * 2 = 14. So 14 / 2 = 7 per bag. The answer is 7.",  # intermediate results before the answer
    "The answer is 7.\nLet me check: 3 + 4 = 7, and 14 - 7 = 7. Yes.",
    "The answer is 7.\n\nI hope this helps! Ask me 2 more questions any time.",
    "\\boxed{7}. Alternatively, add 3 and 4 in the other order: it is 7 again.",
    "The answer is 6.\nWait, I forgot the one in the bag: 6 + 1 = 7.\nThe answer is 7.",
    "**Final Answer**\nEarlier I boxed \\boxed{6} by mistake; the final answer is \\boxed{7}",
    "Total so far: answer = 4 cows, 3 pigs.\n#### 7",            # a remark before the #### line
])
def test_ordinary_outputs_are_not_refused(text):
    assert verify("numeric", "7", text).status == "correct"


def test_box_groups_are_one_answer_or_two():
    assert find_answer("The integers are \\boxed{-2} and \\boxed{1}.").answer == "-2, 1"
    assert find_answer("$\\boxed{3}$, that is, $\\boxed{3}$").answer == "3"
    assert find_answer("so $\\boxed{3}$ or $\\boxed{4}$").answer is None
    assert find_answer("\\boxed{3}\\boxed{4}").answer is None
    assert verify("math", "1, -2", "The integers are \\boxed{-2} and \\boxed{1}.").status == "correct"
    # two boxes that differ as text but not in value (the math verifier's own equivalence)
    text = "So $r = \\boxed{\\frac{3 + 2\\sqrt{3}}{3}}$, that is, dividing by 3, $\\boxed{1 + \\frac{2\\sqrt{3}}{3}}$"
    assert verify("math", "\\frac{3+2\\sqrt{3}}{3}", text).status == "correct"
    assert verify("math", "x+1", "\\boxed{x+1}. Alternatively \\boxed{x-1}").status == "no_answer"


def test_unions_written_with_or_are_one_answer():
    assert find_answer("The answer is $x < -1$ or $x > 3$.").answer == "$x < -1$ or $x > 3$"


@pytest.mark.parametrize("name, params, gold, metadata", [
    ("exact", {}, "7", None),
    ("regex", {"pattern": "{gold}"}, "7", None),
    ("choice", {}, "A", {"options": ["7", "8"]}),
])
def test_the_other_verifiers_share_the_guards(name, params, gold, metadata):
    def status(text):
        return get_verifier(name, params).verify({"question": "q", "answer": gold, "metadata": metadata or {}},
                                                 {"text": text, "finish_reason": "stop"}).status

    assert status("The answer is 7.") == "correct"
    assert status("The answer is 7. Hmm, actually it should be 8.") == "no_answer"
    assert status("\\boxed{7} or \\boxed{8}") == "no_answer"
    assert status("```\nThe answer is 7.\n```") == "no_answer"
    assert status("The answer is 7\u200b.") == "no_answer"


def test_scale_words_are_applied_or_refused():
    assert parse_number("3 dozen") == 36
    assert parse_number("2 \\text{ million}") == 2_000_000
    assert parse_number("2 hundred thousand dollars") == 200_000
    assert parse_number("5 squared") == 25 and parse_number("2 cubed") == 8
    assert parse_number("5 cm squared") is None  # a word between: not a plain number
    assert verify("math", "5\\sqrt{2}", "\\boxed{5\\sqrt{2}\\text{ million}}").status == "wrong"


def test_invisible_and_control_characters_break_a_number():
    assert number_flaw("4\u200b2") and number_flaw("5\u0338") and number_flaw("9\x08") and number_flaw("5\u00b2")
    assert number_flaw("42") is None and number_flaw("x\u200by 42 \u00e9") is None
    assert parse_number("4\u200b2") is None


def test_code_is_masked_linearly():
    masked, had = mask_code("a\n```python\nprint(1)\n```\nb\n~~~\nc\n~~~\n[asy]draw(1);[/asy]\nd")
    assert had and "print" not in masked and "c" not in masked.split() and "draw" not in masked
    assert mask_code("no code here") == ("no code here", False)
    assert "x" not in mask_code("```\nx")[0]  # an unclosed block runs to the end


def test_hostile_shapes_end_quickly():
    mb = 1_000_000
    texts = [
        "\\boxed{" * 100_000 + "7" + "}" * 100_000,
        "```\n" * 200_000,
        "".join(f"The answer is {i}. " for i in range(50_000)),
        "The answer is 5. " + "Hmm, wait, it is 6. " * 50_000,
        "The answer is " + "6 or " * 200_000 + "8",
        "4\u200b" * 400_000 + ".",
        "$" * mb + ".",
        "The answer is 5. the total " + "x" * mb,
    ]
    for text in texts:
        started = time.monotonic()
        find_answer(text, ("boxed", "answer_is", "hash", "last_math", "last_number"))
        assert time.monotonic() - started < 2.0, text[:40]


def test_verifiers_check_finds_no_false_positive_in_the_case_file():
    for name in ("numeric", "math"):
        out = selfimprove("verifiers", "check", "--verifier", name, "--cases", CASES, "--json").stdout
        figures = json.loads(out.strip().splitlines()[-1])
        assert figures["false_positives"] == 0 and figures["false_negatives"] == 0, out
