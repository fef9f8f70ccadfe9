"""End to end on the real vLLM engine and the embedded default model (CPU), offline."""

import json

import pytest

from selfimprove.pipeline.config import load_config
from selfimprove.pipeline.stages import reader, stage_dir
from selfimprove.pipeline.verification import trim_methods
from selfimprove.verifiers.extract import trim_after_answer
from tests.conftest import SHARED, selfimprove, write_config

pytestmark = pytest.mark.engine


def _check_export(cfg):
    """Every exported row was verified correct, its text as verified (cut after its final answer
    where `export.trim_after_answer` is on); the export loads with `datasets` when it has rows.

    A 135M model can get nothing right on a handful of problems (often so on GSM8K); then the
    export must be empty, and say so, rather than invent rows.
    """
    import datasets

    export = stage_dir(cfg, 1, "export")
    funnel = json.loads((export / "stats.json").read_text())["funnel"]
    if funnel["exported"] == 0:
        assert funnel["correct"] == 0 and not list(export.glob("sft-*.parquet"))
        return funnel
    ds = datasets.load_dataset(str(export))
    assert all({"prompt", "completion"} <= set(split.column_names) for split in ds.values())
    verdicts = {(r["problem_id"], r["sample_idx"]): r for r in reader(cfg, 1, "verify").read_all().to_pylist()}
    methods = trim_methods(cfg)
    for split in ds.values():
        for row in split:
            v = verdicts[(row["problem_id"], row["sample_idx"])]
            text = trim_after_answer(v["text"], methods) if methods else v["text"]
            assert v["status"] == "correct" and row["completion"] == [{"role": "assistant", "content": text}]
    assert sum(len(split) for split in ds.values()) == funnel["exported"]
    return funnel


def test_default_model_arithmetic(tmp_path):
    config = write_config(tmp_path / "c.yaml", {
        "run": {"dir": str(tmp_path / "run"), "problems_per_shard": 4},
        "task": {"name": "arithmetic", "arithmetic": {"count": 8}},
        "sample": {"n": 4, "max_tokens": 160},
    })
    out = selfimprove("run", "--config", config).stdout
    assert "funnel" in out
    cfg = load_config(config)
    funnel = _check_export(cfg)
    assert funnel["problems"] == 8 and funnel["samples"] == 32
    samples = reader(cfg, 1, "sample").read_all().to_pylist()
    assert all(s["text"] and s["completion_tokens"] > 0 and s["model"] for s in samples)
    assert {s["finish_reason"] for s in samples} <= {"stop", "length"}


def test_gsm8k_from_shared_data(tmp_path):
    config = write_config(tmp_path / "c.yaml", {
        "run": {"dir": str(tmp_path / "run")},
        "task": {"name": "gsm8k", "path": str(SHARED / "gsm8k" / "train.jsonl"), "limit": 10},  # training never reads test
        "sample": {"n": 2, "max_tokens": 160},
    })
    selfimprove("run", "--config", config)
    cfg = load_config(config)
    funnel = _check_export(cfg)
    assert funnel["problems"] == 10 and funnel["samples"] == 20
