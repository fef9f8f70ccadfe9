"""A deterministic engine for tests only: it knows the gold answers and answers right 2/3 of the time.

Never a default or a fallback of the product: a config names it explicitly
(`sample.engine: tests.fake_engine:FakeEngine`). Its output depends only on (problem, sample
index, seed), so two runs give identical bytes, which lets tests compare a resumed run with
an uninterrupted one. FAKE_ENGINE_DELAY (seconds per generate call) slows it down so a test
can kill it mid-stage; a question containing "FAIL-ME" comes back as a failed request. Given
a rationalization hint ("the correct answer is"), it always reaches the answer: odd samples
by merely copying it ("The answer is N."), even ones with a rationale (a calculation, so
dedup's answer_only rule keeps them).

For CoT-decoding (`generate_branches`) it gives k paths per problem, a function of (problem,
first-token rank, seed) alone: a right answer, a wrong one, or none at all, with word tokens
(each word and the whitespace before it, so the token texts join to the text) and top-1/top-2
probabilities from a hash of (problem, rank, position).
"""

from __future__ import annotations

import hashlib
import os
import re
import time

from selfimprove.pipeline.engines import Branch, BranchResult, BranchToken, Completion, Engine, Request, Result
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

    def branch_text(self, req: Request, rank: int) -> str:
        """The path of a problem that starts with its rank-th first token (1: greedy's)."""
        gold = self.gold.get(self._question(req), "0")
        kind = int(hashlib.sha256(f"{req.key}:branch{rank}:{self.seed}".encode()).hexdigest(), 16) % 4
        name = "abcdefghijklmnopqrstuvwxyz"[(rank - 1) % 26]  # a letter: a digit here would be an answer
        if kind == 0:
            return f"Path {name}: I am not sure where to start."
        if kind == 1:
            return f"Path {name}: a guess.\nThe answer is {gold}1."
        return f"Path {name}: step by step, {gold} + {rank} - {rank} = {gold}.\nThe answer is {gold}."

    def branch_probabilities(self, key: str, rank: int, position: int) -> tuple[float, float]:
        h = int(hashlib.sha256(f"{key}:{rank}:{position}".encode()).hexdigest(), 16)
        top1 = 0.3 + (h % 70) / 100
        return top1, (1 - top1) * ((h // 70) % 100) / 100

    def generate_branches(self, requests: list[Request], k: int, params, desc: str = "") -> list[BranchResult]:
        time.sleep(float(os.environ.get("FAKE_ENGINE_DELAY", "0")))
        results = []
        for req in requests:
            if "FAIL-ME" in self._question(req):
                results.append(BranchResult(error="fake engine: request failed"))
                continue
            branches = []
            for rank in range(1, k + 1):
                text = self.branch_text(req, rank)
                words = re.findall(r"\s*\S+", text)[: params.max_tokens]
                tokens = [BranchToken(w, *self.branch_probabilities(req.key, rank, i)) for i, w in enumerate(words)]
                finish = "stop" if len(words) == len(re.findall(r"\s*\S+", text)) else "length"
                branches.append(Branch("".join(words), finish, len(words), tokens, rank))
            results.append(BranchResult(prompt_tokens=len(req.messages[-1]["content"].split()), branches=branches))
        return results
