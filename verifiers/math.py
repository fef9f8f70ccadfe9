"""math: the final answer must equal the gold answer mathematically (MATH-style tasks).

Plain numbers on both sides are compared exactly by the numeric verifier's rules. Anything
else goes to Math-Verify (parse + verify, its signal-based timeouts off: this runs in pool
workers, and the pool enforces the hard limit). Guards against its known false positives:

- two numeric constants that Math-Verify calls equal are re-checked exactly (rationals) or to
  `rel_tol` relative (others): it rounds to 6 decimals absolutely, so 1/2004! "equals" 1/2006!;
- answers too big to evaluate safely (power towers, huge exponents or factorials, deep
  nesting) are compared as normalised text instead of being computed;
- numbers separated only by a space ("1 1/2", "3 4") are refused: Math-Verify adds them;
- a \\pm answer never matches a gold answer without one, and an equation answers a question
  for a value only when its left side is a lone variable (x = 5, not (x+y)^2 = 81);
- when Math-Verify cannot parse an answer it falls back to a text fragment (for \\sin^2t just
  "\\sin^2"); the whole normalised texts are compared instead. A gold answer it cannot parse
  is an error;
- a scale word after a number ("2\\text{ million}", "5 squared") is applied when the answer is a
  plain number and refused otherwise, never dropped as a unit.

An answer given as a sentence ("Therefore $x \\geq 5$ is the solution.") is compared by the one
formula of that sentence; units in \\text, \\textnormal, \\mbox or \\mathrm are dropped. By
default the final answer may also be the formula of the concluding sentence (method
"last_math", before "last_number").
"""

from __future__ import annotations

import logging
import re
from fractions import Fraction

from math_verify import ExprExtractionConfig, LatexExtractionConfig, LatexNormalizationConfig, parse, verify
from sympy import Basic, Eq, Expr, MatrixBase

from selfimprove.verifiers.base import Verdict, clip, register
from selfimprove.verifiers.extract import sentence_math, value_key
from selfimprove.verifiers.numeric import NumberTooLong, NumericVerifier, numbers_equal, parse_number

MAX_FACTORIAL = 1000  # n! above this is compared as text, never computed
MAX_EXPONENT = 10_000
MAX_NESTING = 30

_JUXTAPOSED = re.compile(r"(?<![\w^.])\d+(?:\.\d+)?\s+\.?\d")  # "1 1/2", "3 4"; not \log_2 8
_PLUS_MINUS = re.compile(r"\\pm|\\mp|±|∓")
_FACTORIAL = re.compile(r"(\d+)\s*!")
_GROUP_FACTORIAL = re.compile(r"[)}\]]\s*!")
_EXPONENT_BRACE = re.compile(r"\^\s*\{")
_EXPONENT_NUMBER = re.compile(r"\^\s*\{?\s*(\d+)")
_DOLLARS = re.compile(r"\\?\$")
_OUTER_DELIMITERS = re.compile(r"^\\[(\[](.*)\\[)\]]$", re.S)
_SENTENCE_PERIOD = re.compile(r"(?<![.\\])[.,]\s*$")  # sentence punctuation written inside the math
# \sin t, \cos^2 \theta: a function applied to one letter without parentheses.
_GREEK = "alpha|beta|gamma|delta|epsilon|varepsilon|zeta|eta|theta|vartheta|kappa|lambda|mu|nu|xi|pi|rho|sigma|tau|phi|varphi|chi|psi|omega"
_BARE_FUNCTION = re.compile(
    rf"\\(sin|cos|tan|sec|csc|cot|sinh|cosh|tanh|log|ln)(\s*\^\s*(?:\{{[^{{}}]*\}}|\d))?\s*(\\(?:{_GREEK})|[A-Za-z])(?![A-Za-z(])"
)
# A unit: \text{ cm}, \mbox{ miles}; in \mathrm / \textnormal two letters at least (\mathrm{e}, \mathrm{i} are numbers).
_TRAILING_TEXT_UNIT = re.compile(
    r"(?<=\S)(?:\s|\\[,;:! ]|~)*(?:\\(?:text|textrm|mbox)\s*\{\s*~?\s*[A-Za-z]|"
    r"\\(?:textnormal|mathrm)\s*\{\s*~?\s*[A-Za-z][A-Za-z])[A-Za-z .]*\}(?:\s*\^\s*\{?\d\}?)?$")
_SCALE_WORD = re.compile(r"(?:\d|\})\s*(?:\\(?:text|textnormal|textrm|mbox|mathrm)\s*\{\s*|\s)"
                         r"((?:dozen|hundred|thousand|million|billion|trillion)s?|squared|cubed)\b", re.I)
_MATH_DELIMITED = re.compile(r"\$\$.+?\$\$|\\\[.+?\\\]|\\\(.+?\\\)|(?<![\\$])\$(?:\\.|[^$\\])+?\$", re.S)
_PROSE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")
_COPULA = re.compile(r"\b(?:is|are|equals)\b|(?<![!<>=\\])=(?!=)")
_CANON_DROP = re.compile(r"\s+|\\left|\\right|\\[!,;: ]|~|\\?\$")
_CANON_SINGLE_BRACE = re.compile(r"([\^_])\{(\w)\}")


# Math-Verify's defaults, except its unit removal: it strips any trailing "unit" from a list
# that includes single letters (s, t, h, m, c, d, ...), so "2s" parses as 2 and "a + b + c" as
# nothing. Units in \text{} are dropped by _latex instead, and plain numbers with units take
# the numeric path.
_EXTRACTION = [
    LatexExtractionConfig(
        normalization_config=LatexNormalizationConfig(
            basic_latex=True, units=False, malformed_operators=True, nits=True, boxed="all", equations=False
        )
    ),
    ExprExtractionConfig(),
]


class _QuietTimeoutWarning(logging.Filter):
    """Math-Verify warns once per process that its timeouts are off; that is our design."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_QuietTimeoutWarning())


def _nesting(s: str) -> int:
    depth = deepest = 0
    for c in s:
        if c in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "})]":
            depth -= 1
    return deepest


def _exponents(s: str):
    """The text of every braced exponent ^{...}."""
    for m in _EXPONENT_BRACE.finditer(s):
        depth, i = 1, m.end()
        while i < len(s) and depth:
            depth += {"{": 1, "}": -1}.get(s[i], 0)
            i += 1
        yield s[m.end() : i - 1]


def too_big_to_evaluate(s: str) -> str | None:
    """Why evaluating s could take unbounded time or memory, or None if it looks safe."""
    if _nesting(s) > MAX_NESTING:
        return "nested too deeply"
    if any(len(n) > 4 or int(n) > MAX_FACTORIAL for n in _FACTORIAL.findall(s)):
        return "factorial too large"
    if _GROUP_FACTORIAL.search(s):
        return "factorial of an expression"
    if any("^" in e for e in _exponents(s)):
        return "power tower"
    if any(len(n) > 5 or int(n) > MAX_EXPONENT for n in _EXPONENT_NUMBER.findall(s)):
        return "exponent too large"
    return None


def canonical_text(s: str) -> str:
    """Whitespace- and spacing-insensitive form of a LaTeX answer, for text comparison."""
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("{,}", ",")
    s = _CANON_DROP.sub("", s)
    return _CANON_SINGLE_BRACE.sub(r"\1\2", s).rstrip(".")


def _latex(s: str) -> str:
    """The answer as one $...$ formula, the way Math-Verify's LaTeX extraction expects it."""
    s = _DOLLARS.sub(" ", s).strip().rstrip("\\").strip()
    if (m := _OUTER_DELIMITERS.match(s)) is not None:
        s = m.group(1).strip()
    s = _SENTENCE_PERIOD.sub("", s)
    s = _TRAILING_TEXT_UNIT.sub("", s)  # 5\sqrt{2}\text{ cm} -> 5\sqrt{2}
    s = _BARE_FUNCTION.sub(lambda m: f"\\{m[1]}{m[2] or ''}({m[3]})", s)  # \sin^2 t -> \sin^2(t): Math-Verify parses that
    return f"${s}$"


def _has_expression(parsed: list) -> bool:
    return any(isinstance(x, (Basic, MatrixBase)) for x in parsed)


def _first_expression(parsed: list):
    return next(x for x in parsed if isinstance(x, (Basic, MatrixBase)))


def same_constant(gold, answer, rel_tol: float) -> bool | None:
    """Exact comparison of two numeric constants (numeric rules when both are numbers, else
    rel_tol relative at 30 digits); None if they are not both constants."""
    if not (isinstance(gold, Expr) and isinstance(answer, Expr) and gold.is_number and answer.is_number):
        return None
    gold, answer = gold.doit(), answer.doit()  # 7!/16 -> 315; sizes are bounded by too_big_to_evaluate
    if gold == answer:  # also the infinities, which have no relative difference
        return True
    if gold.is_Number and answer.is_Number and gold.is_finite and answer.is_finite:
        return numbers_equal(_fraction(gold), _fraction(answer), rel_tol)
    a, b = gold.evalf(30), answer.evalf(30)
    try:
        return bool(abs(a - b) <= rel_tol * max(abs(a), abs(b)))
    except TypeError:  # nan, zoo: not comparable, so not equal
        return False


def _fraction(x) -> Fraction:
    return Fraction(int(x.p), int(x.q)) if x.is_Rational else Fraction(str(x))


def formula_of_sentence(answer: str) -> str:
    """An answer written as a sentence ("Therefore $x \\geq 5$ is the solution.") as the one formula
    of its concluding sentence; other answers unchanged. A sentence whose formula cannot be told
    (several in it) stays a sentence, and so matches nothing."""
    spans = list(_MATH_DELIMITED.finditer(answer))
    if not spans or not _PROSE.search(_MATH_DELIMITED.sub(" ", answer)):
        return answer
    prose = _MATH_DELIMITED.sub(lambda m: "\0" * len(m.group()), answer)  # the copula must be in the words
    last_is = None
    for last_is in _COPULA.finditer(prose):
        pass
    if last_is is not None:  # "The largest $n$ is 34.": what the sentence says it is
        rest = answer[last_is.end() :].strip().rstrip(".").strip()
        if rest and value_key(rest) is not None:
            return rest
    return sentence_math(answer) or answer


@register("math")
class MathVerifier(NumericVerifier):
    version = "2"
    defaults = {**NumericVerifier.defaults, "methods": ["boxed", "answer_is", "hash", "last_math", "last_number"]}

    def same_answer(self, first: str, second: str) -> bool:
        """Two statements of one output name the same value ("\\frac{3+2\\sqrt{3}}{3}" and
        "1+\\frac{2\\sqrt{3}}{3}"): then they are not two different final answers."""
        return self.compare(first, second).status == "correct"

    def compare(self, gold: str, answer: str, label: str = "answer") -> Verdict:
        try:
            both_numbers = (parse_number(gold) is not None
                            and parse_number(answer, self._params["allow_leading_zeros"], decimal_comma=True) is not None)
        except NumberTooLong:
            both_numbers = False
        if both_numbers:
            return super().compare(gold, answer, label)
        formula, gold_formula = formula_of_sentence(answer), formula_of_sentence(gold)
        if (formula, gold_formula) != (answer, gold):
            return self.compare(gold_formula, formula, label)

        def verdict(ok: bool, how: str) -> Verdict:
            if ok:
                return Verdict("correct", 1.0, answer, f"{label} {clip(answer)} == gold {clip(gold)} ({how})")
            return Verdict("wrong", 0.0, answer, f"{label} {clip(answer)} != gold {clip(gold)} ({how})")

        if _PLUS_MINUS.search(answer) and not _PLUS_MINUS.search(gold):
            return verdict(False, "answer has ±, gold does not")
        if _JUXTAPOSED.search(answer):
            return Verdict("wrong", 0.0, answer, f"{label} {clip(answer)} is ambiguous: numbers separated only by a space")
        if (scale := _SCALE_WORD.search(answer)) and not _SCALE_WORD.search(gold):
            return verdict(False, f"scale word {scale[1]!r} after a number: its value is not the number's")
        risk = too_big_to_evaluate(answer) or too_big_to_evaluate(gold)
        if risk:
            return verdict(canonical_text(answer) == canonical_text(gold), f"{risk}: compared as text")
        return self._math_verify(gold, answer, verdict)

    def _math_verify(self, gold: str, answer: str, verdict) -> Verdict:
        parsed_gold = parse(_latex(gold), _EXTRACTION, parsing_timeout=None)
        if not _has_expression(parsed_gold):
            return Verdict("error", 0.0, answer, f"gold answer could not be parsed: {clip(gold)}")
        parsed = parse(_latex(answer), _EXTRACTION, parsing_timeout=None)
        if not _has_expression(parsed):  # Math-Verify's text fallback may hold just a fragment
            return verdict(canonical_text(answer) == canonical_text(gold), "answer not parsed as math: compared as text")
        gold_expr, expr = _first_expression(parsed_gold), _first_expression(parsed)
        if isinstance(expr, Eq) and not isinstance(gold_expr, Eq) and not expr.lhs.is_Symbol:
            return verdict(False, "answer is an equation, not a value")
        if not verify(parsed_gold, parsed, timeout_seconds=None):
            return verdict(False, "math-verify")
        same = same_constant(gold_expr, expr, self._params["rel_tol"])
        if same is False:
            return verdict(False, "math-verify said equal, exact check did not")
        return verdict(True, "math-verify")
