"""A verifier from a separately installed package is found through its entry point and used by a run.

The example package (examples/verifier-plugin) is really built and installed by pip, into a
directory of its own that the CLI subprocesses get on their path, so the venv stays as it was.
"""

import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from selfimprove.pipeline.config import load_config
from selfimprove.pipeline.stages import run_stage
from tests.conftest import ROOT, selfimprove

EXAMPLE = ROOT / "examples" / "verifier-plugin"


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory):
    work = tmp_path_factory.mktemp("plugin")
    source = work / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))  # builds leave files behind
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                           "--target", str(work / "site"), str(source)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return work / "site"


def test_plugin_is_listed_from_its_entry_point(plugin_path):
    env = {"PYTHONPATH": f"{ROOT}:{plugin_path}"}
    out = selfimprove("verifiers", "list", env=env).stdout
    line = next(line for line in out.splitlines() if line.startswith("last_line"))
    assert "entry point selfimprove_last_line:LastLineVerifier" in line


def test_plugin_verifies_a_run(plugin_path, fake_config, tmp_path):
    config = fake_config(verify={"verifier": "last_line", "params": {"case_sensitive": True}})
    cfg = load_config(config)
    for stage in ("prepare", "sample"):  # in-process: they do not involve the verifier
        run_stage(stage, cfg, 1)
    selfimprove("verify", "--config", config, env={"PYTHONPATH": f"{ROOT}:{plugin_path}"})
    verified = tmp_path / "run" / "iter-1" / "verified"
    rows = pq.read_table(sorted(verified.glob("part-*.parquet"))).to_pylist()
    assert len(rows) == 80 and {r["verifier"] for r in rows} == {"last_line"}
    for r in rows:  # the test engine ends with "The answer is G." when right, "The answer is G1." when wrong
        right = r["text"].endswith(f"The answer is {r['gold']}.")
        assert r["status"] == ("correct" if right else "wrong")
        assert r["reason"] == f"gold {r['gold']!r} {'is' if right else 'is not'} in the last line"
    manifest = (verified / "_manifest.json").read_text()
    assert '"last_line"' in manifest and '"case_sensitive": true' in manifest  # name and params fingerprinted
    proc = selfimprove("verify", "--config", config, check=False)  # the same run without the plug-in
    assert proc.returncode == 1 and "unknown verifier 'last_line'" in proc.stderr
