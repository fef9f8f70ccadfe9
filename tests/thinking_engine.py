"""A deterministic reasoning-model engine for tests only (`sample.engine: tests.thinking_engine:ThinkingEngine`).

Every completion opens with a `<think>` section, as reasoning models write them. Sample 0 thinks
the wrong answer, then states the right one after the section; sample 1 thinks the right
answer, then states a wrong one (a verifier that read the section would accept it); sample 2
stops while still thinking (the right answer inside, nothing after); sample 3 closes a section
the chat template opened (only `</think>` in the completion), then the right answer by the same
step as sample 0 (the two differ only in their thinking).
"""

from __future__ import annotations

from selfimprove.pipeline.engines import Completion, Result
from tests.fake_engine import FakeEngine


def completions(gold: str) -> list[Completion]:
    texts = [
        (f"<think>Maybe it is {gold}9? The answer is {gold}9.</think>\n\n"
         f"Adding up: {gold} + 0 = {gold}.\nThe answer is {gold}.", "stop"),
        (f"<think>Adding up: {gold} + 0 = {gold}. The answer is {gold}.</think>\n\n"
         f"So {gold}9 - 0 = {gold}9.\nThe answer is {gold}9.", "stop"),
        (f"<think>Adding up: {gold} + 0 = {gold}. The answer is {gold}.", "length"),
        (f"Let me see: 1 + 1 = 2, checked twice.</think>\n\n"
         f"Indeed {gold} + 0 = {gold}.\nThe answer is {gold}.", "stop"),
    ]
    return [Completion(text=t, finish_reason=why, completion_tokens=len(t.split())) for t, why in texts]


class ThinkingEngine(FakeEngine):
    name = "thinking"

    def generate(self, requests, params, desc=""):
        results = []
        for req in requests:
            gold = self.gold.get(self._question(req), "0")
            results.append(Result(prompt_tokens=5, completions=completions(gold)[:params.n]))
        return results
