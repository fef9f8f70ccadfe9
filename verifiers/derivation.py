"""derivation: the rationale must work out its final answer, with arithmetic that holds.

A right final answer is not a right rationale. A small model often writes "3 * 2 = 6 ...
The answer is 15." (the answer from nowhere) or, given the answer as a STaR hint, states it and
then makes up steps around it. Trained on, such rows teach the next model to guess. This
verifier checks the work, not the answer, so it is meant to be combined with one that checks
the answer (`all_of: [numeric, derivation]`). A sample passes when:

- it has a final answer (found by `methods`, as the other verifiers do);
- every calculation it writes (`16 - 3 = 13`, `2 \\times 3 = 6`, GSM8K `<<48/2=24>>`) holds:
  one false step (`3 * 4 = 13`) fails it;
- the final answer is the result of at least `min_steps` calculation(s) (default 1), so an
  answer no step produces fails it.

Calculations are read by the same parser as the dedup stage's reasoning paths
(`pipeline.selection.paths`), a small arithmetic interpreter, never `eval`. A rationale that
reasons only in words ("7 take away 2 leaves 5") has no calculation and fails: precision first.
"""

from __future__ import annotations

from fractions import Fraction

from selfimprove.pipeline.selection.paths import claims
from selfimprove.verifiers.base import MAX_ANSWER_CHARS, Verdict, Verifier, clip, register
from selfimprove.verifiers.extract import check_methods, final_answer
from selfimprove.verifiers.numeric import parse_number_or_none


@register("derivation")
class DerivationVerifier(Verifier):
    version = "1"
    needs_gold = False  # it checks the work; pair it with a verifier that checks the answer
    defaults = {
        "methods": ["boxed", "answer_is", "hash"],
        "min_steps": 1,  # calculations whose result is the final answer
    }

    def __init__(self, **params):
        super().__init__(**params)
        p = self._params
        p["methods"] = list(check_methods(p["methods"]))
        if isinstance(p["min_steps"], bool) or not isinstance(p["min_steps"], int) or p["min_steps"] < 0:
            raise ValueError(f"verifier {self.name!r}: min_steps must be an integer >= 0")

    def verify(self, problem: dict, sample: dict) -> Verdict:
        found = final_answer(sample, self._params["methods"])
        if found is None:
            return Verdict("no_answer", 0.0, None, "no final answer found")
        answer = found[0][:MAX_ANSWER_CHARS]
        value = parse_number_or_none(answer)
        if value is None:
            return Verdict("wrong", 0.0, answer, f"final answer is not a number: {clip(answer)}")
        steps = claims(sample.get("text") or "")
        false = [f"{lhs} = {result}" for lhs, result, holds in steps if not holds]
        if false:
            return Verdict("wrong", 0.0, answer, f"false calculation: {clip(false[0])}")
        producing = sum(1 for _, result, _ in steps if _equal(result, value))
        if producing < self._params["min_steps"]:
            return Verdict("wrong", 0.0, answer, f"no calculation produces the final answer {clip(answer)} "
                                                 f"({len(steps)} calculation(s) in the text)")
        return Verdict("correct", 1.0, answer, f"{len(steps)} calculation(s) hold; {producing} produce(s) {clip(answer)}")


def _equal(result: str, value: Fraction) -> bool:
    try:
        return Fraction(result) == value
    except (ValueError, ZeroDivisionError):
        return False
