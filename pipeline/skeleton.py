"""The one skeleton of a stage that turns its input stage's shards into shards of its own.

A stage declares what it reads (`source`), its fingerprint and a per-shard function (`work`);
`run_mapped` owns everything else: opening the stage directory, skipping finished shards,
committing each shard as it comes back, the row-count checks before `_SUCCESS`, the manifest
and the one-line summary. Where the work runs is the executor's business (pipeline/executors):
in this process, or on Ray actors that rebuild the stage from its class and run `work` there.
"""

from __future__ import annotations

import time
from contextlib import closing
from dataclasses import dataclass, field
from typing import Iterator

import pyarrow as pa

from selfimprove.pipeline.config import Config
from selfimprove.pipeline.runs import check, open_writer, reader, summary, up_to_date


@dataclass
class ShardOutput:
    """What the work on one shard gives: its rows, its rejects, and counts journalled with it."""

    rows: pa.Table
    rejects: pa.Table | None = None
    info: dict = field(default_factory=dict)  # journalled with the shard, so it survives a resume
    extra: dict = field(default_factory=dict)  # for this run's summary only (e.g. tokens generated)


class MappedStage:
    """A stage whose output shards are, by default, its input's shards one to one by name (a stage
    that regroups rows, like export, names its own in `shard_names` and yields them from `work`).

    Subclasses set `name` and `source` and implement `fingerprint` and `work`; they may check
    each shard (`check_shard`), the totals (`check_total`), and say what goes into the manifest
    (`stats`) and the summary line (`summary`). `open`/`close` hold what the work needs (an
    engine, a worker pool), once per place the work runs. A stage whose shards may be worked on
    elsewhere (Ray actors) says so with `distributable` and `resources`.
    """

    name = "stage"
    source: str | None = "prepare"  # None: the stage makes its own shards (override shard_names)
    distributable = False
    no_output = "no output"  # what it means when the work gave nothing for a shard

    def __init__(self, cfg: Config, iteration: int):
        self.cfg, self.iteration = cfg, iteration
        self.input = reader(cfg, iteration, self.source) if self.source else None
        self.new: list[ShardOutput] = []  # shards worked on by this run (resumed ones aside)
        self.work_seconds = 0.0  # time from the first shard handed out to the last one back

    # -- what a stage declares ---------------------------------------------------------------
    def fingerprint(self) -> dict:
        raise NotImplementedError

    def shard_names(self) -> list[str]:
        """Every output shard of the finished stage (called once, before the work)."""
        return [s["file"] for s in self.input.shards]

    def todo(self, names: list[str], writer) -> list[str]:
        """The shards to work on: those not committed yet (resume skips the rest)."""
        return [n for n in names if not writer.is_done(n)]

    def work(self, names: list[str]) -> Iterator[tuple[str, ShardOutput]]:
        """Each shard of `names` worked on, yielded as soon as it is done (any order)."""
        raise NotImplementedError

    engine = None  # what `work` holds, if anything: a generation engine and a verifier pool,
    pool = None    # closed by `close` wherever the work ran

    def open(self) -> None:
        pass

    def close(self) -> None:
        if self.pool is not None:
            self.pool.__exit__(None, None, None)
            self.pool = None
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    def check_shard(self, name: str, out: ShardOutput) -> None:
        pass

    def check_total(self, writer, names: list[str]) -> None:
        pass

    def refresh(self, writer) -> None:
        """On an up-to-date stage: re-derive side files from the committed shards (default: none)."""

    def committed(self, writer, name: str) -> None:
        """After shard `name` is on disk (e.g. drop a request journal no longer needed)."""

    def stats(self, writer, names: list[str]) -> dict:
        return {}

    def summary(self, manifest: dict, resumed: int) -> str:
        return f"{manifest['rows']} rows"

    def resources(self) -> tuple[int, dict]:
        """(actors, Ray resources of each) where the work is distributable."""
        return 1, {"num_cpus": 1}

    def executor(self) -> str:
        return self.cfg.run.executor if self.distributable else "local"


def shard_outputs(stage: MappedStage, todo: list[str]) -> Iterator[tuple[str, ShardOutput]]:
    """The shards in `todo`, worked on where the stage's executor says."""
    if stage.executor() == "ray":
        from selfimprove.pipeline.executors.ray import ray_shard_outputs

        yield from ray_shard_outputs(stage, todo)
        return
    stage.open()
    try:
        yield from stage.work(todo)
    finally:
        stage.close()


def run_mapped(stage: MappedStage, force: bool = False) -> dict:
    """Run a mapped stage: resume, commit shard by shard, check the counts, finish."""
    started = time.time()
    with open_writer(stage.cfg, stage.iteration, stage.name, stage.fingerprint(), force) as writer:
        if writer.up_to_date:
            stage.refresh(writer)
            return up_to_date(stage.name, writer)
        names = stage.shard_names()
        todo = stage.todo(names, writer)
        if todo:
            work_started = time.time()
            with closing(shard_outputs(stage, todo)) as outputs:
                for name, out in outputs:
                    stage.check_shard(name, out)
                    writer.write_shard(name, out.rows, out.rejects, **out.info)
                    stage.new.append(out)
                    stage.committed(writer, name)
            stage.work_seconds = time.time() - work_started
        missing = [n for n in names if not writer.is_done(n)]
        check(not missing, f"{stage.name}: {stage.no_output} for shards {missing[:5]}")
        stage.check_total(writer, names)  # before finish: a stage that breaks it is never marked _SUCCESS
        manifest = writer.finish(names, stats=stage.stats(writer, names))
    summary(stage.name, stage.summary(manifest, len(names) - len(todo)), started)
    return manifest
