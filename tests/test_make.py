"""The make targets a user schedules iterations with: only stale stages rerun, resume after a crash.

Driven by the deterministic test engine through the real Makefile (its `--force` rebuilds a
stage whose config changed), so what is checked is what `make iterate` would do.
"""

import json
import os
import subprocess

import pytest

from pipeline.config import load_config
from pipeline.stages import stage_dir
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
