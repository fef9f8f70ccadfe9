"""report.md: what a user looks at after each iteration, rebuilt from what the stages wrote."""

import json

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.stages.report import pass_at_k


def test_report_shows_accuracy_funnel_and_plots(fake_config):
    config = fake_config(rationalize={"enabled": True}, evaluate={"count": 12})
    assert main(["run", "--config", str(config)]) == 0
    assert main(["evaluate", "--config", str(config), "--iter", "0"]) == 0
    assert main(["report", "--config", str(config)]) == 0
    cfg = load_config(config)
    text = (cfg.run_dir / "report.md").read_text()
    accuracy = json.loads((cfg.iter_dir(0) / "eval" / "eval.json").read_text())["accuracy"]
    assert f"| 0 | base | {100 * accuracy:.1f}% |" in text
    funnel = json.loads((cfg.iter_dir(1) / "export" / "stats.json").read_text())["funnel"]
    assert f"| 1 | {funnel['problems']} | {funnel['samples']} | {funnel['correct']} |" in text
    for png in ("accuracy.png", "funnel.png", "correct_per_problem.png", "pass_at_k.png", "rationalized.png"):
        assert (cfg.run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in text


def test_pass_at_k_estimator():
    assert pass_at_k(4, 0, 1) == 0.0 and pass_at_k(4, 4, 1) == 1.0
    assert abs(pass_at_k(4, 1, 1) - 0.25) < 1e-12
    assert abs(pass_at_k(4, 1, 2) - 0.5) < 1e-12  # 1 - C(3,2)/C(4,2)
