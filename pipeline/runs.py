"""A run on disk: where each stage's directory is, how a stage opens its output and reads its
input, the row-count invariants at stage boundaries, and the one-line summaries.

Beneath the stages: every stage, executor and shared layer imports this, and it imports no stage.
"""

from __future__ import annotations

import time
from pathlib import Path

from selfimprove.pipeline.config import Config
from selfimprove.pipeline.model import model_identity
from selfimprove.pipeline.store import SUCCESS, StageReader, StageWriter, StoreError

STAGES = ["prepare", "sample", "verify", "rationalize", "dedup", "export", "train", "evaluate"]
OUTPUT = {"prepare": "problems", "sample": "samples", "verify": "verified", "rationalize": "rationalized",
          "dedup": "selected", "export": "export", "train": "model", "evaluate": "eval"}


class InvariantError(RuntimeError):
    """A row-count invariant broke at a stage boundary: a bug, never bad input."""


def stage_dir(cfg: Config, iteration: int, stage: str) -> Path:
    return cfg.iter_dir(iteration) / OUTPUT[stage]


def sampling_config(cfg: Config, iteration: int) -> Config:
    """The config iteration k samples with: the model trained in iteration k-1 (k=1: the base model)."""
    if iteration <= 1:
        return cfg
    model = cfg.model.model_copy(update={"path": model_for_iteration(cfg, iteration)})
    return cfg.model_copy(update={"model": model})


def reader(cfg: Config, iteration: int, stage: str) -> StageReader:
    return StageReader(stage_dir(cfg, iteration, stage), stage)


def open_writer(cfg: Config, iteration: int, stage: str, parts: dict, force: bool) -> StageWriter:
    return StageWriter(stage_dir(cfg, iteration, stage), stage, parts, cfg.config_hash(), force=force)


def pending(source: StageReader, writer: StageWriter) -> list[str]:
    """Input shards whose output shard is not committed yet (resume skips the rest)."""
    return [s["file"] for s in source.shards if not writer.is_done(s["file"])]


def check(condition: bool, message: str) -> None:
    if not condition:
        raise InvariantError(message)


def up_to_date(stage: str, writer: StageWriter) -> dict:
    writer.touch_success()
    manifest = StageReader(writer.path).manifest
    print(f"{stage}: up to date ({manifest['rows']} rows in {writer.path})", flush=True)
    return manifest


def summary(stage: str, text: str, started: float) -> None:
    print(f"{stage}: {text} [{time.time() - started:.1f} s]", flush=True)


# -- which model where ------------------------------------------------------------------------
def trained_model(cfg: Config, k: int) -> str:
    """iter-k/model, the model trained in iteration k; a clear error if it is not finished."""
    path = stage_dir(cfg, k, "train")
    if not (path / SUCCESS).exists():
        raise StoreError(
            f"the model of iteration {k} ({path}) is not trained yet; run `make iterate ITER={k}` "
            f"(or `selfimprove train --iter {k}`) first"
        )
    return str(path)


def model_for_iteration(cfg: Config, k: int) -> str:
    """The model iteration k samples with: the base model for k=1, else iteration k-1's model."""
    if k < 1:
        raise ValueError(f"iteration {k}: iterations that sample start at 1 (iteration 0 is the base model)")
    return cfg.model.path if k == 1 else trained_model(cfg, k - 1)


def model_fingerprint(path: str) -> dict:
    """What identifies a model for fingerprints (a trained one by the hash of its files)."""
    return model_identity(path)


def starting_model(cfg: Config, k: int) -> str:
    return model_for_iteration(cfg, k) if cfg.train.from_ == "previous" else cfg.model.path
