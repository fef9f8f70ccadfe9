"""numeric: the final answer must be the gold number (GSM8K-style tasks).

Both sides are normalised the same way (dollar and percent signs, LaTeX math delimiters,
\\text{} wrappers, thousands separators, degree signs, a unit or a few trailing words) and
parsed exactly as an integer, decimal, fraction (3/4, \\frac{3}{4}, \\dfrac34) or mixed number
(918\\frac{1}{2}). If either side is an integer the two must be exactly equal (so 5.001 != 5
and 999999.9 != 1000000); two non-integers may differ by `rel_tol` relative to the larger, for
gold answers like 0.333333 against 1/3. Trailing words are dropped only if none of them
changes the value ("5 million", "2 pi", "3 and 4" are not numbers), so units never turn a
different answer into a match.
"""

from __future__ import annotations

import re
from fractions import Fraction

from verifiers.base import MAX_ANSWER_CHARS, Verdict, Verifier, clip, register
from verifiers.extract import METHODS, check_methods, final_answer

MAX_DIGITS = 100  # a longer number is hostile or absurd: wrong, never computed

_NUM = r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|[+-]?\.\d+"
_FRAC_ARG = rf"\{{\s*(?:{_NUM})\s*\}}|\d"
_VALUE = re.compile(
    rf"(?P<sign>[+-]?)\s*(?P<whole>\d+\s*)?\\frac\s*(?P<num>{_FRAC_ARG})\s*(?P<den>{_FRAC_ARG})"
    rf"|(?P<a>{_NUM})(?:\s*/\s*(?P<b>{_NUM}))?"
)
# Trailing words: "apples", "sq. ft", "cm^2", "km/h". Never numbers, never a single letter
# (5 x, 5r^5: a variable, not a unit), and always after a space (5cm is not "5 cm").
_WORD = r"[A-Za-z]{2,}(?:\^\{?\d\}?)?"
_WORDS = re.compile(rf"\s+{_WORD}(?:[\s/.-]+{_WORD})*")
# Words that change a number's value or make it an expression, so they are never dropped.
_VALUE_WORDS = frozenset(
    "and or plus minus times than more less fewer over divided by to not no squared cubed power factorial sqrt root "
    "pi e i x y z n k hundred hundreds thousand thousands million millions billion billions "
    "trillion trillions dozen dozens half halves third thirds quarter quarters fourth fourths "
    "fifth fifths tenth tenths hundredth hundredths thousandth thousandths".split()
)
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_SPACE_COMMANDS = re.compile(r"\\[ ;:]|~|\\q?quad")
_THIN_SPACE_THOUSANDS = re.compile(r"(?<=\d)\\,(?=\d{3}(?!\d))")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree|°")
_DELIMITERS = re.compile(r"\\\$|\$|\\[()\[\]]|\\%|%")
_BOX = re.compile(r"^\\(?:boxed|fbox)\s*\{(.*)\}$", re.S)


class NumberTooLong(ValueError):
    pass


def normalize(text: str) -> str:
    """The number-bearing core of an answer: wrappers, units, separators and delimiters removed."""
    s = text.strip()
    while (m := _BOX.match(s)) is not None:
        s = m.group(1).strip()
    s = s.replace("−", "-").replace("{,}", ",").replace("\\!", "").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _THIN_SPACE_THOUSANDS.sub(",", s)
    s = _TEXT_WRAPPER.sub(r" \1 ", s)
    s = _DEGREES.sub(" ", s)
    s = _DELIMITERS.sub(" ", s)
    s = _SPACE_COMMANDS.sub(" ", s).replace("\\,", " ")
    s = s.strip().rstrip("\\").strip()
    while s.endswith("."):
        s = s[:-1].rstrip()
    return s


def _fraction(token: str, allow_leading_zeros: bool) -> Fraction | None:
    token = token.strip().strip("{}").strip().replace(",", "")
    digits = token.lstrip("+-").split(".")[0]
    if not allow_leading_zeros and len(digits) > 1 and digits.startswith("0"):
        return None
    return Fraction(token)


def parse_number(text: str, allow_leading_zeros: bool = True) -> Fraction | None:
    """The exact value of a numeric answer, or None if it is not a plain number.

    Raises NumberTooLong for more than MAX_DIGITS digits, before computing anything.
    """
    if len(text) > MAX_ANSWER_CHARS:
        raise NumberTooLong(f"answer has {len(text)} characters")
    s = normalize(text)
    if sum(c.isdigit() for c in s) > MAX_DIGITS:
        raise NumberTooLong(f"more than {MAX_DIGITS} digits")
    m = _VALUE.match(s)
    if m is None:
        return None
    rest = s[m.end() :].rstrip()
    if rest:
        if _WORDS.fullmatch(rest) is None or any(w.lower() in _VALUE_WORDS for w in re.findall(r"[A-Za-z]+", rest)):
            return None
    if m.group("a") is not None:
        value = _fraction(m.group("a"), allow_leading_zeros)
        if m.group("b") is not None:
            den = _fraction(m.group("b"), allow_leading_zeros)
            if value is None or den is None or den == 0:
                return None
            value = value / den
        return value
    num = _fraction(m.group("num"), allow_leading_zeros)
    den = _fraction(m.group("den"), allow_leading_zeros)
    if num is None or den is None or den == 0:
        return None
    value = num / den
    if m.group("whole"):  # mixed number: 918\frac{1}{2} is 918 + 1/2
        whole = _fraction(m.group("whole"), allow_leading_zeros)
        if whole is None or value < 0:
            return None
        value = whole + value
    return -value if m.group("sign") == "-" else value


def parse_number_or_none(text: str) -> Fraction | None:
    """parse_number, with an over-long number counted as no number at all."""
    try:
        return parse_number(text)
    except NumberTooLong:
        return None


def numbers_equal(gold: Fraction, answer: Fraction, rel_tol: float) -> bool:
    """Exact if either is an integer; otherwise within rel_tol of the larger magnitude."""
    if gold.denominator == 1 or answer.denominator == 1:
        return gold == answer
    return abs(gold - answer) <= Fraction(rel_tol) * max(abs(gold), abs(answer))


def _show(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value} ({float(value):.6g})"


@register("numeric")
class NumericVerifier(Verifier):
    version = "1"
    defaults = {"methods": list(METHODS), "rel_tol": 1e-6, "allow_leading_zeros": True}

    def __init__(self, **params):
        super().__init__(**params)
        p = self._params
        p["methods"] = list(check_methods(p["methods"]))
        tol = p["rel_tol"]
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < 1:
            raise ValueError(f"verifier {self.name!r}: rel_tol must be a number in [0, 1), got {tol!r}")
        if not isinstance(p["allow_leading_zeros"], bool):
            raise ValueError(f"verifier {self.name!r}: allow_leading_zeros must be true or false")

    def verify(self, problem: dict, sample: dict) -> Verdict:
        found = final_answer(sample, self._params["methods"])
        extracted = found[0][:MAX_ANSWER_CHARS] if found else None
        gold = problem.get("answer")
        gold = "" if gold is None else str(gold).strip()
        if not gold:
            return Verdict("error", 0.0, extracted, "problem has no gold answer")
        if found is None:
            return Verdict("no_answer", 0.0, None, "no final answer found")
        answer, method = found
        if len(answer) > MAX_ANSWER_CHARS:
            return Verdict("wrong", 0.0, extracted, f"{method} answer is too long ({len(answer)} characters)")
        return self.compare(gold, answer, f"{method} answer")

    def compare(self, gold: str, answer: str, label: str = "answer") -> Verdict:
        """Verdict for an already extracted answer against the gold answer."""
        g = parse_number_or_none(gold)
        if g is None:
            return Verdict("error", 0.0, answer, f"gold answer is not numeric: {clip(gold)}")
        try:
            a = parse_number(answer, self._params["allow_leading_zeros"])
        except NumberTooLong as e:
            return Verdict("wrong", 0.0, answer, f"{label} is not a usable number: {e}")
        if a is None:
            return Verdict("wrong", 0.0, answer, f"extracted answer is not a number: {clip(answer)}")
        if numbers_equal(g, a, self._params["rel_tol"]):
            return Verdict("correct", 1.0, answer, f"{label} {clip(answer)} == gold {clip(gold)}")
        return Verdict("wrong", 0.0, answer, f"{label} {_show(a)} != gold {_show(g)}")
