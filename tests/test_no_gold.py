"""Problems without a gold answer: kept when the verifier needs none (majority vote), rejected otherwise."""

import json

from selfimprove.pipeline.cli import main
from selfimprove.pipeline.config import load_config
from selfimprove.pipeline.stages import reader


def _source(tmp_path):
    src = tmp_path / "open.jsonl"
    src.write_text("".join(json.dumps({"q": f"How many legs do {k} spiders have?"}) + "\n" for k in range(2, 8)))
    return src


def test_majority_runs_on_problems_without_answers(fake_config, tmp_path):
    config = fake_config(task={"name": "columns", "path": str(_source(tmp_path)), "columns": {"question": "q", "answer": None}},
                         verify={"verifier": "majority", "workers": 1})
    assert main(["run", "--config", str(config)]) == 0
    cfg = load_config(config)
    problems = reader(cfg, 1, "prepare")
    assert problems.rows == 6 and problems.manifest["rejects"] == 0
    assert problems.read_all()["answer"].null_count == 6
    verdicts = reader(cfg, 1, "verify").read_all().to_pylist()
    assert len(verdicts) == 6 * cfg.sample.n
    correct = [v for v in verdicts if v["status"] == "correct"]
    assert correct and all(v["reason"].startswith("pseudo-label") for v in correct)


def test_a_gold_verifier_rejects_problems_without_answers(fake_config, tmp_path, capsys):
    config = fake_config(task={"name": "columns", "path": str(_source(tmp_path)), "columns": {"question": "q", "answer": None}})
    # no problem is usable, so prepare stops (exit 1) and says why instead of an empty run
    assert main(["prepare", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "no usable problem" in err and "6 x answer" in err, err
