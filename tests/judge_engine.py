"""A deterministic engine for tests that also acts as an LLM judge.

Prompts in the judge's default template ("Reference answer:" ... "Student's response:") get a
judgement: "VERDICT: CORRECT" when the response's final answer equals the reference as a
number, else "VERDICT: INCORRECT"; a reference "no-verdict" gets a reply without a verdict.
Every other prompt goes to the FakeEngine, so one config samples and judges.
"""

from __future__ import annotations

import re

from selfimprove.pipeline.engines import Completion, Result
from tests.fake_engine import FakeEngine
from selfimprove.verifiers.extract import extract_answer
from selfimprove.verifiers.numeric import parse_number

_JUDGE = re.compile(r"Reference answer:\n(.*?)\n\nStudent's response:\n(.*)\n\nExplain briefly", re.S)


class JudgeEngine(FakeEngine):
    name = "fake-judge"

    def generate(self, requests, params, desc=""):
        self.calls = getattr(self, "calls", []) + [(len(requests), params.temperature, params.n)]
        results = [None] * len(requests)
        others = []
        for k, req in enumerate(requests):
            m = _JUDGE.search(req.messages[-1]["content"])
            if m is None:
                others.append(k)
                continue
            reference, response = m.group(1).strip(), m.group(2)
            if reference == "no-verdict":
                reply = "I cannot decide."
            else:
                found = extract_answer(response)
                same = found is not None and parse_number(found[0]) is not None and parse_number(found[0]) == parse_number(reference)
                reply = f"The student says {found[0] if found else 'nothing'}.\nVERDICT: {'CORRECT' if same else 'INCORRECT'}"
            results[k] = Result(prompt_tokens=1, completions=[Completion(reply, "stop", len(reply.split()))])
        if others:
            for k, res in zip(others, super().generate([requests[k] for k in others], params, desc)):
                results[k] = res
        return results
