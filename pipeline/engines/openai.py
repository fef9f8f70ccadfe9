"""OpenAI-compatible server engine: drive `vllm serve`, SGLang or llama.cpp's server over HTTP.

Transport and retries are the official `openai` client's: one `openai.OpenAI` shared by the
`concurrency` worker threads, its connection pool sized to match, so a proxy comes from the
environment (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY), `sample.server.headers` go on every
request and `sample.server.extra_body` into every request body.

A remote server fails in ways an in-process engine does not: it answers 429 when busy, 5xx
when sick, hangs, drops connections, returns half a JSON body, or restarts. The client retries
what it can tell from the status or the connection (408, 409, 429 with its Retry-After, 5xx,
timeouts, refused or dropped connections), waiting as `sample.server.backoff_s` and
`max_backoff_s` say (exponential, full jitter); the engine retries what the client accepts but
cannot be used (a 200 with a truncated body or no choices). `sample.server.max_retries` bounds
all attempts of a request together, and one that still fails becomes `Result(error=...)`, which
the sample stage writes to `_rejects.parquet`: one bad request never stops a run.

Finished requests are appended to a journal per shard (`_requests-<shard>.jsonl` in the
sample stage directory), keyed by problem id and a hash of the full request payload, each
completion with its sample index. A killed run reads it back and sends only what is missing,
so nothing finished is lost and nothing is generated twice; a stale entry (another model,
prompt or sampling setting) never matches its hash. The journal of a shard is deleted once
the stage has committed that shard.

A request asks for all n samples at once (`n`), so the server computes the prompt once. A
server that rejects `n` (HTTP 4xx where a single request succeeds) or ignores it (returns
fewer choices) is detected on first contact, and from then on each sample is its own request,
with the per-request seed offset by the sample index so the samples differ.

Requests run on `concurrency` daemon threads, fed across shard boundaries so the server never
idles while a shard is committed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import queue
import random
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator
from urllib.parse import urlsplit

try:
    import openai
except ImportError as e:  # it comes with vLLM; a machine that only talks to a server may lack it
    raise ImportError("sample.engine: openai needs the `openai` package (>= 1.17): pip install openai") from e

from selfimprove.pipeline.config import Config, ServerConfig
from selfimprove.pipeline.engines.base import (Branch, BranchResult, BranchToken, Completion, Engine, Request, Result,
                                               SamplingParams)

SEED_MODULUS = 2**31  # seeds stay within a signed 32-bit int, which every server accepts
API_KEY_PLACEHOLDER = "EMPTY"  # what the client is given when no key is set (it refuses to start without)
RETRIED_STATUS = (408, 409, 429)  # and 5xx: what the client retries (its rule; a 4xx else is the request's fault)
# request fields the client takes as arguments; the others of a payload go in its `extra_body`
CLIENT_FIELDS = ("model", "messages", "n", "temperature", "top_p", "max_tokens", "seed", "stop", "logprobs")
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# A first-token candidate that is an end-of-turn or other special token, as servers spell them
# (ChatML, Llama 3, GPT-2, SentencePiece, Gemma): its path ends at once, it is not sent back as text.
SPECIAL_TOKEN = re.compile(r"<\|[A-Za-z0-9_.:-]+\|>|</?s>|<eos>|<end_of_turn>|<pad>|<unk>")


class ServerError(RuntimeError):
    """The server cannot be used at all (unreachable, wrong key, unknown model): a config problem."""


class _Rejected(Exception):
    """The server refused the request itself (HTTP 4xx other than 408/409/429): retrying will not help."""

    def __init__(self, reason: str, status: int):
        super().__init__(reason)
        self.status = status


class _Failed(Exception):
    """Retries are exhausted."""


def _snippet(data: bytes, limit: int = 300) -> str:
    return data[:limit].decode("utf-8", "replace").replace("\n", " ").strip()


def _retry_after(headers) -> float | None:
    """A response's Retry-After (or the non-standard retry-after-ms) in seconds; None for none or an HTTP date."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("Retry-After", 1.0)):
        try:
            if headers.get(name):
                return float(headers.get(name)) / scale
        except (TypeError, ValueError):
            continue  # an HTTP date: use our own backoff
    return None


def _cause(e: BaseException) -> str:
    """What went wrong underneath a client error: `ReadTimeout: timed out`, `ConnectError: ...`."""
    inner = e.__cause__ or e.__context__
    return f"{type(inner).__name__}: {inner}" if inner is not None else f"{type(e).__name__}: {e}"


def _sampling_extras(params: SamplingParams) -> dict:
    """top_k, min_p, stop and chat_template_kwargs where set (vLLM and SGLang servers take them all).

    Left out at their defaults, so that any OpenAI-compatible server takes the request and a
    journal written before they existed still matches. (getattr: an engine of this version may
    meet a `SamplingParams` without them.)
    """
    extras: dict = {}
    if getattr(params, "top_k", 0):
        extras["top_k"] = params.top_k
    if getattr(params, "min_p", 0.0):
        extras["min_p"] = params.min_p
    if getattr(params, "stop", ()):
        extras["stop"] = list(params.stop)
    if getattr(params, "chat_template_kwargs", None):
        extras["chat_template_kwargs"] = dict(params.chat_template_kwargs)
    return extras


def _headers(server: ServerConfig) -> dict[str, str]:
    """`sample.server.headers`, each `${NAME}` in a value replaced by that environment variable."""

    def expand(name: str, value: str) -> str:
        def variable(m: re.Match) -> str:
            if m.group(1) not in os.environ:
                raise ServerError(f"sample.server.headers.{name}: the environment variable ${m.group(1)} is not set")
            return os.environ[m.group(1)]

        return ENV_REFERENCE.sub(variable, value)

    return {name: expand(name, value) for name, value in server.headers.items()}


def _client_class(engine: "OpenAIEngine") -> type[openai.OpenAI]:
    """`openai.OpenAI`, waiting between retries as `sample.server` says instead of its own 0.5 s to 8 s.

    `_calculate_retry_timeout` is the client's hook for the wait before each retry (private, but
    the same since openai 1.0). Through it the engine also counts the client's retries (one budget
    per request, the summary line) and stops them once a generation ends; were a client version to
    drop it, the retry tests of tests/test_openai_engine.py would fail. A class per engine, so
    that the copies `with_options` makes (of the same class) do the same.
    """

    def _calculate_retry_timeout(self, remaining_retries, options, response_headers=None) -> float:
        return engine._retry_delay(response_headers)

    return type("SelfimproveOpenAI", (openai.OpenAI,), {"_calculate_retry_timeout": _calculate_retry_timeout})


@dataclass
class _Shard:
    """One shard's requests and what has come back for them so far."""

    name: str
    requests: list[Request]
    hashes: list[str]
    journal: "_Journal"
    stop: threading.Event  # set when the generation that owns this shard ends: its retries give up
    params: SamplingParams  # the sampling settings of this generation (a judge's differ from the stage's)
    got: list[dict[int, Completion]] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)
    open_tasks: int = 0

    def results(self) -> list[Result]:
        out = []
        for req, got, tokens, error in zip(self.requests, self.got, self.prompt_tokens, self.errors):
            if error is None and len(got) < self.params.n:
                error = f"server returned {len(got)} of {self.params.n} samples"
            if error is not None:
                out.append(Result(prompt_tokens=tokens, error=error))
            else:
                out.append(Result(prompt_tokens=tokens, completions=[got[i] for i in range(self.params.n)]))
        return out


@dataclass
class _Task:
    shard: _Shard
    index: int  # the request's position in its shard
    samples: list[int]  # sample indices this task fetches


class _Journal:
    """Finished requests of one shard: one JSON line each, appended and flushed as they finish.

    A torn last line (the process was killed mid-write) is skipped on reading, and the next
    append starts on a fresh line, so it costs at most that one request.
    """

    def __init__(self, path: Path | None):
        self.path = path
        self.lock = threading.Lock()
        self.entries: dict[tuple[str, str], dict] = {}  # (problem_id, hash) -> {"prompt_tokens", "samples": {idx: Completion}}
        self._file = None
        if path is not None and path.exists():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    e = json.loads(line)
                    entry = self.entries.setdefault((e["problem_id"], e["hash"]), {"prompt_tokens": 0, "samples": {}})
                    entry["prompt_tokens"] = int(e.get("prompt_tokens") or 0)
                    for c in e["completions"]:
                        entry["samples"].setdefault(int(c["sample_idx"]), Completion(
                            text=c["text"], finish_reason=c["finish_reason"],
                            completion_tokens=int(c["completion_tokens"]), cumulative_logprob=c["cumulative_logprob"]))
                except (ValueError, KeyError, TypeError):
                    continue

    def record(self, problem_id: str, key: str, prompt_tokens: int, completions: dict[int, Completion]) -> None:
        if self.path is None:
            return
        line = json.dumps({
            "problem_id": problem_id, "hash": key, "prompt_tokens": prompt_tokens,
            "completions": [{"sample_idx": i, "text": c.text, "finish_reason": c.finish_reason,
                             "completion_tokens": c.completion_tokens, "cumulative_logprob": c.cumulative_logprob}
                            for i, c in sorted(completions.items())],
        }, ensure_ascii=False)
        with self.lock:
            if self._file is None:
                torn = self.path.exists() and self.path.stat().st_size and not self.path.read_bytes().endswith(b"\n")
                self._file = open(self.path, "a", encoding="utf-8")
                if torn:
                    self._file.write("\n")
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        with self.lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def discard(self) -> None:
        self.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _token_counts(choices: list[dict], usage_tokens: int | None) -> list[tuple[int, float | None]]:
    """(completion tokens, cumulative logprob) per choice.

    Exact from the logprobs where the server sent them; else from `usage` (exact for one
    choice, split by text length for several: the API reports only the total).
    """
    counts: list[tuple[int | None, float | None]] = []
    for ch in choices:
        lp = ch.get("logprobs")
        content = lp.get("content") if isinstance(lp, dict) else None
        if isinstance(content, list) and content:
            counts.append((len(content), float(sum(t["logprob"] for t in content))))
        else:
            counts.append((None, None))
    missing = [i for i, (t, _) in enumerate(counts) if t is None]
    if missing:
        rest = max(0, (usage_tokens or 0) - sum(t for t, _ in counts if t is not None))
        chars = [len(choices[i]["message"].get("content") or "") for i in missing]
        for k, i in enumerate(missing):
            share = rest * chars[k] // max(1, sum(chars)) if len(missing) > 1 else rest
            counts[i] = (share, None)
    return counts  # type: ignore[return-value]


class OpenAIEngine(Engine):
    name = "openai"

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.server = cfg.sample.server
        self.model = self.server.model or cfg.model.path
        parts = urlsplit(self.server.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ServerError(f"sample.server.base_url: {self.server.base_url!r} is not an http(s) URL like "
                              f"http://127.0.0.1:8000/v1")
        headers = _headers(self.server)
        api_key = os.environ.get(self.server.api_key_env) or None
        # No key set: the client still wants one, so it gets a placeholder, but every request leaves the
        # Authorization header out (unless sample.server.headers sets one), as before the client: a
        # server without a key ignores the header anyway, and a gateway never sees a made-up token.
        no_auth = api_key is None and not any(name.lower() == "authorization" for name in headers)
        self._request_headers = {"Authorization": openai.Omit()} if no_auth else None
        limits = type(openai.DEFAULT_CONNECTION_LIMITS)(max_connections=self.server.concurrency + 4,
                                                        max_keepalive_connections=self.server.concurrency)
        self.client = _client_class(self)(
            base_url=self.server.base_url, api_key=api_key or API_KEY_PLACEHOLDER, timeout=self.server.timeout_s,
            max_retries=self.server.max_retries, default_headers=headers,
            http_client=openai.DefaultHttpxClient(limits=limits))
        self._clients = {self.server.max_retries: self.client}  # by retries left: one budget for a request's attempts
        self._local = threading.local()  # the request each worker thread is on: its stop event and retries so far
        self._lock = threading.Lock()
        self._use_n = self.server.send_n
        self.retries = 0  # attempts that failed and were retried, for the summary line
        self._check_server()

    @property
    def model_name(self) -> str:
        return self.model

    def supports_request_seed(self) -> bool:
        return True  # the OpenAI API's `seed`; servers that ignore it still answer

    def close(self) -> None:
        self.client.close()  # the connection pool, shared by the clients of `_clients`

    # -- talking to the server ------------------------------------------------------------
    def _begin(self, stop: threading.Event) -> None:
        """A worker thread starts on a request: its retries give up once `stop` is set."""
        self._local.stop, self._local.retries = stop, 0

    def _retry_delay(self, response_headers=None) -> float:
        """The wait before the thread's next attempt (full jitter, at least a Retry-After); counts the retry.

        Called by the client before each of its retries and by the engine before each of its own.
        """
        stop = getattr(self._local, "stop", None)
        if stop is not None and stop.is_set():
            raise _Failed("generation stopped")  # out of the client's retry loop: nothing more is sent
        attempt = getattr(self._local, "retries", 0)
        self._local.retries = attempt + 1
        with self._lock:
            self.retries += 1
        delay = random.uniform(0, min(self.server.max_backoff_s, self.server.backoff_s * 2**attempt))
        retry_after = _retry_after(response_headers)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.server.max_backoff_s))
        return delay

    def _client(self) -> openai.OpenAI:
        """The client for the thread's next attempt: it may retry as often as the request has retries left."""
        left = max(0, self.server.max_retries - self._local.retries)
        with self._lock:
            if left not in self._clients:
                self._clients[left] = self.client.with_options(max_retries=left)
            return self._clients[left]

    def _gave_up(self, reason: str) -> str:
        return f"{reason} (gave up after {self._local.retries + 1} attempts)"

    def _send(self, call, stop: threading.Event):
        """`call(client)` -> the raw response; a client error -> `_Rejected` (the request's fault) or `_Failed`.

        The client retries; what it gives up on while the request has retries left (a Retry-After
        beyond its two minutes) is retried here, after at most `max_backoff_s`.
        """
        while True:
            if stop.is_set():
                raise _Failed("generation stopped")
            try:
                return call(self._client())
            except openai.APIStatusError as e:
                reason, headers = f"HTTP {e.status_code}: {_snippet(e.response.content)}", e.response.headers
                if not (e.status_code in RETRIED_STATUS or e.status_code >= 500):
                    raise _Rejected(reason, e.status_code) from None
            except openai.APITimeoutError as e:
                reason, headers = f"timeout: {_cause(e)}", None
            except openai.APIConnectionError as e:
                reason, headers = f"connection error: {_cause(e)}", None
            if self._local.retries >= self.server.max_retries:
                raise _Failed(self._gave_up(reason))
            stop.wait(self._retry_delay(headers))

    def _check_server(self) -> None:
        """Fail fast, with a message naming the config field, on a server that cannot be used at all."""
        url = self.server.base_url
        stop = threading.Event()
        self._begin(stop)
        try:
            data = self._send(lambda client: client.models.with_raw_response.list(
                extra_headers=self._request_headers), stop).content
        except _Failed as e:
            raise ServerError(f"cannot reach the server at sample.server.base_url={url}: {e}; is it running?") from None
        except _Rejected as e:
            if e.status in (401, 403):
                raise ServerError(f"{url} refused the API key (HTTP {e.status}): set it in ${self.server.api_key_env} "
                                  f"(sample.server.api_key_env)") from None
            return  # a server without /models: requests will tell
        try:
            served = [m["id"] for m in json.loads(data)["data"]]
        except (ValueError, KeyError, TypeError):
            return
        if served and self.model not in served:
            raise ServerError(f"sample.server.model: {self.model!r} is not served by {url}; it serves {served} "
                              f"(set sample.server.model to one of them)")

    def payload(self, req: Request, params: SamplingParams, n: int, seed: int | None) -> dict:
        body = {"model": self.model, "messages": req.messages, "n": n, "temperature": params.temperature,
                "top_p": params.top_p, "max_tokens": params.max_tokens, **_sampling_extras(params),
                **self.server.extra_body}
        if seed is not None:
            body["seed"] = seed
        return body

    def request_hash(self, req: Request, params: SamplingParams) -> str:
        """The journal key: the full request for all n samples, so any change to it misses the journal."""
        body = self.payload(req, params, params.n, req.seed)
        return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:32]

    def _complete(self, body: dict, stop: threading.Event) -> tuple[list[dict], int, list[tuple[int, float | None]]]:
        """One chat completion with retries -> (choices sorted by index, prompt tokens, token counts)."""
        if self.server.logprobs:
            body = {**body, "logprobs": True}
        args = {k: v for k, v in body.items() if k in CLIENT_FIELDS}
        extra_body = {k: v for k, v in body.items() if k not in CLIENT_FIELDS} or None
        self._begin(stop)
        while True:
            data = self._send(lambda client: client.chat.completions.with_raw_response.create(
                **args, extra_body=extra_body, extra_headers=self._request_headers), stop).content
            try:
                parsed = json.loads(data)
                choices = sorted(parsed["choices"], key=lambda c: c.get("index", 0))
                if not choices:
                    raise ValueError("no choices")
                for c in choices:
                    content = c["message"].get("content")
                    if content is not None and not isinstance(content, str):
                        raise ValueError("message.content is not text")
                usage = parsed.get("usage") or {}
                counts = _token_counts(choices, usage.get("completion_tokens"))
                return choices, int(usage.get("prompt_tokens") or 0), counts
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                reason = f"malformed response ({type(e).__name__}: {e}): {_snippet(data, 120)}"
            # a 200 the client took but nothing can be made of: retried here, on the same budget
            if self._local.retries >= self.server.max_retries:
                raise _Failed(self._gave_up(reason))
            stop.wait(self._retry_delay())

    def _text(self, message: dict) -> str:
        """The completion as the model wrote it: a server with a reasoning parser returns the
        thinking apart (`reasoning_content`, or `reasoning`); it is put back inside
        `sample.think_tags`, so the sample stage stores it apart and never reads an answer in it."""
        content = message.get("content") or ""
        thinking = message.get("reasoning_content") or message.get("reasoning")
        tags = self.cfg.sample.think_tags
        if not isinstance(thinking, str) or not thinking or not tags:
            return content
        return f"{tags[0]}{thinking}{tags[1]}{content}"

    def _fetch(self, task: _Task, samples: list[int], n: int) -> list[int]:
        """Fetch `samples` with one request of `n` choices; record what came; return indices still missing."""
        shard, req = task.shard, task.shard.requests[task.index]
        seed = req.seed
        if n == 1 and seed is not None and shard.params.n > 1:
            seed = (seed + samples[0]) % SEED_MODULUS  # single requests: a distinct seed per sample
        choices, prompt_tokens, counts = self._complete(self.payload(req, shard.params, n, seed), shard.stop)
        got = {}
        for idx, ch, (tokens, logprob) in zip(samples, choices, counts):
            got[idx] = Completion(text=self._text(ch["message"]), finish_reason=str(ch.get("finish_reason") or "unknown"),
                                  completion_tokens=tokens, cumulative_logprob=logprob)
        shard.journal.record(req.key, shard.hashes[task.index], prompt_tokens, got)
        with shard.journal.lock:
            shard.got[task.index].update(got)
            shard.prompt_tokens[task.index] = prompt_tokens
        return [i for i in samples if i not in got]

    def _serve(self, task: _Task) -> tuple[str, object]:
        """Run one task on a worker thread -> ("done", None) | ("fanout", indices) | ("error", reason)."""
        samples = task.samples
        try:
            if len(samples) == 1 or not self._use_n:
                self._fetch(task, samples[:1], 1)
                return ("fanout", samples[1:]) if len(samples) > 1 else ("done", None)
            try:
                missing = self._fetch(task, samples, len(samples))
            except _Rejected as e:
                # a server without `n` may refuse it: if one sample alone goes through, it is that
                try:
                    self._fetch(task, samples[:1], 1)
                except _Rejected:
                    raise e from None
                self._note_no_n(f"refused n={len(samples)} ({e})")
                return "fanout", samples[1:]
            if missing:
                self._note_no_n(f"returned {len(samples) - len(missing)} choices for n={len(samples)}")
                return "fanout", missing
            return "done", None
        except (_Rejected, _Failed) as e:
            return "error", str(e)[:500]
        except Exception as e:  # a bug must not kill a worker thread and hang the stage
            return "error", f"{type(e).__name__}: {e}"[:500]

    def _note_no_n(self, why: str) -> None:
        if self._use_n:
            self._use_n = False
            print(f"openai engine: the server {why}; sending one request per sample from now on", flush=True)

    # -- the engine interface -------------------------------------------------------------
    def generate_branches(self, requests: list[Request], k: int, params: SamplingParams,
                          desc: str = "") -> list[BranchResult]:
        """CoT-decoding's paths over chat completions: a first request of one token with
        `logprobs` and `top_logprobs: k`, then each candidate continued greedily by sending it back
        as the start of the assistant's turn (`continue_final_message: true,
        add_generation_prompt: false`, which vLLM's and SGLang's servers take) with
        `top_logprobs: 2`. Not journalled: a killed run asks again for the shard's paths (greedy,
        so the same). A candidate that cannot be sent back as text is left out: part of a UTF-8
        character, or only whitespace (chat templates trim the message a turn continues from); one
        that is a special token ends its path at once."""
        stop = threading.Event()
        greedy = SamplingParams(n=1, temperature=0.0, top_p=1.0, max_tokens=1, stop=params.stop,
                                chat_template_kwargs=dict(params.chat_template_kwargs))
        rest = dataclasses.replace(greedy, max_tokens=params.max_tokens - 1)
        results: list[BranchResult] = []
        try:
            with ThreadPoolExecutor(self.server.concurrency, thread_name_prefix="openai-branches") as pool:
                firsts = [pool.submit(self._guarded, self._first_step, req, k, greedy, stop) for req in requests]
                paths = []  # (result, branch, future of its continuation)
                for req, future in zip(requests, firsts):
                    result = future.result()
                    results.append(result)
                    for branch in result.branches:
                        if branch.finish_reason == "length" and rest.max_tokens > 0:
                            paths.append((result, branch, pool.submit(self._guarded, self._continue, req, branch,
                                                                      rest, stop)))
                for result, branch, future in paths:
                    error = future.result()
                    if error is not None and result.error is None:
                        result.error = f"path {branch.first_rank}: {error}"
        finally:
            stop.set()  # retries still waiting give up
        for result in results:
            if result.error is not None:
                result.branches = []
        return results

    def _guarded(self, step, *args):
        """Run a step on a worker thread: what fails becomes an error (a result's, or a str)."""
        try:
            return step(*args)
        except (_Rejected, _Failed) as e:
            reason = str(e)[:500]
        except Exception as e:  # a malformed answer or a bug must not hang the stage
            reason = f"{type(e).__name__}: {e}"[:500]
        return BranchResult(error=reason) if step == self._first_step else reason

    def _first_step(self, req: Request, k: int, greedy: SamplingParams, stop: threading.Event) -> BranchResult:
        """The k most likely first tokens, as branches of one token each."""
        body = {**self.payload(req, greedy, 1, None), "logprobs": True, "top_logprobs": k}
        choices, prompt_tokens, _ = self._complete(body, stop)
        content = (choices[0].get("logprobs") or {}).get("content") or []
        top = content[0].get("top_logprobs") if content else None
        if not top:
            raise ValueError("the server sent no top_logprobs; cot_decoding needs a server that returns them (vLLM, SGLang)")
        top = sorted(top, key=lambda t: -float(t["logprob"]))[:k]
        p1 = math.exp(float(top[0]["logprob"]))
        p2 = math.exp(float(top[1]["logprob"])) if len(top) > 1 else 0.0
        result = BranchResult(prompt_tokens=prompt_tokens)
        for rank, cand in enumerate(top, start=1):
            text = str(cand["token"])
            if SPECIAL_TOKEN.fullmatch(text) or (rank == 1 and choices[0].get("finish_reason") == "stop"
                                                 and not choices[0]["message"].get("content")):
                result.branches.append(Branch("", "stop", 1, [BranchToken("", p1, p2)], rank, float(cand["logprob"])))
            elif text.strip() and "\ufffd" not in text:
                result.branches.append(Branch(text, "length", 1, [BranchToken(text, p1, p2)], rank, float(cand["logprob"])))
        return result

    def _continue(self, req: Request, branch: Branch, rest: SamplingParams, stop: threading.Event) -> None:
        """A branch continued greedily from its first token, sent as the start of the assistant's turn."""
        messages = [*req.messages, {"role": "assistant", "content": branch.text}]
        body = {**self.payload(Request(req.key, messages), rest, 1, None), "logprobs": True, "top_logprobs": 2,
                "continue_final_message": True, "add_generation_prompt": False}
        choices, _, _ = self._complete(body, stop)
        choice = choices[0]
        content = (choice.get("logprobs") or {}).get("content")
        if not isinstance(content, list):
            raise ValueError("the server sent no per-token logprobs; cot_decoding needs them")
        for item in content:
            top = sorted((float(t["logprob"]) for t in item.get("top_logprobs") or []), reverse=True)
            if not top:
                raise ValueError("a token without top_logprobs; cot_decoding needs them")
            text = "" if SPECIAL_TOKEN.fullmatch(str(item["token"])) else str(item["token"])  # end of turn: not in the text
            branch.tokens.append(BranchToken(text, math.exp(top[0]), math.exp(top[1]) if len(top) > 1 else 0.0))
            branch.cumulative_logprob += float(item["logprob"])
        branch.text += self._text(choice["message"])
        branch.finish_reason = str(choice.get("finish_reason") or "unknown")
        branch.completion_tokens += len(content)

    def generate(self, requests: list[Request], params: SamplingParams, desc: str = "") -> list[Result]:
        return dict(self.generate_shards([(desc or "batch", requests)], params)).get(desc or "batch", [])

    def _open_shard(self, name: str, requests: list[Request], params: SamplingParams, journal_dir: Path | None,
                    stop: threading.Event) -> tuple[_Shard, list[_Task]]:
        journal = _Journal(journal_dir / f"_requests-{Path(name).stem}.jsonl" if journal_dir is not None else None)
        shard = _Shard(name, requests, [self.request_hash(r, params) for r in requests], journal, stop, params)
        tasks = []
        for i, req in enumerate(requests):
            entry = journal.entries.get((req.key, shard.hashes[i]), {"prompt_tokens": 0, "samples": {}})
            got = {k: c for k, c in entry["samples"].items() if k < params.n}
            shard.got.append(got)
            shard.prompt_tokens.append(entry["prompt_tokens"])
            shard.errors.append(None)
            missing = [k for k in range(params.n) if k not in got]
            if not missing:
                continue
            if len(missing) == params.n and self._use_n:
                tasks.append(_Task(shard, i, missing))  # all n in one request
            else:
                tasks.extend(_Task(shard, i, [k]) for k in missing)
        shard.open_tasks = len(tasks)
        return shard, tasks

    def generate_shards(
        self, shards: Iterable[tuple[str, list[Request]]], params: SamplingParams, journal_dir: Path | None = None,
        desc: str = "sample",
    ) -> Iterator[tuple[str, list[Result]]]:
        from tqdm import tqdm

        todo: queue.Queue = queue.Queue()
        done: queue.Queue = queue.Queue()
        stop = threading.Event()

        def worker():
            while (task := todo.get()) is not None:
                done.put((task, self._serve(task)))

        threads = [threading.Thread(target=worker, daemon=True, name=f"openai-{i}") for i in range(self.server.concurrency)]
        for t in threads:
            t.start()
        source = iter(shards)
        active: dict[str, _Shard] = {}
        outstanding = 0  # tasks queued or running
        exhausted = False
        failed = resumed = 0
        bar = tqdm(total=0, desc=f"{desc} via {self.server.base_url}", unit="sample", mininterval=1.0)
        try:
            while True:
                # hand the next shard over while the server still has room, so it never idles
                while not exhausted and outstanding < self.server.concurrency:
                    try:
                        name, requests = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    shard, tasks = self._open_shard(name, requests, params, journal_dir, stop)
                    active[name] = shard
                    from_journal = sum(len(g) for g in shard.got)
                    resumed += from_journal
                    bar.total += len(requests) * params.n
                    bar.update(from_journal)
                    for task in tasks:
                        todo.put(task)
                    outstanding += len(tasks)
                for name in [n for n, s in active.items() if s.open_tasks == 0]:
                    shard = active.pop(name)
                    shard.journal.close()
                    results = shard.results()
                    failed += sum(r.error is not None for r in results)
                    yield name, results
                    shard.journal.discard()  # resumed here: the stage has committed the shard
                if exhausted and not active:
                    break
                task, (kind, value) = done.get()
                outstanding -= 1
                task.shard.open_tasks -= 1
                if kind == "error":
                    task.shard.errors[task.index] = value
                    bar.update(len(task.samples))
                    continue
                rest = value if kind == "fanout" else []
                bar.update(len(task.samples) - len(rest))
                for k in rest:
                    todo.put(_Task(task.shard, task.index, [k]))
                outstanding += len(rest)
                task.shard.open_tasks += len(rest)
        finally:
            bar.close()
            stop.set()  # workers in a backoff wait give up; none is started again
            for _ in threads:
                todo.put(None)
            for shard in active.values():
                shard.journal.close()
        if self.retries or failed or resumed:
            print(f"openai engine: {self.retries} retried attempts, {failed} requests failed, "
                  f"{resumed} samples taken from the request journal", flush=True)
