"""Verifiers as rewards: the run's verifier scoring completions for an RL trainer.

`verifier_reward(...)` is a callable TRL's `GRPOTrainer(reward_funcs=[...])` takes as it is:
1.0 where the verifier accepts the completion's final answer against the row's gold answer,
0.0 where it rejects it or finds no clear final answer (precision-first), None where it could
not judge (time limit, crash), which TRL turns into NaN and leaves out of the group's baseline.
A thinking section is never searched for the answer (`split_thinking`, as the pipeline does).

Completions are model output, so they are verified in the killable worker pool
(verifiers/pool.py) with its hard time limit per item, never in the trainer's process. The pool
starts with the first batch and serves every later one; `close()` (or a `with` block) ends it.

`serve(...)` offers the same over HTTP for trainers in other processes (verl, OpenRLHF, your
own): `selfimprove serve-reward`. docs/rewards.md shows each trainer's side.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import numbers
import re
import signal
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from selfimprove.pipeline.config import Config, TaskConfig
from selfimprove.pipeline.prompts import split_thinking
from selfimprove.verifiers import Verdict, VerifyPool
from selfimprove.verifiers.base import STATUSES

log = logging.getLogger(__name__)

REWARD = {"correct": 1.0, "wrong": 0.0, "no_answer": 0.0}  # "timeout", "error": None, not judged
NOT_COLUMNS = {"prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric", "environments"}
MAX_REQUEST_BYTES = 64 * 1024 * 1024  # a POST body larger than this is refused (400) without being read
# special tokens a decoded query ends with (OpenRLHF decodes with skip_special_tokens=False)
_TRAILING_SPECIAL = re.compile(r"(?:\s*(?:<\|[A-Za-z0-9_]{1,40}\|>|</s>|<eos>|<end_of_turn>))+\s*$")


class RequestError(ValueError):
    """A batch the reward cannot read: the message names the field (and row) and what was expected."""


def completion_text(completion, where: str = "completion") -> str:
    """The text of a completion: a string (TRL's standard format), or a list of messages
    (conversational) whose last assistant message is the reply."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        replies = [m for m in completion if isinstance(m, dict) and m.get("role", "assistant") == "assistant"]
        if not replies:
            raise RequestError(f"{where}: a list of messages without an assistant message")
        content = replies[-1].get("content")
        if content is None:
            return ""
        if isinstance(content, str):
            return content
        if isinstance(content, list):  # content blocks: [{"type": "text", "text": ...}, ...]
            return "".join(b.get("text") or "" for b in content if isinstance(b, dict) and b.get("type") == "text")
        raise RequestError(f"{where}: message content must be a string or a list of blocks, got {type(content).__name__}")
    raise RequestError(f"{where}: a string or a list of messages, got {type(completion).__name__}")


def _question(prompt) -> str:
    """What a verifier reads as the question: the prompt text, or its last user message."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        return users[-1] if users and isinstance(users[-1], str) else ""
    return ""


def _gold(value, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Real) and not isinstance(value, bool):  # numpy's numbers too (verl's batches)
        return str(value)
    raise RequestError(f"{where}: the gold answer must be a string or a number, got {type(value).__name__}")


def _metadata(value, where: str) -> dict:
    """A problem's metadata (the `code` verifier's tests live there): a dict, a JSON object string, or None."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value or "{}")
        except ValueError:
            raise RequestError(f"{where}: not JSON") from None
    if not isinstance(value, dict):
        raise RequestError(f"{where}: a JSON object, got {type(value).__name__}")
    return value


def _tags(think_tags) -> tuple[str, str] | None:
    if think_tags is None:
        return None
    if (not isinstance(think_tags, (list, tuple)) or len(think_tags) != 2
            or not all(isinstance(t, str) and t.strip() for t in think_tags)):
        raise ValueError(f"think_tags: two non-empty strings (opening, closing) or None, got {think_tags!r}")
    return tuple(think_tags)


class VerifierReward:
    """A reward function backed by a verifier in a worker pool; see `verifier_reward`."""

    def __init__(self, verifier: str = "auto", params: dict | None = None, answer_column: str = "answer",
                 timeout_s: float = 5.0, workers: int = 0, memory_limit_mb: int = 4096,
                 think_tags=("<think>", "</think>"), task: str | None = None, kind: str = "correct",
                 eos_token_ids=None):
        if verifier == "auto":
            from selfimprove.pipeline.tasks import get_task

            verifier = get_task(TaskConfig(name=task) if task else TaskConfig()).default_verifier
        self.spec, self.params = verifier, dict(params or {})
        self.answer_column, self.think_tags, self.kind = answer_column, _tags(think_tags), kind
        self.limits = (workers, timeout_s, memory_limit_mb)
        self.eos_token_ids = frozenset(eos_token_ids or ())
        self._pool: VerifyPool | None = self._new_pool()  # checks spec, params and limits now; no process yet
        self.verifier_name = self._pool.verifier.name
        self.needs_gold = self._pool.verifier.needs_gold
        self.__name__ = "verifier_reward" if kind == "correct" else "format_reward"  # TRL logs rewards/<name>/mean

    def _new_pool(self) -> VerifyPool:
        workers, timeout_s, memory_limit_mb = self.limits
        return VerifyPool(self.spec, self.params, workers, timeout_s, memory_limit_mb)

    def value(self, v: Verdict) -> float | None:
        """The reward of one verdict: None where the verifier could not judge."""
        if v.status not in REWARD:
            return None
        if self.kind == "format":
            return 1.0 if v.status in ("correct", "wrong") and v.extracted is not None else 0.0
        return REWARD[v.status]

    def __call__(self, prompts=None, completions=None, **columns) -> list[float | None]:
        """TRL's reward-function call: one reward per completion; dataset columns come as lists."""
        if completions is None:
            raise RequestError("completions: missing")
        answers = columns.get(self.answer_column)
        if answers is None and self.needs_gold:
            present = sorted(k for k in columns if k not in NOT_COLUMNS)
            raise RequestError(f"the reward needs each row's gold answer in the column {self.answer_column!r}, which "
                               f"the batch lacks; columns present: {', '.join(present) or 'none'} (set answer_column "
                               "to the one holding it; selfimprove's prompts export names it 'answer')")
        verdicts = self.verdicts(completions, answers, prompts, columns.get("metadata"), columns.get("problem_id"),
                                 finish_reasons=self.finish_reasons(columns.get("completion_ids")))
        if self.kind == "correct":
            _log_to_trainer(verdicts, columns.get("log_metric"), columns.get("log_extra"))
        return [self.value(v) for v in verdicts]

    def finish_reasons(self, completion_ids: list | None) -> list[str] | None:
        """"length" for a completion that ends without an end-of-sequence token (cut off at the
        trainer's max_completion_length), else "stop"; None where that cannot be told (no
        `eos_token_ids` given, or the trainer passed no token ids)."""
        if not self.eos_token_ids or completion_ids is None:
            return None
        return ["stop" if len(ids) and int(ids[-1]) in self.eos_token_ids else "length" for ids in completion_ids]

    def verdicts(self, completions: list, answers: list | None, prompts: list | None = None,
                 metadata: list | None = None, problem_ids: list | None = None,
                 answer_name: str | None = None, finish_reasons: list[str] | None = None) -> list[Verdict]:
        """One verdict per completion, in order. Rows of one problem (same prompt or problem id, gold
        and metadata) go to the verifier together, which a group verifier (majority) needs.
        `answer_name` names the gold answers in errors (default: the answer column). A completion
        whose finish reason is "length" was cut off: the verifier then takes only an explicitly
        marked final answer (no "last number" fallback), as in the verify stage."""
        n = len(completions)
        answer_name = answer_name or self.answer_column
        for name, col in ((answer_name, answers), ("prompts", prompts), ("metadata", metadata), ("problem_id", problem_ids),
                          ("completion_ids", finish_reasons)):
            if col is not None and len(col) != n:
                raise RequestError(f"{name}: {len(col)} values for {n} completions")
        results: list[Verdict | None] = [None] * n
        groups: dict[str, tuple[dict, list[int]]] = {}
        texts = [""] * n
        for i in range(n):
            texts[i] = split_thinking(completion_text(completions[i], f"completions[{i}]"), self.think_tags)[1]
            gold = _gold(answers[i], f"{answer_name}[{i}]") if answers is not None else None
            if gold is None and self.needs_gold:
                results[i] = Verdict("error", 0.0, None, f"no gold answer in {answer_name}[{i}]")
                continue
            md = _metadata(metadata[i], f"metadata[{i}]") if metadata is not None else {}
            question = _question(prompts[i]) if prompts is not None else ""
            who = str(problem_ids[i]) if problem_ids is not None else question
            key = json.dumps([who, gold, md], sort_keys=True, default=str)
            if key not in groups:
                problem = {"problem_id": f"problem-{len(groups)}", "question": question, "answer": gold, "metadata": md}
                groups[key] = (problem, [])
            groups[key][1].append(i)
        jobs = [(problem, [{"sample_idx": k, "text": texts[i], "finish_reason": finish_reasons[i] if finish_reasons else "stop"}
                          for k, i in enumerate(rows)])
                for problem, rows in groups.values()]
        if jobs:
            if self._pool is None:
                self._pool = self._new_pool()
            for (_, rows), verdicts in zip(groups.values(), self._pool.verify(jobs)):
                for i, v in zip(rows, verdicts):
                    results[i] = v
        return results  # type: ignore[return-value]

    def close(self) -> None:
        """End the worker pool; a later call starts a new one."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> VerifierReward:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:  # a copy sent to another process starts its own pool there
        return {**self.__dict__, "_pool": None}


def _log_to_trainer(verdicts: list[Verdict], log_metric, log_extra) -> None:
    """TRL's optional hooks: the share of each verdict status as a metric, each completion's status
    in the completions table. Other callers pass neither."""
    if callable(log_metric) and verdicts:
        for status in STATUSES:
            log_metric(f"verifier/{status}", sum(v.status == status for v in verdicts) / len(verdicts))
    if callable(log_extra):
        log_extra("verifier_status", [v.status for v in verdicts])


def verifier_reward(verifier: str = "auto", params: dict | None = None, answer_column: str = "answer",
                    timeout_s: float = 5.0, workers: int = 0, memory_limit_mb: int = 4096,
                    think_tags=("<think>", "</think>"), task: str | None = None, eos_token_ids=None) -> VerifierReward:
    """A reward function for RL trainers: `reward(prompts, completions, **columns)` -> one of 1.0
    (verifier accepts), 0.0 (rejects, or no clear final answer), None (could not judge) per completion.

    `verifier`: "auto" (the default verifier of `task`, a task name; without one, the default
    task's: numeric), a registered name, or "module:Class"; `params` its parameters. The gold
    answer of row i is `columns[answer_column][i]`. The limits are the verify stage's
    (`timeout_s` hard wall-clock limit per item, `workers` 0 = one per core, `memory_limit_mb`).
    `eos_token_ids` (the tokenizer's end-of-sequence ids): with them, a completion whose token ids
    (TRL passes `completion_ids`) do not end in one was cut off, and gets no weak-fallback answer.
    """
    return VerifierReward(verifier, params, answer_column, timeout_s, workers, memory_limit_mb, think_tags, task,
                          eos_token_ids=eos_token_ids)


def format_reward(verifier: str = "auto", params: dict | None = None, answer_column: str = "answer",
                  timeout_s: float = 5.0, workers: int = 0, memory_limit_mb: int = 4096,
                  think_tags=("<think>", "</think>"), task: str | None = None) -> VerifierReward:
    """1.0 where the verifier finds a clear final answer, right or wrong; 0.0 where it finds none;
    None where it could not judge. Same arguments as `verifier_reward`; its own pool."""
    return VerifierReward(verifier, params, answer_column, timeout_s, workers, memory_limit_mb, think_tags, task,
                          kind="format")


def verifier_reward_from_config(cfg: Config, verifier: str | None = None, eos_token_ids=None) -> VerifierReward:
    """`verifier_reward` with the run's verifier and limits (`verify.*`; "auto": the task's
    default) and thinking tags (`sample.think_tags`); `verifier` replaces `verify.verifier`."""
    v = cfg.verify
    return verifier_reward(verifier or v.verifier, v.params, timeout_s=v.timeout_s, workers=v.workers,
                           memory_limit_mb=v.memory_limit_mb, think_tags=cfg.sample.think_tags, task=cfg.task.name,
                           eos_token_ids=eos_token_ids)


# -- HTTP -----------------------------------------------------------------------------------------
def _field(body: dict, name: str, required: bool = True) -> list | None:
    value = body.get(name)
    if value is None:
        if required:
            raise RequestError(f"{name}: missing (fields: completions, answers, and optional prompts, metadata; "
                               "or OpenRLHF's query, prompts, labels)")
        return None
    if not isinstance(value, list):
        raise RequestError(f"{name}: a JSON array, got {type(value).__name__}")
    return value


def score_request(reward: VerifierReward, body) -> dict:
    """The answer to one POST: our shape (`completions`, `answers`) or OpenRLHF's (`query`,
    `prompts`, `labels`), answered in kind. RequestError for a body that is neither."""
    if not isinstance(body, dict):
        raise RequestError(f"body: a JSON object, got {type(body).__name__}")
    if "query" in body:
        return _openrlhf(reward, body)
    completions = _field(body, "completions")
    answers = _field(body, "answers", required=reward.needs_gold)
    verdicts = reward.verdicts(completions, answers, _field(body, "prompts", False), _field(body, "metadata", False),
                               answer_name="answers")
    return {"rewards": [reward.value(v) for v in verdicts], "statuses": [v.status for v in verdicts],
            "reasons": [v.reason for v in verdicts]}


def _openrlhf(reward: VerifierReward, body: dict) -> dict:
    """OpenRLHF's remote reward model (`--remote_rm_url`): each query is prompt + response as the
    tokenizer decodes them, special tokens kept; the response is what follows the prompt. Its
    trainer reads `rewards` (and `scores`, `extra_logs`) as tensors, so there is no null: a
    completion the verifier could not judge gets 0.0 and counts in extra_logs.verifier_unjudged."""
    queries = _field(body, "query")
    prompts = _field(body, "prompts")
    labels = _field(body, "labels", required=reward.needs_gold)
    if len(prompts) != len(queries):
        raise RequestError(f"prompts: {len(prompts)} values for {len(queries)} queries")
    responses, cut = [], []
    for i, (q, p) in enumerate(zip(queries, prompts)):
        if not isinstance(q, str) or not isinstance(p, str):
            raise RequestError(f"query[{i}] and prompts[{i}]: strings, got {type(q).__name__} and {type(p).__name__}")
        start = q.find(p)
        cut.append(start >= 0)
        responses.append(_TRAILING_SPECIAL.sub("", q[start + len(p):]) if start >= 0 else "")
    verdicts = reward.verdicts(responses, labels, prompts, answer_name="labels")
    verdicts = [v if ok else Verdict("error", 0.0, None, "the query does not contain its prompt") for v, ok in zip(verdicts, cut)]
    values = [reward.value(v) for v in verdicts]
    rewards = [0.0 if x is None else x for x in values]
    return {"rewards": rewards, "scores": rewards,
            "extra_logs": {"verifier_unjudged": [float(x is None) for x in values],
                           "verifier_no_answer": [float(v.status == "no_answer") for v in verdicts]},
            "statuses": [v.status for v in verdicts], "reasons": [v.reason for v in verdicts]}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "selfimprove-reward"

    def log_message(self, format, *args) -> None:  # one line per request: the log, not the terminal
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, code: int, payload: dict, close: bool = False) -> None:
        data = json.dumps(payload, allow_nan=False).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.split("?")[0] != "/health":
            return self._send(404, {"error": f"no such path {self.path!r}: GET /health, POST /score"})
        r = self.server.reward  # type: ignore[attr-defined]
        self._send(200, {"ok": True, "verifier": r.verifier_name, "params": r.params, "kind": r.kind})

    def _body(self):
        """The request's JSON body; RequestError (before reading it, where it is too large) otherwise."""
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or length is None:
            raise RequestError("Content-Length: required (chunked bodies are not accepted)")
        if not length.isdigit():
            raise RequestError(f"Content-Length: not a byte count: {length[:40]!r}")
        if int(length) > MAX_REQUEST_BYTES:
            raise RequestError(f"body: {int(length)} bytes, over the limit of {MAX_REQUEST_BYTES} bytes; send smaller batches")
        raw = self.rfile.read(int(length))
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise RequestError(f"body: not JSON ({type(e).__name__}: {str(e)[:200]})") from None

    def do_POST(self) -> None:
        if self.path.split("?")[0] not in ("/score", "/get_reward"):
            return self._send(404, {"error": f"no such path {self.path!r}: POST /score (or /get_reward)"}, close=True)
        try:
            body = self._body()
        except RequestError as e:
            return self._send(400, {"error": str(e)}, close=True)  # the body may be unread: end the connection
        try:
            result = score_request(self.server.reward, body)  # type: ignore[attr-defined]
        except RequestError as e:
            return self._send(400, {"error": str(e)})
        except Exception as e:  # noqa: BLE001 - the pool or verifier failed: say so, keep serving
            log.exception("scoring failed")
            return self._send(500, {"error": f"scoring failed: {type(e).__name__}: {str(e)[:500]}"})
        self._send(200, result)


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_server(reward: VerifierReward, host: str = "127.0.0.1", port: int = 8100) -> ThreadingHTTPServer:
    """An HTTP server (not yet serving) scoring batches through `reward`'s one pool."""
    cls = ThreadingHTTPServer
    if ":" in host:
        cls = type("ThreadingHTTPServer6", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6})
    server = cls((host, port), _Handler)
    server.daemon_threads = True
    server.reward = reward  # type: ignore[attr-defined]
    return server


class _Stop(Exception):
    pass


def _stop(signum, frame) -> None:
    raise _Stop()


def serve(reward: VerifierReward, host: str = "127.0.0.1", port: int = 8100, announce=print) -> None:
    """Serve until Ctrl-C or SIGTERM, then close the server and the reward's pool."""
    try:
        server = make_server(reward, host, port)
    except OSError as e:  # taken, or not an address of this machine
        reward.close()
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    shown = f"[{host}]" if ":" in host else host
    announce(f"serve-reward: http://{shown}:{server.server_address[1]}  (verifier {reward.verifier_name}; "
             "POST /score or /get_reward, GET /health; Ctrl-C to stop)")
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()
        reward.close()
    announce("serve-reward: stopped")
