"""GSM8K: grade-school math word problems with a worked solution ending in "#### N".

The gold answer is the text after the last "####", without thousands commas; the worked
solution is kept in metadata (it is a ready-made rationale, useful for comparison).
"""

from __future__ import annotations

from typing import Iterator

from selfimprove.pipeline.tasks import SourceRow, Task, TaskProblem, extras, optional_id, register, require
from selfimprove.pipeline.tasks.sources import read_records

HUB_ID = "openai/gsm8k"


@register
class Gsm8kTask(Task):
    name = "gsm8k"
    default_verifier = "numeric"
    default_user_prompt = (
        'Solve the problem. Think step by step, then end with "The answer is N." where N is a number.'
        "\n\nQuestion: {question}"
    )

    def source(self) -> tuple[str, str]:
        return self.cfg.path or HUB_ID, self.cfg.split

    def hub_config(self) -> str | None:
        # the hub data set has configs main and socratic
        return self.cfg.config or ("main" if self.source()[0] == HUB_ID else None)

    def rows(self) -> Iterator[SourceRow]:
        path, split = self.source()
        return read_records(path, split, self.cfg.limit, config=self.hub_config(), revision=self.cfg.revision)

    def to_problem(self, data: dict) -> TaskProblem:
        question = require(data, "question")
        solution = require(data, "answer")
        if not isinstance(solution, str) or "####" not in solution:
            raise ValueError("answer: no '####' final answer (for plain answers use task.name: columns)")
        answer = solution.rsplit("####", 1)[1].strip().replace(",", "")
        if not answer:
            raise ValueError("answer: nothing after '####'")
        return TaskProblem(
            question=question,
            answer=answer,
            id=optional_id(data.get("id")),
            metadata={"solution": solution, **extras(data, {"question", "answer", "id"})},
        )
