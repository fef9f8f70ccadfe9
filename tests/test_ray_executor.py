"""`run.executor: ray` on a local Ray with 2 CPUs: the same stage directories and rows as the local
executor, every one of the n samples kept, and an engine that dies is restarted with its shard retried."""

from pathlib import Path

import pytest

from selfimprove.pipeline.config import load_config
from selfimprove.pipeline.stages import reader, run_stage, stage_dir
from selfimprove.pipeline.store import SUCCESS
from tests.conftest import FAKE, ROOT, write_config
from tests.fake_engine import FakeEngine

ray = pytest.importorskip("ray", reason="the Ray executor needs the ray extra (pip install -e '.[ray]')")

pytestmark = pytest.mark.slow


class DyingEngine(FakeEngine):
    """The test engine, except that the first process to use it dies mid-shard, as a crashed GPU engine would."""

    def generate(self, requests, params, desc=""):
        marker = Path(self.cfg.run_dir) / "engine-died-once"
        if not marker.exists():
            marker.write_text("")
            raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated)")
        return super().generate(requests, params, desc)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    try:
        yield
    finally:
        ray.shutdown()


def _config(path: Path, run_dir: Path, **sample):
    return load_config(write_config(path, {
        "run": {"dir": str(run_dir), "problems_per_shard": 4},
        "task": {"name": "arithmetic", "arithmetic": {"count": 10}},
        "sample": {"engine": FAKE, "n": 4, **sample},
        "verify": {"workers": 1},
    }))


def _rows(cfg, stage):
    return sorted(reader(cfg, 1, stage).read_all().to_pylist(), key=lambda r: (r["problem_id"], r["sample_idx"]))


def test_ray_executor_writes_what_the_local_executor_writes_and_survives_an_engine_death(tmp_path, local_ray):
    local = _config(tmp_path / "local.yaml", tmp_path / "local")
    on_ray = _config(tmp_path / "ray.yaml", tmp_path / "ray", engine="tests.test_ray_executor:DyingEngine")
    on_ray.run.executor = "ray"
    for cfg in (local, on_ray):
        for stage in ("prepare", "sample", "verify", "dedup"):
            run_stage(stage, cfg, 1)
    assert (Path(on_ray.run_dir) / "engine-died-once").exists(), "the engine died once and its actor was restarted"
    for stage in ("sample", "verify", "dedup"):
        d = stage_dir(on_ray, 1, stage)
        assert (d / SUCCESS).exists() and (d / "_manifest.json").exists() and (d / "_rejects.parquet").exists()
        assert sorted(p.name for p in d.glob("part-*.parquet")) == sorted(p.name for p in stage_dir(local, 1, stage).glob("part-*.parquet"))
        assert _rows(on_ray, stage) == _rows(local, stage), f"{stage}: the executors disagree"
    samples = _rows(on_ray, "sample")
    assert len(samples) == 10 * 4 and {(r["problem_id"], r["sample_idx"]) for r in samples} == {
        (p, i) for p in {r["problem_id"] for r in samples} for i in range(4)}
    # the executors share a stage directory: the local executor finds the Ray one's stages up to date
    on_ray.run.executor = "local"
    assert run_stage("verify", on_ray, 1)["rows"] == 40


@pytest.mark.engine
def test_ray_executor_on_the_default_model_gives_the_local_verdicts(tmp_path, local_ray):
    """vLLM (CPU) inside a Ray actor: same seeds, same samples and verdicts as the local executor, all n per problem.

    On CPU there are no per-request seeds: samples follow run.seed and the batch, so this holds for
    one shard (the same batch on both executors)."""
    def config(name):
        return load_config(write_config(tmp_path / f"{name}.yaml", {
            "run": {"dir": str(tmp_path / name), "problems_per_shard": 4},
            "task": {"name": "arithmetic", "arithmetic": {"count": 4}},
            "sample": {"n": 2, "max_tokens": 32},
            "verify": {"workers": 1},
            # float32 CPU matmuls round differently with the thread count (the actor has its own),
            # and one different logit changes a sampled text; bfloat16 here gave identical texts
            "model": {"dtype": "bfloat16"},
        }))

    local, on_ray = config("local"), config("ray")
    on_ray.run.executor = "ray"
    for cfg in (local, on_ray):
        for stage in ("prepare", "sample", "verify"):
            run_stage(stage, cfg, 1)
    verdicts = [{(r["problem_id"], r["sample_idx"], r["text"], r["status"]) for r in _rows(cfg, "verify")} for cfg in (local, on_ray)]
    assert verdicts[0] == verdicts[1]
    assert len(verdicts[1]) == 4 * 2 and all(t for _, _, t, _ in verdicts[1])
