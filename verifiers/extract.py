"""Find the final answer in a model's output, precision first.

Explicit statements of an answer are \\boxed{...} / \\fbox{...} (braces balanced, escaped \\{ \\}
handled), "The (final) answer is X" / "Answer: X" / "answer = X" (X to the end of its sentence
or line), and GSM8K's "#### X". The last of them in the text is the final answer, with these
rules, in this order:

- fenced code blocks (``` or ~~~, an unclosed one to the end) and [asy] drawings are not prose:
  an answer found only inside code is not a stated answer;
- if the last box is empty or unbalanced (output cut off), there is no answer at all;
- boxes side by side in one statement ("\\boxed{-2} and \\boxed{1}") are one list answer "-2, 1";
  boxes joined by "or", or juxtaposed with different values, are two final answers: ambiguous;
- an earlier statement of a different value makes the text ambiguous, unless a correction
  ("wait", "actually", "mistake", "Final Answer", ...) comes between the two: then the last
  explicit statement is clear. An "answer = 48" remark before a "####" line does not count;
- after the final statement, an assertion of a different result ("the final total is 23", or
  after "hmm/actually/however" "it should be 45") retracts it: no answer;
- an answer offering alternatives ("6 or 8", "either 3 or 4") is ambiguous;
- a digit with an invisible, combining or control character (or a superscript) right next to
  it is not a number: "4<zero-width space>2" reads as 42 and is neither 4 nor 42.

Without an explicit statement, two weak fallbacks may apply (in `methods` order):

- "last_math" (the math verifier's default, not numeric's): the inline formula of the concluding
  sentence ("Therefore $x \\geq 5$ is the solution."), when that sentence holds exactly one;
- "last_number": the last number of the text (-12, 1,234.5, 3/4), only when it lies in the final
  LAST_NUMBER_WINDOW characters, stands alone (not x2, 3^2, 2x, 5!, (6, 1), 1,2,3, \\frac{1}{64})
  and the text does not end mid-sentence; a scale word after it ("3 dozen", "4 thousand",
  "5 squared") is kept with it, so the value is compared with the word, never without it.

Everything is linear in the length of the text and safe on hostile input (1 MB, NUL bytes,
lone surrogates, thousands of \\boxed).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Sequence

METHODS = ("boxed", "answer_is", "hash", "last_number")  # the default
ALL_METHODS = METHODS + ("last_math",)
EXPLICIT = ("boxed", "answer_is", "hash")
NO_ANSWER = "no final answer found"
LAST_NUMBER_WINDOW = 200
MAX_NUMBER_CHARS = 1000  # a longer digit run is not a final answer
MAX_STATEMENTS = 20  # earlier statements compared with the final one
MAX_KEY_CHARS = 200  # longer answers are not compared with each other
MAX_BOX_CHARS = 10_000  # a box not closed within this is cut off (and too long to be an answer)

_BRACE_OR_ESCAPE = re.compile(r"\\.|[{}]", re.S)
_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
# On a lowercased copy (same length), so the search can jump to each "answer"; \b before it is checked apart.
_ANSWER_IS = re.compile(r"answer\b\s*(?:is\b\s*:?|:|=)")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
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
_FENCE = re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})", re.M)
SCALE_WORDS = {"dozen": 12, "hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9,
               "trillion": 10**12, "squared": 2, "cubed": 3}  # squared/cubed: powers
_SCALE_AFTER = re.compile(r"\s+((?:dozen|hundred|thousand|million|billion|trillion)s?|squared|cubed)\b", re.I)
# Next to an ASCII digit: a non-ASCII character (checked by category) or an ASCII control.
_DIGIT_NEIGHBOUR = re.compile(r"(?<=[0-9])[^\t\n\r\x20-\x7e]|[^\t\n\r\x20-\x7e](?=[0-9])")
_BAD_CATEGORIES = {"Cc", "Cf", "Mn", "Me", "Co", "Cn", "No"}


Same = Callable[[str, str], bool]


@dataclass(frozen=True)
class Found:
    """A final answer and the method that found it, or (answer None) the reason there is none."""

    answer: str | None
    method: str | None = None
    reason: str = NO_ANSWER


@dataclass(frozen=True)
class _Statement:
    start: int
    end: int
    answer: str
    method: str


def clean_text(text: str) -> str:
    """Replace lone surrogates (invalid UTF-8) so answers and reasons can be written to Parquet."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def mask_code(text: str) -> tuple[str, bool]:
    """The text with fenced code blocks (``` or ~~~; an unclosed one runs to the end) and [asy]
    drawings replaced by a line break, and whether there were any. Code states no answer."""
    parts, pos, fence = [], 0, None
    for m in _FENCE.finditer(text):
        mark = m.group(1)
        if fence is None:
            parts.append(text[pos : m.start()])
            fence = mark
        elif mark[0] == fence[0] and len(mark) >= len(fence):
            line_end = text.find("\n", m.end())
            pos = len(text) if line_end < 0 else line_end
            parts.append("\n")
            fence = None
    if parts:
        parts.append(text[pos:] if fence is None else "\n")
        text = "".join(parts)
    return _mask_asy(text, bool(parts))


def _mask_asy(text: str, had_code: bool) -> tuple[str, bool]:
    """Asymptote drawings ([asy] ... [/asy], in MATH solutions) are code too."""
    start = text.find("[asy]")
    if start < 0:
        return text, had_code
    parts, pos = [], 0
    while start >= 0:
        end = text.find("[/asy]", start)
        parts.append(text[pos:start] + "\n")
        pos = len(text) if end < 0 else end + len("[/asy]")
        start = text.find("[asy]", pos)
    parts.append(text[pos:])
    return "".join(parts), True


def number_flaw(text: str) -> str | None:
    """Why a digit in text is not part of a plain number (an invisible, combining, control or
    superscript character right next to it), or None. Only the first MAX_BOX_CHARS are read: a
    longer answer is refused for its length anyway."""
    text = text[:MAX_BOX_CHARS]
    for m in _DIGIT_NEIGHBOUR.finditer(text):
        c = m.group()
        if unicodedata.category(c) in _BAD_CATEGORIES:
            return f"invisible, combining, control or superscript character U+{ord(c):04X} next to a digit: not a number"
    return None


# --- explicit statements ----------------------------------------------------------------------------

def _box_end(text: str, inner: int) -> int | None:
    """Where the box whose content starts at `inner` closes (the index of its "}"), or None when it
    does not close within MAX_BOX_CHARS (cut off, or no answer anyway)."""
    depth = 1
    for m in _BRACE_OR_ESCAPE.finditer(text, inner, min(len(text), inner + MAX_BOX_CHARS)):
        c = m.group()
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return m.start()
    return None


def _box_starts(text: str) -> list[re.Match] | None:
    """The last MAX_STATEMENTS box openings, searched backwards from the end (each occurrence of
    "\\boxed" or "\\fbox" is looked at once); None after MAX_BOX_CHARS that open no box."""
    opened, tries = [], 0
    boxed, fbox = text.rfind("\\boxed"), text.rfind("\\fbox")
    while (boxed >= 0 or fbox >= 0) and len(opened) < MAX_STATEMENTS:
        pos = max(boxed, fbox)
        if (m := _BOX.match(text, pos)) is not None:
            opened.insert(0, m)
        else:
            tries += 1
            if tries > MAX_BOX_CHARS:
                return None
        if pos == boxed:
            boxed = text.rfind("\\boxed", 0, pos)
        else:
            fbox = text.rfind("\\fbox", 0, pos)
    return opened


def _boxes(text: str) -> tuple[list[_Statement], bool]:
    """The last MAX_STATEMENTS balanced boxes, and whether the last box is cut off or empty."""
    opened = _box_starts(text)
    if opened is None:
        return [], True  # thousands of "\\boxed" without a brace: refuse, do not search on
    if not opened:
        return [], False
    boxes = []
    for m in opened:
        close = _box_end(text, m.end())
        if close is not None:
            boxes.append(_Statement(m.start(), close + 1, text[m.end() : close].strip(), "boxed"))
    cut_off = not boxes or boxes[-1].start != opened[-1].start() or not boxes[-1].answer
    return boxes, cut_off


def _lower(text: str) -> str:
    """text lowercased, same length, so positions carry over (str.lower is fast but may change the
    length, as for "İ"; the ASCII-only translation is exact but slow on non-ASCII text)."""
    low = text.lower()
    return low if len(low) == len(text) else text.translate(_ASCII_LOWER)


def _tidy(answer: str) -> str:
    answer = answer.strip().strip("*").strip()
    return answer[:-1].rstrip() if answer.endswith(".") else answer


def _answer_is(text: str) -> list[_Statement]:
    found = []
    marks = [m for m in _ANSWER_IS.finditer(_lower(text))
             if (i := m.start()) == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")]
    marks = marks[-MAX_STATEMENTS:]
    for m, following in zip(marks, [n.start() for n in marks[1:]] + [len(text)]):
        line_end = text.find("\n", m.end(), following)
        line_end = following if line_end < 0 else line_end  # an answer ends where the next one begins
        stop = _SENTENCE_END.search(text, m.end(), line_end)
        end = stop.start() if stop else line_end
        answer = _tidy(text[m.end() : end])
        if answer:
            found.append(_Statement(m.start(), end, answer, "answer_is"))
    return found


def _hash(text: str) -> list[_Statement]:
    found = []
    for m in list(re.finditer("####", text))[-MAX_STATEMENTS:]:
        line_end = text.find("\n", m.end())
        line_end = len(text) if line_end < 0 else line_end
        answer = _tidy(text[m.end() : line_end].lstrip("#"))
        if answer:
            found.append(_Statement(m.start(), line_end, answer, "hash"))
    return found


# --- comparing stated values ------------------------------------------------------------------------

_KEY_DROP = re.compile(r"\\boxed\s*|\\fbox\s*|\\left|\\right|\\[,;:! ]|\\q?quad|~|\\?\$|\\[()\[\]]|\s+")
_KEY_TEXT = re.compile(r"\\(?:text|textnormal|textrm|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_KEY_NUMBER = re.compile(
    r"(?P<sign>[+-]?)(?:\\[dt]?frac\{(?P<n>\d+(?:\.\d+)?)\}\{(?P<d>\d+(?:\.\d+)?)\}"
    r"|(?P<a>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:/(?P<b>\d+))?)"
    r"(?P<pct>\\?%)?(?P<words>(?: [A-Za-z]{2,}){0,3})"
)
_PROSE_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")
_VALUE_WORDS_LIGHT = {"or", "and", "plus", "minus", "times", "over", "not", "half", "quarter", "third", "pi", "percent"}


def _number_value(s: str) -> Fraction | None:
    """The value of a plain number, simple fraction or \\frac{a}{b}, with optional percent and up to
    three unit words (a scale word multiplies); None otherwise."""
    m = _KEY_NUMBER.fullmatch(s.strip())
    if m is None or len(s) > MAX_KEY_CHARS:
        return None
    try:
        if m.group("n") is not None:
            value = Fraction(m.group("n")) / Fraction(m.group("d"))
        else:
            value = Fraction(m.group("a").replace(",", ""))
            if m.group("b"):
                value /= int(m.group("b"))
    except (ValueError, ZeroDivisionError):
        return None
    for word in m.group("words").lower().split():
        base = word[:-1] if word.endswith("s") and word[:-1] in SCALE_WORDS else word
        if base in ("squared", "cubed"):
            value = value ** SCALE_WORDS[base]
        elif base in SCALE_WORDS:
            value *= SCALE_WORDS[base]
        elif base in _VALUE_WORDS_LIGHT:
            return None
    return -value if m.group("sign") == "-" else value


def value_key(answer: str) -> tuple | None:
    """What an answer states, for telling two statements apart: ("num", value) for a plain number,
    ("tex", text) for a short formula, None for prose or anything too long to compare."""
    if len(answer) > MAX_KEY_CHARS:
        return None
    s = _KEY_TEXT.sub(lambda m: " " + m.group(1).strip() + " ", answer)
    s = " ".join(s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("{,}", ",").split())
    s = _KEY_DROP.sub(lambda m: " " if m.group().isspace() else "", s).strip().rstrip(".").strip()
    while s.startswith("{") and s.endswith("}") and s.count("{") == 1:
        s = s[1:-1].strip()
    value = _number_value(s)
    if value is not None:
        return ("num", value)
    if not s or _PROSE_WORD.search(s):
        return None
    return ("tex", s.replace(" ", ""))


def same_value(a: tuple, b: tuple) -> bool:
    """Two keys name the same value (exactly, or within 1e-6 relative for two non-integers)."""
    if a[0] != b[0]:
        return False
    if a[0] == "tex" or a[1] == b[1]:
        return a[1] == b[1]
    x, y = a[1], b[1]
    if x.denominator == 1 or y.denominator == 1:
        return False
    return abs(x - y) <= Fraction(1, 10**6) * max(abs(x), abs(y))


def _differ(a: str, b: str, same: Same | None = None) -> bool:
    """Two answers state different values (answers that cannot be compared do not differ). Two
    formulas that differ as text are asked of `same` (a verifier's own equivalence) if given."""
    ka, kb = value_key(a), value_key(b)
    if ka is None or kb is None or ka[0] != kb[0] or same_value(ka, kb):
        return False
    return ka[0] == "num" or same is None or not same(a, b)


# --- ambiguity: alternatives, box groups, earlier statements, retractions --------------------------

_OR = re.compile(r"\bor\b", re.I)
_LEADING_WORDS = re.compile(r"^\s*(?:either\s+|maybe\s+|perhaps\s+)?(?:[A-Za-z]\s*=\s*)?", re.I)


def _alternatives(answer: str) -> str | None:
    """Why an answer offering several values ("6 or 8", "x = 6 or x = 8") is ambiguous, or None.
    Relations joined by "or" (x < -1 or x > 3) are one answer, a union."""
    if len(answer) > MAX_KEY_CHARS or not _OR.search(answer):
        return None
    plain = _KEY_TEXT.sub(lambda m: " " + m.group(1) + " ", answer)
    keys = [value_key(_LEADING_WORDS.sub("", part)) for part in _OR.split(plain)]
    values = [k for k in keys if k is not None and k[0] == "num"]
    if len(values) >= 2 and any(not same_value(values[0], v) for v in values[1:]):
        return f"ambiguous: two different final answers in {answer!r}"
    return None


_CONNECTOR_DROP = re.compile(r"\\(?:text|textnormal|textrm|mbox|mathrm)\s*\{([^{}]*)\}|\\q?quad|\\[,;:! ]|\\?\$|\\[()\[\]]|[\s;.~&]")


def _connector(gap: str) -> str | None:
    """How two neighbouring boxes are joined: "and" or "," (a list), "or", "" (side by side), or
    None when something else stands between them (they are separate statements)."""
    if len(gap) > 80:
        return None
    words = _CONNECTOR_DROP.sub(lambda m: f" {m.group(1)} " if m.group(1) else " ", gap).split()
    words = [w for w in (w.strip(",") for w in words) if w]
    if not words:
        return "," if "," in gap else ""
    return words[0].lower() if len(words) == 1 and words[0].lower() in ("and", "or") else None


def _box_group(text: str, boxes: list[_Statement], same: Same | None) -> tuple[_Statement, str | None]:
    """The final statement made of the last box and the boxes joined to it, or the reason the
    group offers two different final answers."""
    group, joins = [boxes[-1]], []
    for box in reversed(boxes[-MAX_STATEMENTS:-1]):
        if box.end > group[0].start:
            continue  # a box around the group's first box
        join = _connector(text[box.end : group[0].start])
        if join is None:
            break
        group.insert(0, box)
        joins.append(join)
    if len(group) == 1:
        return group[0], None
    answers = [b.answer for b in group]
    keys = [value_key(a) for a in answers]
    if all(k is not None for k in keys) and not any(_differ(answers[0], a, same) for a in answers[1:]):
        return group[-1], None  # the same answer boxed again
    if "or" in joins or "" in joins:
        return group[-1], f"ambiguous: two different final answers {answers[-2]!r} and {answers[-1]!r}"
    return _Statement(group[0].start, group[-1].end, ", ".join(answers), "boxed"), None


# Words that take back what came before, anywhere; discourse markers only at a clause's start
# ("Wait, ...", "Hmm, actually ..."), since "without actually doing" takes nothing back.
_CORRECTION_WORDS = (
    r"mistakes?|miscalculat\w*|miscount\w*|wrong|incorrect|correct(?:ion|ed)|errors?|re-?check\w*|"
    r"re-?calculat\w*|re-?comput\w*|reconsider\w*|re-?evaluat\w*|re-?examin\w*|redo|apologi[sz]e|forgot|"
    r"missed|double[- ]count\w*|on second thought|on reflection|final answer")
# All on lowercased text (case-insensitive matching costs twice the time); a clause marker consumes
# the punctuation before it, which keeps the search fast.
_CORRECTION = re.compile(rf"\b(?:{_CORRECTION_WORDS})\b")
_CLAUSE = r"[.!?:;,(\n*][ \t\n]*(?:(?:so|and|oh|ok|okay),?\s+)?"
_CLAUSE_CORRECTION = re.compile(rf"{_CLAUSE}(?:wait|actually|hmm+|oops|no(?=[,.!]))\b")
_CLAUSE_HEDGE = re.compile(rf"{_CLAUSE}(?:wait|actually|hmm+|oops|no(?=[,.!])|however|but|alternatively|instead)\b")


def _first(patterns: tuple[re.Pattern, ...], text: str, start: int = 0, end: int | None = None) -> int | None:
    """Where the first match of any of the patterns in text[start:end] begins, or None."""
    end = len(text) if end is None else end
    found = [m.start() for p in patterns if (m := p.search(text, start, end)) is not None]
    return min(found) if found else None


def _earlier_conflict(low: str, statements: list[_Statement], final: _Statement, same: Same | None) -> str | None:
    """Why an earlier statement makes the final one ambiguous: it states a different value and no
    correction stands between them (`low`: the text, lowercased)."""
    for s in reversed([s for s in statements if s.start < final.start][-MAX_STATEMENTS:]):
        if s.end >= final.end:
            continue  # it contains the final statement ("The answer is $\\boxed{5}$")
        if final.method == "hash" and s.method == "answer_is":
            continue  # "answer = 48 points" along the way; the #### line is the final answer
        if _differ(s.answer, final.answer, same):
            # "The final answer is" is its own correction marker
            if _first((_CORRECTION, _CLAUSE_CORRECTION), low, s.end, min(len(low), final.start + 12)) is not None:
                return None  # corrected since: the last explicit statement is clear
            return f"ambiguous: two different final answers {clip_answer(s.answer)} and {clip_answer(final.answer)}"
    return None


# A number standing for a value: not part of an expression (2x, 3^2, 14+a, 3 times), nor the first
# of a list (2, 3, and 14; $10$ and $-10$).
_NUM_TOKEN = (r"[+-]?(?:\\[dt]?frac\{\d+(?:\.\d+)?\}\{\d+(?:\.\d+)?\}|(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?)"
              r"(?![\w^({\\])(?!\$?\s*(?:,|\band\b|\bor\b)\s*\$?[-+]?\d)(?!\s*[-+*/^]\s*[A-Za-z\\(])"
              r"(?!\s+(?:times|of|more|less|fewer|as)\b)")
# Whitespace is matched in exactly one place between two tokens, never by two neighbouring "\s*"
# (that backtracks polynomially on a long run of spaces).
_OPEN = r"(?:(?:\\?\$|\\\(|\\\[|\\boxed\{|\*\*)\s*)*"  # math or bold opening before a value
_OP = r"\s*(?:[-+*/×÷·]|\\times|\\cdot|\\div)\s*"
# 289 - 225 = 89 - 25 = 64: the value stated is the last result of the chain.
_CHAIN = rf"(?P<chain>(?:{_OP}{_NUM_TOKEN})*)(?:\s*=\s*{_OPEN}(?P<result>{_NUM_TOKEN})(?:{_OP}{_NUM_TOKEN})*)*"
_ADVERB = r"(?:(?:actually|really|just|only|now|then|instead|exactly|still)\s+)?"
_VALUE = rf"(?:\s*:)?\s*{_ADVERB}{_OPEN}(?P<value>{_NUM_TOKEN}){_CHAIN}"
_COPULA = r"(?:\b(?:is|are|was|were|be|equals?|comes?\s+to)\b|=)"
_MODALS = r"\b(?:could|might|may|would|should|must)\s+(?:(?:also|actually|instead|really|then)\s+)?be\b"
# "the final total is 23", "the answer should be 45": a result noun, a few words, a verb, the value.
_STRONG = re.compile(rf"\b(?:answer|total|result|final|correct|actual)\b(?:\s+[a-z]{{1,20}}){{0,6}}?\s*(?:{_COPULA}|{_MODALS}){_VALUE}")
# "it could be 9", "so it would be 31": a hedged value of "it".
_MODAL = re.compile(rf"\b(?:it|that|this|which)\s+{_MODALS}{_VALUE}")
# After "hmm / actually / however ...": "she actually has 8", "so it is 23" (not a bare "x = 0").
_WEAK = re.compile(rf"\b(?:is|are|was|were|be|comes?\s+to|gives?|gets?|got|makes?|has|have|had)\b{_VALUE}")


def _asserted(m: re.Match) -> str | None:
    """The value an assertion states: the result of a calculation chain, else its number."""
    if m.group("result"):
        return m.group("result")
    return None if m.group("chain") else m.group("value")


def _retraction(tail: str, answer: str) -> str | None:
    """Why the text after the final statement takes it back: a result phrase ("the final total is
    23") with another value, or, after "hmm/actually/however/...", a last assertion of another value."""
    key = value_key(answer)
    if key is None:
        return None
    tail = _lower(tail)
    hedge = _first((_CORRECTION, _CLAUSE_HEDGE), tail)
    for m in (*_STRONG.finditer(tail), *_MODAL.finditer(tail)):
        value = _asserted(m)
        # a formula answer cannot be compared with a number: only a hedged one retracts it
        hedged = key[0] == "num" or (hedge is not None and hedge < m.start())
        if value is not None and hedged and _retracts(key, value):
            return f"retracted: stated {clip_answer(answer)}, later {value}"
    if hedge is None:
        return None
    last = _last_match(_WEAK, tail, hedge)
    value = _asserted(last) if last is not None else None
    if value is not None and _retracts(key, value):
        return f"retracted: stated {clip_answer(answer)}, later {value}"
    return None


def _last_match(pattern: re.Pattern, text: str, start: int, window: int = 4096) -> re.Match | None:
    """The last match of pattern in text[start:], looking from the end in windows (an assertion is
    short), so a long text costs only its end in the usual case."""
    end = len(text)
    while end > start:
        begin = max(start, end - window)
        last = None
        for m in pattern.finditer(text, begin, min(len(text), end + 256)):
            if m.start() < end:
                last = m
        if last is not None:
            return last
        end = begin
    return None


def _retracts(key: tuple, value: str) -> bool:
    other = value_key(value)
    return other is not None and (key[0] != "num" or not same_value(key, other))


def clip_answer(answer: str, limit: int = 40) -> str:
    answer = " ".join(answer.split())
    return answer if len(answer) <= limit else answer[: limit - 1] + "…"


# --- the weak fallbacks -------------------------------------------------------------------------------

def _last_number(text: str) -> Found | None:
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
    flaw = number_flaw(text[max(0, start - 1) : end + 1])
    if flaw:
        return Found(None, "last_number", flaw)
    before = text[start - 1] if start > 0 else " "
    after = text[end] if end < len(text) else " "
    if before in _GLUE_BEFORE or after in _GLUE_AFTER or before.isalpha() or after.isalpha():
        return None
    if after in ".," and text[end + 1 : end + 2].isdigit():
        return None
    if after == "\\" and not _OK_AFTER.match(text, end):
        return None  # 5\pi, 2\sqrt{3}
    scale = _SCALE_AFTER.match(text, end)
    return Found(f"{token} {scale.group(1)}" if scale else token, "last_number")


_MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\\((.+?)\\\)|(?<![\\$])\$((?:\\.|[^$\\])+?)\$", re.S)
_SENTENCE_BREAK = re.compile(r"[.?!](?=\s|$)|\n\s*\n")
_PARAGRAPH = re.compile(r"\n\s*\n")
LAST_MATH_CHARS = 600


def sentence_math(text: str, inline_only: bool = False) -> str | None:
    """The formula of the concluding sentence of text ("Therefore $x \\geq 5$ is the solution." ->
    "x \\geq 5"), when that sentence holds exactly one; None otherwise. `inline_only`: only inline
    math ($...$, \\(...\\)) inside a sentence of words counts, not a display on its own."""
    text = text.rstrip()
    start = max(0, len(text) - LAST_MATH_CHARS)
    for start in (m.end() for m in _PARAGRAPH.finditer(text, start)):
        pass
    window = text[start:]
    spans = list(_MATH_SPAN.finditer(window))
    if not spans:
        return None
    last = spans[-1]
    if _SENTENCE_BREAK.search(window[last.end() :].rstrip().rstrip(".!?")):
        return None  # another sentence follows the formula
    begin = spans[-2].end() if len(spans) > 1 else 0
    breaks = list(_SENTENCE_BREAK.finditer(window, begin, last.start()))
    if len(spans) > 1 and not breaks:
        return None  # several formulas in the concluding sentence: which one is the answer?
    sentence = window[breaks[-1].end() if breaks else begin : last.start()] + window[last.end() :]
    if inline_only and (last.group(3) is None and last.group(4) is None or not _PROSE_WORD.search(sentence)):
        return None
    content = next(g for g in last.groups() if g is not None).strip().rstrip(".,").strip()
    return content or None


def _last_math(text: str) -> Found | None:
    stripped = text.rstrip()
    if not stripped or stripped[-1] not in _FINISHED_END:
        return None
    answer = sentence_math(stripped, inline_only=True)
    return Found(answer, "last_math") if answer else None


# --- putting it together --------------------------------------------------------------------------

def check_methods(methods: Sequence[str]) -> tuple[str, ...]:
    """Validate a methods list (from a config); returns it as a tuple."""
    if isinstance(methods, str) or not all(isinstance(m, str) for m in methods):
        raise ValueError(f"methods must be a list of names from {list(ALL_METHODS)}, got {methods!r}")
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        raise ValueError(f"unknown extraction method(s) {unknown}; allowed: {list(ALL_METHODS)}")
    if not methods:
        raise ValueError(f"methods must name at least one of {list(ALL_METHODS)}")
    return tuple(methods)


def _explicit(text: str, methods: Sequence[str], same: Same | None) -> Found | None:
    """The final answer from the explicit statements, a refusal, or None when there are none."""
    statements, boxes = [], []
    if "boxed" in methods:
        boxes, cut_off = _boxes(text)
        if cut_off:
            return Found(None)  # the last box is empty or cut off: no final answer
    if "answer_is" in methods:
        statements += _answer_is(text)
    if "hash" in methods:
        statements += _hash(text)
    statements.sort(key=lambda s: s.start)
    if not statements and not boxes:
        return None
    final = statements[-1] if statements else None
    if boxes and (final is None or final.start < boxes[-1].end or value_key(final.answer) is None):
        final, why = _box_group(text, boxes, same)  # a prose "answer is ..." after a box does not replace it
        if why:
            return Found(None, "boxed", why)
    everything = sorted(statements + boxes[-MAX_STATEMENTS:], key=lambda s: s.start)
    low = _lower(text)
    why = (_alternatives(final.answer) or number_flaw(final.answer) or _earlier_conflict(low, everything, final, same)
           or _retraction(text[final.end :], final.answer))
    return Found(None, final.method, why) if why else Found(final.answer, final.method)


def _find(text: str, methods: Sequence[str], same: Same | None) -> Found:
    found = _explicit(text, [m for m in methods if m in EXPLICIT], same)
    if found is not None:
        return found
    fallbacks = {"last_number": _last_number, "last_math": _last_math}
    for method in methods:
        if method in fallbacks:
            found = fallbacks[method](text)
            if found is not None:
                if found.answer is not None and (why := _alternatives(found.answer) or number_flaw(found.answer)):
                    return Found(None, method, why)
                return found
    return Found(None)


def find_answer(text: str, methods: Sequence[str] = METHODS, same: Same | None = None) -> Found:
    """The final answer of text (see the module docstring), or why there is none. `same(a, b)`
    tells whether two formula answers that differ as text state the same value (default: no)."""
    check_methods(methods)
    if not isinstance(text, str) or not text:
        return Found(None)
    text = clean_text(text)
    masked, had_code = mask_code(text)
    found = _find(masked, methods, same)
    # Say why when the answer was in code (judged on the output's end, so this costs little).
    if found.answer is None and found.reason == NO_ANSWER and had_code and _find(text[-20_000:], methods, same).answer:
        return Found(None, None, "the answer is only inside a code block, not stated")
    return found


def extract_answer(text: str, methods: Sequence[str] = METHODS) -> tuple[str, str] | None:
    """(answer, method) of the final answer, else None (see find_answer for the reason)."""
    found = find_answer(text, methods)
    return (found.answer, found.method) if found.answer is not None else None


def _usable_methods(sample: dict, methods: Sequence[str]) -> tuple[str, ...]:
    """An output cut off by the token limit (finish_reason "length") gets no weak fallback: the
    number before the cut is just the last thing the model wrote, not its final answer."""
    if sample.get("finish_reason") == "length":
        return tuple(m for m in methods if m in EXPLICIT)
    return tuple(methods)


def find_final_answer(sample: dict, methods: Sequence[str] = METHODS, same: Same | None = None) -> Found:
    """find_answer on a sample's "text", without the weak fallbacks when it was cut off."""
    usable = _usable_methods(sample, check_methods(methods))
    return find_answer(sample.get("text"), usable, same) if usable else Found(None)


def refusal_reason(found: Found) -> str:
    """The reason of a no_answer verdict: "no final answer found", or "no final answer: <why>"."""
    return NO_ANSWER if found.reason == NO_ANSWER else f"no final answer: {found.reason}"


def final_answer(sample: dict, methods: Sequence[str] = METHODS) -> tuple[str, str] | None:
    """(answer, method) from find_final_answer, else None."""
    found = find_final_answer(sample, methods)
    return (found.answer, found.method) if found.answer is not None else None


_ANSWER_MARK = re.compile(r"\\(?:boxed|fbox)\s*\{|\banswer\b\s*(?:is\b\s*:?|:|=)|####", re.I)
MAX_TRIM_MARKS = 50  # cut points tried; a text stating its answer more often is left whole


def trim_after_answer(text: str, methods: Sequence[str] = METHODS) -> str:
    """The text up to the end of the first statement of its final answer, chatter after it removed.

    "... The answer is 4.\\n\\nThe answer is 4. I hope this helps!" -> "... The answer is 4."
    Training on the trailing chatter teaches a model to ramble (or to repeat the answer line).
    Cut points are the ends of the sentences (and lines) that hold an answer marker ("answer
    is", \\boxed, ####); the first whose prefix gives the same final answer by the same method
    wins. A text without an explicit marker (weak-fallback answers), or whose every cut changes
    its answer, is returned unchanged, so trimming never changes what a verifier accepted.
    """
    if not isinstance(text, str) or not text:
        return text
    final = extract_answer(text, methods)
    if final is None or final[1] not in EXPLICIT:
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
