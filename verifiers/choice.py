"""choice: multiple choice, answered by the option's label ("B", "(B)"), its text, or both.

Options come from the problem's metadata (`options_key`, default: the first of "options",
"choices"): a list of texts (labelled A, B, C, ... in order; a leading "A) " is dropped), a
{label: text} mapping, or {"label": [...], "text": [...]} as in ARC-style data sets. The gold
answer is a label, an option's text, or (with `gold_index_base` 0 or 1) an option's position.

The final answer is found like everywhere else (\\boxed{}, "The answer is", "####"), or as a
last line that is just a label. "B) Paris" must agree with itself: a label whose text is
another option's text is wrong, not a coin toss. `match: letter` accepts labels only,
`match: text` option texts only, `match: both` (default) either.
"""

from __future__ import annotations

import json
import re
import string

from selfimprove.verifiers.base import MAX_ANSWER_CHARS, Verdict, Verifier, clip, register
from selfimprove.verifiers.exact import check_choice, normalize_text
from selfimprove.verifiers.extract import NO_ANSWER, check_methods, find_final_answer, refusal_reason

OPTION_KEYS = ("options", "choices")
MATCH = ("letter", "text", "both")

_LABEL = r"[A-Za-z]|\d{1,2}"
_LABEL_ONLY = re.compile(rf"^\(?({_LABEL})\)?[.):]?$")
_LABEL_AND_TEXT = re.compile(rf"^(?:\(({_LABEL})\)|({_LABEL})[.):])\s*(\S.*)$", re.S)
_WRAPPERS = re.compile(r"\*\*|__|\$|\\text\s*\{|\\textbf\s*\{|\\mathrm\s*\{|[{}]")
_LABEL_WORD = re.compile(r"^(?:option|choice|answer)\s*:?\s*", re.I)
_LAST_LINE_LABEL = re.compile(r"^\W{0,4}\(?([A-Z])\)?\W{0,4}$")


def _plain(text: str) -> str:
    return _LABEL_WORD.sub("", _WRAPPERS.sub("", text).strip()).strip()


def options_of(metadata: dict, key: str = "auto") -> dict[str, str]:
    """{label: text} in order; {} when the problem has no options. ValueError when malformed."""
    keys = OPTION_KEYS if key == "auto" else (key,)
    found = next((k for k in keys if metadata.get(k) not in (None, "", [], {})), None)
    if found is None:
        return {}
    value = metadata[found]
    if isinstance(value, str) and value.strip()[:1] in "[{":
        try:
            value = json.loads(value)
        except ValueError:
            pass
    if isinstance(value, dict) and isinstance(value.get("label"), list) and isinstance(value.get("text"), list):
        value = dict(zip(map(str, value["label"]), map(str, value["text"])))
    if isinstance(value, list) and len(value) <= 26:
        options = {}
        for letter, text in zip(string.ascii_uppercase, value):
            text = str(text).strip()
            m = _LABEL_AND_TEXT.match(text)
            if m and (m.group(1) or m.group(2)).upper() == letter:
                text = m.group(3).strip()  # "A) Paris" listed as option A
            options[letter] = text
        return options
    if isinstance(value, dict) and all(isinstance(k, str) and re.fullmatch(_LABEL, k.strip()) for k in value):
        return {k.strip().upper(): str(v).strip() for k, v in value.items()}
    raise ValueError(f"metadata.{found}: expected a list of option texts or a {{label: text}} mapping")


@register("choice")
class ChoiceVerifier(Verifier):
    version = "2"
    defaults = {
        "match": "both",
        "options_key": "auto",
        "gold_index_base": None,  # 0 or 1: a numeric gold answer is the option's position
        "methods": ["boxed", "answer_is", "hash"],
    }

    def __init__(self, **params):
        super().__init__(**params)
        p = self._params
        check_choice(self.name, "match", p["match"], MATCH)
        check_choice(self.name, "gold_index_base", p["gold_index_base"], (None, 0, 1))
        if p["options_key"] != "auto" and not isinstance(p["options_key"], str):
            raise ValueError(f"verifier {self.name!r}: options_key must be 'auto' or a metadata field name")
        p["methods"] = list(check_methods(p["methods"]))

    def _label(self, token: str, options: dict[str, str]) -> str | None:
        label = token.upper()
        if options:
            return label if label in options else None
        return label if label.isalpha() else None

    def _by_text(self, text: str, options: dict[str, str]) -> list[str]:
        key = normalize_text(text)
        return [label for label, option in options.items() if key and normalize_text(option) == key]

    def gold_label(self, gold: str, options: dict[str, str]) -> str:
        m = _LABEL_ONLY.match(_plain(gold))
        if m and self._label(m.group(1), options):
            return self._label(m.group(1), options)
        matches = self._by_text(gold, options)
        if len(matches) == 1:
            return matches[0]
        base = self._params["gold_index_base"]
        if base is not None and gold.strip().isdigit() and 0 <= int(gold) - base < len(options):
            return list(options)[int(gold) - base]
        labels = "-".join([next(iter(options)), list(options)[-1]]) if options else "A-Z"
        hint = "" if base is not None or not gold.strip().isdigit() else " (a position? set params.gold_index_base: 0 or 1)"
        raise ValueError(f"gold answer {clip(gold)!r} is neither an option label ({labels}) nor an option's text{hint}")

    def read_answer(self, answer: str, options: dict[str, str]) -> tuple[str | None, str]:
        """(label, how) for an extracted answer; label None with the reason when it names no option."""
        mode = self._params["match"]
        plain = _plain(answer)
        m = _LABEL_ONLY.match(plain)
        not_a_label = None
        if m and (len(plain) > 1 or plain.isupper() or plain.isdigit() or not options or plain.upper() in options):
            label = self._label(m.group(1), options)
            if label is None:  # "7" may still be an option's text
                not_a_label = f"label {plain!r} is not among the options {', '.join(options) or '(none given)'}"
            elif mode == "text":
                return None, "a label, but match: text wants the option's text"
            else:
                return label, f"label {label}"
        m = _LABEL_AND_TEXT.match(plain)
        if m and options and self._label(m.group(1) or m.group(2), options) and mode != "text":
            label = self._label(m.group(1) or m.group(2), options)
            by_text = self._by_text(m.group(3), options)
            if by_text and label not in by_text:
                return None, f"label {label} contradicts its text, which is option {by_text[0]}"
            return label, f"label {label}"
        if mode == "letter":
            return None, not_a_label or f"{clip(answer)!r} is not an option label"
        matches = self._by_text(plain, options)
        if len(matches) == 1:
            return matches[0], f"text of option {matches[0]}"
        if len(matches) > 1:
            return None, f"{clip(answer)!r} is the text of several options ({', '.join(matches)})"
        return None, not_a_label or f"{clip(answer)!r} matches no option"

    def verify(self, problem: dict, sample: dict) -> Verdict:
        try:
            options = options_of(problem.get("metadata") or {}, self._params["options_key"])
            gold = "" if problem.get("answer") is None else str(problem["answer"]).strip()
            if not gold:
                return Verdict("error", 0.0, None, "problem has no gold answer")
            gold_label = self.gold_label(gold, options)
        except ValueError as e:
            return Verdict("error", 0.0, None, str(e))
        found = find_final_answer(sample, self._params["methods"])
        if found.answer is None and found.reason != NO_ANSWER:
            return Verdict("no_answer", 0.0, None, refusal_reason(found))  # ambiguous or taken back
        answer, method = found.answer, found.method
        if answer is None:  # no statement at all: a last line that is just a label
            last = (sample.get("text") or "").rstrip().rsplit("\n", 1)[-1][-40:]
            m = _LAST_LINE_LABEL.match(last.strip())
            if m is None:
                return Verdict("no_answer", 0.0, None, NO_ANSWER)
            answer, method = m.group(1), "last line"
        if len(answer) > MAX_ANSWER_CHARS:
            return Verdict("wrong", 0.0, answer[:MAX_ANSWER_CHARS], f"{method} answer is too long ({len(answer)} characters)")
        label, how = self.read_answer(answer, options)
        if label is None:
            return Verdict("wrong", 0.0, answer, f"{method} answer: {how}")
        if label == gold_label:
            return Verdict("correct", 1.0, label, f"{method} answer {how} == gold {gold_label}")
        return Verdict("wrong", 0.0, label, f"{method} answer {how} != gold {gold_label}")
