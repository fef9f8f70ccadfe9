"""A stage directory is exactly what its manifest and journal promise, or it is refused and repaired."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from selfimprove.pipeline.config import digest
from selfimprove.pipeline.store import StageReader, StageWriter, StoreError, audit, part_name

FP = {"sample": {"n": 4, "stop": ["a", "b"]}, "input": "abc"}


def finished(path, shards=3):
    with StageWriter(path, "sample", FP, "cfg") as w:
        for i in range(shards):
            w.write_shard(part_name(i), pa.table({"x": [i] * 4}))
        w.finish([part_name(i) for i in range(shards)])
    return json.loads((path / "_manifest.json").read_text())


def edit_manifest(path, change):
    m = json.loads((path / "_manifest.json").read_text())
    change(m)
    (path / "_manifest.json").write_text(json.dumps(m))


def test_a_shard_left_out_of_the_manifest_is_refused_then_repaired(tmp_path):
    path = tmp_path / "samples"
    finished(path)

    def drop_last(m):  # the shard is gone from the manifest, and rows and output hash agree with that
        m["shards"].pop()
        m["rows"] = sum(s["rows"] for s in m["shards"])
        m["output_hash"] = digest([s["sha256"] for s in m["shards"]])
    edit_manifest(path, drop_last)
    assert any("part-00002.parquet was finished" in p for p in audit(path))
    with pytest.raises(StoreError, match=r"part-00002.parquet was finished.*selfimprove sample"):
        StageReader(path, "sample")
    with StageWriter(path, "sample", FP, "cfg") as w:  # the same command again: not "up to date"
        assert not w.up_to_date and w.is_done(part_name(2))  # the journalled shard is kept, not redone
        w.finish([part_name(i) for i in range(3)])
    assert StageReader(path, "sample").rows == 12 and audit(path) == []


def test_a_wrong_row_count_is_named_and_repaired(tmp_path):
    path = tmp_path / "samples"
    finished(path)
    edit_manifest(path, lambda m: m.update(rows=999))
    with pytest.raises(StoreError, match=r"_manifest.json: rows 999 != 12"):
        StageReader(path, "sample")
    with StageWriter(path, "sample", FP, "cfg") as w:
        assert not w.up_to_date
        w.finish([part_name(i) for i in range(3)])
    assert StageReader(path, "sample").rows == 12


def test_a_stray_parquet_file_is_refused(tmp_path):
    path = tmp_path / "export"
    finished(path)
    pq.write_table(pa.table({"x": [1]}), path / "train-00009-of-00010.parquet")
    with pytest.raises(StoreError, match=r"train-00009-of-00010.parquet is not in _manifest.json.*remove it"):
        StageReader(path, "export")


def test_truncated_manifest_and_corrupt_fingerprint_name_their_file(tmp_path):
    path = tmp_path / "samples"
    finished(path)
    text = (path / "_manifest.json").read_text()
    (path / "_manifest.json").write_text(text[: len(text) // 2])
    with pytest.raises(StoreError, match=r"_manifest.json is not valid JSON"):
        StageReader(path, "sample")
    (path / "_fingerprint.json").write_text("{not json")
    with pytest.raises(StoreError, match=r"unreadable fingerprint file.*--force"):
        StageWriter(path, "sample", FP, "cfg")
    with StageWriter(path, "sample", FP, "cfg", force=True) as w:  # --force rebuilds it
        assert not w.done
        w.write_shard(part_name(0), pa.table({"x": [7]}))
        w.finish([part_name(0)])
    assert StageReader(path, "sample").rows == 1


def test_a_config_change_is_named_by_its_field_and_a_tuple_equals_its_list(tmp_path):
    path = tmp_path / "samples"
    finished(path)
    same = {"sample": {"n": 4, "stop": ("a", "b")}, "input": "abc"}
    with StageWriter(path, "sample", same, "cfg") as w:
        assert w.up_to_date
    with pytest.raises(StoreError, match=r"\(changed: sample\.n\)"):
        StageWriter(path, "sample", {"sample": {"n": 8, "stop": ["a", "b"]}, "input": "abc"}, "cfg")


def test_status_check_names_a_damaged_stage_and_exits_1(fake_config, capsys):
    from selfimprove.pipeline.cli import main
    from selfimprove.pipeline.config import load_config
    from selfimprove.pipeline.stages import stage_dir

    path = fake_config()
    assert main(["run", "--config", str(path)]) == 0
    assert main(["status", "--config", str(path), "--check"]) == 0
    samples = stage_dir(load_config(path), 1, "sample")
    shard = sorted(samples.glob("part-*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[:-10])  # damaged on disk
    capsys.readouterr()
    assert main(["status", "--config", str(path), "--check"]) == 1
    out = capsys.readouterr().out
    assert "damaged" in out and shard.name in out and "selfimprove sample --iter 1" in out, out
