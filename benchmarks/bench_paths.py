"""Sampling paths side by side: samples/s of the local vLLM engine, a `vllm serve` server and the Ray executor.

The same 16 generated arithmetic problems, n=4, max_tokens 64, one shard, the default model,
each path through the real sample stage (`run_stage("sample")`), timed from the stage's start
to its `_SUCCESS`:

- local: `sample.engine: vllm` in this process; includes loading the model.
- server: `sample.engine: openai` against `vllm serve` of the same model on 127.0.0.1, started
  (and warmed with one request) before the clock starts, as a long-lived server would be.
- ray: `run.executor: ray` on a local Ray started before the clock; includes starting the
  engine actor and loading the model in it.

On a small CPU machine the server shares the cores with the pipeline and the model load is
a large part of the local and Ray figures; on GPUs generation dominates. The ratios are
path / local (above 1: faster than local).
"""

from __future__ import annotations

import json
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from selfimprove.pipeline.config import load_config
from selfimprove.pipeline.stages import reader, run_stage

PROBLEMS, N, MAX_TOKENS = 16, 4, 64


def _config(root: Path, name: str, **sections) -> "object":
    data = {
        "run": {"dir": str(root / name), "problems_per_shard": PROBLEMS},
        "task": {"name": "arithmetic", "arithmetic": {"count": PROBLEMS}},
        "sample": {"n": N, "max_tokens": MAX_TOKENS},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def _timed_sample(cfg) -> float:
    run_stage("prepare", cfg, 1)
    started = time.time()
    manifest = run_stage("sample", cfg, 1)
    seconds = time.time() - started
    if manifest["rows"] != PROBLEMS * N:
        reasons = reader(cfg, 1, "sample").rejects()["reason"].to_pylist()
        raise AssertionError(f"{manifest['rows']} samples, expected {PROBLEMS * N}; "
                             f"{len(reasons)} rejects, the first: {reasons[:1]}")
    return manifest["rows"] / seconds


def run() -> dict[str, float]:
    from tests.vllm_server import VLLMServer

    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-paths-") as tmp:
        root = Path(tmp)
        figures["paths_local_samples_per_s"] = _timed_sample(_config(root, "local"))

        with VLLMServer(log_path=root / "server.log") as server:
            warm = json.dumps({"model": server.model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}).encode()
            urllib.request.urlopen(urllib.request.Request(f"{server.base_url}/chat/completions", warm,
                                                          {"Content-Type": "application/json"}), timeout=600).read()
            cfg = _config(root, "server", sample={"engine": "openai", "per_request_seed": server.per_request_seed, "server": {"base_url": server.base_url, "concurrency": PROBLEMS}})
            figures["paths_server_samples_per_s"] = _timed_sample(cfg)

        import ray

        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
        try:
            figures["paths_ray_samples_per_s"] = _timed_sample(_config(root, "ray", run={"executor": "ray"}))
        finally:
            ray.shutdown()
    local = figures["paths_local_samples_per_s"]
    figures["server_vs_local_ratio"] = figures["paths_server_samples_per_s"] / local
    figures["ray_vs_local_ratio"] = figures["paths_ray_samples_per_s"] / local
    return figures


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key:32} {value:10.3f}")
