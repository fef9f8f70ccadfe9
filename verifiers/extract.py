"""Find the final answer in a model's output.

Methods, in the default order of priority (the first that finds something wins):

- "boxed": the content of the last \\boxed{...} or \\fbox{...}, braces balanced (nested braces
  and escaped \\{ \\} handled). A text that uses boxes has its final answer in the last one:
  if that box is empty or unbalanced (output cut off), there is no answer at all, and no
  other method is tried: an earlier box or an "answer is" before it is not the final answer.
- "answer_is": the last "The (final) answer is X", "Answer: X" or "answer = X" (any case);
  X runs to the end of its sentence or line, trailing period removed. Not used when a "####"
  line comes after it: that line, not a remark along the way, states the final answer.
- "hash": the last GSM8K-style "#### X", X to the end of its line.
- "last_number": the last number of the text (-12, 1,234.5, 3/4). A weak fallback, so to stay
  precision-first it applies only when
    * the number lies in the final LAST_NUMBER_WINDOW (200) characters of the stripped text;
    * it stands alone, not glued to an expression or a tuple (x2, 3^2, 2x, 5!, x-5, \\frac{1}{64},
      (6, 1), 1,2,3 give nothing), since a piece of an expression is not the answer;
    * the text does not end mid-sentence (a letter, comma or operator last), because an output
      cut off mid-sentence has no final answer, whatever number came before the cut.

Everything is linear in the length of the text and safe on hostile input (1 MB, NUL bytes,
lone surrogates, thousands of \\boxed).
"""

from __future__ import annotations

import re
from typing import Sequence

METHODS = ("boxed", "answer_is", "hash", "last_number")
LAST_NUMBER_WINDOW = 200
MAX_NUMBER_CHARS = 1000  # a longer digit run is not a final answer

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE_OR_ESCAPE = re.compile(r"\\.|[{}]", re.S)
_ANSWER_IS = re.compile(r"\banswer\b\s*(?:is\b\s*:?|:|=)", re.I)
_SENTENCE_END = re.compile(r"[.?](?=\s|$)")  # not "!": 5! is a factorial
_DIGITS = re.compile(r"\d+")
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|-?\.\d+")
# A standalone number is not glued to these on either side.
_GLUE_BEFORE = set("^_{})]\\/*.!+-−")
_GLUE_AFTER = set("^_{}()[]/*!")
# LaTeX commands that may follow a standalone number (closing math, spacing, units, percent).
_OK_AFTER = re.compile(r"\\(?:\]|\)|%|\$|,|;|:|!| |text|mbox|mathrm|quad|qquad|\\)")
# What the last character of a finished output can be.
_FINISHED_END = set(".!?)]}$%*\"'`>|。！？") | set("0123456789")


def clean_text(text: str) -> str:
    """Replace lone surrogates (invalid UTF-8) so answers and reasons can be written to Parquet."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def _boxed(text: str) -> str | None:
    last = None
    for last in _BOX.finditer(text):
        pass
    if last is None:
        return None
    depth = 1
    for m in _BRACE_OR_ESCAPE.finditer(text, last.end()):
        c = m.group()
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[last.end() : m.start()]
    return ""  # unbalanced: the output was cut off inside the box


def _rest_of_line(text: str, start: int) -> str:
    end = text.find("\n", start)
    return text[start : end if end >= 0 else len(text)]


def _tidy(answer: str) -> str:
    answer = answer.strip().strip("*").strip()
    return answer[:-1].rstrip() if answer.endswith(".") else answer


def _answer_is(text: str) -> str | None:
    last = None
    for last in _ANSWER_IS.finditer(text):
        pass
    if last is None or text.find("####", last.end()) >= 0:
        return None  # a later "####" line is the final answer ("so the answer = 48 points ... #### 66")
    line = _rest_of_line(text, last.end())
    stop = _SENTENCE_END.search(line)
    return _tidy(line[: stop.start()] if stop else line)


def _hash(text: str) -> str | None:
    pos = text.rfind("####")
    if pos < 0:
        return None
    return _tidy(_rest_of_line(text, pos + 4).lstrip("#"))


def _last_number(text: str) -> str | None:
    text = text.rstrip()
    if not text or text[-1] not in _FINISHED_END:
        return None  # ends mid-sentence: cut off, no final answer
    last = None
    for last in _DIGITS.finditer(text, max(0, len(text) - LAST_NUMBER_WINDOW)):
        pass
    if last is None:
        return None
    start, end = last.start(), last.end()
    # Grow the digit run into the whole token (thousands separators, decimals, a fraction, a sign).
    while start > 0 and text[start - 1] in "0123456789,./" and end - start < MAX_NUMBER_CHARS:
        start -= 1
    if start > 0 and text[start - 1] == "-" and (start < 2 or not text[start - 2].isalnum()):
        start -= 1
    token = text[start:end]
    if end - start >= MAX_NUMBER_CHARS or not _NUMBER.fullmatch(token):
        return None
    before = text[start - 1] if start > 0 else " "
    after = text[end] if end < len(text) else " "
    if before in _GLUE_BEFORE or after in _GLUE_AFTER or before.isalpha() or after.isalpha():
        return None
    if after in ".," and text[end + 1 : end + 2].isdigit():
        return None
    if after == "\\" and not _OK_AFTER.match(text, end):
        return None  # 5\pi, 2\sqrt{3}
    return token


_EXTRACTORS = {"boxed": _boxed, "answer_is": _answer_is, "hash": _hash, "last_number": _last_number}


def check_methods(methods: Sequence[str]) -> tuple[str, ...]:
    """Validate a methods list (from a config); returns it as a tuple."""
    if isinstance(methods, str) or not all(isinstance(m, str) for m in methods):
        raise ValueError(f"methods must be a list of names from {list(METHODS)}, got {methods!r}")
    unknown = [m for m in methods if m not in _EXTRACTORS]
    if unknown:
        raise ValueError(f"unknown extraction method(s) {unknown}; allowed: {list(METHODS)}")
    if not methods:
        raise ValueError(f"methods must name at least one of {list(METHODS)}")
    return tuple(methods)


def extract_answer(text: str, methods: Sequence[str] = METHODS) -> tuple[str, str] | None:
    """(answer, method) from the first method that finds a non-empty answer, else None."""
    check_methods(methods)
    if not isinstance(text, str) or not text:
        return None
    text = clean_text(text)
    for method in methods:
        answer = _EXTRACTORS[method](text)
        if answer is None:
            continue
        if answer.strip():
            return answer.strip(), method
        if method == "boxed":
            return None  # the last box is empty or cut off: no final answer
    return None


def final_answer(sample: dict, methods: Sequence[str] = METHODS) -> tuple[str, str] | None:
    """extract_answer on a sample's "text". An output cut off by the token limit
    (finish_reason "length") gets no last-number fallback: the number before the cut is just
    the last thing the model wrote, not its final answer."""
    if sample.get("finish_reason") == "length":
        methods = tuple(m for m in methods if m != "last_number")
        if not methods:
            return None
    return extract_answer(sample.get("text"), methods)


_ANSWER_MARK = re.compile(r"\\(?:boxed|fbox)\s*\{|\banswer\b\s*(?:is\b\s*:?|:|=)|####", re.I)
MAX_TRIM_MARKS = 50  # cut points tried; a text stating its answer more often is left whole


def trim_after_answer(text: str, methods: Sequence[str] = METHODS) -> str:
    """The text up to the end of the first statement of its final answer, chatter after it removed.

    "... The answer is 4.\\n\\nThe answer is 4. I hope this helps!" -> "... The answer is 4."
    Training on the trailing chatter teaches a model to ramble (or to repeat the answer line).
    Cut points are the ends of the sentences (and lines) that hold an answer marker ("answer
    is", \\boxed, ####); the first whose prefix gives the same final answer by the same method
    wins. A text without an explicit marker (last-number answers), or whose every cut changes
    its answer, is returned unchanged, so trimming never changes what a verifier accepted.
    """
    if not isinstance(text, str) or not text:
        return text
    final = extract_answer(text, methods)
    if final is None or final[1] == "last_number":
        return text
    for i, mark in enumerate(_ANSWER_MARK.finditer(text)):
        if i >= MAX_TRIM_MARKS:
            break
        line_end = text.find("\n", mark.end())
        line_end = len(text) if line_end < 0 else line_end
        stop = _SENTENCE_END.search(text, mark.end(), line_end)
        for cut in ([stop.end()] if stop else []) + [line_end]:
            head = text[:cut].rstrip()
            if extract_answer(head, methods) == final:
                return head
    return text
