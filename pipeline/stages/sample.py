"""sample: n chain-of-thought rationales per problem from the engine, one row per sample.

One request per problem asks for all n samples (`SamplingParams(n=k)`), so the prompt is
computed once; a whole shard goes to the engine in one call. The engine is loaded only if a
shard is left to do, so a finished or resumed stage starts in seconds. Shards are handed to the
engine lazily and committed as the engine finishes them (`Engine.generate_shards`), so an
engine may keep working across shard boundaries. A request the engine
cannot serve (say, a prompt longer than the context) goes to `_rejects.parquet`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from selfimprove.pipeline import schema
from selfimprove.pipeline.config import Config
from selfimprove.pipeline.engines import Request, SamplingParams, load_engine
from selfimprove.pipeline.generation import sampling_fingerprint, shard_requests, shard_rows, use_request_seed
from selfimprove.pipeline.runs import check, sampling_config, stage_dir
from selfimprove.pipeline.skeleton import MappedStage, ShardOutput, run_mapped


class SampleStage(MappedStage):
    """n samples per problem of each prepared shard, from an engine in this process or on Ray
    actors (one engine each); the engine is opened only where shards are left to do."""

    name, source, distributable = "sample", "prepare", True
    no_output = "the engine returned nothing"

    def __init__(self, cfg: Config, iteration: int):
        super().__init__(sampling_config(cfg, iteration), iteration)
        self.per_request = False

    def fingerprint(self) -> dict:
        return sampling_fingerprint(self.cfg, self.iteration, self.input.output_hash)

    def open(self) -> None:
        self.engine = load_engine(self.cfg)
        self.per_request = use_request_seed(self.cfg, self.engine)

    def work(self, names: list[str]) -> Iterator[tuple[str, ShardOutput]]:
        """Shards handed to the engine lazily (`Engine.generate_shards` keeps it fed across them)."""
        sent: dict[str, list[Request]] = {}  # requests of shards handed to the engine, not yet back

        def requests():
            for name in names:
                sent[name] = shard_requests(self.cfg, self.iteration, self.input.read_shard(name), self.per_request)
                yield name, sent[name]

        journal = stage_dir(self.cfg, self.iteration, "sample")
        for name, results in self.engine.generate_shards(requests(), SamplingParams.of(self.cfg.sample), journal_dir=journal):
            rows, rejects, tokens = shard_rows(name, sent.pop(name), results, self.cfg.sample.n, self.engine,
                                               think_tags=self.cfg.sample.think_tags)
            yield name, ShardOutput(schema.table(rows, schema.SAMPLES), schema.table(rejects, schema.REJECTS),
                                    extra={"tokens": tokens})

    def committed(self, writer, name: str) -> None:
        # an engine's request journal of this shard (openai) is not needed once the shard is on disk
        (writer.path / f"_requests-{Path(name).stem}.jsonl").unlink(missing_ok=True)

    def check_total(self, writer, names: list[str]) -> None:
        samples = sum(writer.done[name]["rows"] for name in names)
        rejected = sum(writer.done[name].get("rejects", 0) for name in names)
        n = self.cfg.sample.n
        check(samples == (self.input.rows - rejected) * n,
              f"sample: {samples} samples for ({self.input.rows} problems - {rejected} rejected) x n={n}")

    def stats(self, writer, names: list[str]) -> dict:
        return {"n": self.cfg.sample.n, "problems": self.input.rows,
                "samples": sum(writer.done[name]["rows"] for name in names),
                "new_samples": sum(out.rows.num_rows for out in self.new),
                "new_completion_tokens": sum(out.extra["tokens"] for out in self.new),
                "shards_resumed": len(names) - len(self.new),
                **({"executor": "ray"} if self.executor() == "ray" else {})}

    def summary(self, manifest: dict, resumed: int) -> str:
        s, seconds = manifest["stats"], self.work_seconds
        rate = (f"; {s['new_samples'] / seconds:.1f} samples/s, {s['new_completion_tokens'] / seconds:.0f} tokens/s"
                if self.new and seconds else "")
        where = " on Ray" if self.executor() == "ray" else ""
        return (f"{self.input.rows} problems x n={s['n']} -> {manifest['rows']} samples{where}"
                f" ({manifest['rejects']} problems rejected by the engine, {resumed} shards resumed){rate}")

    def resources(self) -> tuple[int, dict]:
        """One engine per `model.tensor_parallel_size` GPUs, else one per CPU slot; a server's
        actors only send requests."""
        import ray

        r = self.cfg.run.ray
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if self.cfg.sample.engine == "openai":
            return r.engines or 1, {"num_cpus": 1}
        if gpus:
            per = self.cfg.model.tensor_parallel_size
            return r.engines or max(1, gpus // per), {"num_gpus": per}
        return r.engines or 1, {"num_cpus": 1}


def run(cfg: Config, iteration: int, force: bool = False) -> dict:
    return run_mapped(SampleStage(cfg, iteration), force)
