"""prepare: any problem source -> the problems table (stable id, question, gold answer, metadata).

Every source row either becomes a problem or lands in `_rejects.parquet` with the field and
the reason, so a bad row never stops the run and never vanishes. Exact-duplicate questions
are collapsed into the first one and counted (and listed among the rejects, so they can be
found).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from pathlib import Path

from selfimprove.pipeline import schema
from selfimprove.pipeline.config import Config
from selfimprove.pipeline.stages import check, open_writer, summary, up_to_date
from selfimprove.pipeline.store import part_name
from selfimprove.pipeline.tasks import get_task
from selfimprove.pipeline.tasks.sources import evaluation_split
from selfimprove.pipeline.tasks.problems import (bad_text, clip_raw, normalise_question, problem_id, source_identity,
                                     validate_answer, validate_question)

def gold_required(cfg: Config) -> bool:
    """Whether a problem without a gold answer is a reject: yes, unless the run's verifier needs none."""
    from selfimprove.pipeline.verification import build_verifier

    try:
        return build_verifier(cfg).needs_gold
    except ValueError:  # not loadable here (a plug-in installed elsewhere): the verify stage says so
        return True


def no_problems_message(cfg: Config, source_rows: int, reasons: Counter) -> str:
    """Why a source gave no usable problem, with the most common reject reasons and a hint."""
    where = cfg.task.path or cfg.task.name
    top = "; ".join(f"{n} x {r}" for r, n in reasons.most_common(3))
    text = f"prepare: no usable problem in {where} ({source_rows} source rows" + (f"; rejected: {top}" if top else "") + ")"
    path = Path(cfg.task.path) if cfg.task.path else None
    if path is not None and path.is_file() and path.suffix == ".jsonl":
        with open(path, "rb") as f:
            if f.read(4096).lstrip()[:1] == b"[":
                return text + f". {path.name} holds one JSON array, not one object per line: rename it to .json"
    return text + ". Check task.path and task.columns (every reject reason is listed when some rows are usable)"


class Intake:
    """Source rows in, problem shards out: each row validated, duplicates collapsed (conflicting
    gold answers flagged), every other row a reject with its reason, shards committed as they fill."""

    def __init__(self, cfg: Config, writer, task, answer_required: bool):
        self.cfg, self.writer, self.task, self.answer_required = cfg, writer, task, answer_required
        # digest of the normalised question -> its problem id and its gold answer
        self.seen_questions: dict[bytes, tuple[str, str | None]] = {}
        self.seen_ids: set[str] = set()
        self.buffer: list[dict] = []
        self.rejects: list[dict] = []
        self.names: list[str] = []
        self.reasons: Counter = Counter()
        self.counts = {"source_rows": 0, "problems": 0, "rejected": 0, "duplicates": 0, "conflicting_answers": 0}

    def reject(self, index, pid, reason: str, raw) -> None:
        self.reasons[reason.split(":")[0][:80]] += 1
        self.rejects.append({"stage": "prepare", "source_index": index, "problem_id": pid, "reason": reason,
                             "raw": clip_raw(raw)})

    def flush(self) -> None:
        name = part_name(len(self.names))
        self.writer.write_shard(name, schema.table(self.buffer, schema.PROBLEMS), schema.table(self.rejects, schema.REJECTS))
        self.names.append(name)
        self.counts["problems"] += len(self.buffer)
        self.counts["rejected"] += len(self.rejects)
        self.buffer.clear()
        self.rejects.clear()

    def problem(self, row) -> dict | None:
        """The row as a problem, or None after rejecting it with the field and reason."""
        if row.error is not None:
            self.reject(row.index, None, row.error, row.raw)
            return None
        try:
            item = self.task.to_problem(row.data)
            question = validate_question(item.question, self.cfg.task.max_question_chars)
            answer = validate_answer(item.answer) if self.answer_required or item.answer is not None else None
            pid = problem_id(self.task.name, item.id, question)
            metadata = json.dumps(item.metadata or {}, default=str, ensure_ascii=False)
            bad = bad_text(metadata) or bad_text(pid)
            if bad:
                raise ValueError(f"metadata or id {bad}")
        except ValueError as e:
            self.reject(row.index, None, str(e), row.data)
            return None
        return {"problem_id": pid, "task": self.task.name, "question": question, "answer": answer,
                "source_index": row.index, "metadata": metadata}

    def take(self, row) -> None:
        self.counts["source_rows"] += 1
        p = self.problem(row)
        if p is None:
            return
        pid, answer = p["problem_id"], p["answer"]
        # a 20-byte digest, not the text: a million questions would otherwise hold their text twice
        key = hashlib.sha1(normalise_question(p["question"]).encode()).digest()
        if key in self.seen_questions:
            first, first_answer = self.seen_questions[key]
            self.counts["duplicates"] += 1
            if answer != first_answer:  # one of the two golds is wrong: say so, never collapse silently
                self.counts["conflicting_answers"] += 1
                self.reject(row.index, pid, f"conflicting gold answers: the same question as problem {first}, whose "
                            f"answer is {first_answer!r}, but this row's is {answer!r}; the first was kept, "
                            "check the source", p["question"])
            else:
                self.reject(row.index, pid, f"duplicate question: collapsed into problem {first}", p["question"])
            return
        if pid in self.seen_ids:
            self.reject(row.index, pid, f"problem_id: duplicate id {pid!r} with a different question", row.data)
            return
        self.seen_questions[key] = (pid, answer)
        self.seen_ids.add(pid)
        self.buffer.append(p)
        if len(self.buffer) >= self.cfg.run.problems_per_shard:
            self.flush()

    def close(self) -> None:
        if not self.names and not self.buffer:  # nothing to sample: stop here, not after an empty run
            raise ValueError(no_problems_message(self.cfg, self.counts["source_rows"], self.reasons))
        if self.buffer or self.rejects:
            self.flush()


def run(cfg: Config, iteration: int, force: bool = False) -> dict:
    started = time.time()
    answer_required = gold_required(cfg)
    parts = {
        "task": cfg.task.fingerprint_dump({"prompt"}),
        "source": source_identity(cfg.task.path),
        "problems_per_shard": cfg.run.problems_per_shard,
        "answer_required": answer_required,
    }
    task = get_task(cfg.task)
    leak = evaluation_split(*task.source())
    if leak:
        raise ValueError(f"prepare: {leak}; training on it would put the evaluation into the model. Sample on a "
                         "training split (task.split: train, or a train file) and evaluate on the other (evaluate.task)")
    with open_writer(cfg, iteration, "prepare", parts, force) as writer:
        if writer.up_to_date:
            return up_to_date("prepare", writer)
        intake = Intake(cfg, writer, task, answer_required)
        for row in intake.task.rows():
            intake.take(row)
        intake.close()
        counts, names = intake.counts, intake.names
        # what reached disk, not only what was counted
        written = sum(writer.done[n]["rows"] for n in names)
        written_rejects = sum(writer.done[n].get("rejects", 0) for n in names)
        check(
            written + written_rejects == counts["source_rows"] and written == counts["problems"],
            f"prepare: {counts['source_rows']} source rows but {written} problems + {written_rejects} rejects"
            f" written ({counts['problems']} + {counts['rejected']} counted)",
        )
        manifest = writer.finish(names, stats=counts)
    conflicts = counts["conflicting_answers"]
    summary(
        "prepare",
        f"{counts['source_rows']} source rows -> {counts['problems']} problems in {len(names)} shards; "
        f"{counts['rejected']} rejected ({counts['duplicates']} duplicate questions"
        + (f", {conflicts} of them with a different gold answer" if conflicts else "") + ")"
        + (f", see {writer.path / '_rejects.parquet'}" if counts["rejected"] else ""),
        started,
    )
    return manifest
