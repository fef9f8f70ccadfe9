import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FAKE = "tests.fake_engine:FakeEngine"


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def fake_config(tmp_path):
    """A small arithmetic run on the deterministic test engine, in tmp_path."""

    def make(**sections) -> Path:
        data = {
            "run": {"dir": str(tmp_path / "run"), "problems_per_shard": 8},
            "task": {"name": "arithmetic", "arithmetic": {"count": 20}},
            "sample": {"engine": FAKE, "n": 4},
            "verify": {"workers": 2},
        }
        for section, values in sections.items():
            data.setdefault(section, {}).update(values)
        return write_config(tmp_path / "config.yaml", data)

    return make


def selfimprove(*args, env=None, check=True, **kwargs) -> subprocess.CompletedProcess:
    """Run the CLI as a user would, in a subprocess, from the repo root."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "selfimprove.pipeline", *map(str, args)], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"selfimprove {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
