"""numeric: the final answer must be the gold number (GSM8K-style tasks).

Both sides are normalised the same way (dollar and percent signs, LaTeX math delimiters,
\\text{} wrappers, thousands separators, degree signs, a unit or a few trailing words) and
parsed exactly as an integer, decimal, fraction (3/4, \\frac{3}{4}, \\dfrac34) or mixed number
(918\\frac{1}{2}). If either side is an integer the two must be exactly equal (so 5.001 != 5
and 999999.9 != 1000000); two non-integers may differ by `rel_tol` relative to the larger, for
gold answers like 0.333333 against 1/3. Trailing words are dropped only if none of them
changes the value ("2 pi", "3 and 4" are not numbers), so units never turn a different answer
into a match. A scale word right after the number is applied, never dropped: "3 dozen" is 36,
"2 \\text{ million}" 2000000, "5 squared" 25. An answer (not a gold answer) may use a decimal
comma where that cannot be a thousands separator: "1,5", "0,111", "1000,99" (but "1,500" is
1500). A digit next to an invisible, combining or control character is not a number.
"""

from __future__ import annotations

import re
from fractions import Fraction

from selfimprove.verifiers.base import MAX_ANSWER_CHARS, Verdict, Verifier, clip, register
from selfimprove.verifiers.extract import METHODS, SCALE_WORDS, check_methods, find_final_answer, number_flaw, refusal_reason

MAX_DIGITS = 100  # a longer number is hostile or absurd: wrong, never computed

_NUM = r"[+-]?(?:[1-9]\d{0,2}(?:,\d{3})+|\d+)(?:\.\d*)?|[+-]?\.\d+"  # "0,111" is no thousands grouping
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
# Scale words right after the number: applied to its value ("2 hundred thousand" is 200000).
_SCALE = re.compile(r"\s+((?:dozen|hundred|thousand|million|billion|trillion)s?|squared|cubed)\b", re.I)
_DECIMAL_COMMA = re.compile(r"([+-]?\d+),(\d+)(?![\d,.])")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textnormal|textbf|textit|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_SPACE_COMMANDS = re.compile(r"\\[ ;:]|~|\\q?quad")
_THIN_SPACE_THOUSANDS = re.compile(r"(?<=\d)\\,(?=\d{3}(?!\d))")
_SPACE_THOUSANDS = re.compile(r"(?<![\d.,])([1-9]\d{0,2})((?: \d{3})+)(?![\d.,/])")  # SI style: 1 000 000
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
    s = _SPACE_THOUSANDS.sub(lambda m: m[1] + m[2].replace(" ", ","), s)
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


def parse_number(text: str, allow_leading_zeros: bool = True, decimal_comma: bool = False) -> Fraction | None:
    """The exact value of a numeric answer, or None if it is not a plain number.

    Raises NumberTooLong for more than MAX_DIGITS digits, before computing anything.
    `decimal_comma`: read "1,5" as 1.5 where the comma cannot separate thousands (answers only:
    a gold answer "1,5" may be a list).
    """
    if len(text) > MAX_ANSWER_CHARS:
        raise NumberTooLong(f"answer has {len(text)} characters")
    s = normalize(text)
    if sum(c.isdigit() for c in s) > MAX_DIGITS:
        raise NumberTooLong(f"more than {MAX_DIGITS} digits")
    if number_flaw(s):
        return None
    if decimal_comma and (d := _DECIMAL_COMMA.match(s)) and (len(d[2]) != 3 or d[1].lstrip("+-") == "0"):
        s = f"{d[1]}.{d[2]}{s[d.end():]}"
    m = _VALUE.match(s)
    if m is None:
        return None
    rest, scales = s[m.end() :], []
    while (scale := _SCALE.match(rest)) is not None and len(scales) < 3:
        scales.append(scale[1].lower().rstrip("s") if scale[1].lower() not in ("squared", "cubed") else scale[1].lower())
        rest = rest[scale.end() :]
    rest = rest.rstrip()
    if rest:
        if _WORDS.fullmatch(rest) is None or any(w.lower() in _VALUE_WORDS for w in re.findall(r"[A-Za-z]+", rest)):
            return None
    value = _value(m, allow_leading_zeros)
    for word in scales:
        if value is not None:
            value = value ** SCALE_WORDS[word] if word in ("squared", "cubed") else value * SCALE_WORDS[word]
    return value


def _value(m: re.Match, allow_leading_zeros: bool) -> Fraction | None:
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
    version = "2"
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
        found = find_final_answer(sample, self._params["methods"], self.same_answer)
        extracted = found.answer[:MAX_ANSWER_CHARS] if found.answer is not None else None
        gold = problem.get("answer")
        gold = "" if gold is None else str(gold).strip()
        if not gold:
            return Verdict("error", 0.0, extracted, "problem has no gold answer")
        if found.answer is None:
            return Verdict("no_answer", 0.0, None, refusal_reason(found))
        answer, method = found.answer, found.method
        if len(answer) > MAX_ANSWER_CHARS:
            return Verdict("wrong", 0.0, extracted, f"{method} answer is too long ({len(answer)} characters)")
        return self.compare(gold, answer, f"{method} answer")

    same_answer = None  # how extraction tells two formula answers apart (None: by their text)

    def compare(self, gold: str, answer: str, label: str = "answer") -> Verdict:
        """Verdict for an already extracted answer against the gold answer."""
        g = parse_number_or_none(gold)
        if g is None:
            return Verdict("error", 0.0, answer, f"gold answer is not numeric: {clip(gold)}")
        try:
            a = parse_number(answer, self._params["allow_leading_zeros"], decimal_comma=True)
        except NumberTooLong as e:
            return Verdict("wrong", 0.0, answer, f"{label} is not a usable number: {e}")
        if a is None:
            return Verdict("wrong", 0.0, answer, f"extracted answer is not a number: {clip(answer)}")
        if numbers_equal(g, a, self._params["rel_tol"]):
            return Verdict("correct", 1.0, answer, f"{label} {clip(answer)} == gold {clip(gold)}")
        return Verdict("wrong", 0.0, answer, f"{label} {_show(a)} != gold {_show(g)}")
