"""report.md: what a user looks at after each iteration, rebuilt from what the stages wrote."""

import json

from selfimprove.pipeline.cli import main
from selfimprove.pipeline.config import load_config
from selfimprove.pipeline.stages.report import pass_at_k


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


def test_paired_gain_counts_only_problems_that_changed():
    from selfimprove.pipeline.stages.report import paired_gain
    base = {f"p{i}": i < 20 for i in range(100)}  # 20% solved
    same_plus_ten = {f"p{i}": i < 30 for i in range(100)}  # the same 20, and 10 more
    gain, se, n = paired_gain(base, same_plus_ten)
    assert n == 100 and abs(gain - 0.10) < 1e-12
    assert abs(se - (0.1 * 0.9 * 100 / 99) ** 0.5 / 10) < 1e-12  # only the 10 changed problems vary
    unpaired = ((0.2 * 0.8 + 0.3 * 0.7) / 100) ** 0.5
    assert se < unpaired  # the paired error is smaller than the two binomial errors combined
    shuffled = {f"p{i}": i >= 70 for i in range(100)}  # 30% solved, but different problems
    assert paired_gain(base, shuffled)[1] > unpaired
    assert paired_gain(base, {"other": True}) == (0.0, 0.0, 0)
