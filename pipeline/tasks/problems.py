"""A problem row, checked: the question and gold answer validated, a stable id, the source's identity.

prepare builds the problems table with these, and evaluate its held-out problems, so both
accept and reject rows by the same rules.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path


RAW_LIMIT = 500


def clip_raw(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    text = text[:RAW_LIMIT]
    return text.encode("utf-8", "replace").decode("utf-8")


def bad_text(text: str) -> str | None:
    if "\x00" in text:
        return "contains NUL bytes"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode (lone surrogate)"
    return None


def validate_question(question, max_chars: int) -> str:
    if question is None:
        raise ValueError("question: missing (null)")
    if not isinstance(question, str):
        raise ValueError(f"question: expected text, got {type(question).__name__}")
    if not question.strip():
        raise ValueError("question: empty")
    if len(question) > max_chars:
        raise ValueError(f"question: {len(question)} characters exceeds task.max_question_chars={max_chars}")
    bad = bad_text(question)
    if bad:
        raise ValueError(f"question: {bad}")
    return question.strip()


def validate_answer(answer) -> str:
    if answer is None:
        raise ValueError("answer: missing (null)")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise ValueError(f"answer: expected text or a number, got {type(answer).__name__}")
    if isinstance(answer, float):
        if not math.isfinite(answer):
            raise ValueError(f"answer: not a finite number ({answer})")
        answer = str(int(answer)) if answer.is_integer() else repr(answer)
    answer = str(answer).strip()
    if not answer:
        raise ValueError("answer: empty")
    if len(answer) > 1000:
        raise ValueError(f"answer: {len(answer)} characters is too long for a final answer")
    bad = bad_text(answer)
    if bad:
        raise ValueError(f"answer: {bad}")
    return answer


def normalise_question(question: str) -> str:
    return re.sub(r"\s+", " ", question).strip().lower()


def problem_id(task: str, source_id, question: str) -> str:
    """The source's own id when it has one, else a hash of the question: stable across reruns."""
    if source_id is not None and str(source_id).strip():
        return str(source_id).strip()
    return f"{task}-{hashlib.sha1(normalise_question(question).encode()).hexdigest()[:12]}"


def source_identity(path: str | None) -> dict:
    """Size and mtime of local inputs, so an edited file re-prepares; hub ids by name."""
    if not path:
        return {}
    p = Path(path)
    if not p.exists():
        return {"hub_id": path}
    files = sorted(p.rglob("*")) if p.is_dir() else [p]
    return {str(f): [f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file()}
