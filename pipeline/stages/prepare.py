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


def run(cfg: Config, iteration: int, force: bool = False) -> dict:
    started = time.time()
    answer_required = gold_required(cfg)
    parts = {
        "task": cfg.task.model_dump(mode="json", exclude={"prompt"}),
        "source": source_identity(cfg.task.path),
        "problems_per_shard": cfg.run.problems_per_shard,
        "answer_required": answer_required,
    }
    with open_writer(cfg, iteration, "prepare", parts, force) as writer:
        if writer.up_to_date:
            return up_to_date("prepare", writer)
        task = get_task(cfg.task)
        per_shard = cfg.run.problems_per_shard
        # digest of the normalised question -> its problem id and its gold answer
        seen_questions: dict[bytes, tuple[str, str | None]] = {}
        seen_ids: set[str] = set()
        buffer: list[dict] = []
        rejects: list[dict] = []
        names: list[str] = []
        counts = {"source_rows": 0, "problems": 0, "rejected": 0, "duplicates": 0, "conflicting_answers": 0}

        reasons: Counter = Counter()

        def reject(index, pid, reason, raw):
            reasons[reason.split(":")[0][:80]] += 1
            rejects.append({"stage": "prepare", "source_index": index, "problem_id": pid, "reason": reason, "raw": clip_raw(raw)})

        def flush():
            name = part_name(len(names))
            table = schema.table(buffer, schema.PROBLEMS)
            writer.write_shard(name, table, schema.table(rejects, schema.REJECTS))
            names.append(name)
            counts["problems"] += len(buffer)
            counts["rejected"] += len(rejects)
            buffer.clear()
            rejects.clear()

        for row in task.rows():
            counts["source_rows"] += 1
            if row.error is not None:
                reject(row.index, None, row.error, row.raw)
                continue
            try:
                item = task.to_problem(row.data)
                question = validate_question(item.question, cfg.task.max_question_chars)
                answer = validate_answer(item.answer) if answer_required or item.answer is not None else None
                pid = problem_id(task.name, item.id, question)
                metadata = json.dumps(item.metadata or {}, default=str, ensure_ascii=False)
                bad = bad_text(metadata) or bad_text(pid)
                if bad:
                    raise ValueError(f"metadata or id {bad}")
            except ValueError as e:
                reject(row.index, None, str(e), row.data)
                continue
            # a 20-byte digest, not the text: a million questions would otherwise hold their text twice
            key = hashlib.sha1(normalise_question(question).encode()).digest()
            if key in seen_questions:
                first, first_answer = seen_questions[key]
                counts["duplicates"] += 1
                if answer != first_answer:  # one of the two golds is wrong: say so, never collapse silently
                    counts["conflicting_answers"] += 1
                    reject(row.index, pid, f"conflicting gold answers: the same question as problem {first}, whose "
                           f"answer is {first_answer!r}, but this row's is {answer!r}; the first was kept, "
                           "check the source", question)
                    continue
                reject(row.index, pid, f"duplicate question: collapsed into problem {first}", question)
                continue
            if pid in seen_ids:
                reject(row.index, pid, f"problem_id: duplicate id {pid!r} with a different question", row.data)
                continue
            seen_questions[key] = (pid, answer)
            seen_ids.add(pid)
            buffer.append(
                {"problem_id": pid, "task": task.name, "question": question, "answer": answer,
                 "source_index": row.index, "metadata": metadata}
            )
            if len(buffer) >= per_shard:
                flush()
        if not names and not buffer:  # nothing to sample: stop here, not after an empty run
            raise ValueError(no_problems_message(cfg, counts["source_rows"], reasons))
        if buffer or rejects or not names:
            flush()
        # what reached disk, not only what was counted
        written = sum(writer.done[n]["rows"] for n in names)
        written_rejects = sum(writer.done[n].get("rejects", 0) for n in names)
        check(
            written + written_rejects == counts["source_rows"] and written == counts["problems"],
            f"prepare: {counts['source_rows']} source rows but {written} problems + {written_rejects} rejects"
            f" written ({counts['problems']} + {counts['rejected']} counted)",
        )
        manifest = writer.finish(names, stats=counts)
    summary(
        "prepare",
        f"{counts['source_rows']} source rows -> {counts['problems']} problems in {len(names)} shards; "
        f"{counts['rejected']} rejected ({counts['duplicates']} duplicate questions"
        + (f", {counts['conflicting_answers']} of them with a different gold answer" if counts["conflicting_answers"] else "")
        + ")"
        + (f", see {writer.path / '_rejects.parquet'}" if counts["rejected"] else ""),
        started,
    )
    return manifest
