"""Stages: each reads the directory of the stage before it and writes its own.

Every stage module has `run(cfg, iteration, force=False) -> manifest`. What they share lives
in the layers beneath them (pipeline/runs.py: directories, writers, invariants, summaries;
generation.py, verification.py, ...); a stage imports no other stage.
"""

from __future__ import annotations

import importlib

from selfimprove.pipeline.config import Config
from selfimprove.pipeline.runs import (OUTPUT, STAGES, InvariantError, check, open_writer, pending, reader, sampling_config,
                           stage_dir, summary, up_to_date)

__all__ = ["OUTPUT", "STAGES", "InvariantError", "check", "open_writer", "pending", "reader", "run_stage",
           "sampling_config", "stage_dir", "summary", "up_to_date"]


def run_stage(name: str, cfg: Config, iteration: int, force: bool = False) -> dict:
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    module = importlib.import_module(f"selfimprove.pipeline.stages.{name}")
    return module.run(cfg, iteration, force=force)
