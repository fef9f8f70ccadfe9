"""verify: every sample gets a verdict (correct | wrong | no_answer | timeout | error) and a reason.

Parsing and checking run in a pool of worker processes with a hard wall-clock limit per item,
so one pathological output cannot stall the stage. Rows are never dropped here: the verdict
says what happened, and the dedup stage keeps only the correct ones.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import pyarrow as pa
from tqdm import tqdm

from pipeline import schema
from pipeline.config import Config
from pipeline.stages import check, open_writer, pending, reader, summary, up_to_date
from pipeline.tasks import get_task
from verifiers import VerifyPool, get_verifier


def verifier_spec(cfg: Config) -> str:
    return get_task(cfg.task).default_verifier if cfg.verify.verifier == "auto" else cfg.verify.verifier


def run(cfg: Config, iteration: int, force: bool = False) -> dict:
    started = time.time()
    problems = reader(cfg, iteration, "prepare")
    samples = reader(cfg, iteration, "sample")
    spec = verifier_spec(cfg)
    verifier = get_verifier(spec, cfg.verify.params)
    parts = {
        "input": samples.output_hash,
        "problems": problems.output_hash,
        "verifier": verifier.fingerprint(),
        "timeout_s": cfg.verify.timeout_s,
        "memory_limit_mb": cfg.verify.memory_limit_mb,
    }
    with open_writer(cfg, iteration, "verify", parts, force) as writer:
        if writer.up_to_date:
            return up_to_date("verify", writer)
        todo = pending(samples, writer)
        statuses: Counter = Counter()
        if todo:
            total = sum(s["rows"] for s in samples.shards if s["file"] in todo)
            with VerifyPool(spec, cfg.verify.params, cfg.verify.workers, cfg.verify.timeout_s,
                            cfg.verify.memory_limit_mb) as pool, \
                    tqdm(total=total, desc="verify", unit="sample", mininterval=1.0) as bar:
                for name in todo:
                    table = samples.read_shard(name)
                    gold = {
                        r["problem_id"]: r for r in problems.read_shard(name).to_pylist()
                    }
                    verified = verify_table(table, gold, pool, verifier.name, bar.update)
                    statuses.update(verified["status"].to_pylist())
                    writer.write_shard(name, verified)
        manifest = writer.finish([s["file"] for s in samples.shards], stats={"new_verdicts": dict(statuses)})
    check(manifest["rows"] == samples.rows, f"verify: {manifest['rows']} verdicts for {samples.rows} samples")
    counts = ", ".join(f"{k} {v}" for k, v in statuses.most_common())
    summary("verify", f"{samples.rows} samples verified with {spec!r}: {counts or 'all resumed'}", started)
    return manifest


def verify_table(table: pa.Table, problems: dict[str, dict], pool: VerifyPool, verifier_name: str, progress=None) -> pa.Table:
    """Samples of one shard -> the same rows plus verdict columns, in the same order."""
    rows = table.to_pylist()
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r["problem_id"], []).append(i)
    jobs = []
    for pid, idxs in groups.items():
        p = problems[pid]
        problem = {"problem_id": pid, "question": p["question"], "answer": p["answer"],
                   "metadata": json.loads(p["metadata"] or "{}")}
        # only what a verifier reads crosses the process boundary, not the prompt JSON
        jobs.append((problem, [{k: rows[i][k] for k in ("sample_idx", "text", "finish_reason")} for i in idxs]))
    results = pool.verify(jobs, progress=progress)
    for (pid, idxs), verdicts in zip(groups.items(), results):
        check(len(verdicts) == len(idxs), f"verifier gave {len(verdicts)} verdicts for {len(idxs)} samples of {pid}")
        for i, v in zip(idxs, verdicts):
            rows[i].update(gold=problems[pid]["answer"], extracted=v.extracted, status=v.status,
                           score=float(v.score), reason=v.reason, verifier=verifier_name)
    return schema.table(rows, schema.VERIFIED)
