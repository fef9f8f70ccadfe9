"""Generation back ends behind one small interface (see base.py)."""

from selfimprove.pipeline.engines.base import Completion, Engine, Request, Result, SamplingParams, load_engine

__all__ = ["Completion", "Engine", "Request", "Result", "SamplingParams", "load_engine"]
