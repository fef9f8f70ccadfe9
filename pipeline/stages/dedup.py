"""dedup: keep correct, distinct rationales, at most `max_per_problem` per problem.

Works shard by shard (a problem's samples never span shards), so memory stays bounded. What
goes and why is counted in the manifest's stats: not correct, exact duplicate of a kept
rationale (after normalising case, whitespace and LaTeX spacing), or over the per-problem cap.
Which rows survive the cap is a seeded, deterministic choice.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter

import pyarrow as pa

from pipeline import schema
from pipeline.config import Config
from pipeline.stages import check, open_writer, pending, reader, summary, up_to_date

_LATEX_SPACING = re.compile(r"\\[,;:! ]|\\quad|\\qquad")
_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    return _SPACE.sub(" ", _LATEX_SPACING.sub(" ", text)).strip().lower()


def _order_key(seed: int, problem_id: str, sample_idx: int) -> bytes:
    return hashlib.sha256(f"{seed}:{problem_id}:{sample_idx}".encode()).digest()


def select(table: pa.Table, max_per_problem: int, seed: int) -> tuple[pa.Table, Counter]:
    """Rows to keep from one shard's verdicts, and how many went for which reason."""
    removed: Counter = Counter()
    by_problem: dict[str, list[dict]] = {}
    for row in table.to_pylist():
        if row["status"] != "correct":
            removed["not_correct"] += 1
            continue
        by_problem.setdefault(row["problem_id"], []).append(row)
    kept = []
    for pid, rows in by_problem.items():
        distinct, seen = [], set()
        for row in sorted(rows, key=lambda r: r["sample_idx"]):
            key = normalise(row["text"])
            if key in seen:
                removed["exact_duplicate"] += 1
                continue
            seen.add(key)
            distinct.append(row)
        distinct.sort(key=lambda r: _order_key(seed, pid, r["sample_idx"]))
        removed["over_cap"] += max(0, len(distinct) - max_per_problem)
        kept.extend(sorted(distinct[:max_per_problem], key=lambda r: r["sample_idx"]))
    return schema.table(kept, schema.SELECTED), removed


def run(cfg: Config, iteration: int, force: bool = False) -> dict:
    started = time.time()
    verified = reader(cfg, iteration, "verify")
    parts = {"input": verified.output_hash, "dedup": cfg.dedup.model_dump(mode="json"), "seed": cfg.run.seed}
    with open_writer(cfg, iteration, "dedup", parts, force) as writer:
        if writer.up_to_date:
            return up_to_date("dedup", writer)
        for name in pending(verified, writer):
            table = verified.read_shard(name)
            kept, removed = select(table, cfg.dedup.max_per_problem, cfg.run.seed)
            check(kept.num_rows + sum(removed.values()) == table.num_rows, f"dedup {name}: rows do not add up")
            writer.write_shard(name, kept, removed=dict(removed))
        names = [s["file"] for s in verified.shards]
        removed_total: Counter = Counter()
        for n in names:
            removed_total.update(writer.done[n].get("removed", {}))
        manifest = writer.finish(names, stats={"input": verified.rows, "removed": dict(removed_total)})
    check(manifest["rows"] + sum(removed_total.values()) == verified.rows, "dedup: kept + removed != input rows")
    why = ", ".join(f"{k} {v}" for k, v in sorted(removed_total.items())) or "nothing"
    summary("dedup", f"{verified.rows} verdicts -> {manifest['rows']} kept; removed: {why}", started)
    return manifest
