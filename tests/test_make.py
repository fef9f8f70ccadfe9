"""The make targets a user schedules iterations with: only stale stages rerun, resume after a crash.

Driven by the deterministic test engine through the real Makefile (its `--force` rebuilds a
stage whose config changed), so what is checked is what `make iterate` would do.
"""

import json
import os
import signal
import subprocess
import time

import pytest

from selfimprove.pipeline.config import load_config
from selfimprove.pipeline.stages import stage_dir
from tests.conftest import ROOT

DATA_DIRS = ["problems", "samples", "verified", "rationalized", "selected", "export"]


def make(*args, check=True):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"make {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def manifests(cfg):
    return {d: json.loads((cfg.iter_dir(1) / d / "_manifest.json").read_text()) for d in DATA_DIRS}


@pytest.fixture
def run_args(fake_config, tmp_path):
    config = fake_config()
    return config, [f"CONFIG={config}", f"RUN={tmp_path / 'run'}"]


def test_changing_a_sampling_parameter_rebuilds_sample_and_after_not_before(run_args):
    """Stages are content-addressed: a stage reruns when its own config or its input's bytes changed."""
    config, args = run_args
    make("export", *args)
    before = manifests(load_config(config))
    text = config.read_text().replace("n: 4", "n: 6")
    assert text != config.read_text()
    config.write_text(text)
    make("export", *args)
    after = manifests(load_config(config))
    assert after["problems"]["created"] == before["problems"]["created"]  # untouched
    for d in DATA_DIRS[1:]:
        assert after[d]["created"] != before[d]["created"], f"{d} was not rebuilt"
    assert after["samples"]["fingerprint"] != before["samples"]["fingerprint"]


def test_unchanged_config_reruns_nothing(run_args):
    config, args = run_args
    make("export", *args)
    out = make("export", *args).stdout
    assert "selfimprove" not in out and "Nothing to be done" in out


def test_status_shows_each_stage(run_args, tmp_path):
    config, args = run_args
    make("verify", *args)
    out = make("status", *args).stdout
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert lines["prepare"].split()[1] == "done" and lines["verify"].split()[1] == "done"
    assert lines["dedup"].split()[1] == "missing"


def test_iterate_after_a_crash_mid_train_redoes_nothing_of_iteration_1(fake_config, tmp_path):
    """Kill `make iterate ITER=1` while it trains; `make iterate ITER=2` then finishes iteration 1's
    training from scratch and leaves every data stage of iteration 1 as it was."""
    config = fake_config(train={"epochs": 1, "batch_size": 32, "max_length": 256}, evaluate={"count": 8})
    run = tmp_path / "run"
    args = [f"CONFIG={config}", f"RUN={run}"]
    make("export", "ITER=1", *args)
    cfg = load_config(config)
    before = manifests(cfg)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(["make", "--no-print-directory", "iterate", "ITER=1", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    training = run / "iter-1" / "model" / ".tmp-model"
    deadline = time.monotonic() + 300
    while not training.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # loading the model, building the trainer, stepping
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert training.exists() and not (run / "iter-1" / "model" / "_SUCCESS").exists(), "the kill missed the training"

    out = make("iterate", "ITER=2", *args).stdout
    assert manifests(cfg) == before  # iteration 1's data stages untouched, not even re-checked
    ran = [(w[1], w[w.index("--iter") + 1]) for w in map(str.split, out.splitlines()) if w and w[0].endswith("/selfimprove")]
    assert [stage for stage, k in ran if k == "1"] == ["train"]
    assert ("sample", "2") in ran and ("evaluate", "0") in ran
    for done in ("iter-1/model", "iter-2/model", "iter-2/eval", "iter-0/eval"):
        assert (run / done / "_SUCCESS").exists()
    assert not training.exists()  # the crashed attempt's leftovers were cleared
