"""`run.executor: ray`: the shards of any distributable stage as a Ray Data pipeline.

The stage itself runs on the driver, this process, on either executor (pipeline/skeleton.py):
it opens the StageWriter with its fingerprint, hands the shards still to do to
`ray_shard_outputs` here, and commits each shard (rows and rejects) the moment its result
streams back, checks the row counts, then writes the manifest and `_SUCCESS`. So resume,
`--force`, make targets and export work unchanged, and the two executors can take turns on one
run: a stage half done by one is finished by the other. This module imports no stage: an actor
rebuilds the stage from its class name and runs the stage's own `work` on one shard per batch.
Today sample and verify are distributable:

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

import importlib
import json
import os
import sys
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from selfimprove.pipeline.config import Config
from selfimprove.pipeline.store import table_bytes


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


# -- any mapped stage -------------------------------------------------------------------------
class ShardActor:
    """Rebuilds a stage from its class and config, opens what its work needs (an engine, a
    verifier pool) once, and works on one shard per batch; the driver commits what comes back."""

    def __init__(self, stage_class: str, cfg_json: dict, iteration: int):
        module, _, name = stage_class.partition(":")
        cls = getattr(importlib.import_module(module), name)
        self.stage = cls(Config.model_validate(cfg_json), iteration)
        self.stage.open()

    def __call__(self, batch: dict) -> dict:
        out: dict[str, list] = {"shard": [], "rows": [], "rejects": [], "info": []}
        for name in map(str, batch["shard"]):
            work = self.stage.work([name])
            try:
                # next() and close(), not a loop: an engine's request journal (openai) must outlive this
                # call until the driver has committed the shard, so the work is not resumed past it
                _, result = next(work)
                work.close()
            except Exception as e:  # the work itself broke (an engine died): Ray restarts this actor, retries the shard
                print(f"{self.stage.name} actor: failed on {name} ({type(e).__name__}: {e}); restarting",
                      file=sys.stderr, flush=True)
                os._exit(1)
            out["shard"].append(name)
            out["rows"].append(table_bytes(result.rows))
            out["rejects"].append(table_bytes(result.rejects) if result.rejects is not None else b"")
            out["info"].append(json.dumps({"info": result.info, "extra": result.extra}))
        return out

    def __del__(self):
        stage = getattr(self, "stage", None)
        if stage is not None:
            stage.close()


def ray_shard_outputs(stage, todo: list[str]) -> Iterator[tuple[str, object]]:
    """(shard name, ShardOutput) of each shard in `todo`, worked on by actors, as they stream back."""
    from selfimprove.pipeline.skeleton import ShardOutput

    cfg = stage.cfg
    connect(cfg)
    ray = _ray()
    _quiet_data_context()
    actors, resources = stage.resources()
    kwargs = {"stage_class": f"{type(stage).__module__}:{type(stage).__qualname__}",
              "cfg_json": cfg.model_dump(mode="json"), "iteration": stage.iteration}
    ds = ray.data.from_items([{"shard": name} for name in todo], override_num_blocks=len(todo))
    ds = ds.map_batches(ShardActor, fn_constructor_kwargs=kwargs, batch_size=1, concurrency=min(actors, len(todo)),
                        **resources, **_restarts(cfg))
    for row in ds.iter_rows():
        meta = json.loads(row["info"])
        rejects = pq.read_table(pa.BufferReader(row["rejects"])) if row["rejects"] else None
        yield row["shard"], ShardOutput(pq.read_table(pa.BufferReader(row["rows"])), rejects, meta["info"], meta["extra"])
