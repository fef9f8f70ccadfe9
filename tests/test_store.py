"""Stage directories: atomic shards, resume, fingerprints, checksums, the lock."""

import json

import pyarrow as pa
import pytest

from selfimprove.pipeline.store import StageReader, StageWriter, StoreError, part_name


def _table(n, start=0):
    return pa.table({"x": list(range(start, start + n))})


def test_finish_writes_manifest_then_success(tmp_path):
    with StageWriter(tmp_path / "s", "demo", {"a": 1}, "cfg") as w:
        w.write_shard(part_name(0), _table(3))
        w.write_shard(part_name(1), _table(2, 3))
        m = w.finish([part_name(0), part_name(1)], stats={"k": 1})
    assert (tmp_path / "s" / "_SUCCESS").exists()
    assert m["rows"] == 5 and m["config_hash"] == "cfg" and len(m["shards"]) == 2
    r = StageReader(tmp_path / "s")
    assert r.read_all()["x"].to_pylist() == [0, 1, 2, 3, 4]
    assert r.rejects().num_rows == 0
    assert not list((tmp_path / "s").glob(".*.tmp-*")), "no temporary files are left behind"


def test_unfinished_stage_cannot_be_read(tmp_path):
    with StageWriter(tmp_path / "s", "demo", {"a": 1}, "cfg") as w:
        w.write_shard(part_name(0), _table(3))
    with pytest.raises(StoreError, match="not finished"):
        StageReader(tmp_path / "s", "demo")


def test_resume_keeps_committed_shards_byte_for_byte(tmp_path):
    path = tmp_path / "s"
    with StageWriter(path, "demo", {"a": 1}, "cfg") as w:
        w.write_shard(part_name(0), _table(3))
    before = (path / part_name(0)).read_bytes()
    with StageWriter(path, "demo", {"a": 1}, "cfg") as w:
        assert w.is_done(part_name(0)) and not w.is_done(part_name(1))
        w.write_shard(part_name(1), _table(1))
        w.finish([part_name(0), part_name(1)])
    assert (path / part_name(0)).read_bytes() == before


def test_corrupted_committed_shard_is_redone_not_kept(tmp_path):
    path = tmp_path / "s"
    with StageWriter(path, "demo", {"a": 1}, "cfg") as w:
        w.write_shard(part_name(0), _table(3))
    (path / part_name(0)).write_bytes(b"garbage")
    with StageWriter(path, "demo", {"a": 1}, "cfg") as w:
        assert not w.is_done(part_name(0))
        assert w.dropped == [part_name(0)]


def test_corrupted_shard_is_never_read_as_data(tmp_path):
    path = tmp_path / "s"
    with StageWriter(path, "demo", {"a": 1}, "cfg") as w:
        w.write_shard(part_name(0), _table(3))
        w.finish([part_name(0)])
    data = bytearray((path / part_name(0)).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / part_name(0)).write_bytes(bytes(data))
    with pytest.raises(StoreError, match="checksum"):
        StageReader(path).read_shard(part_name(0))


def test_different_fingerprint_refuses_unless_forced(tmp_path):
    path = tmp_path / "s"
    with StageWriter(path, "demo", {"sample": {"n": 4}}, "cfg") as w:
        w.write_shard(part_name(0), _table(3))
        w.finish([part_name(0)])
    with pytest.raises(StoreError, match=r"changed: sample.*--force"):
        StageWriter(path, "demo", {"sample": {"n": 8}}, "cfg")
    with StageWriter(path, "demo", {"sample": {"n": 8}}, "cfg", force=True) as w:
        assert not w.is_done(part_name(0)) and not (path / "_SUCCESS").exists()


def test_same_fingerprint_after_success_is_up_to_date(tmp_path):
    path = tmp_path / "s"
    with StageWriter(path, "demo", {"a": 1}, "cfg") as w:
        w.write_shard(part_name(0), _table(3))
        w.finish([part_name(0)])
    with StageWriter(path, "demo", {"a": 1}, "cfg") as w:
        assert w.up_to_date


def test_second_writer_on_same_directory_refuses(tmp_path):
    with StageWriter(tmp_path / "s", "demo", {"a": 1}, "cfg"):
        with pytest.raises(StoreError, match="another process"):
            StageWriter(tmp_path / "s", "demo", {"a": 1}, "cfg")


def test_torn_journal_line_only_redoes_that_shard(tmp_path):
    path = tmp_path / "s"
    with StageWriter(path, "demo", {"a": 1}, "cfg") as w:
        w.write_shard(part_name(0), _table(3))
    with open(path / "_progress.jsonl", "a") as f:
        f.write('{"file": "part-00001.parq')  # a crash mid-append
    with StageWriter(path, "demo", {"a": 1}, "cfg") as w:
        assert w.is_done(part_name(0)) and not w.is_done(part_name(1))


def test_rejects_are_collected_into_one_file(tmp_path):
    from selfimprove.pipeline.schema import REJECTS

    rej = pa.Table.from_pylist([{"stage": "demo", "source_index": 7, "problem_id": None, "reason": "bad", "raw": "x"}], schema=REJECTS)
    with StageWriter(tmp_path / "s", "demo", {"a": 1}, "cfg") as w:
        w.write_shard(part_name(0), _table(1), rej)
        w.write_shard(part_name(1), _table(1), rej)
        w.finish([part_name(0), part_name(1)])
    assert StageReader(tmp_path / "s").rejects()["source_index"].to_pylist() == [7, 7]
    assert json.loads((tmp_path / "s" / "_manifest.json").read_text())["rejects"] == 2


def test_a_stage_that_failed_before_its_first_shard_reruns_with_another_fingerprint(tmp_path):
    path = tmp_path / "s"
    with pytest.raises(RuntimeError):
        with StageWriter(path, "demo", {"source": "missing.jsonl"}, "cfg"):
            raise RuntimeError("input not found")  # nothing was written but the fingerprint
    with StageWriter(path, "demo", {"source": "fixed.jsonl"}, "cfg") as w:  # no --force needed: nothing to mix
        w.write_shard(part_name(0), _table(3))
        w.finish([part_name(0)])
    assert StageReader(path).rows == 3


def test_read_all_takes_shards_from_before_a_new_column_and_no_shards_at_all(tmp_path):
    """A stage resumed across versions holds shards without a nullable column added since: they
    read with it null. A stage that wrote no shard reads as no rows, not an error."""
    with StageWriter(tmp_path / "s", "demo", {"a": 1}, "cfg") as w:
        w.write_shard(part_name(0), _table(2))
        w.write_shard(part_name(1), pa.table({"x": [2], "confidence": [0.5]}))
        w.finish([part_name(0), part_name(1)])
    both = StageReader(tmp_path / "s").read_all()
    assert both.to_pylist() == [{"x": 0, "confidence": None}, {"x": 1, "confidence": None}, {"x": 2, "confidence": 0.5}]
    with StageWriter(tmp_path / "empty", "demo", {"a": 1}, "cfg") as w:
        w.finish([])
    assert StageReader(tmp_path / "empty").read_all().num_rows == 0
