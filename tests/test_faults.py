"""Fault injection: crashes, a full disk, damaged shards, two commands at once, changed configs,
broken invariants. Whatever happens, no row is lost or duplicated and nothing is mixed.

Crashes are real SIGKILLs of `selfimprove run`'s process group, at points named in
pipeline/store.py (`SELFIMPROVE_FAILPOINT`): before a file is written, after its temporary file
is written but not renamed, after a shard is renamed but not journalled. A reference run, with
those points recorded instead, lists every point a run reaches; each test kills at a seeded
random one of them, in every data stage, then reruns to completion. Stages before the one
killed are copied from the reference run (the test engine is deterministic, so they hold the
bytes a fresh run would write) so that each crash costs one process start, not a whole run.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from selfimprove.pipeline import schema, store
from selfimprove.pipeline.cli import main
from selfimprove.pipeline.config import load_config
from selfimprove.pipeline.engines import Result
from selfimprove.pipeline.stages import OUTPUT, STAGES, reader
from tests.conftest import FAKE, ROOT, write_config
from tests.fake_engine import FakeEngine

pytestmark = pytest.mark.faults

SEED = 20261129
PROBLEMS, N = 20, 4
DATA_STAGES = STAGES[: STAGES.index("export") + 1]  # what `selfimprove run` does
STAGE_OF_DIR = {d: s for s, d in OUTPUT.items()}
BOOKKEEPING = {store.FINGERPRINT, store.MANIFEST, store.SUCCESS, store.REJECTS_FILE, "stats.json", "README.md"}


# -- helpers ----------------------------------------------------------------------------------
def make_config(base: Path, **sections) -> Path:
    """The conftest fake_config run (20 arithmetic problems, 3 shards, the test engine), in `base`."""
    data = {
        "run": {"dir": str(base / "run"), "problems_per_shard": 8},
        "task": {"name": "arithmetic", "arithmetic": {"count": PROBLEMS}},
        "model": {"path": "fake-model-for-tests"},  # not a directory: no fingerprint change when one appears
        "sample": {"engine": FAKE, "n": N},
        "verify": {"workers": 1},
        "export": {"rows_per_shard": 8},  # several export shards, so export has shards to crash in
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    base.mkdir(parents=True, exist_ok=True)
    return write_config(base / "config.yaml", data)


def run_cli(*args) -> int:
    return main([str(a) for a in args])


def spawn(config: Path, *args, env: dict | None = None) -> subprocess.Popen:
    """`selfimprove run` (or another command) in its own process group, as a shell would start it."""
    return subprocess.Popen(
        [sys.executable, "-m", "selfimprove.pipeline", *(args or ("run",)), "--config", str(config)], cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )


def live_members(pgid: int) -> list[int]:
    """Processes of the group still running (zombies waiting to be reaped do not count)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def reap(proc: subprocess.Popen) -> tuple[int, str, list[int]]:
    """Wait for a spawned command, then kill what is left of its group.
    Returns its exit status, its output, and the group's processes that outlived it."""
    survivors: list[int] = []
    try:
        out, err = proc.communicate(timeout=180)
        deadline = time.time() + 2
        while (survivors := live_members(proc.pid)) and time.time() < deadline:
            time.sleep(0.05)  # a SIGKILLed process takes a moment to become a zombie
    finally:
        if live_members(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, out + err, survivors


def iter_dir(config: Path) -> Path:
    return load_config(config).iter_dir(1)


def data_files(path: Path) -> dict[str, bytes]:
    """Every file of a stage directory that holds data (not timestamps or journals), by name."""
    files = {}
    for p in sorted(path.rglob("*")):
        if p.is_file() and (p.suffix == ".parquet" or p.name in ("stats.json", "README.md")):
            files[str(p.relative_to(path))] = p.read_bytes()
    return files


def journalled(path: Path) -> dict[str, bytes]:
    """Shards a stage directory's journal says are finished and that still match their checksum."""
    done = {}
    journal = path / store.PROGRESS
    for line in journal.read_text().splitlines() if journal.exists() else []:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        data = (path / entry["file"]).read_bytes() if (path / entry["file"]).exists() else b""
        if store.sha256(data) == entry["sha256"]:
            done[entry["file"]] = data
    return done


def assert_nothing_partial_visible(run_iter: Path) -> None:
    """Every shard under its final name is a whole Parquet file; only temporaries may be partial."""
    for p in run_iter.rglob("*.parquet"):
        if store.TMP_MARK not in p.name:
            pq.read_table(p)  # raises on a partial file


def assert_same_as_reference(run_iter: Path, reference) -> None:
    """Same data, byte for byte, in every stage; no row lost or duplicated; no temporary left."""
    for stage in DATA_STAGES:
        d = OUTPUT[stage]
        assert (run_iter / d / store.SUCCESS).exists(), f"{stage} did not finish"
        assert data_files(run_iter / d) == reference.files[d], f"{stage}: output differs from the uninterrupted run"
    keys = [(r["problem_id"], r["sample_idx"]) for shard in sorted((run_iter / "samples").glob("part-*.parquet"))
            for r in pq.read_table(shard, columns=["problem_id", "sample_idx"]).to_pylist()]
    assert len(keys) == len(set(keys)) == PROBLEMS * N
    assert not [p for p in run_iter.rglob(f"*{store.TMP_MARK}*")], "temporary files left behind"


class Reference:
    """One uninterrupted run: its files, and every failpoint it reached, in order."""

    def __init__(self, base: Path):
        self.config = make_config(base)
        self.iter = iter_dir(self.config)
        self.hits: list[tuple[str, str, Path]] = []  # (stage, point, file)

        def record(name: str, path: Path) -> None:
            folder = path.parent.parent if path.parent.name == store.REJECTS_DIR else path.parent
            self.hits.append((STAGE_OF_DIR[folder.name], name, Path(path)))

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(store, "failpoint", record)
            assert run_cli("run", "--config", self.config) == 0
        self.files = {OUTPUT[s]: data_files(self.iter / OUTPUT[s]) for s in DATA_STAGES}

    def copy_stages_before(self, stage: str, target_iter: Path) -> None:
        for earlier in DATA_STAGES[: DATA_STAGES.index(stage)]:
            shutil.copytree(self.iter / OUTPUT[earlier], target_iter / OUTPUT[earlier])

    def copy_all(self, target_iter: Path) -> None:
        shutil.copytree(self.iter, target_iter)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Reference:
    return Reference(tmp_path_factory.mktemp("reference"))


def is_shard(path: Path) -> bool:
    return path.parent.name != store.REJECTS_DIR and path.suffix == ".parquet" and not path.name.startswith("_")


# -- SIGKILL at seeded random points of every stage ---------------------------------------------
KINDS = ["before_write", "before_rename", "before_journal", "bookkeeping"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stage", DATA_STAGES)
def test_sigkill_then_rerun_loses_nothing(reference, tmp_path, capsys, stage, kind):
    """Kill the whole process group at a seeded random point of `stage`, rerun: same bytes as never killed."""
    hits = [(i, h) for i, h in enumerate(reference.hits) if h[0] == stage]
    if kind == "bookkeeping":  # fingerprint, rejects file, manifest, _SUCCESS, export's card and stats
        candidates = [(i, h) for i, h in hits if h[2].name in BOOKKEEPING]
    else:
        candidates = [(i, h) for i, h in hits if h[1] == kind and is_shard(h[2])]
    assert candidates, f"no {kind} point in {stage}: {hits}"
    index, (_, point, target) = random.Random(f"{SEED}:{stage}:{kind}").choice(candidates)
    count = sum(1 for i, h in hits if h[1] == point and i <= index)  # earlier stages are up to date: no hits

    config = make_config(tmp_path)
    run_iter = iter_dir(config)
    reference.copy_stages_before(stage, run_iter)
    proc = spawn(config, env={"SELFIMPROVE_FAILPOINT": f"{point}:{count}"})
    rc, out, survivors = reap(proc)
    where = f"{point} #{count} of {stage} ({target.name})"
    assert rc == -signal.SIGKILL, f"not killed at {where}:\n{out}"
    assert not survivors, "the whole process group died, verify workers too"

    stage_path = run_iter / OUTPUT[stage]
    assert not (stage_path / store.SUCCESS).exists(), f"killed at {where}, yet marked finished"
    assert_nothing_partial_visible(run_iter)
    finished = journalled(stage_path)

    assert run_cli("run", "--config", config) == 0, capsys.readouterr().err
    for name, data in finished.items():
        assert (stage_path / name).read_bytes() == data, f"{name}, finished before the kill at {where}, was rewritten"
    assert_same_as_reference(run_iter, reference)


def test_sigkill_at_random_times_during_a_slow_run(reference, tmp_path, capsys):
    """Kills by the clock, not at a named point: three in a row on one run, each during a resume."""
    config = make_config(tmp_path)
    run_iter = iter_dir(config)
    rng = random.Random(SEED)
    lock = run_iter.parent / store.LOCK
    for attempt in range(3):
        proc = spawn(config, env={"FAKE_ENGINE_DELAY": "1.0"})
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            if lock.exists() and lock.read_text().strip() == str(proc.pid):
                break  # it holds the run: past Python's start, at work
            time.sleep(0.02)
        time.sleep(rng.uniform(0.2, 1.2))
        os.killpg(proc.pid, signal.SIGKILL)
        rc, out, _ = reap(proc)
        assert rc == -signal.SIGKILL, f"kill {attempt} came too late, the run had ended:\n{out}"
        assert_nothing_partial_visible(run_iter)
    finished = journalled(run_iter / "samples")
    assert run_cli("run", "--config", config) == 0, capsys.readouterr().err
    for name, data in finished.items():
        assert (run_iter / "samples" / name).read_bytes() == data
    assert_same_as_reference(run_iter, reference)


# -- a full disk --------------------------------------------------------------------------------
@pytest.mark.parametrize("stage,point", [("sample", "before_rename"), ("export", "before_write")])
def test_disk_full_mid_write_leaves_no_partial_shard(reference, tmp_path, capsys, monkeypatch, stage, point):
    """ENOSPC while a shard is written: the command fails clearly, nothing partial is visible
    (not even the temporary file, which would hold the space), and the rerun completes."""
    hits = [(i, h) for i, h in enumerate(reference.hits) if h[0] == stage and h[1] == point and is_shard(h[2])]
    index, (_, _, target) = hits[-1]
    count = sum(1 for i, h in enumerate(reference.hits) if h[1] == point and i <= index)
    config = make_config(tmp_path)
    run_iter = iter_dir(config)
    monkeypatch.setattr(store, "_failpoint_hits", {})
    monkeypatch.setenv("SELFIMPROVE_FAILPOINT", f"{point}:{count}:enospc")
    assert run_cli("run", "--config", config) == 1
    err = capsys.readouterr().err
    assert os.strerror(errno.ENOSPC) in err and target.name in err and "rerun" in err, err
    stage_path = run_iter / OUTPUT[stage]
    assert not (stage_path / target.name).exists() and not (stage_path / store.SUCCESS).exists()
    assert not list(run_iter.rglob(f"*{store.TMP_MARK}*")), "the failed write's temporary file was left on the full disk"
    assert_nothing_partial_visible(run_iter)
    monkeypatch.delenv("SELFIMPROVE_FAILPOINT")
    assert run_cli("run", "--config", config) == 0
    assert_same_as_reference(run_iter, reference)


# -- damaged shards -----------------------------------------------------------------------------
def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:  # one flipped bit in the middle: the file may still parse, only the checksum tells
        mid = len(data) // 2
        path.write_bytes(data[:mid] + bytes([data[mid] ^ 0x01]) + data[mid + 1 :])


@pytest.mark.parametrize("stage", DATA_STAGES)
def test_damaged_shard_of_a_finished_stage_is_regenerated(reference, tmp_path, capsys, stage):
    """A finished stage with a damaged shard is not "up to date": the rerun regenerates the shard."""
    config = make_config(tmp_path)
    run_iter = iter_dir(config)
    reference.copy_all(run_iter)
    shards = sorted(n for n in reference.files[OUTPUT[stage]] if is_shard(Path(n)))
    victim = random.Random(f"{SEED}:{stage}").choice(shards)
    how = "truncate" if DATA_STAGES.index(stage) % 2 else "flip"
    damage(run_iter / OUTPUT[stage] / victim, how)
    assert run_cli("run", "--config", config) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"{stage}: up to date" not in out, f"a {how}d shard was taken as up to date"
    assert_same_as_reference(run_iter, reference)


def test_damaged_input_shard_is_never_read_and_its_owner_regenerates_it(reference, tmp_path, capsys):
    """The stage reading a damaged shard stops with the name of the stage to rerun, writes nothing
    from it; rerunning that stage regenerates the shard, and the reader then resumes."""
    config = make_config(tmp_path)
    run_iter = iter_dir(config)
    reference.copy_stages_before("verify", run_iter)
    damage(run_iter / "samples" / "part-00001.parquet", "flip")
    assert run_cli("verify", "--config", config) == 1
    err = capsys.readouterr().err
    assert "part-00001.parquet does not match its checksum" in err and "selfimprove sample" in err, err
    verified = run_iter / "verified"
    assert not (verified / store.SUCCESS).exists()
    assert set(journalled(verified)) == {"part-00000.parquet"}, "nothing was made from the damaged shard"

    assert run_cli("sample", "--config", config) == 0
    assert "2 shards resumed" in capsys.readouterr().out  # the damaged one is redone, the others kept
    assert data_files(run_iter / "samples") == reference.files["samples"]
    assert run_cli("run", "--config", config) == 0
    assert_same_as_reference(run_iter, reference)


def test_damaged_rejects_are_detected_too(tmp_path, capsys):
    """Rejected rows are data too: a damaged rejects file is never read, and is regenerated."""
    src = tmp_path / "problems.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in [
        {"question": "What is 2 + 2?", "answer": "4"}, {"question": "What is 5 + 5?", "answer": None},
        {"question": "What is 3 + 3?", "answer": "6"}, {"question": "FAIL-ME now", "answer": "2"},
    ]) + "\n")
    config = make_config(tmp_path, task={"name": "columns", "path": str(src)})
    assert run_cli("run", "--config", config) == 0
    problems = iter_dir(config) / "problems"
    before = data_files(problems)
    assert pq.read_table(problems / store.REJECTS_FILE).num_rows == 1
    damage(problems / store.REJECTS_FILE, "flip")
    with pytest.raises(store.StoreError, match="checksum"):
        reader(load_config(config), 1, "prepare").rejects()
    damage(problems / store.REJECTS_DIR / "part-00000.parquet", "truncate")
    capsys.readouterr()
    assert run_cli("run", "--config", config) == 0
    assert "prepare: up to date" not in capsys.readouterr().out
    assert data_files(problems) == before
    assert len(reader(load_config(config), 1, "sample").rejects()) == 1  # FAIL-ME, refused by the engine


# -- two commands on one run directory ----------------------------------------------------------
def test_second_command_on_a_busy_run_refuses_and_the_first_is_unharmed(reference, tmp_path, capsys):
    config = make_config(tmp_path)
    run_iter = iter_dir(config)
    first = spawn(config, env={"FAKE_ENGINE_DELAY": "1.0"})
    journal = run_iter / "samples" / store.PROGRESS
    deadline = time.time() + 120
    while not (journal.exists() and journal.read_text()) and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert first.poll() is None, "the first run ended before the second started; slow the engine down"
    problems = data_files(run_iter / "problems")

    # the same run again, and a forced rebuild of a stage the first one has finished (and reads)
    assert run_cli("run", "--config", config) == 1
    err = capsys.readouterr().err
    assert f"in use by another selfimprove command (pid {first.pid})" in err and "wait for it" in err, err
    assert run_cli("prepare", "--config", config, "--force", "--set", "task.arithmetic.count=30") == 1
    assert "in use by another selfimprove command" in capsys.readouterr().err
    assert data_files(run_iter / "problems") == problems

    rc, out, _ = reap(first)
    assert rc == 0, out
    assert_same_as_reference(run_iter, reference)


# -- changed config or input --------------------------------------------------------------------
def snapshot(run_iter: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_iter)): p.read_bytes() for p in sorted(run_iter.rglob("*")) if p.is_file()}


def test_changed_config_is_refused_then_rebuilt_with_force_never_mixed(reference, tmp_path, capsys):
    config = make_config(tmp_path)
    run_iter = iter_dir(config)
    reference.copy_all(run_iter)
    before = snapshot(run_iter)
    assert run_cli("run", "--config", config, "--set", "sample.n=2") == 1
    err = capsys.readouterr().err
    assert "changed: sample" in err and "--force" in err, err
    assert snapshot(run_iter) == before, "a refused command changed nothing"

    assert run_cli("run", "--config", config, "--set", "sample.n=2", "--force") == 0
    clean = make_config(tmp_path / "clean", sample={"engine": FAKE, "n": 2})
    assert run_cli("run", "--config", clean) == 0
    for stage in DATA_STAGES:
        assert data_files(run_iter / OUTPUT[stage]) == data_files(iter_dir(clean) / OUTPUT[stage]), stage


def test_config_change_under_a_half_finished_stage_never_mixes(reference, tmp_path, capsys):
    """Killed mid-sample with n=4, rerun with n=2: refused; forced: no n=4 shard survives."""
    config = make_config(tmp_path)
    run_iter = iter_dir(config)
    reference.copy_stages_before("sample", run_iter)
    # sample's 3rd write: after its fingerprint and its first shard, before its second
    rc, out, _ = reap(spawn(config, env={"SELFIMPROVE_FAILPOINT": "before_write:3"}))
    assert rc == -signal.SIGKILL, out
    assert set(journalled(run_iter / "samples")) == {"part-00000.parquet"}
    assert run_cli("sample", "--config", config, "--set", "sample.n=2") == 1
    assert "changed: sample" in capsys.readouterr().err
    assert run_cli("sample", "--config", config, "--set", "sample.n=2", "--force") == 0
    samples = reader(load_config(config, ["sample.n=2"]), 1, "sample").read_all().to_pylist()
    per_problem: dict[str, list[int]] = {}
    for r in samples:
        per_problem.setdefault(r["problem_id"], []).append(r["sample_idx"])
    assert len(per_problem) == PROBLEMS and all(sorted(v) == [0, 1] for v in per_problem.values())


def test_changed_input_file_is_refused_then_rebuilt_never_mixed(tmp_path, capsys):
    rows = [{"question": f"What is {a} + {a}?", "answer": str(2 * a)} for a in range(1, 13)]
    src = tmp_path / "problems.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = make_config(tmp_path, task={"name": "columns", "path": str(src)})
    assert run_cli("run", "--config", config) == 0
    run_iter = iter_dir(config)
    before = snapshot(run_iter)

    rows[3]["answer"] = "999"  # the input changes under the existing run
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    capsys.readouterr()
    assert run_cli("run", "--config", config) == 1
    err = capsys.readouterr().err
    assert "changed: source" in err and "--force" in err, err
    assert snapshot(run_iter) == before

    # rebuilding only prepare leaves the next stage to refuse its new input, not mix it in
    assert run_cli("prepare", "--config", config, "--force") == 0
    assert run_cli("sample", "--config", config) == 1
    assert "changed: input" in capsys.readouterr().err
    assert run_cli("run", "--config", config, "--force") == 0
    assert "999" in reader(load_config(config), 1, "prepare").read_all()["answer"].to_pylist()

    clean = make_config(tmp_path / "clean", task={"name": "columns", "path": str(src)})
    assert run_cli("run", "--config", clean) == 0
    for stage in DATA_STAGES:
        assert data_files(run_iter / OUTPUT[stage]) == data_files(iter_dir(clean) / OUTPUT[stage]), stage


# -- row-count invariants at every stage boundary -----------------------------------------------
class ShortEngine(FakeEngine):
    """Test engine that comes back with one result too few for every shard."""

    def generate(self, requests, params, desc=""):
        return super().generate(requests, params, desc)[:-1]


class ShardDroppingEngine(FakeEngine):
    """Test engine that never returns the last shard it is given."""

    def generate_shards(self, shards, params, journal_dir=None):
        shards = list(shards)
        for name, requests in shards[:-1]:
            yield name, self.generate(requests, params)


class TooFewSamplesEngine(FakeEngine):
    """Test engine that reports a problem with fewer than n samples: a failure it owns up to."""

    def generate(self, requests, params, desc=""):
        results = super().generate(requests, params, desc)
        results[0] = Result(prompt_tokens=results[0].prompt_tokens, completions=results[0].completions[:1])
        return results


def _drop_last_row(real, which):
    def table(rows, schema_):
        return real(rows[:-1] if schema_ is which and rows else rows, schema_)
    return table


def _drop_one_verdict(real_verify):
    def verify(self, jobs, progress=None):
        results = real_verify(self, jobs, progress)
        return [results[0][:-1], *results[1:]]
    return verify


def _drop_one_kept_row(real_select_rows):
    def select_rows(*args, **kwargs):
        selection = real_select_rows(*args, **kwargs)
        selection.kept = selection.kept.slice(0, max(0, selection.kept.num_rows - 1))
        return selection
    return select_rows


@pytest.mark.parametrize("stage,fault,message", [
    pytest.param("prepare", "lossy_writer", r"prepare: 20 source rows but 17 problems \+ 0 rejects written",
                 id="prepare-lossy_writer"),
    pytest.param("sample", "short_engine", r"engine returned 7 results for 8 requests", id="sample-short_engine"),
    pytest.param("sample", "shard_dropping_engine", r"sample: the engine returned nothing for shards \['part-00002.parquet'\]",
                 id="sample-shard_dropping_engine"),
    pytest.param("verify", "lost_verdict", r"verifier gave 3 verdicts for 4 samples", id="verify-lost_verdict"),
    pytest.param("dedup", "lost_kept_row", r"dedup part-00000.parquet: \d+ kept != 32 input rows - \d+ removed \+ 0 repeated",
                 id="dedup-lost_kept_row"),
    pytest.param("export", "lossy_writer", r"export: \d+ rows exported.* \d+ selected", id="export-lossy_writer"),
])
def test_broken_row_count_invariant_stops_the_stage(reference, tmp_path, capsys, monkeypatch, stage, fault, message):
    """A bug that loses rows stops its stage with the invariant it broke; nothing is marked _SUCCESS."""
    from selfimprove.pipeline.stages import dedup
    from selfimprove.verifiers import VerifyPool

    sections = {}
    if fault == "lossy_writer":
        which = schema.PROBLEMS if stage == "prepare" else schema.EXPORT
        monkeypatch.setattr(schema, "table", _drop_last_row(schema.table, which))
    elif fault == "short_engine":
        sections["sample"] = {"engine": "tests.test_faults:ShortEngine"}
    elif fault == "shard_dropping_engine":
        sections["sample"] = {"engine": "tests.test_faults:ShardDroppingEngine"}
    elif fault == "lost_verdict":
        monkeypatch.setattr(VerifyPool, "verify", _drop_one_verdict(VerifyPool.verify))
    elif fault == "lost_kept_row":
        monkeypatch.setattr(dedup, "select_rows", _drop_one_kept_row(dedup.select_rows))
    config = make_config(tmp_path, **sections)
    run_iter = iter_dir(config)
    reference.copy_stages_before(stage, run_iter)
    assert run_cli(stage, "--config", config) == 1
    err = capsys.readouterr().err
    assert "selfimprove: error:" in err and re.search(message, err), err
    assert not (run_iter / OUTPUT[stage] / store.SUCCESS).exists()
    assert not (run_iter / OUTPUT[stage] / store.MANIFEST).exists()


def test_reported_engine_failures_are_subtracted_not_lost(reference, tmp_path):
    """samples = (problems - problems the engine failed) x n; each failure is a reject with its reason."""
    config = make_config(tmp_path, sample={"engine": "tests.test_faults:TooFewSamplesEngine"})
    run_iter = iter_dir(config)
    reference.copy_stages_before("sample", run_iter)
    assert run_cli("sample", "--config", config) == 0
    samples = reader(load_config(config), 1, "sample")
    rejects = samples.rejects().to_pylist()
    assert len(rejects) == 3 and all(r["reason"] == f"engine returned 1 of {N} samples" for r in rejects)
    assert samples.rows == (PROBLEMS - len(rejects)) * N
    assert not {r["problem_id"] for r in rejects} & set(samples.read_all()["problem_id"].to_pylist())
