"""Kill `selfimprove sample` after its first shard is committed, rerun: nothing lost, nothing twice.

Committed shards are kept byte for byte, every (problem_id, sample_idx) exists exactly once,
and with the deterministic test engine the final export is identical to an uninterrupted run's.
"""

import os
import signal
import subprocess
import sys
import time

from selfimprove.pipeline.config import load_config
from selfimprove.pipeline.stages import reader, stage_dir
from tests.conftest import ROOT, selfimprove


def _export_bytes(cfg):
    export = stage_dir(cfg, 1, "export")
    return {p.name: p.read_bytes() for p in sorted(export.glob("*.parquet")) if not p.name.startswith("_")}


def _kill_after_first_shard(config, env):
    samples_dir = load_config(config).iter_dir(1) / "samples"
    proc = subprocess.Popen([sys.executable, "-m", "selfimprove.pipeline", "sample", "--config", str(config)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    journal = samples_dir / "_progress.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the stage finished before it could be killed; slow the engine down"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return samples_dir


def test_sigkill_during_sample_then_rerun(fake_config, tmp_path):
    config = fake_config(run={"dir": str(tmp_path / "killed"), "problems_per_shard": 4})
    selfimprove("prepare", "--config", config)
    samples_dir = _kill_after_first_shard(config, {"FAKE_ENGINE_DELAY": "1.0"})
    committed = {p.name: p.read_bytes() for p in samples_dir.glob("part-*.parquet")}
    assert committed and not (samples_dir / "_SUCCESS").exists()
    assert len(committed) < 5, "killed mid-stage: some shards are still to do"

    selfimprove("run", "--config", config)
    cfg = load_config(config)
    for name, data in committed.items():
        assert (samples_dir / name).read_bytes() == data, f"{name} was rewritten"
    samples = reader(cfg, 1, "sample").read_all().to_pylist()
    keys = [(r["problem_id"], r["sample_idx"]) for r in samples]
    assert len(keys) == len(set(keys)) == 20 * 4

    clean = fake_config(run={"dir": str(tmp_path / "clean"), "problems_per_shard": 4})
    selfimprove("run", "--config", clean)
    assert _export_bytes(cfg) == _export_bytes(load_config(clean))
