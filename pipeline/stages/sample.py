"""sample: n chain-of-thought rationales per problem from the engine, one row per sample.

One request per problem asks for all n samples (`SamplingParams(n=k)`), so the prompt is
computed once; a whole shard goes to the engine in one call. The engine is loaded only if a
shard is left to do, so a finished or resumed stage starts in seconds. Shards are handed to the
engine lazily and committed as the engine finishes them (`Engine.generate_shards`), so an
engine may keep working across shard boundaries. A request the engine
cannot serve (say, a prompt longer than the context) goes to `_rejects.parquet`.
"""

from __future__ import annotations

import time
from contextlib import closing
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from selfimprove.pipeline import schema
from selfimprove.pipeline.config import Config
from selfimprove.pipeline.engines import Request, SamplingParams, load_engine
from selfimprove.pipeline.generation import sampling_fingerprint, shard_requests, shard_rows, use_request_seed
from selfimprove.pipeline.stages import check, open_writer, pending, reader, sampling_config, summary, up_to_date


def run(cfg: Config, iteration: int, force: bool = False) -> dict:
    """The stage on either executor: this function owns the stage directory, commits each shard as
    it comes back and checks the row counts before `_SUCCESS`; the samples come from an engine in
    this process or from engine actors on Ray."""
    started = time.time()
    cfg = sampling_config(cfg, iteration)
    problems = reader(cfg, iteration, "prepare")
    on_ray = cfg.run.executor == "ray"
    n = cfg.sample.n
    with open_writer(cfg, iteration, "sample", sampling_fingerprint(cfg, iteration, problems.output_hash), force) as writer:
        if writer.up_to_date:
            return up_to_date("sample", writer)
        todo = pending(problems, writer)
        tokens = samples = 0
        gen_started = time.time()
        if todo:
            if on_ray:
                from selfimprove.pipeline.executors.ray import sampled_shards

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
