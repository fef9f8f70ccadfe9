"""Generation back ends behind one small interface (see base.py)."""

from selfimprove.pipeline.engines.base import (Branch, BranchResult, BranchToken, Completion, Engine, Request, Result,
                                               SamplingParams, load_engine)

__all__ = ["Branch", "BranchResult", "BranchToken", "Completion", "Engine", "Request", "Result", "SamplingParams", "load_engine"]
