"""Deterministic test engines with a difficulty mix, for `sample.until_correct` (tests only).

Like tests/fake_engine.py (whose FakeEngine stays as it is, so no existing test changes), but
a problem's chance of a right answer falls with its number of steps (arithmetic metadata):
PASS[steps], so some problems are hard. Every sample differs (no identical pairs), and a
follow-up round gives new samples, as a real engine does:

- `HardEngine` takes no per-request seeds (like vLLM on CPU): its "RNG advances by itself",
  modelled as a per-problem counter of requests this engine has served, so the k-th request for a
  problem (round k) draws other samples than the first;
- `SeededHardEngine` takes per-request seeds (like vLLM on GPU): a sample depends on the
  request's seed, which the sample stage derives per (problem, round).

Either way a sample depends only on (problem, round or seed, index in the request, engine seed),
so a resumed run matches an uninterrupted one. FAKE_ENGINE_DELAY slows each call like FakeEngine.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter

from selfimprove.pipeline.engines import Completion, Result
from selfimprove.pipeline.tasks import get_task
from tests.fake_engine import FakeEngine

PASS = {1: 0.7, 2: 0.25, 3: 0.06}  # chance of a right answer by number of steps


class HardEngine(FakeEngine):
    name = "hard"

    def __init__(self, cfg):
        super().__init__(cfg)
        task = get_task(cfg.task)
        self.steps = {}
        for row in task.rows():
            if row.data is not None and row.data.get("question") and row.data.get("steps") is not None:
                self.steps[row.data["question"].strip()] = int(row.data["steps"])
        self.served: Counter = Counter()  # requests served per problem (the engine-level RNG's advance)
        self.calls: list[tuple[int, int]] = []  # (requests, n) of each generate call

    def _variant(self, req) -> str:
        if req.seed is not None:
            return f"seed{req.seed}"
        self.served[req.key] += 1
        return f"call{self.served[req.key]}"

    def generate(self, requests, params, desc: str = ""):
        if any("the correct answer is" in r.messages[-1]["content"] for r in requests):
            return super().generate(requests, params, desc)  # rationalization: FakeEngine's hinted answers
        time.sleep(float(os.environ.get("FAKE_ENGINE_DELAY", "0")))
        self.calls.append((len(requests), params.n))
        results = []
        for req in requests:
            question = self._question(req)
            gold = self.gold.get(question, "0")
            chance = PASS.get(self.steps.get(question, 1), 0.5)
            variant = self._variant(req)
            completions = []
            for j in range(params.n):
                h = int(hashlib.sha256(f"{req.key}:{variant}:{j}:{self.seed}".encode()).hexdigest(), 16)
                if (h % 1000) < chance * 1000:
                    text = f"Step by step (path {h % 97}): {gold} + {h % 97} - {h % 97} = {gold}.\nThe answer is {gold}."
                else:
                    text = f"I am not sure (path {h % 97}).\nThe answer is {gold}1."
                completions.append(Completion(text=text, finish_reason="stop", completion_tokens=len(text.split())))
            results.append(Result(prompt_tokens=len(req.messages[-1]["content"].split()), completions=completions))
        return results


class SeededHardEngine(HardEngine):
    def supports_request_seed(self) -> bool:
        return True
