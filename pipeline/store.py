"""Sharded Parquet I/O: atomic shard commit, manifest, resume.

A stage directory holds `part-NNNNN.parquet` shards, `_progress.jsonl` (one line per committed
shard: name, rows, sha256), `_fingerprint.json` (what the output depends on, written before
any shard), `_rejects.parquet`, `_manifest.json` and `_SUCCESS`, written last.

A shard is written under a temporary name, fsynced and renamed into place, then journalled,
so a crash leaves whole shards or nothing. A rerun keeps every journalled shard whose bytes
still match their checksum and redoes the rest. A rerun with a different fingerprint refuses
unless forced, so outputs of two configs are never mixed. Readers verify checksums, so a
corrupted shard is never read as data. A whole command holds its run directory's lock
(`run_lock`), so a second command on the same run refuses instead of changing its inputs.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import io
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from selfimprove.pipeline import __version__
from selfimprove.pipeline.config import digest
from selfimprove.pipeline.schema import REJECTS

SUCCESS = "_SUCCESS"
MANIFEST = "_manifest.json"
FINGERPRINT = "_fingerprint.json"
PROGRESS = "_progress.jsonl"
REJECTS_FILE = "_rejects.parquet"
REJECTS_DIR = "_rejects"
LOCK = ".lock"
TMP_MARK = ".tmp-"


class StoreError(RuntimeError):
    """A problem with a stage directory, phrased for the user."""


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


_failpoint_hits: dict[str, int] = {}


def failpoint(name: str, path: Path) -> None:
    """Test seam for tests/test_faults.py; does nothing unless SELFIMPROVE_FAILPOINT is set.

    SELFIMPROVE_FAILPOINT="<name>:<count>[:enospc]": the count-th time this process reaches the
    named point it dies by SIGKILL, with its process group if it leads one (a crash at exactly
    that moment), or, with `enospc`, raises OSError(ENOSPC) (a full disk). Points: before_write
    (nothing of the file written yet), before_rename (temporary file written, not renamed),
    before_journal (shard in place, not journalled). `path` is the file being written, for
    tests that record the points reached. Unset, it costs one environment lookup per file.
    """
    spec = os.environ.get("SELFIMPROVE_FAILPOINT")
    if not spec or not spec.startswith(name + ":"):
        return
    _, count, *action = spec.split(":")
    _failpoint_hits[name] = _failpoint_hits.get(name, 0) + 1
    if _failpoint_hits[name] != int(count):
        return
    if action == ["enospc"]:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    os.killpg(0, signal.SIGKILL) if os.getpgrp() == os.getpid() else os.kill(os.getpid(), signal.SIGKILL)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    failpoint("before_write", path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            failpoint("before_rename", path)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not keep half a file on it
        raise
    _fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: dict) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def table_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _matches(path: Path, expected_sha256: str | None) -> bool:
    """Whether the file has the recorded checksum (None: nothing recorded, nothing to check)."""
    if expected_sha256 is None:
        return True
    return path.exists() and sha256(path.read_bytes()) == expected_sha256


def _changed(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted fields that differ (`sample.n`), compared as JSON (a tuple equals its list)."""
    old, new = json.loads(json.dumps(old, default=str)), json.loads(json.dumps(new, default=str))
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            out += _changed(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".") or "(all)"]


def read_json(path: Path, what: str = "") -> Any:
    """A JSON file of the store, or a StoreError naming it and what to do."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise StoreError(f"{path} is missing{what}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise StoreError(f"{path} is not valid JSON (truncated or edited: {e}){what}") from None


def audit(path: Path) -> list[str]:
    """What in a finished stage directory differs from what its manifest and journal promise,
    without reading any shard: manifest totals, shards journalled but left out of the manifest,
    Parquet files the manifest does not list. Empty when all is as written."""
    path = Path(path)
    try:
        manifest = read_json(path / MANIFEST)
    except StoreError as e:
        return [str(e)]
    shards = manifest.get("shards", [])
    listed = {s["file"] for s in shards}
    problems = []
    if manifest.get("rows") != sum(s["rows"] for s in shards):
        problems.append(f"{path / MANIFEST}: rows {manifest.get('rows')} != {sum(s['rows'] for s in shards)}, "
                        "the sum over its shards")
    if manifest.get("output_hash") != digest([s["sha256"] for s in shards]):
        problems.append(f"{path / MANIFEST}: output_hash does not match its shards' checksums (edited?)")
    journal = path / PROGRESS
    for line in journal.read_text().splitlines() if journal.exists() else []:
        try:
            name = json.loads(line)["file"]
        except (ValueError, KeyError, TypeError):
            continue
        if name not in listed and (path / name).exists():
            problems.append(f"{path / name} was finished ({PROGRESS}) but is not in {MANIFEST}")
    for f in sorted(path.rglob("*.parquet")):
        rel = f.relative_to(path).as_posix()
        if rel not in listed and rel != REJECTS_FILE and not rel.startswith((f"{REJECTS_DIR}/", ".")) \
                and TMP_MARK not in rel:
            problems.append(f"{f} is not in {MANIFEST} (a stray file: readers would take it as data); remove it")
    return sorted(set(problems))


class StageWriter:
    """Writes one stage directory; holds its lock from construction until close()."""

    def __init__(self, path: Path, stage: str, fingerprint: dict, config_hash: str, force: bool = False):
        self.path = Path(path)
        self.stage = stage
        self.fingerprint = fingerprint
        self.fingerprint_hash = digest(fingerprint)
        self.config_hash = config_hash
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.path / LOCK, "a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise StoreError(
                f"{self.path} is being written by another process (lock held); "
                "wait for it to finish or stop it first"
            ) from None
        self.up_to_date = False
        self.done: dict[str, dict] = {}
        self.dropped: list[str] = []
        self._open(force)

    # -- opening and resume -------------------------------------------------------------
    def _open(self, force: bool) -> None:
        fp_file = self.path / FINGERPRINT
        if fp_file.exists():
            try:
                old = read_json(fp_file)
            except StoreError:  # unreadable: treated as another config (refused below if anything was written)
                old = {"parts": {"(unreadable fingerprint file)": True}}
            if old.get("hash") != self.fingerprint_hash:
                if not force and self._journalled():
                    changed = _changed(old.get("parts", {}), self.fingerprint)
                    raise StoreError(
                        f"{self.path} was built from a different input or config "
                        f"(changed: {', '.join(changed[:8]) or 'unknown'}); rerun with --force to rebuild it, "
                        "or use another run.dir"
                    )
                self._wipe()
            elif (self.path / SUCCESS).exists() and self._complete_and_intact():
                self.up_to_date = True
                return
        (self.path / SUCCESS).unlink(missing_ok=True)
        for stale in [*self.path.glob(f".*{TMP_MARK}*"), *self.path.glob(f"{REJECTS_DIR}/.*{TMP_MARK}*")]:
            if stale.is_file():  # half-written by a killed writer (atomic_write_bytes); we hold the lock
                stale.unlink()
        atomic_write_json(fp_file, {"hash": self.fingerprint_hash, "parts": self.fingerprint})
        self._load_progress()

    def _journalled(self) -> bool:
        """Whether any shard was finished under the old fingerprint: with none (a stage that
        failed before its first shard, e.g. on a missing input), nothing could be mixed."""
        progress = self.path / PROGRESS
        return (progress.exists() and bool(progress.read_text().strip())) or (self.path / MANIFEST).exists() \
            or (self.path / SUCCESS).exists()

    def _wipe(self) -> None:
        for child in self.path.iterdir():
            if child.name == LOCK:
                continue
            shutil.rmtree(child) if child.is_dir() else child.unlink()

    def _complete_and_intact(self) -> bool:
        try:
            manifest = json.loads((self.path / MANIFEST).read_text())
        except (OSError, ValueError):
            return False
        if audit(self.path):  # e.g. a shard left out of the manifest: finish it again from the journal
            return False
        if not _matches(self.path / REJECTS_FILE, manifest.get("rejects_sha256")):
            return False
        return all(self._intact(shard) for shard in manifest.get("shards", []))

    def _intact(self, entry: dict) -> bool:
        """The shard and its rejects (if it had any) still have the bytes that were journalled."""
        if "rejects_sha256" in entry and not _matches(self.path / REJECTS_DIR / entry["file"], entry["rejects_sha256"]):
            return False
        return _matches(self.path / entry["file"], entry["sha256"])

    def _load_progress(self) -> None:
        journal = self.path / PROGRESS
        if not journal.exists():
            return
        for line in journal.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a torn last line from a crash: that shard is simply redone
            if self._intact(entry):
                self.done[entry["file"]] = entry
            else:
                self.dropped.append(entry["file"])
                self.done.pop(entry["file"], None)

    # -- writing --------------------------------------------------------------------------
    def is_done(self, name: str) -> bool:
        return name in self.done

    def write_shard(self, name: str, table: pa.Table, rejects: pa.Table | None = None, **extra) -> dict:
        """Commit one shard atomically (its rejects first), then journal it."""
        checksums = {}
        if rejects is not None and rejects.num_rows:
            (self.path / REJECTS_DIR).mkdir(exist_ok=True)
            rejects_data = table_bytes(rejects.cast(REJECTS))
            atomic_write_bytes(self.path / REJECTS_DIR / name, rejects_data)
            checksums.update(rejects=rejects.num_rows, rejects_sha256=sha256(rejects_data))
        else:
            (self.path / REJECTS_DIR / name).unlink(missing_ok=True)
        data = table_bytes(table)
        atomic_write_bytes(self.path / name, data)
        failpoint("before_journal", self.path / name)
        entry = {"file": name, "rows": table.num_rows, "sha256": sha256(data), **checksums, **extra}
        with open(self.path / PROGRESS, "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done[name] = entry
        return entry

    def finish(self, expected: list[str], stats: dict | None = None) -> dict:
        """Write _rejects.parquet, _manifest.json, then _SUCCESS. `expected`: every shard name."""
        missing = [n for n in expected if n not in self.done]
        if missing:
            raise StoreError(f"{self.path}: shards missing at finish: {missing[:5]}")
        shards = [self.done[n] for n in expected]
        rejects = [pq.read_table(self.path / REJECTS_DIR / s["file"]) for s in shards if "rejects_sha256" in s]
        rejects_table = pa.concat_tables(rejects) if rejects else REJECTS.empty_table()
        rejects_data = table_bytes(rejects_table)
        atomic_write_bytes(self.path / REJECTS_FILE, rejects_data)
        manifest = {
            "stage": self.stage,
            "fingerprint": self.fingerprint_hash,
            "fingerprint_parts": self.fingerprint,
            "config_hash": self.config_hash,
            "code_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "rows": sum(s["rows"] for s in shards),
            "rejects": rejects_table.num_rows,
            "rejects_sha256": sha256(rejects_data),
            "shards": shards,
            "output_hash": digest([s["sha256"] for s in shards]),
            "stats": stats or {},
        }
        atomic_write_json(self.path / MANIFEST, manifest)
        atomic_write_bytes(self.path / SUCCESS, b"")
        return manifest

    def touch_success(self) -> None:
        """Mark an up-to-date stage fresh again, so make sees it as newer than its config."""
        os.utime(self.path / SUCCESS)

    def close(self) -> None:
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def __enter__(self) -> "StageWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StageReader:
    """Reads a finished stage directory, verifying every shard's checksum."""

    def __init__(self, path: Path, stage: str | None = None):
        self.path = Path(path)
        if not (self.path / SUCCESS).exists():
            what = f"the {stage} stage" if stage else "the previous stage"
            raise StoreError(f"{self.path} is not finished (no {SUCCESS}); run {what} first")
        problems = audit(self.path)  # every stage checks its input before reading it
        if problems:
            name = stage or "<stage>"
            raise StoreError(f"{self.path} is not what its manifest promises: {'; '.join(problems[:3])}"
                             + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
                             + f". Run `selfimprove {name}` for that iteration again to repair it "
                               "(finished shards are kept), or `selfimprove status --check`")
        self.manifest = read_json(self.path / MANIFEST)

    @property
    def shards(self) -> list[dict]:
        return self.manifest["shards"]

    @property
    def rows(self) -> int:
        return self.manifest["rows"]

    @property
    def output_hash(self) -> str:
        return self.manifest["output_hash"]

    def read_shard(self, name: str, columns: list[str] | None = None) -> pa.Table:
        entry = next((s for s in self.shards if s["file"] == name), None)
        if entry is None:
            raise StoreError(f"{self.path}: no shard {name} in the manifest")
        return pq.read_table(pa.BufferReader(self._verified_bytes(name, entry["sha256"])), columns=columns)

    def _verified_bytes(self, name: str, expected_sha256: str | None) -> bytes:
        try:
            data = (self.path / name).read_bytes()
        except FileNotFoundError:
            data = None
        if data is None or (expected_sha256 is not None and sha256(data) != expected_sha256):
            what = "is missing" if data is None else "does not match its checksum (corrupted or changed on disk)"
            raise StoreError(
                f"{self.path / name} {what}; rerun `selfimprove {self.manifest.get('stage', '<stage>')}` "
                "(or `selfimprove run`) to regenerate it: only damaged shards are redone"
            )
        return data

    def iter_shards(self, columns: list[str] | None = None) -> Iterator[tuple[str, pa.Table]]:
        for s in self.shards:
            yield s["file"], self.read_shard(s["file"], columns)

    def read_all(self, columns: list[str] | None = None) -> pa.Table:
        """Every shard as one table: for small stages and tests; big ones iterate shards. Shards
        written before a nullable column existed read with it null; a stage with no shards reads
        as a table of no rows (and no columns: no shard says which it would have had)."""
        tables = [t for _, t in self.iter_shards(columns)]
        return pa.concat_tables(tables, promote_options="default") if tables else pa.table({})

    def rejects(self) -> pa.Table:
        return pq.read_table(pa.BufferReader(self._verified_bytes(REJECTS_FILE, self.manifest.get("rejects_sha256"))))


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold a run directory for a whole command: a second command on the same run refuses,
    instead of rebuilding (say, with --force) a stage the first one is still reading."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    f = open(run_dir / LOCK, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip()
        f.close()
        raise StoreError(
            f"{run_dir} is in use by another selfimprove command{f' (pid {holder})' if holder else ''}; "
            "wait for it to finish or stop it, then rerun (finished work is kept)"
        ) from None
    try:
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()
