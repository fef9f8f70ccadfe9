"""One import namespace: the project installs selfimprove.pipeline and selfimprove.verifiers,
never the top-level names `pipeline` and `verifiers` that other PyPI packages own."""

import subprocess
import sys

from tests.conftest import ROOT


def test_only_the_selfimprove_namespace_is_installed(tmp_path):
    code = ("import importlib.util as u, selfimprove.pipeline.cli, selfimprove.verifiers\n"
            "print(u.find_spec('pipeline') is None, u.find_spec('verifiers') is None)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env={})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"], "a top-level pipeline or verifiers is importable outside the repo"


def test_no_module_imports_the_old_top_level_names():
    offenders = []
    for path in [*ROOT.glob("pipeline/**/*.py"), *ROOT.glob("verifiers/**/*.py"), *ROOT.glob("tests/*.py"),
                 *ROOT.glob("benchmarks/*.py"), *ROOT.glob("examples/**/*.py")]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith(("from pipeline", "import pipeline", "from verifiers", "import verifiers")):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {stripped}")
    assert not offenders, offenders
