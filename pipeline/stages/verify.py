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

import json
import time
from collections import Counter
from contextlib import ExitStack, closing
from typing import Iterator

import pyarrow as pa
from tqdm import tqdm

from pipeline import schema
from pipeline.config import Config
from pipeline.engines.base import SamplingParams
from pipeline.stages import check, open_writer, pending, reader, summary, up_to_date
from pipeline.tasks import get_task
from verifiers import Verdict, Verifier, VerifyPool, get_verifier
from verifiers.base import MAX_ANSWER_CHARS
from verifiers.compose import Composite
from verifiers.extract import final_answer


def verifier_spec(cfg: Config) -> str:
    return get_task(cfg.task).default_verifier if cfg.verify.verifier == "auto" else cfg.verify.verifier


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
    verifier = get_verifier(spec, cfg.verify.params)
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
                from pipeline.executors.ray import verified_shards

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
            pool = stack.enter_context(VerifyPool(pool_spec, pool_params, cfg.verify.workers, cfg.verify.timeout_s,
                                                  cfg.verify.memory_limit_mb))
        if judge is not None:
            stack.callback(judge.close)
        bar = stack.enter_context(tqdm(total=total, desc="verify", unit="sample", mininterval=1.0))
        for name in todo:
            gold = {r["problem_id"]: r for r in problems.read_shard(name).to_pylist()}
            yield name, verify_table(samples.read_shard(name), gold, pool, verifier.name, bar.update, judge=judge)


class JudgeStep:
    """The engine side of a verifier that needs one: a judge, or a composite whose last child is.

    For a composite, the pool runs `rules_part()` and only the rows whose outcome still depends
    on the judge (`needs_engine`) go to the engine; `finish` combines both verdicts.
    """

    def __init__(self, cfg: Config, verifier: Verifier):
        self.verifier = verifier
        self.composite = verifier if isinstance(verifier, Composite) else None
        self.judge = self.composite.engine_child if self.composite else verifier
        model = self.judge.params().get("model")
        self.cfg = cfg.model_copy(deep=True)
        if model:
            self.cfg.model.path = model
        self.params = SamplingParams(n=1, temperature=0.0, top_p=1.0,
                                     max_tokens=int(self.judge.params().get("max_tokens", 256)))
        self.engine = None
        self.judged = 0

    def identity(self) -> dict:
        """What, besides the verifier's params, decides the judge's verdicts: which engine and model."""
        return {"engine": self.cfg.sample.engine, "model": self.cfg.model.path}

    def rules_part(self) -> tuple[str, dict] | None:
        return self.composite.rules_part() if self.composite else None

    def apply(self, jobs: list[tuple[dict, list[dict]]], results: list[list[Verdict]] | None) -> list[list[Verdict]]:
        """Final verdicts: the pool's `results` (None: no pool ran), with the engine's where needed."""
        if results is None:
            results = [[None] * len(samples) for _, samples in jobs]  # type: ignore[list-item]
        wanted = [(j, i) for j, (_, samples) in enumerate(jobs) for i in range(len(samples))
                  if results[j][i] is None or self.composite.needs_engine(results[j][i])]
        if not wanted:
            return results
        from pipeline.engines import Request, load_engine

        if self.engine is None:
            self.engine = load_engine(self.cfg)
        requests = [Request(f"{jobs[j][0]['problem_id']}/judge/{i}", self.judge.judge_request(jobs[j][0], jobs[j][1][i]))
                    for j, i in wanted]
        replies = self.engine.generate(requests, self.params, desc="judge")
        check(len(replies) == len(requests), f"engine returned {len(replies)} judgements for {len(requests)} requests")
        limit = int(self.judge.params().get("max_output_chars", 6000))
        for (j, i), reply in zip(wanted, replies):
            if reply.error is not None or not reply.completions:
                verdict = Verdict("error", 0.0, None, f"judge request failed: {reply.error or 'no completion'}")
            else:
                verdict = self.judge.parse_judgement(reply.completions[0].text)
            before = results[j][i]
            if before is None:  # the judge alone: show the answer it judged, read from the output's end
                sample = jobs[j][1][i]
                found = final_answer({**sample, "text": (sample.get("text") or "")[-limit:]})
                results[j][i] = Verdict(verdict.status, verdict.score, found[0][:MAX_ANSWER_CHARS] if found else None,
                                        verdict.reason)
            else:
                results[j][i] = self.composite.finish(before, verdict)
        self.judged += len(wanted)
        return results

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None


def verify_table(table: pa.Table, problems: dict[str, dict], pool: VerifyPool | None, verifier_name: str, progress=None,
                 judge: JudgeStep | None = None) -> pa.Table:
    """Samples of one shard -> the same rows plus verdict columns, in the same order.

    `pool` runs the verifier (or, with a `judge`, its rule-based part; None: the judge alone)."""
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
    results = pool.verify(jobs, progress=progress) if pool is not None else None
    if judge is not None:
        results = judge.apply(jobs, results)
        if pool is None and progress is not None:
            progress(len(rows))
    for (pid, idxs), verdicts in zip(groups.items(), results):
        check(len(verdicts) == len(idxs), f"verifier gave {len(verdicts)} verdicts for {len(idxs)} samples of {pid}")
        for i, v in zip(idxs, verdicts):
            rows[i].update(gold=problems[pid]["answer"], extracted=v.extracted, status=v.status,
                           score=float(v.score), reason=v.reason, verifier=verifier_name)
    return schema.table(rows, schema.VERIFIED)
