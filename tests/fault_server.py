"""A scripted OpenAI-compatible chat completions server on 127.0.0.1, for tests of the openai engine.

It answers `/v1/models` and `/v1/chat/completions` like vLLM's server does, deterministically:
choice i of a request is a function of (last user message, seed, i). Faults are scripted in
the request itself, so they hit the same request however the client's threads interleave: a
user message containing `[fault:429*2,drop]` gets 429 on its first two attempts, a dropped
connection on the third, and an answer from the fourth on. Faults: 429 (with Retry-After),
500, 503, 400 (a client error, never retried), hang (answers only after `hang_s`), drop
(closes the connection without a response), badjson (a 200 with a truncated body),
nochoices (a 200 without choices).

Server-wide modes: `n_mode` "ok" | "reject" (400 on n > 1, like llama.cpp) | "ignore" (one
choice whatever n), `logprobs` on/off, `delay_s` per request, `api_key` (401 without it),
`retry_after` (the Retry-After of a scripted 429 or 5xx). Every chat request is logged in `.log`
as (message, n, seed, outcome) for the tests to count, and every request's method, path (a
proxied one: the absolute URL) and headers in `.http`.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULT = re.compile(r"\[fault:([^\]]+)\]")
MODEL = "fault-model"


def parse_faults(text: str) -> list[str]:
    """`[fault:429*2,drop]` -> ["429", "429", "drop"]."""
    m = FAULT.search(text)
    if not m:
        return []
    out = []
    for item in m.group(1).split(","):
        kind, _, count = item.strip().partition("*")
        out.extend([kind] * int(count or 1))
    return out


def answer(text: str, seed, index: int) -> str:
    h = hashlib.sha256(f"{text}|{seed}|{index}".encode()).hexdigest()[:8]
    return f"Sample {index} ({h}). The answer is {int(h, 16) % 10}."


class FaultServer:
    def __init__(self, n_mode: str = "ok", logprobs: bool = True, delay_s: float = 0.0, hang_s: float = 5.0,
                 api_key: str | None = None, models: list[str] | None = None, retry_after: str = "0"):
        self.n_mode, self.logprobs, self.delay_s, self.hang_s, self.api_key = n_mode, logprobs, delay_s, hang_s, api_key
        self.retry_after = retry_after
        self.models = models or [MODEL]
        self.log: list[tuple[str, int, object, str]] = []
        self.bodies: list[dict] = []  # every request body as received
        self.http: list[tuple[str, str, dict[str, str]]] = []  # (method, path, headers) of every request
        self.attempts: dict[str, int] = {}
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like real servers

            def log_message(self, *args):
                pass

            def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _authorised(self) -> bool:
                if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    self._send(401, b'{"error": "bad key"}')
                    return False
                return True

            def do_GET(self):
                server.http.append(("GET", self.path, {k.lower(): v for k, v in self.headers.items()}))
                if not self._authorised():
                    return
                if self.path == "/v1/models":
                    self._send(200, json.dumps({"data": [{"id": m} for m in server.models]}).encode())
                else:
                    self._send(404, b'{"error": "not found"}')

            def do_POST(self):
                server.http.append(("POST", self.path, {k.lower(): v for k, v in self.headers.items()}))
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                if not self._authorised():
                    return
                text = body["messages"][-1]["content"]
                n, seed = int(body.get("n", 1)), body.get("seed")
                with server.lock:
                    attempt = server.attempts.get(text, 0)
                    server.attempts[text] = attempt + 1
                faults = parse_faults(text)
                fault = faults[attempt] if attempt < len(faults) else None
                server.log.append((text, n, seed, fault or "ok"))
                server.bodies.append(body)
                if server.delay_s:
                    time.sleep(server.delay_s)
                if fault in ("429", "500", "503", "400"):
                    self._send(int(fault), json.dumps({"error": f"scripted {fault}"}).encode(), {"Retry-After": server.retry_after})
                elif fault == "hang":
                    time.sleep(server.hang_s)
                    self.close_connection = True
                elif fault == "drop":
                    self.close_connection = True  # no response at all: the client sees the connection drop
                elif fault == "badjson":
                    self._send(200, b'{"id": "x", "choices": [{"index": 0, "message": {"content": "trunc')
                elif fault == "nochoices":
                    self._send(200, json.dumps({"id": "x", "object": "chat.completion", "choices": []}).encode())
                elif server.n_mode == "reject" and n > 1:
                    self._send(400, b'{"error": "Only one completion choice is allowed"}')
                else:
                    self._send(200, json.dumps(server.completion(body, text, n, seed)).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def completion(self, body: dict, text: str, n: int, seed) -> dict:
        count = 1 if self.n_mode == "ignore" else n
        choices, total = [], 0
        for i in range(count):
            content = answer(text, seed, i)
            words = content.split()
            total += len(words)
            choice = {"index": i, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            if "THINK-APART" in text:  # a server with a reasoning parser: the thinking in a field of its own
                choice["message"]["reasoning_content"] = f"thinking {i}: The answer is 99."
            if self.logprobs and body.get("logprobs"):
                choice["logprobs"] = {"content": [{"token": w, "logprob": -0.5} for w in words]}
            choices.append(choice)
        return {"id": "cmpl", "object": "chat.completion", "model": body["model"], "choices": choices,
                "usage": {"prompt_tokens": len(text.split()), "completion_tokens": total}}

    def requests_for(self, marker: str) -> list[tuple[str, int, object, str]]:
        return [entry for entry in self.log if marker in entry[0]]

    def __enter__(self) -> "FaultServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


if __name__ == "__main__":  # python -m tests.fault_server: serve until Ctrl-C, for trying a config by hand
    with FaultServer() as s:
        print(f"serving {MODEL!r} at {s.base_url}", flush=True)
        s.thread.join()
