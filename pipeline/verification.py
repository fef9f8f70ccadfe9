"""Verification shared by every stage that judges samples: which verifier, its worker pool, and
verdicts for a shard's rows (with the engine-side judge where a verifier needs one).

verify, rationalize and evaluate (and the Ray executor's actors) resolve and run the verifier
here, so a spec is resolved one way and every verdict row has the same columns.
"""

from __future__ import annotations

import json

import pyarrow as pa

from selfimprove.pipeline import schema
from selfimprove.pipeline.config import Config
from selfimprove.pipeline.engines.base import SamplingParams
from selfimprove.pipeline.runs import check
from selfimprove.pipeline.tasks import get_task
from selfimprove.verifiers import Verdict, Verifier, VerifyPool, get_verifier
from selfimprove.verifiers.base import MAX_ANSWER_CHARS
from selfimprove.verifiers.compose import Composite
from selfimprove.verifiers.extract import METHODS, final_answer


def verifier_spec(cfg: Config) -> str:
    return get_task(cfg.task).default_verifier if cfg.verify.verifier == "auto" else cfg.verify.verifier


def trim_methods(cfg: Config) -> tuple[str, ...] | None:
    """The extraction methods whose final-answer statement ends a trimmed text (the verifier's), or
    None when `export.trim_after_answer` is off. Dedup cuts the kept rows with them and export the
    rejected ones of a preference pair, so a pair never differs merely in trailing chatter."""
    return tuple(cfg.verify.params.get("methods", METHODS)) if cfg.export.trim_after_answer else None


def build_verifier(cfg: Config) -> Verifier:
    """The run's verifier, built from `verify.verifier` (auto: the task's default) and `verify.params`."""
    return get_verifier(verifier_spec(cfg), cfg.verify.params)


def open_pool(cfg: Config, spec: str | None = None, params: dict | None = None) -> VerifyPool:
    """A worker pool for the run's verifier (or `spec`/`params`), with the run's limits; use it as a context manager."""
    v = cfg.verify
    return VerifyPool(spec or verifier_spec(cfg), v.params if params is None else params, v.workers, v.timeout_s,
                      v.memory_limit_mb)


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
        from selfimprove.pipeline.engines import Request, load_engine

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
