"""judge: an LLM decides, for tasks no rule can check. Off by default; choose it explicitly.

A judge needs the generation engine, which lives in the verify stage's process, not in a pool
worker, so it is split in two: `judge_request(problem, sample)` builds the chat messages (the
stage sends a shard's worth to the engine in one call, at temperature 0) and
`parse_judgement(text)` reads the verdict from the judge's reply. The reply is model output
too: only its last `max_reply_chars` characters are read, with one linear regular expression.

The prompt template (`template`, with `{question}`, `{reference}` and `{output}` filled in by
plain replacement, never str.format) asks for a last line "VERDICT: CORRECT" or
"VERDICT: INCORRECT"; anything else is "no_answer". `model` picks another model for the
judge (default: the run's model.path). Judging is only as good as the judge model: measure
it with labelled cases before trusting it.
"""

from __future__ import annotations

import re

from selfimprove.verifiers.base import Verdict, Verifier, clip, register
from selfimprove.verifiers.extract import clean_text

DEFAULT_TEMPLATE = """You are grading a student's answer. Decide whether the student's final answer is correct.

Question:
{question}

Reference answer:
{reference}

Student's response:
{output}

Explain briefly, then end with one line that is exactly "VERDICT: CORRECT" or "VERDICT: INCORRECT"."""

_VERDICT = re.compile(r"verdict\W{0,5}(correct|incorrect|wrong|right)\b", re.I)


@register("judge")
class JudgeVerifier(Verifier):
    version = "1"
    uses_engine = True
    defaults = {
        "template": DEFAULT_TEMPLATE,
        "system": None,
        "model": None,  # judge model (HF directory or hub id); default: the run's model.path
        "max_tokens": 256,
        "max_output_chars": 6000,  # of the sample shown to the judge (its end, where the answer is)
        "max_reply_chars": 2000,  # of the judge's reply that is read
    }

    def __init__(self, **params):
        super().__init__(**params)
        p = self._params
        if not isinstance(p["template"], str) or "{output}" not in p["template"]:
            raise ValueError(f"verifier {self.name!r}: template must be text containing {{output}}")
        for name in ("max_tokens", "max_output_chars", "max_reply_chars"):
            if isinstance(p[name], bool) or not isinstance(p[name], int) or p[name] < 1:
                raise ValueError(f"verifier {self.name!r}: {name} must be an integer >= 1, got {p[name]!r}")
        for name in ("system", "model"):
            if p[name] is not None and not isinstance(p[name], str):
                raise ValueError(f"verifier {self.name!r}: {name} must be text or null")

    def judge_request(self, problem: dict, sample: dict) -> list[dict]:
        p = self._params
        output = clean_text(sample.get("text") or "")
        if len(output) > p["max_output_chars"]:
            output = "[...]\n" + output[-p["max_output_chars"]:]
        reference = problem.get("answer")
        filled = (p["template"].replace("{question}", clean_text(str(problem.get("question") or "")))
                  .replace("{reference}", "(none given)" if reference in (None, "") else clean_text(str(reference)))
                  .replace("{output}", output))
        messages = [{"role": "system", "content": p["system"]}] if p["system"] else []
        return messages + [{"role": "user", "content": filled}]

    def parse_judgement(self, text: str | None) -> Verdict:
        tail = clean_text(text or "")[-self._params["max_reply_chars"]:]
        last = None
        for last in _VERDICT.finditer(tail):
            pass
        if last is None:
            return Verdict("no_answer", 0.0, None, f"judge gave no verdict: {clip(tail[-120:]) or '(empty reply)'}")
        ok = last.group(1).lower() in ("correct", "right")
        return Verdict("correct" if ok else "wrong", float(ok), None, f"judge: {clip(last.group(0), 40)}")

    def verify(self, problem: dict, sample: dict) -> Verdict:
        raise RuntimeError("the judge needs the generation engine: it runs in the verify stage, not in a worker")
