"""exact: the final answer, normalised, equals the gold answer (or one of its aliases).

For short-answer tasks no rule of arithmetic applies to: names, words, labels. Both sides get
the same normalisation: Unicode NFKC, LaTeX wrappers ($...$, \\text{...}) removed, then case,
whitespace and punctuation by the params. Aliases (other accepted spellings) come from a
metadata field named by `aliases_key`.
"""

from __future__ import annotations

import re
import unicodedata

from selfimprove.verifiers.base import MAX_ANSWER_CHARS, Verdict, Verifier, clip, register
from selfimprove.verifiers.extract import check_methods, find_final_answer, refusal_reason

WHITESPACE = ("keep", "collapse", "remove")
PUNCTUATION = ("keep", "strip", "remove")  # strip: only at both ends

_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mbox)\s*\{([^{}]*)\}")
_MATH_DELIMITERS = re.compile(r"^\$+|\$+$|^\\\(|\\\)$|^\\\[|\\\]$")
_BOX = re.compile(r"^\\(?:boxed|fbox)\s*\{(.*)\}$", re.S)


def normalize_text(text: str, case_sensitive: bool = False, whitespace: str = "collapse",
                   punctuation: str = "strip") -> str:
    s = unicodedata.normalize("NFKC", text).strip()
    while (m := _BOX.match(s)) is not None:
        s = m.group(1).strip()
    s = _MATH_DELIMITERS.sub("", s).strip()
    s = _TEXT_WRAPPER.sub(r"\1", s)
    if not case_sensitive:
        s = s.casefold()
    if punctuation == "remove":
        s = "".join(c for c in s if not unicodedata.category(c).startswith("P"))
    elif punctuation == "strip":
        while s and unicodedata.category(s[0]).startswith("P"):
            s = s[1:]
        while s and unicodedata.category(s[-1]).startswith("P"):
            s = s[:-1]
    if whitespace == "collapse":
        s = " ".join(s.split())
    elif whitespace == "remove":
        s = "".join(s.split())
    return s


def check_choice(verifier: str, name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"verifier {verifier!r}: {name} must be one of {list(allowed)}, got {value!r}")


@register("exact")
class ExactVerifier(Verifier):
    version = "2"
    defaults = {
        "methods": ["boxed", "answer_is", "hash"],
        "case_sensitive": False,
        "whitespace": "collapse",
        "punctuation": "strip",
        "aliases_key": None,  # metadata field with a list of other accepted answers
    }

    def __init__(self, **params):
        super().__init__(**params)
        p = self._params
        p["methods"] = list(check_methods(p["methods"]))
        if not isinstance(p["case_sensitive"], bool):
            raise ValueError(f"verifier {self.name!r}: case_sensitive must be true or false")
        check_choice(self.name, "whitespace", p["whitespace"], WHITESPACE)
        check_choice(self.name, "punctuation", p["punctuation"], PUNCTUATION)
        if p["aliases_key"] is not None and not isinstance(p["aliases_key"], str):
            raise ValueError(f"verifier {self.name!r}: aliases_key must be a metadata field name or null")

    def normalize(self, text: str) -> str:
        p = self._params
        return normalize_text(text, p["case_sensitive"], p["whitespace"], p["punctuation"])

    def golds(self, problem: dict) -> list[str]:
        golds = [] if problem.get("answer") is None else [str(problem["answer"])]
        key = self._params["aliases_key"]
        if key:
            aliases = (problem.get("metadata") or {}).get(key) or []
            golds += [str(a) for a in (aliases if isinstance(aliases, list) else [aliases])]
        return [g for g in golds if g.strip()]

    def verify(self, problem: dict, sample: dict) -> Verdict:
        found = find_final_answer(sample, self._params["methods"])
        golds = self.golds(problem)
        if not golds:
            return Verdict("error", 0.0, found.answer[:MAX_ANSWER_CHARS] if found.answer else None, "problem has no gold answer")
        if found.answer is None:
            return Verdict("no_answer", 0.0, None, refusal_reason(found))
        answer, method = found.answer, found.method
        if len(answer) > MAX_ANSWER_CHARS:
            return Verdict("wrong", 0.0, answer[:MAX_ANSWER_CHARS], f"{method} answer is too long ({len(answer)} characters)")
        normalized = self.normalize(answer)
        for gold in golds:
            if normalized and normalized == self.normalize(gold):
                return Verdict("correct", 1.0, answer, f"{method} answer {clip(answer)!r} matches {clip(gold)!r}")
        return Verdict("wrong", 0.0, answer, f"{method} answer {clip(answer)!r} != gold {clip(golds[0])!r}"
                       + (f" (or {len(golds) - 1} aliases)" if len(golds) > 1 else ""))
