"""The engine interface: a batch of chat requests in, n completions per request out.

The sample stage knows nothing else about the engine. Each call takes the requests and one
`SamplingParams` value (n, temperature, top_p, max_tokens, top_k, min_p, stop, chat-template
arguments) for all of them: `n` completions of each prompt, so an engine that can share the
prompt's computation across samples (vLLM's `SamplingParams(n=k)`) does. A request the engine cannot serve (a prompt longer than the
model's context, a server error that persists) comes back with `error` set instead of
stopping the batch. CoT-decoding (`sample.strategy: cot_decoding`) asks an engine for
`generate_branches` instead: the top-k first tokens, each continued greedily, with per-token
logprobs (docs/decoding.md); an engine may leave it out.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from selfimprove.pipeline.config import Config, SampleConfig


@dataclass(frozen=True)
class SamplingParams:
    """How to sample, for every request of one call: the engine sees this, never the config."""

    n: int = 1  # completions per request
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    top_k: int = 0  # 0: off
    min_p: float = 0.0  # 0: off
    stop: tuple[str, ...] = ()  # strings that end a completion, left out of it
    chat_template_kwargs: dict = field(default_factory=dict)  # e.g. {"enable_thinking": False}

    @classmethod
    def of(cls, sample: SampleConfig, **changes) -> "SamplingParams":
        """The sample section's settings, with `changes` (e.g. n=1, temperature=0.0 for greedy)."""
        values = {"n": sample.n, "temperature": sample.temperature, "top_p": sample.top_p,
                  "max_tokens": sample.max_tokens, "top_k": sample.top_k, "min_p": sample.min_p,
                  "stop": tuple(sample.stop), "chat_template_kwargs": dict(sample.chat_template_kwargs)}
        return cls(**{**values, **changes})


@dataclass
class Request:
    key: str  # the problem id
    messages: list[dict]  # chat messages: [{"role", "content"}, ...]
    seed: int | None = None  # per-request seed; None where the engine is seeded instead


@dataclass
class Completion:
    text: str
    finish_reason: str
    completion_tokens: int
    cumulative_logprob: float | None = None
    confidence: float | None = None  # CoT-decoding: the model's confidence in the path's answer
    branch_rank: int | None = None  # CoT-decoding: rank of the path's first token (1: greedy's)


@dataclass
class Result:
    prompt_tokens: int = 0
    completions: list[Completion] = field(default_factory=list)
    error: str | None = None  # set when the request could not be served; completions empty


@dataclass
class BranchToken:
    """One generated token of a branch: its text, and the probabilities of the two most likely
    tokens at its position (what CoT-decoding's confidence margin is made of)."""

    text: str  # "" for a special token the completion text leaves out (end of turn)
    top1: float
    top2: float


@dataclass
class Branch:
    """One CoT-decoding path: a first token from the top-k, then greedy to the end."""

    text: str
    finish_reason: str
    completion_tokens: int
    tokens: list[BranchToken]  # one per generated token, the first token included
    first_rank: int  # rank of its first token among the first step's candidates (1: the greedy one)
    cumulative_logprob: float | None = None


@dataclass
class BranchResult:
    prompt_tokens: int = 0
    branches: list[Branch] = field(default_factory=list)  # in first-token rank order
    error: str | None = None  # set when the request could not be served; branches empty


class Engine:
    """Base class: subclasses implement `generate`. The sample stage fingerprints the engine by
    its config (`sample.engine`, the `model` section and the model files), not by asking it."""

    name = "engine"

    def __init__(self, cfg: Config):
        self.cfg = cfg

    @property
    def model_name(self) -> str:
        """What goes into every sample's `model` column."""
        return self.cfg.model.path

    @property
    def seed(self) -> int:
        """The engine-level seed recorded with samples that had no per-request seed."""
        return self.cfg.run.seed

    def supports_request_seed(self) -> bool:
        return False

    def generate(self, requests: list[Request], params: SamplingParams, desc: str = "") -> list[Result]:
        """One result per request, in order, each with `params.n` completions (or an error)."""
        raise NotImplementedError

    def generate_branches(self, requests: list[Request], k: int, params: SamplingParams,
                          desc: str = "") -> list[BranchResult]:
        """CoT-decoding's paths, one result per request in order: the k most likely first tokens,
        each continued greedily to `params.max_tokens` tokens in all (its `stop` and
        `chat_template_kwargs` apply; temperature and the other sampling settings do not), with
        per-token texts and top-2 probabilities. An engine without per-token logprobs leaves it out."""
        raise ValueError(self.no_branches())

    def no_branches(self) -> str:
        """The error for an engine that cannot do CoT-decoding, naming it."""
        return (f"sample.strategy: cot_decoding needs per-token logprobs; engine {self.name!r} "
                f"({type(self).__module__}.{type(self).__qualname__}) does not provide generate_branches")

    def supports_branches(self) -> bool:
        """Whether this engine implements `generate_branches` (CoT-decoding)."""
        return type(self).generate_branches is not Engine.generate_branches

    def generate_shards(
        self, shards: Iterable[tuple[str, list[Request]]], params: SamplingParams, journal_dir: Path | None = None,
        desc: str = "sample",
    ) -> Iterator[tuple[str, list[Result]]]:
        """Yield (shard name, results in request order) for each shard, as soon as it is complete.

        The sample stage commits each shard as it comes, so what finished survives a crash.
        This default serves one shard at a time; an engine that can keep the accelerator busy
        across shard boundaries (feeding the next shard while the last one drains) overrides
        it, and may yield shards out of order. `journal_dir` is the stage directory, where an
        engine may keep a per-request journal of finished requests (e.g. a remote server's).
        `desc` names the work on the progress bar.
        """
        for name, requests in shards:
            yield name, self.generate(requests, params, desc=f"{desc} {name}")

    def close(self) -> None:
        pass


def load_engine(cfg: Config) -> Engine:
    """`sample.engine`: a built-in name (vllm, openai) or `package.module:Class` of your own."""
    spec = cfg.sample.engine
    if spec == "vllm":
        from selfimprove.pipeline.engines.vllm import VLLMEngine

        return VLLMEngine(cfg)
    if spec == "openai":
        from selfimprove.pipeline.engines.openai import OpenAIEngine

        return OpenAIEngine(cfg)
    if ":" not in spec:
        raise ValueError(f"sample.engine: unknown engine {spec!r}; use 'vllm', 'openai' or 'package.module:Class'")
    module_name, _, cls_name = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"sample.engine: cannot load {spec!r}: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, Engine)):
        raise ValueError(f"sample.engine: {spec!r} is not a subclass of selfimprove.pipeline.engines.Engine")
    return cls(cfg)
