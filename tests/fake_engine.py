"""A deterministic engine for tests only: it knows the gold answers and answers right 2/3 of the time.

Never a default or a fallback of the product: a config names it explicitly
(`sample.engine: tests.fake_engine:FakeEngine`). Its output depends only on (problem, sample
index, seed), so two runs give identical bytes, which lets tests compare a resumed run with
an uninterrupted one. FAKE_ENGINE_DELAY (seconds per generate call) slows it down so a test
can kill it mid-stage; a question containing "FAIL-ME" comes back as a failed request. Given
a rationalization hint ("the correct answer is"), it always reaches the answer: odd samples
by merely copying it ("The answer is N."), even ones with a rationale (a calculation, so
dedup's answer_only rule keeps them).
"""

from __future__ import annotations

import hashlib
import os
import time

from selfimprove.pipeline.engines import Completion, Engine, Request, Result
from selfimprove.pipeline.tasks import get_task


class FakeEngine(Engine):
    name = "fake"

    def __init__(self, cfg):
        super().__init__(cfg)
        task = get_task(cfg.task)
        self.gold = {}
        for row in task.rows():
            if row.data is None:
                continue
            try:
                p = task.to_problem(row.data)
            except ValueError:
                continue
            if isinstance(p.question, str) and p.question.strip():
                self.gold[p.question.strip()] = str(p.answer)

    @property
    def model_name(self) -> str:
        return "fake-model"

    def _question(self, req: Request) -> str:
        user = req.messages[-1]["content"]
        for q in self.gold:
            if q in user:
                return q
        return user

    def generate(self, requests: list[Request], params, desc: str = "") -> list[Result]:
        time.sleep(float(os.environ.get("FAKE_ENGINE_DELAY", "0")))
        results = []
        for req in requests:
            question = self._question(req)
            if "FAIL-ME" in question:
                results.append(Result(error="fake engine: request failed"))
                continue
            gold = self.gold.get(question, "0")
            completions = []
            if "the correct answer is" in req.messages[-1]["content"]:
                for j in range(params.n):
                    text = f"The answer is {gold}." if j % 2 else f"First I work it out step by step (try {j}): {gold} + {j} - {j} = {gold}.\nThe answer is {gold}."
                    completions.append(Completion(text=text, finish_reason="stop", completion_tokens=len(text.split())))
                results.append(Result(prompt_tokens=len(req.messages[-1]["content"].split()), completions=completions))
                continue
            for j in range(params.n):
                h = int(hashlib.sha256(f"{req.key}:{j // 2}:{self.seed}".encode()).hexdigest(), 16)
                # samples come in identical pairs (j // 2), so dedup has exact duplicates to remove
                if h % 3:
                    text = f"Let me think step by step (path {h % 7}): {gold} + {h % 7} - {h % 7} = {gold}.\nThe answer is {gold}."
                else:
                    text = f"I am not sure (path {h % 5}).\nThe answer is {gold}1."
                completions.append(Completion(text=text, finish_reason="stop", completion_tokens=len(text.split())))
            results.append(Result(prompt_tokens=len(req.messages[-1]["content"].split()), completions=completions))
        return results
