"""Any table of problems: cfg.columns names which column holds the question, the gold answer
and the id; the other columns (or just `keep`) go into metadata.
"""

from __future__ import annotations

from typing import Iterator

from selfimprove.pipeline.config import TaskConfig
from selfimprove.pipeline.tasks import SourceRow, Task, TaskProblem, optional_id, register
from selfimprove.pipeline.tasks.sources import read_records


@register
class ColumnsTask(Task):
    name = "columns"
    default_verifier = "numeric"
    default_user_prompt = (
        'Solve the problem. Think step by step, then end with "The answer is N." where N is a number.'
        "\n\nQuestion: {question}"
    )

    def __init__(self, cfg: TaskConfig):
        if not cfg.path:
            raise ValueError(
                "task.path: required for task 'columns' "
                "(a .jsonl/.json/.parquet/.csv file, a directory of them, or a hub id)"
            )
        super().__init__(cfg)

    def rows(self) -> Iterator[SourceRow]:
        return read_records(self.cfg.path, self.cfg.split, self.cfg.limit, self.cfg.config, self.cfg.revision)

    def to_problem(self, data: dict) -> TaskProblem:
        c = self.cfg.columns
        question = self._column(data, "question", c.question)
        answer = self._column(data, "answer", c.answer) if c.answer else None
        id_ = optional_id(self._column(data, "id", c.id)) if c.id else None
        if c.keep is None:
            metadata = {k: v for k, v in data.items() if k not in {c.question, c.answer, c.id}}
        else:
            metadata = {k: self._column(data, "keep", k) for k in c.keep}
        return TaskProblem(question=question, answer=answer, id=id_, metadata=metadata)

    @staticmethod
    def _column(data: dict, role: str, column: str) -> object:
        if column not in data:
            have = ", ".join(map(str, data)) or "none"
            raise ValueError(f"columns.{role}: column {column!r} not found (record has: {have})")
        return data[column]
