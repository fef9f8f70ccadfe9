"""majority: self-consistency for problems without gold answers (LMSI, Huang et al. 2022).

The final answers of all samples of a problem vote; equal answers are grouped by value (two
numbers that are equal as numbers, "1/2" and "0.5", are one answer) and otherwise by their
whitespace-insensitive LaTeX text. The most voted answer becomes the pseudo-label when it has
at least `min_votes` votes and at least `min_share` of all samples (samples without an answer
count against it), and no other answer has as many votes. Samples that agree with it are
"correct"; the rest are "wrong", or "no_answer" without a final answer. Every reason begins
with the pseudo-label and its share, e.g. "pseudo-label 42, share 0.75 (6/8 votes)", so they
are recorded with each row. The gold answer, if a problem has one, is not used.
"""

from __future__ import annotations

from fractions import Fraction

from selfimprove.verifiers.base import MAX_ANSWER_CHARS, Verdict, Verifier, clip, register
from selfimprove.verifiers.extract import METHODS, check_methods, final_answer
from selfimprove.verifiers.math import canonical_text
from selfimprove.verifiers.numeric import NumberTooLong, normalize, parse_number


def answer_key(answer: str) -> tuple:
    """What two answers must share to count as the same vote."""
    try:
        value = parse_number(answer)
    except NumberTooLong:
        value = None
    if value is not None:
        return ("number", value)
    return ("text", canonical_text(normalize(answer)))


def _show(key: tuple, example: str) -> str:
    kind, value = key
    if kind == "number" and isinstance(value, Fraction):
        return str(value.numerator) if value.denominator == 1 else str(value)
    return clip(example, 60)


@register("majority")
class MajorityVerifier(Verifier):
    version = "1"
    group = True
    needs_gold = False
    defaults = {"min_share": 0.5, "min_votes": 2, "methods": list(METHODS)}

    def __init__(self, **params):
        super().__init__(**params)
        p = self._params
        share, votes = p["min_share"], p["min_votes"]
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
            raise ValueError(f"verifier {self.name!r}: min_share must be a number in (0, 1], got {share!r}")
        if isinstance(votes, bool) or not isinstance(votes, int) or votes < 1:
            raise ValueError(f"verifier {self.name!r}: min_votes must be an integer >= 1, got {votes!r}")
        p["methods"] = list(check_methods(p["methods"]))

    def verify(self, problem: dict, sample: dict) -> Verdict:
        return self.verify_group(problem, [sample])[0]

    def verify_group(self, problem: dict, samples: list[dict]) -> list[Verdict]:
        p = self._params
        answers: list[tuple[str, tuple] | None] = []
        for sample in samples:
            found = final_answer(sample, p["methods"])
            if found is None or len(found[0]) > MAX_ANSWER_CHARS:
                answers.append(None)
            else:
                answers.append((found[0], answer_key(found[0])))
        votes: dict[tuple, int] = {}
        example: dict[tuple, str] = {}
        for a in answers:
            if a is not None:
                votes[a[1]] = votes.get(a[1], 0) + 1
                example.setdefault(a[1], a[0])
        n = len(samples)
        ranked = sorted(votes.items(), key=lambda kv: -kv[1])
        label = None
        if ranked:
            top, count = ranked[0]
            share = count / n
            summary = f"pseudo-label {_show(top, example[top])}, share {share:.2f} ({count}/{n} votes)"
            if len(ranked) > 1 and ranked[1][1] == count:
                summary = f"no pseudo-label: tie between {_show(top, example[top])} and " \
                          f"{_show(ranked[1][0], example[ranked[1][0]])} ({count}/{n} votes each)"
            elif count < p["min_votes"] or share < p["min_share"]:
                summary = (f"no pseudo-label: top answer {_show(top, example[top])} has {count}/{n} votes "
                           f"(share {share:.2f}; needs {p['min_votes']} votes and share {p['min_share']})")
            else:
                label = top
        else:
            summary = f"no pseudo-label: none of the {n} samples has a final answer"
        verdicts = []
        for a in answers:
            if a is None:
                verdicts.append(Verdict("no_answer", 0.0, None, f"{summary}; no final answer found"))
            elif label is not None and a[1] == label:
                verdicts.append(Verdict("correct", 1.0, a[0], f"{summary}; answer agrees"))
            else:
                verdicts.append(Verdict("wrong", 0.0, a[0], f"{summary}; answer {clip(a[0], 40)} does not agree"
                                        if label is not None else f"{summary}"))
        return verdicts
