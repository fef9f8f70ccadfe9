import json

import pytest

from tests.conftest import SHARED
from selfimprove.verifiers import extract_answer
from selfimprove.verifiers.extract import final_answer, trim_after_answer


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so the total is \boxed{42}.", ("42", "boxed")),
        (r"\boxed{\frac{1}{2}}", (r"\frac{1}{2}", "boxed")),
        (r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}", (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", "boxed")),
        (r"first \boxed{1}, then on reflection \boxed{2}", ("2", "boxed")),
        (r"there remain $\fbox{958}$ values", ("958", "boxed")),
        (r"\boxed {7}", ("7", "boxed")),
        (r"\boxed{\{1, 2\}}", (r"\{1, 2\}", "boxed")),  # escaped braces do not count
        (r"\boxed{\boxed{5}}", ("5", "boxed")),
    ],
)
def test_boxed(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        r"The answer is 5. \boxed{12",  # the last box is cut off
        r"The answer is 5. \boxed{1} and finally \boxed{}",  # the last box is empty
        r"\boxed{\frac{1}{2}",
    ],
)
def test_last_box_empty_or_unbalanced_means_no_answer(text):
    # A text that uses boxes has its final answer in the last one; earlier answers do not count.
    assert extract_answer(text) is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Adding them up, the answer is 42.", "42"),
        ("The final answer is $\\frac{1}{2}$. I hope it is correct.", "$\\frac{1}{2}$"),
        ("THE ANSWER IS 3.5.", "3.5"),
        ("Answer: 7", "7"),
        ("**Answer:** 7", "7"),
        ("so answer = 12\nDone", "12"),
        ("The answer is 1. Wait, no. The answer is 2.", "2"),
        ("The answer is: 10 apples\nThanks for reading!", "10 apples"),
    ],
)
def test_answer_is(text, expected):
    assert extract_answer(text) == (expected, "answer_is")


def test_answer_is_stops_at_the_line():
    # "The answer is:" at the end of a line has no answer on that line; nothing is invented.
    assert extract_answer("The answer is:\nlet me think", methods=("answer_is",)) is None


def test_hash():
    assert extract_answer("She pays 3 * 4 = 12.\n#### 1,234") == ("1,234", "hash")
    assert extract_answer("#### 5\nWait, I miscounted one.\n#### 6\n") == ("6", "hash")  # a corrected answer
    assert extract_answer("#### 5\nmore\n#### 6\n") is None  # two different final answers, no correction
    assert extract_answer("so the answer = 48 points, plus 18.\n#### 66") == ("66", "hash")  # a remark along the way


def test_priority_and_methods():
    # The last explicit statement (box, "answer is", ####) is the final answer; the methods say which
    # kinds count. Corrections between them keep this from being two different final answers.
    text = "#### 5\nWait, no. The answer is 6.\nOops, a mistake again: \\boxed{7}\nThe end 8."
    assert extract_answer(text) == ("7", "boxed")
    assert extract_answer(text, methods=("answer_is", "hash")) == ("6", "answer_is")
    assert extract_answer(text, methods=("hash",)) is None  # "#### 5", then "Wait, no. The answer is 6.": taken back
    assert extract_answer(text, methods=("last_number",)) == ("8", "last_number")
    assert extract_answer("#### 5\nThe answer is 6.\n\\boxed{7}") is None  # three different answers
    with pytest.raises(ValueError, match="unknown extraction method"):
        extract_answer(text, methods=("boxed", "vibes"))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Janet has 18 apples.", "18"),
        ("So the change is -3.5 dollars.", "-3.5"),
        ("In total 1,234,567 people.", "1,234,567"),
        ("Each gets 3/4 of a pie.", "3/4"),
        ("x = 5", "5"),
        ("$$x = 42$$", "42"),
        ("\\[ V = \\$675 \\]", "675"),
    ],
)
def test_last_number(text, expected):
    assert extract_answer(text) == (expected, "last_number")


@pytest.mark.parametrize(
    "text",
    [
        "The answer was computed above: 42." + " And that is all there is to say about it." * 6,  # far from the end
        "so the sum is 13 and so the final answer",  # ends mid-sentence: cut off
        "we get x = 3^2.",  # an exponent
        "the point is (6, 1).",  # a tuple
        "the values are 1,2,3.",
        "so it equals 2x-5.",
        "we get \\frac{207}{64}.",
        "it is 5! ways.",
        "the total is 5\\pi.",
        "no numbers here.",
        "",
    ],
)
def test_last_number_refuses(text):
    assert extract_answer(text) is None


def test_truncated_output_gets_no_last_number():
    sample = {"text": "adding gives 42.", "finish_reason": "length"}
    assert final_answer(sample) is None
    assert final_answer({**sample, "finish_reason": "stop"}) == ("42", "last_number")
    assert final_answer({"text": "\\boxed{42}", "finish_reason": "length"}) == ("42", "boxed")


def test_nul_bytes_and_lone_surrogates():
    assert extract_answer("a\x00b \\boxed{7} \x00") == ("7", "boxed")
    assert extract_answer("\ud800\udfff \\boxed{7}") == ("7", "boxed")
    answer, _ = extract_answer("The answer is \ud800 5")
    answer.encode("utf-8")  # the lone surrogate is replaced, so the answer can be stored
    assert extract_answer("\x00" * 100) is None
    assert extract_answer(None) is None


def test_hostile_sizes_extract_the_right_answer_or_none():
    """Megabyte outputs of every shape that trips a naive parser. (What they cost is measured by
    `make bench BENCH=verify`, verify_hostile_max_item_s; the verify pool's hard limit caps it.)"""
    mb = 1_000_000
    cases = {
        "x" * mb + " \\boxed{7}": ("7", "boxed"),
        "\\boxed{1} " * 50 + "and \\boxed{2}": None,  # boxes side by side with different values: ambiguous
        "\\boxed{1} " * 50 + "\nWait, I miscounted. \\boxed{2}": ("2", "boxed"),
        "\\boxed{1}" * 50_000: ("1", "boxed"),
        "\\boxed{" + "{" * mb: None,
        "\\boxed" * (mb // 6): None,
        "The answer is " + "9" * mb: ("9" * mb, "answer_is"),
        "a " * (mb // 2) + "1" * mb + ".": None,  # a million-digit "number"
        "1 " * (mb // 2) + "end.": ("1", "last_number"),
        "{" * mb + "}" * mb: None,
    }
    for text, expected in cases.items():
        assert extract_answer(text) == expected, text[:40]


# --- trimming a completion after its final answer ---------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("2 + 2 = 4.\nThe answer is 4.\n\nThe answer is 4.", "2 + 2 = 4.\nThe answer is 4."),
    ("So x = 3, hence \\boxed{3}. I hope this helps!", "So x = 3, hence \\boxed{3}."),
    ("48 + 18 = 66\n#### 66\nThanks for asking", "48 + 18 = 66\n#### 66"),
    ("The answer is 4. Wait, 2 * 3 = 6, so the answer is 6.\nGood luck!",
     "The answer is 4. Wait, 2 * 3 = 6, so the answer is 6."),  # the first statement of the *final* answer
])
def test_trim_after_answer_cuts_the_chatter_after_the_final_answer(text, expected):
    assert trim_after_answer(text) == expected
    assert extract_answer(trim_after_answer(text)) == extract_answer(text)


@pytest.mark.parametrize("text", [
    "2 + 2 = 4, then 4 + 1 = 5",           # last-number answer: no marker to cut after
    "I do not know.",                       # no answer at all
    "The answer is \\boxed{",               # cut off inside the box: no answer
    "The answer is 7.",                     # nothing after it
    "3 + 5 = 8.\n\nThe answer is 8.\n\nHowever, it could be 9 marbles in this scenario",  # taken back: no answer
])
def test_trim_after_answer_leaves_texts_without_a_marked_answer_or_chatter_alone(text):
    assert trim_after_answer(text) == text


def test_trim_after_answer_never_changes_the_answer_of_real_model_outputs():
    """On every labelled MATH output: the trimmed text is a prefix with the same final answer."""
    path = SHARED / "equiv" / "labelled_outputs.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not found: the shared data set lives in ../shared/data beside the repo")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    trimmed = 0
    for row in rows:
        text = row["model_output"]
        cut = trim_after_answer(text)
        assert text.startswith(cut) and extract_answer(cut) == extract_answer(text), row["id"]
        trimmed += cut != text
    assert trimmed > 0
