"""regex: the final answer (or the whole output) matches a pattern built from the gold answer.

`pattern` is a Python regular expression in which `{gold}` stands for the gold answer, escaped
(so `^\\s*{gold}\\s*(?:km)?$` accepts "12 km" for gold 12). `target: output` matches the last
`max_chars` characters of the whole output instead of the extracted answer. A pattern that
backtracks badly on hostile output is stopped by the pool's time limit like any other verifier.
"""

from __future__ import annotations

import re

from selfimprove.verifiers.base import MAX_ANSWER_CHARS, Verdict, Verifier, clip, register
from selfimprove.verifiers.exact import check_choice
from selfimprove.verifiers.extract import check_methods, clean_text, find_final_answer, refusal_reason


@register("regex")
class RegexVerifier(Verifier):
    version = "2"
    defaults = {
        "pattern": None,  # required; "{gold}" is replaced by the escaped gold answer
        "target": "answer",  # "answer": the extracted final answer; "output": the whole output
        "match": "fullmatch",  # or "search"
        "ignore_case": False,
        "methods": ["boxed", "answer_is", "hash"],
        "max_chars": 10_000,  # of the output's end, with target: output
    }

    def __init__(self, **params):
        super().__init__(**params)
        p = self._params
        if not isinstance(p["pattern"], str) or not p["pattern"]:
            raise ValueError(f"verifier {self.name!r}: params.pattern is required, e.g. '^{{gold}}$'")
        check_choice(self.name, "target", p["target"], ("answer", "output"))
        check_choice(self.name, "match", p["match"], ("fullmatch", "search"))
        if not isinstance(p["ignore_case"], bool):
            raise ValueError(f"verifier {self.name!r}: ignore_case must be true or false")
        if isinstance(p["max_chars"], bool) or not isinstance(p["max_chars"], int) or p["max_chars"] < 1:
            raise ValueError(f"verifier {self.name!r}: max_chars must be an integer >= 1")
        p["methods"] = list(check_methods(p["methods"]))
        self._flags = re.IGNORECASE if p["ignore_case"] else 0
        self._compile("gold")  # a bad pattern fails here, not on every sample

    def _compile(self, gold: str) -> re.Pattern:
        try:
            return re.compile(self._params["pattern"].replace("{gold}", re.escape(gold)), self._flags)
        except re.error as e:
            raise ValueError(f"verifier {self.name!r}: params.pattern is not a valid regular expression: {e}") from None

    def verify(self, problem: dict, sample: dict) -> Verdict:
        p = self._params
        gold = "" if problem.get("answer") is None else str(problem["answer"]).strip()
        if "{gold}" in p["pattern"] and not gold:
            return Verdict("error", 0.0, None, "problem has no gold answer")
        if p["target"] == "output":
            text = clean_text(sample.get("text") or "")[-p["max_chars"]:]
            if not text.strip():
                return Verdict("no_answer", 0.0, None, "empty output")
            label, extracted = "output", None
        else:
            found = find_final_answer(sample, p["methods"])
            if found.answer is None:
                return Verdict("no_answer", 0.0, None, refusal_reason(found))
            text, method = found.answer, found.method
            if len(text) > MAX_ANSWER_CHARS:
                return Verdict("wrong", 0.0, text[:MAX_ANSWER_CHARS], f"{method} answer is too long ({len(text)} characters)")
            label, extracted = f"{method} answer {clip(text)!r}", text
        pattern = self._compile(gold)
        matched = pattern.fullmatch(text) if p["match"] == "fullmatch" else pattern.search(text)
        if matched:
            return Verdict("correct", 1.0, extracted if extracted is not None else clip(matched.group(0), 200),
                           f"{label} matches /{clip(pattern.pattern, 60)}/")
        return Verdict("wrong", 0.0, extracted, f"{label} does not match /{clip(pattern.pattern, 60)}/")
