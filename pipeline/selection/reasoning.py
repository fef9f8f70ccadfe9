"""Does a rationale reason, or only state its answer?

A right answer alone ("The answer is 28.", "1. The answer is 6.") is not a rationale: trained
on, it teaches the next model to guess. The rule is on content, not length. With the statement
of the final answer taken out ("the answer is ..." to the end of its sentence, `\\boxed{...}`,
a `#### ...` line, list markers), what is left must hold a step:

- a calculation or relation: two quantities joined by an operator or relation sign
  (`3 + 4`, `x = 5`, `12 / 3`, `2 \\times 6`, `a \\le b`), or a LaTeX fraction or root;
- a quantity other than the final answer (a number from the problem, an intermediate result);
- or, for answers that are not numbers (a choice, a name), two content words of the question
  ("Paris is the capital of France" for "What is the capital of France?").

Filler ("Let's think step by step. Sure!") holds none of these. Everything is linear in the
length of the text.
"""

from __future__ import annotations

import re

_ANSWER_PHRASE = re.compile(r"\b(?:the\s+)?(?:final\s+)?answer\b\s*(?:is\b|:|=)[^\n]*?(?:[.?!](?=\s|$)|$)",
                            re.I | re.M)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{[^{}]*(?:\{[^{}]*\}[^{}]*)*\}")
_HASH_LINE = re.compile(r"^\s*####.*$", re.M)
_LIST_MARKER = re.compile(r"^\s*(?:\d{1,3}[.)]|[-*•]|step\s+\d+\s*[:.])\s*", re.I | re.M)
_QUANTITY = r"(?:\d+(?:[.,]\d+)*|\b[a-zA-Z]\b|[)\]}])"
_OPERAND = r"(?:\d|\b[a-zA-Z]\b|[(\\$])"
_RELATION = r"(?:[-+*/×÷=<>≤≥≠^]|\\(?:times|cdot|div|le|ge|leq|geq|neq|approx|pm))"
_CALCULATION = re.compile(_QUANTITY + r"\s*" + _RELATION + r"\s*" + _OPERAND + r"|\\(?:d?frac|sqrt)\b")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_WORD = re.compile(r"[^\W\d_]{4,}")
STOPWORDS = frozenset(
    "that this with from have what which there their they them then than when where will would "
    "could should about into each many much more most some such only also been were your does "
    "make made over very just like answer final step steps think solve problem question".split()
)


def _numbers(text: str) -> set[str]:
    return {n.replace(",", "").rstrip("0").rstrip(".") if "." in n else n.replace(",", "")
            for n in _NUMBER.findall(text)}


def without_answer(text: str) -> str:
    """The text with its statements of the final answer and its list markers taken out."""
    body = _HASH_LINE.sub(" ", text)
    body = _BOXED.sub(" ", body)
    body = _ANSWER_PHRASE.sub(" ", body)
    return _LIST_MARKER.sub(" ", body)


def shows_work(text: str, answer: str | None = None, question: str | None = None) -> bool:
    """True when `text` holds a reasoning step besides the statement of its final answer."""
    body = without_answer(text or "")
    if _CALCULATION.search(body):
        return True
    if _numbers(body) - _numbers(answer or ""):
        return True
    if question:
        asked = {w.lower() for w in _WORD.findall(question)} - STOPWORDS
        used = {w.lower() for w in _WORD.findall(body)} & asked
        return len(used) >= 2
    return False
