"""MATH (MATH-500 format): competition problems whose answers are LaTeX, checked by the math
verifier. Records have problem, answer, solution, subject, level, unique_id; when `answer` is
missing the last \\boxed{} of the solution is the answer (how MATH itself marks it).
"""

from __future__ import annotations

from typing import Iterator

from selfimprove.pipeline.tasks import SourceRow, Task, TaskProblem, extras, optional_id, register, require
from selfimprove.pipeline.tasks.sources import read_records

HUB_ID = "HuggingFaceH4/MATH-500"


@register
class MathTask(Task):
    name = "math"
    default_verifier = "math"
    default_user_prompt = (
        "Solve the problem. Think step by step, then put the final answer in \\boxed{}."
        "\n\nQuestion: {question}"
    )

    def source(self) -> tuple[str, str]:
        path = self.cfg.path or HUB_ID
        return path, "test" if path == HUB_ID else self.cfg.split  # MATH-500 has only a test split

    def rows(self) -> Iterator[SourceRow]:
        path, split = self.source()
        return read_records(path, split, self.cfg.limit, self.cfg.config, self.cfg.revision)

    def to_problem(self, data: dict) -> TaskProblem:
        question = require(data, "problem")
        answer = data.get("answer")
        if answer is None or (isinstance(answer, str) and not answer.strip()):
            answer = last_boxed(data.get("solution"))
            if answer is None:
                raise ValueError("answer: missing, and the solution has no \\boxed{} answer")
        return TaskProblem(
            question=question,
            answer=answer,
            id=optional_id(data.get("unique_id")),
            metadata=extras(data, {"problem", "answer"}),
        )


def last_boxed(text: object) -> str | None:
    """Content of the last \\boxed{...} (braces balanced) or \\boxed N in text, or None."""
    if not isinstance(text, str):
        return None
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    rest = text[start + len("\\boxed"):]
    if rest[:1] != "{":  # the brace-less form "\\boxed 2"
        words = rest.split("$")[0].split()
        return words[0] if rest[:1].isspace() and words else None
    depth = 0
    for i, ch in enumerate(rest):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth == 0:
            return rest[1:i].strip() or None
    return None  # unbalanced
