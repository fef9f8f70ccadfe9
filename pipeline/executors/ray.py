"""`run.executor: ray`: the work of sample and verify as Ray Data pipelines.

The stage itself (the sample and verify stages) runs on the driver, this process, on
either executor: it opens the StageWriter with its fingerprint, hands the shards still to do to
`sampled_shards` / `verified_shards` here, and commits each shard (rows and rejects) the moment
its result streams back, checks the row counts, then writes the manifest and `_SUCCESS`. So
resume, `--force`, make targets and export work unchanged, and the two executors can take turns
on one run: a stage half done by one is finished by the other.

- sample: `map_batches` over an actor class holding one engine (`sample.engine`: vLLM, or
  a server through `openai`) per `model.tensor_parallel_size` GPUs, or one per CPU node slot;
  a batch is one input shard, and every one of the n outputs of each request is kept (a
  row per sample, as the local stage writes). A request the engine cannot serve becomes a
  reject row. An engine that dies takes its actor down with it; Ray restarts the actor and
  retries its shard, at most `run.ray.max_restarts` times.
- verify: `map_batches` over actors that each hold a VerifyPool, so each item keeps its hard
  wall-clock and memory limits (`verify.timeout_s`, `verify.memory_limit_mb`); a timeout or
  a crashing verifier is that row's verdict, never the stage's end.
- dedup: runs on the driver, through the dedup stage itself. Its selection carries state from
  shard to shard (texts kept for earlier problems, rows exported by earlier iterations, the
  decontamination index), so splitting it across actors would change what it keeps; it is
  pure Python over verdict rows and takes seconds where sampling takes hours.

Actors read their input shards from the run directory (checksums verified), so on a cluster
`run.dir` must be on storage every node sees at the same path; only the driver writes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from selfimprove.pipeline import schema
from selfimprove.pipeline.config import Config
from selfimprove.pipeline.stages import stage_dir
from selfimprove.pipeline.store import StageReader, table_bytes


def _ray():
    try:
        import ray
    except ImportError:
        raise RuntimeError("run.executor=ray needs Ray: pip install 'selfimprove[ray]' (or set run.executor=local)") from None
    return ray


def connect(cfg: Config) -> None:
    """Join `run.ray.address` or $RAY_ADDRESS, else a cluster running on this machine, else start a local Ray."""
    ray = _ray()
    if ray.is_initialized():
        return
    # workers import the project as the driver does (an editable install, or the checkout)
    env = {"PYTHONPATH": os.pathsep.join([os.getcwd(), *([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])])}
    address = cfg.run.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env={"env_vars": env}, logging_level="WARNING")
        return
    try:
        ray.init(address="auto", runtime_env={"env_vars": env}, logging_level="WARNING")
        print("ray: joined the cluster running on this machine", flush=True)
    except ConnectionError:
        ray.init(num_cpus=cfg.run.ray.num_cpus, runtime_env={"env_vars": env}, include_dashboard=False,
                 logging_level="WARNING")
        print(f"ray: started a local Ray ({ray.cluster_resources().get('CPU', 0):.0f} CPUs)", flush=True)


def _restarts(cfg: Config) -> dict:
    """Bounded actor restarts and shard retries. Ray Data's default is unbounded, so a shard that
    kills its engine every time would loop forever. (Ray 2.60 warns that these arguments will
    move; until it names their replacement they are the only way to bound retries.)"""
    import warnings

    warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
    return {"max_restarts": cfg.run.ray.max_restarts, "max_task_retries": cfg.run.ray.max_restarts}


def _quiet_data_context() -> None:
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = True
    ctx.verbose_stats_logs = False


# -- sample ----------------------------------------------------------------------------------
class SampleActor:
    """One engine per actor; a batch is one shard: its requests in, its sample and reject rows out."""

    def __init__(self, cfg_json: dict, iteration: int):
        from selfimprove.pipeline.engines import load_engine
        from selfimprove.pipeline.generation import use_request_seed

        self.cfg = Config.model_validate(cfg_json)
        self.iteration = iteration
        self.engine = load_engine(self.cfg)
        self.per_request = use_request_seed(self.cfg, self.engine)

    def __call__(self, batch: dict) -> dict:
        out: dict[str, list] = {"shard": [], "samples": [], "rejects": [], "tokens": []}
        for name in batch["shard"]:
            samples, rejects, tokens = self.sample_shard(str(name))
            out["shard"].append(str(name))
            out["samples"].append(table_bytes(samples))
            out["rejects"].append(table_bytes(rejects))
            out["tokens"].append(tokens)
        return out

    def sample_shard(self, name: str) -> tuple[pa.Table, pa.Table, int]:
        from selfimprove.pipeline.engines import SamplingParams
        from selfimprove.pipeline.generation import shard_requests, shard_rows

        cfg, n = self.cfg, self.cfg.sample.n
        table = StageReader(stage_dir(cfg, self.iteration, "prepare")).read_shard(name)
        requests = shard_requests(cfg, self.iteration, table, self.per_request)
        try:
            # next() and close(), not a loop: an engine's request journal (openai) must outlive this
            # call until the driver has committed the shard, so the generator is not resumed past it
            shards = self.engine.generate_shards([(name, requests)], SamplingParams.of(cfg.sample),
                                                 journal_dir=stage_dir(cfg, self.iteration, "sample"))
            _, results = next(shards)
            shards.close()
        except Exception as e:  # the engine itself broke: let Ray restart this actor and retry the shard
            print(f"sample actor: engine failed on {name} ({type(e).__name__}: {e}); restarting", file=sys.stderr, flush=True)
            os._exit(1)
        rows, rejects, tokens = shard_rows(name, requests, results, n, self.engine)  # all n of each request
        return schema.table(rows, schema.SAMPLES), schema.table(rejects, schema.REJECTS), tokens


def _engine_resources(cfg: Config) -> tuple[int, dict]:
    """(number of engine actors, resources of each)."""
    ray = _ray()
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if cfg.sample.engine == "openai":  # the server does the work: actors only send requests
        return cfg.run.ray.engines or 1, {"num_cpus": 1}
    if gpus:
        per = cfg.model.tensor_parallel_size
        return cfg.run.ray.engines or max(1, gpus // per), {"num_gpus": per}
    return cfg.run.ray.engines or 1, {"num_cpus": 1}


def sampled_shards(cfg: Config, iteration: int, todo: list[str]) -> Iterator[tuple[str, pa.Table, pa.Table, int]]:
    """(shard name, sample rows, reject rows, completion tokens) of each shard in `todo`, from
    engine actors, as they stream back; the sample stage commits each one."""
    connect(cfg)
    ray = _ray()
    _quiet_data_context()
    engines, resources = _engine_resources(cfg)
    ds = ray.data.from_items([{"shard": name} for name in todo], override_num_blocks=len(todo))
    ds = ds.map_batches(SampleActor, fn_constructor_kwargs={"cfg_json": cfg.model_dump(mode="json"), "iteration": iteration},
                        batch_size=1, concurrency=engines, **resources, **_restarts(cfg))
    for row in ds.iter_rows():
        yield (row["shard"], pq.read_table(pa.BufferReader(row["samples"])), pq.read_table(pa.BufferReader(row["rejects"])),
               int(row["tokens"]))
        # committed by now: the openai engine's request journal of this shard is not needed any more
        (stage_dir(cfg, iteration, "sample") / f"_requests-{Path(row['shard']).stem}.jsonl").unlink(missing_ok=True)


# -- verify ----------------------------------------------------------------------------------
class VerifyActor:
    """A VerifyPool per actor: the local executor's per-item hard limits, on every node."""

    def __init__(self, cfg_json: dict, iteration: int):
        from selfimprove.pipeline.verification import build_verifier, open_pool

        self.cfg = Config.model_validate(cfg_json)
        self.iteration = iteration
        self.verifier_name = build_verifier(self.cfg).name
        self.pool = open_pool(self.cfg)
        self.pool.__enter__()

    def __call__(self, batch: dict) -> dict:
        from selfimprove.pipeline.verification import verify_table

        out: dict[str, list] = {"shard": [], "verified": []}
        for name in map(str, batch["shard"]):
            samples = StageReader(stage_dir(self.cfg, self.iteration, "sample")).read_shard(name)
            gold = {r["problem_id"]: r for r in StageReader(stage_dir(self.cfg, self.iteration, "prepare")).read_shard(name).to_pylist()}
            out["shard"].append(name)
            out["verified"].append(table_bytes(verify_table(samples, gold, self.pool, self.verifier_name)))
        return out

    def __del__(self):
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.__exit__(None, None, None)


def verified_shards(cfg: Config, iteration: int, todo: list[str]) -> Iterator[tuple[str, pa.Table]]:
    """(shard name, verdicts) of each shard in `todo`, from VerifyActors, as they stream back."""
    connect(cfg)
    ray = _ray()
    _quiet_data_context()
    actors = cfg.run.ray.verify_actors or max(1, len([nd for nd in ray.nodes() if nd.get("Alive")]))
    ds = ray.data.from_items([{"shard": name} for name in todo], override_num_blocks=len(todo))
    ds = ds.map_batches(VerifyActor, fn_constructor_kwargs={"cfg_json": cfg.model_dump(mode="json"), "iteration": iteration},
                        batch_size=1, concurrency=min(actors, len(todo)), num_cpus=1, **_restarts(cfg))
    for row in ds.iter_rows():
        yield row["shard"], pq.read_table(pa.BufferReader(row["verified"]))
