"""Problem sources and prompt templates.

A task turns a source (the built-in generator, a file, a hub data set) into raw records
(`rows`) and each record into a problem (`to_problem`). The two steps are separate so that a
record that cannot be read and a record that lacks a field both reach the prepare stage as
a reason it can write to `_rejects.parquet`, instead of stopping the run.

A new task is one new file, `pipeline/tasks/<name>.py`, holding a `@register`ed `Task`
subclass whose `name` is `<name>`; `get_task` imports it on first use.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

from selfimprove.pipeline.config import TaskConfig


@dataclass
class SourceRow:
    index: int  # position in the source (0-based line/row number)
    data: dict | None  # the raw record, or None if it could not be read
    error: str | None = None  # why it could not be read, e.g. "test.jsonl line 17: invalid UTF-8"
    raw: str = ""  # the offending raw text, truncated to 500 chars, for the user


@dataclass
class TaskProblem:
    question: Any  # raw; the prepare stage validates type/emptiness/length
    answer: Any  # raw gold answer (str/int/float) or None
    id: str | None = None  # the source's own id if it has one
    metadata: dict = field(default_factory=dict)  # extra fields, JSON-serialisable


class Task:
    """Base class: a source of records and how to read a problem out of one."""

    name: ClassVar[str]
    default_verifier: ClassVar[str] = "numeric"
    default_user_prompt: ClassVar[str]

    def __init__(self, cfg: TaskConfig):
        self.cfg = cfg

    def rows(self) -> Iterator[SourceRow]:
        """All source rows (good and unreadable), at most `cfg.limit` of them."""
        raise NotImplementedError

    def source(self) -> tuple[str | None, str]:
        """(path or hub id, split) the rows come from; (None, ...) for a generator."""
        return self.cfg.path, self.cfg.split

    def hub_config(self) -> str | None:
        """The hub dataset configuration the rows come from."""
        return self.cfg.config

    def to_problem(self, data: dict) -> TaskProblem:
        """The problem in one record; ValueError naming the field if the record lacks it."""
        raise NotImplementedError


TASKS: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    """Class decorator: make a task available to `get_task` under `cls.name`."""
    TASKS[cls.name] = cls
    return cls


def get_task(cfg: TaskConfig) -> Task:
    if cfg.name not in TASKS:
        module = f"{__name__}.{cfg.name}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
    if cfg.name not in TASKS:
        raise ValueError(f"task.name: unknown task {cfg.name!r}")
    return TASKS[cfg.name](cfg)


def render_prompt(cfg: TaskConfig, task: Task, question: str) -> list[dict]:
    """Chat messages for one question.

    The question is put in with str.replace, not str.format: questions (LaTeX, code) are full
    of braces. Few-shot examples go at the top of the user turn, as "Question: ...\\nAnswer: ...".
    """
    messages = []
    if cfg.prompt.system:
        messages.append({"role": "system", "content": cfg.prompt.system})
    template = cfg.prompt.user or task.default_user_prompt
    parts = []
    for i, example in enumerate(cfg.prompt.few_shot):
        if "question" not in example or "answer" not in example:
            raise ValueError(f"prompt.few_shot[{i}]: needs both 'question' and 'answer'")
        parts.append(f"Question: {example['question']}\nAnswer: {example['answer']}")
    parts.append(template.replace("{question}", question))
    messages.append({"role": "user", "content": "\n\n".join(parts)})
    return messages


def require(data: dict, key: str) -> Any:
    """data[key], or a ValueError naming the missing field and the fields the record has."""
    if key not in data:
        have = ", ".join(map(str, data)) or "none"
        raise ValueError(f"{key}: missing (record has: {have})")
    return data[key]


def optional_id(value: Any) -> str | None:
    """A source's own id as text; None when it has none."""
    if value is None or value == "":
        return None
    return str(value)


def extras(data: dict, used: set[str]) -> dict:
    """The record's fields that a task did not use, to keep as metadata."""
    return {k: v for k, v in data.items() if k not in used}


# A problem's own difficulty, where its task records one in its metadata: the generated arithmetic
# problems' number of steps, MATH's level. The same keys evaluate breaks accuracy down by
# (`evaluate.breakdown`), so a bucket of the export and of the held-out accuracy share a label.
DIFFICULTY_KEYS = ("steps", "level")


def difficulty_of(metadata: dict | None) -> str | None:
    """A problem's difficulty bucket as `key=value` (e.g. `steps=2`, `level=Level 5`), or None."""
    for key in DIFFICULTY_KEYS:
        if metadata and metadata.get(key) is not None:
            return f"{key}={metadata[key]}"
    return None
