"""verify: every sample gets a verdict (correct | wrong | no_answer | timeout | error) and a reason.

Parsing and checking run in a pool of worker processes with a hard wall-clock limit per item,
so one pathological output cannot stall the stage. Rows are never dropped here: the verdict
says what happened, and the dedup stage keeps only the correct ones.

A verifier that needs the generation engine (`judge`, alone or as the last child of a
composite) cannot run in a worker: the pool runs the rule-based part, and this stage sends the
rows still undecided to the engine, one call per shard at temperature 0, and reads the replies.
The engine is loaded only when a shard has such rows.
"""

from __future__ import annotations

import time
from collections import Counter
from contextlib import ExitStack, closing
from typing import Iterator

import pyarrow as pa
from tqdm import tqdm

from selfimprove.pipeline.config import Config
from selfimprove.pipeline.stages import check, open_writer, pending, reader, summary, up_to_date
from selfimprove.pipeline.verification import JudgeStep, build_verifier, open_pool, verifier_spec, verify_table
from selfimprove.verifiers import Verifier


def fingerprint(cfg: Config, samples, problems, verifier: Verifier, judge: "JudgeStep | None" = None) -> dict:
    """What the verdicts depend on; the local and the Ray executor write one stage directory with it."""
    parts = {
        "input": samples.output_hash,
        "problems": problems.output_hash,
        "verifier": verifier.fingerprint(),
        "timeout_s": cfg.verify.timeout_s,
        "memory_limit_mb": cfg.verify.memory_limit_mb,
    }
    if judge is not None:  # only then: adding the key would re-verify every existing run
        parts["judge"] = judge.identity()
    return parts


def run(cfg: Config, iteration: int, force: bool = False) -> dict:
    """The stage on either executor: this function owns the stage directory, checks and commits
    each shard's verdicts; the verdicts come from a pool here or from actors on Ray."""
    started = time.time()
    problems = reader(cfg, iteration, "prepare")
    samples = reader(cfg, iteration, "sample")
    spec = verifier_spec(cfg)
    verifier = build_verifier(cfg)
    judge = JudgeStep(cfg, verifier) if verifier.uses_engine else None
    on_ray = cfg.run.executor == "ray"
    if on_ray and judge is not None:
        print("verify: this verifier asks the generation engine (judge); it runs on the driver", flush=True)
        on_ray = False
    with open_writer(cfg, iteration, "verify", fingerprint(cfg, samples, problems, verifier, judge), force) as writer:
        if writer.up_to_date:
            return up_to_date("verify", writer)
        todo = pending(samples, writer)
        rows_of = {s["file"]: s["rows"] for s in samples.shards}
        statuses: Counter = Counter()
        if todo:
            if on_ray:
                from selfimprove.pipeline.executors.ray import verified_shards

                shards = verified_shards(cfg, iteration, todo)
            else:
                shards = _verified_here(cfg, spec, verifier, judge, samples, problems, todo)
            with closing(shards):
                for name, verified in shards:
                    check(verified.num_rows == rows_of[name],
                          f"verify {name}: {verified.num_rows} verdicts for {rows_of[name]} samples")
                    statuses.update(verified["status"].to_pylist())
                    writer.write_shard(name, verified)
        names = [s["file"] for s in samples.shards]
        verdicts = sum(writer.done[n]["rows"] for n in names if writer.is_done(n))
        check(verdicts == samples.rows, f"verify: {verdicts} verdicts for {samples.rows} samples")  # before _SUCCESS
        manifest = writer.finish(names, stats={"new_verdicts": dict(statuses), **({"executor": "ray"} if on_ray else {})})
    counts = ", ".join(f"{k} {v}" for k, v in statuses.most_common())
    judged = f"; {judge.judged} judged by the engine" if judge is not None and judge.judged else ""
    where = " on Ray" if on_ray else ""
    summary("verify", f"{samples.rows} samples verified with {spec!r}{where}: {counts or 'all resumed'}{judged}", started)
    return manifest


def _verified_here(cfg: Config, spec: str, verifier: Verifier, judge: "JudgeStep | None", samples, problems,
                   todo: list[str]) -> Iterator[tuple[str, pa.Table]]:
    """(shard name, verdicts) of each shard in `todo`, verified in a pool of this machine's workers."""
    total = sum(s["rows"] for s in samples.shards if s["file"] in todo)
    pool_spec = None if judge is None else judge.rules_part()
    with ExitStack() as stack:
        pool = None
        if judge is None or pool_spec is not None:
            pool_spec, pool_params = pool_spec or (spec, cfg.verify.params)
            pool = stack.enter_context(open_pool(cfg, pool_spec, pool_params))
        if judge is not None:
            stack.callback(judge.close)
        bar = stack.enter_context(tqdm(total=total, desc="verify", unit="sample", mininterval=1.0))
        for name in todo:
            gold = {r["problem_id"]: r for r in problems.read_shard(name).to_pylist()}
            yield name, verify_table(samples.read_shard(name), gold, pool, verifier.name, bar.update, judge=judge)
