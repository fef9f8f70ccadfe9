"""Configs that work outside this repo: hub datasets with their configuration and revision,
local copies laid out by split, and a training task that never reads an evaluation split."""

import json
import shutil

import pytest

from selfimprove.pipeline.cli import main
from selfimprove.pipeline.config import Config, EvalSetConfig, TaskConfig, load_config
from selfimprove.pipeline.selection.contamination import run_eval_sets
from selfimprove.pipeline.stages import reader
from selfimprove.pipeline.tasks import get_task
from tests.conftest import ROOT, SHARED


def _write(path, questions):
    path.write_text("".join(json.dumps({"question": q, "answer": f"x #### {i}"}) + "\n" for i, q in enumerate(questions)))


def test_a_directory_laid_out_by_split_gives_the_split_asked_for(tmp_path):
    _write(tmp_path / "train.jsonl", ["What is 1 + 1?", "What is 2 + 2?"])
    _write(tmp_path / "test.jsonl", ["What is 3 + 3?"])
    train = [r.data["question"] for r in get_task(TaskConfig(name="gsm8k", path=str(tmp_path))).rows()]
    test = [r.data["question"] for r in get_task(TaskConfig(name="gsm8k", path=str(tmp_path), split="test")).rows()]
    assert train == ["What is 1 + 1?", "What is 2 + 2?"] and test == ["What is 3 + 3?"]
    with pytest.raises(ValueError, match="task.split: no 'validation' files in .* splits test, train"):
        list(get_task(TaskConfig(name="gsm8k", path=str(tmp_path), split="validation")).rows())
    # sharded files named as the hub names them
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    _write(sharded / "train-00000-of-00002.jsonl", ["a?"])
    _write(sharded / "train-00001-of-00002.jsonl", ["b?"])
    _write(sharded / "test-00000-of-00001.jsonl", ["c?"])
    assert [r.data["question"] for r in get_task(TaskConfig(name="gsm8k", path=str(sharded))).rows()] == ["a?", "b?"]
    # a directory of files not named by split is read whole, as before
    plain = tmp_path / "plain"
    plain.mkdir()
    _write(plain / "part1.jsonl", ["d?"])
    _write(plain / "part2.jsonl", ["e?"])
    assert len(list(get_task(TaskConfig(name="gsm8k", path=str(plain))).rows())) == 2


@pytest.mark.parametrize("task", [
    {"name": "gsm8k", "path": str(SHARED / "gsm8k" / "test.jsonl")},
    {"name": "gsm8k", "path": str(SHARED / "gsm8k"), "split": "test"},
    {"name": "columns", "path": "someone/problems", "split": "validation"},
    {"name": "math"},  # MATH-500, the default math source, has only a test split
])
def test_training_never_reads_an_evaluation_split(fake_config, task, capsys):
    config = fake_config(task=task)
    assert main(["prepare", "--config", str(config)]) != 0
    err = capsys.readouterr().err
    assert "evaluation split" in err and "training on it would put the evaluation into the model" in err
    assert not list((load_config(config).iter_dir(1)).glob("problems/*.parquet"))


def test_the_local_copy_of_a_hub_config_prepares_its_train_split(fake_config):
    config = fake_config(task={"name": "gsm8k", "path": str(SHARED / "gsm8k"), "config": "main", "limit": 5})
    assert main(["prepare", "--config", str(config)]) == 0
    assert reader(load_config(config), 1, "prepare").rows == 5


def test_the_held_out_set_is_always_decontaminated_against():
    cfg = load_config(ROOT / "configs" / "gsm8k.yaml")
    (heldout,) = run_eval_sets(cfg)
    assert (heldout.path, heldout.split, heldout.config) == ("openai/gsm8k", "test", "main")
    listed = load_config(ROOT / "configs" / "gsm8k.yaml", ["dedup.decontaminate.eval_sets=[{path: openai/gsm8k, config: main}]"])
    assert len(run_eval_sets(listed)) == 1, "a set already listed is not added twice"
    assert run_eval_sets(Config()) == [], "the arithmetic generator's held-out range needs no index"
    local = load_config(ROOT / "configs" / "math.yaml", [f"evaluate.task.path={SHARED / 'math'}"])
    assert run_eval_sets(local) == [EvalSetConfig(path=str(SHARED / "math"), split="test")]


def test_shipped_configs_name_hub_datasets_and_work_from_another_directory(tmp_path, monkeypatch):
    for name in ("gsm8k.yaml", "math.yaml"):
        shutil.copy(ROOT / "configs" / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    gsm8k, math = load_config(tmp_path / "gsm8k.yaml"), load_config(tmp_path / "math.yaml")
    assert (gsm8k.task.path, gsm8k.task.config, gsm8k.task.split) == ("openai/gsm8k", "main", "train")
    assert (gsm8k.evaluate.task.path, gsm8k.evaluate.task.split) == ("openai/gsm8k", "test")
    assert (math.task.path, math.task.split, math.evaluate.task.path) == ("DigitalLearningGmbH/MATH-lighteval", "train",
                                                                           "HuggingFaceH4/MATH-500")
    settings = [line for line in (tmp_path / "gsm8k.yaml").read_text().splitlines() if not line.lstrip().startswith("#")]
    assert not any("../shared" in line for line in settings)


def test_hub_options_are_fingerprinted_only_where_set():
    assert "config" not in TaskConfig(name="gsm8k").fingerprint_dump(), "runs made before the field stay up to date"
    assert TaskConfig(name="gsm8k", revision="abc123").fingerprint_dump()["revision"] == "abc123"
