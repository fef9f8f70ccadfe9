"""`selfimprove serve-reward`: the real server in a subprocess, scored in our shape and OpenRLHF's,
refusing malformed requests with 400 while it keeps serving, and stopping cleanly on SIGTERM."""

import http.client
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

START_S = 120  # the CLI imports the pipeline before it listens


def _children(pid: int) -> set[int]:
    """Every process below `pid` (the verifier pool's forkserver and workers)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


class Server:
    def __init__(self, tmp_path: Path, *args: str):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "selfimprove.pipeline", "serve-reward", "--port", "0", "--set",
             f"run.dir={tmp_path / 'run'}", "--set", "verify.workers=1", *args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.reader = threading.Thread(target=lambda: [self.lines.put(line) for line in self.proc.stdout], daemon=True)
        self.reader.start()
        try:
            first = self.lines.get(timeout=START_S)
        except queue.Empty:
            self.proc.kill()
            raise AssertionError(f"no URL from serve-reward: {self.proc.stderr.read()}") from None
        assert first.startswith("serve-reward: http://127.0.0.1:"), first
        self.port = int(first.split("http://127.0.0.1:")[1].split()[0])

    def request(self, method: str, path: str, body=None, headers=None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        conn.request(method, path, body=data, headers=headers or {})
        response = conn.getresponse()
        payload = json.loads(response.read())
        conn.close()
        return response.status, payload

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self.reader.join(timeout=10)
        return code, "".join(self.lines.queue)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("serve"))
    yield s
    s.stop()


def test_health_names_the_verifier(server):
    assert server.request("GET", "/health") == (200, {"ok": True, "verifier": "numeric", "params": {}, "kind": "correct"})


def test_a_batch_in_our_shape(server):
    status, got = server.request("POST", "/score", {
        "completions": ["The answer is 5.", "The answer is 6.", "<think>The answer is 5.</think>",
                        [{"role": "assistant", "content": "So the answer is 7."}]],
        "answers": ["5", "5", "5", 7]})
    assert status == 200
    assert got["rewards"] == [1.0, 0.0, 0.0, 1.0]
    assert got["statuses"] == ["correct", "wrong", "no_answer", "correct"]
    assert len(got["reasons"]) == 4 and all(isinstance(r, str) and r for r in got["reasons"])


def test_a_batch_in_openrlhfs_shape(server):
    prompt = "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
    body = {"query": [prompt + "2 + 3 = 5. The answer is 5.<|im_end|>", prompt + "The answer is 6.<|im_end|>",
                      prompt + "I cannot say.<|im_end|>", "unrelated text, The answer is 5."],
            "prompts": [prompt] * 4, "labels": ["5"] * 4}
    for path in ("/get_reward", "/score"):
        status, got = server.request("POST", path, body)
        assert status == 200
        assert got["rewards"] == [1.0, 0.0, 0.0, 0.0]
        assert got["scores"] == got["rewards"]
        # the last query does not hold its prompt: not judged, which OpenRLHF (no nulls) sees as 0.0 plus a flag
        assert got["extra_logs"] == {"verifier_unjudged": [0.0, 0.0, 0.0, 1.0], "verifier_no_answer": [0.0, 0.0, 1.0, 0.0]}


@pytest.mark.parametrize("body, field", [
    (b"{not json", "body: not JSON"),
    (b"\xff\xfe", "body: not JSON"),
    (b"[1, 2]", "body: a JSON object"),
    (b"[" * 100_000 + b"]" * 100_000, "body: not JSON"),
    (json.dumps({"completions": ["The answer is 5."], "answers": ["5", "6"]}).encode(), "answers: 2 values for 1"),
    (json.dumps({"completions": "The answer is 5.", "answers": ["5"]}).encode(), "completions: a JSON array"),
    (json.dumps({"completions": [5], "answers": ["5"]}).encode(), "completions[0]"),
    (json.dumps({"completions": ["x"]}).encode(), "answers: missing"),
    (json.dumps({"completions": ["x"], "answers": [{"a": 1}]}).encode(), "answers[0]"),
    (json.dumps({"query": ["x"], "prompts": ["x", "y"], "labels": ["1"]}).encode(), "prompts: 2 values for 1 queries"),
])
def test_a_malformed_request_gets_400_naming_the_field_and_the_server_keeps_serving(server, body, field):
    status, got = server.request("POST", "/score", body, {"Content-Type": "application/json"})
    assert status == 400 and field in got["error"], got
    assert server.request("POST", "/score", {"completions": ["The answer is 5."], "answers": ["5"]})[1]["rewards"] == [1.0]


def test_a_body_over_the_limit_is_refused_unread(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.putrequest("POST", "/score")
    conn.putheader("Content-Length", str(10**12))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 400 and "over the limit" in json.loads(response.read())["error"]
    conn.close()
    assert server.request("GET", "/health")[0] == 200
    assert server.request("GET", "/nope")[0] == 404


def test_sigterm_stops_the_server_and_its_pool(tmp_path):
    s = Server(tmp_path)
    assert s.request("POST", "/score", {"completions": ["The answer is 1."], "answers": ["1"]})[1]["rewards"] == [1.0]
    below = _children(s.proc.pid)
    assert below, "the pool's processes should be running"
    code, out = s.stop()
    assert code == 0 and "serve-reward: stopped" in out
    deadline = time.monotonic() + 30
    while {p for p in below if Path(f"/proc/{p}").exists()} and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not {p for p in below if Path(f"/proc/{p}").exists()}, "pool processes outlived the server"


def test_only_loopback_is_quiet_and_a_bad_port_is_refused(tmp_path):
    from selfimprove.pipeline.rewards import is_loopback

    assert all(map(is_loopback, ["127.0.0.1", "::1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "192.168.1.5", "example.org"]))
    proc = subprocess.run([sys.executable, "-m", "selfimprove.pipeline", "serve-reward", "--port", "70000", "--set",
                           f"run.dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=START_S)
    assert proc.returncode == 2 and "--port must be 0..65535" in proc.stderr
