"""OpenAI-compatible server engine: drive `vllm serve`, SGLang or llama.cpp's server over HTTP.

A remote server fails in ways an in-process engine does not: it answers 429 when busy, 5xx
when sick, hangs, drops connections, returns half a JSON body, or restarts. So every request
is retried with exponential backoff and full jitter (bounded by `sample.server.max_retries`),
and one that still fails becomes `Result(error=...)`, which the sample stage writes to
`_rejects.parquet`: one bad request never stops a run.

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

Requests run on `concurrency` daemon threads (stdlib `http.client`, one keep-alive connection
per thread), fed across shard boundaries so the server never idles while a shard is committed.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import queue
import random
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import urlsplit

from selfimprove.pipeline.config import Config
from selfimprove.pipeline.engines.base import Completion, Engine, Request, Result, SamplingParams

SEED_MODULUS = 2**31  # seeds stay within a signed 32-bit int, which every server accepts


class ServerError(RuntimeError):
    """The server cannot be used at all (unreachable, wrong key, unknown model): a config problem."""


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class _Rejected(Exception):
    """The server refused the request itself (HTTP 4xx other than 408/429): retrying will not help."""


class _Failed(Exception):
    """Retries are exhausted."""


def _snippet(data: bytes, limit: int = 300) -> str:
    return data[:limit].decode("utf-8", "replace").replace("\n", " ").strip()


def _retry_after(headers) -> float | None:
    try:
        return float(headers.get("Retry-After")) if headers.get("Retry-After") else None
    except (TypeError, ValueError):
        return None  # an HTTP date: use our own backoff


class _Http:
    """A tiny HTTP client: one keep-alive connection per thread, any transport error is retryable."""

    def __init__(self, base_url: str, timeout_s: float, api_key: str | None):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ServerError(f"sample.server.base_url: {base_url!r} is not an http(s) URL like http://127.0.0.1:8000/v1")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")
        self.timeout_s = timeout_s
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.https:
                conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout_s,
                                                   context=ssl.create_default_context())
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            self._local.conn = conn
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, object, bytes]:
        conn = self._connection()
        try:
            conn.request(method, self.prefix + path, body=body, headers=self.headers)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as e:  # refused, reset, timeout, dropped, truncated
            self._drop()
            kind = "timeout" if isinstance(e, TimeoutError) else "connection error"
            raise _Retryable(f"{kind}: {type(e).__name__}: {e}") from None
        if resp.will_close:
            self._drop()
        return resp.status, resp.headers, data


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
        self.http = _Http(self.server.base_url, self.server.timeout_s, os.environ.get(self.server.api_key_env) or None)
        self._use_n = self.server.send_n
        self.retries = 0  # attempts that failed and were retried, for the summary line
        self._check_server()

    @property
    def model_name(self) -> str:
        return self.model

    def supports_request_seed(self) -> bool:
        return True  # the OpenAI API's `seed`; servers that ignore it still answer

    # -- talking to the server ------------------------------------------------------------
    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        delay = random.uniform(0, min(self.server.max_backoff_s, self.server.backoff_s * 2**attempt))
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.server.max_backoff_s))
        return delay

    def _with_retries(self, send, stop: threading.Event):
        """Call `send()` until it returns; retry `_Retryable` with backoff, at most max_retries times."""
        last: _Retryable | None = None
        for attempt in range(self.server.max_retries + 1):
            if stop.is_set():
                raise _Failed("generation stopped")
            try:
                return send()
            except _Retryable as e:
                last = e
                if attempt == self.server.max_retries:
                    break
                self.retries += 1
                stop.wait(self._backoff(attempt, e.retry_after))
        raise _Failed(f"{last.reason if last else 'unknown'} (gave up after {self.server.max_retries + 1} attempts)")

    def _check_server(self) -> None:
        """Fail fast, with a message naming the config field, on a server that cannot be used at all."""
        url = self.server.base_url

        def send():
            status, _, data = self.http.request("GET", "/models")
            if status == 429 or status >= 500:
                raise _Retryable(f"HTTP {status}: {_snippet(data)}")
            return status, data

        try:
            status, data = self._with_retries(send, threading.Event())
        except _Failed as e:
            raise ServerError(f"cannot reach the server at sample.server.base_url={url}: {e}; is it running?") from None
        if status in (401, 403):
            raise ServerError(f"{url} refused the API key (HTTP {status}): set it in ${self.server.api_key_env} "
                              f"(sample.server.api_key_env)")
        if status != 200:
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
                "top_p": params.top_p, "max_tokens": params.max_tokens}
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
        data_out = json.dumps(body, ensure_ascii=False).encode()

        def send():
            status, headers, data = self.http.request("POST", "/chat/completions", data_out)
            if status == 429 or status == 408 or status >= 500:
                raise _Retryable(f"HTTP {status}: {_snippet(data)}", _retry_after(headers))
            if status != 200:
                raise _Rejected(f"HTTP {status}: {_snippet(data)}")
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
                raise _Retryable(f"malformed response ({type(e).__name__}: {e}): {_snippet(data, 120)}") from None

        return self._with_retries(send, stop)

    def _fetch(self, task: _Task, samples: list[int], n: int) -> list[int]:
        """Fetch `samples` with one request of `n` choices; record what came; return indices still missing."""
        shard, req = task.shard, task.shard.requests[task.index]
        seed = req.seed
        if n == 1 and seed is not None and shard.params.n > 1:
            seed = (seed + samples[0]) % SEED_MODULUS  # single requests: a distinct seed per sample
        choices, prompt_tokens, counts = self._complete(self.payload(req, shard.params, n, seed), shard.stop)
        got = {}
        for idx, ch, (tokens, logprob) in zip(samples, choices, counts):
            got[idx] = Completion(text=ch["message"].get("content") or "", finish_reason=str(ch.get("finish_reason") or "unknown"),
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
