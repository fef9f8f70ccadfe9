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


def _eval_json(accuracy, maj=None, passes=None):
    e = {"accuracy": accuracy, "stderr": 0.03, "n": 100, "correct": int(100 * accuracy)}
    if maj is not None:
        e["maj_at_k"] = {"n": 4, "values": maj[0], "stderr": maj[1]}
    if passes is not None:
        e["pass_at_k"] = {"n": 4, "values": passes[0], **({"stderr": passes[1]} if passes[1] else {})}
    return e


def test_report_adds_maj_and_pass_columns_where_eval_json_has_them(tmp_path):
    """Iteration 1 has maj@k and pass@k, iteration 0 is an older eval.json without: both render."""
    from selfimprove.pipeline.config import Config
    from selfimprove.pipeline.stages.report import _plots, render

    data = {0: {"eval": _eval_json(0.2)},
            1: {"eval": _eval_json(0.3, maj=({"1": 0.25, "4": 0.35}, {"1": 0.02, "4": 0.04}),
                                   passes=({"1": 0.25, "4": 0.5}, {"1": 0.02, "4": 0.05}))}}
    text = render(Config(), data, [])
    assert "| gain / SE | maj@1 | maj@4 | pass@4 |" in text
    assert "| 0 | base | 20.0% | 3.0 | 100 |  |  |  | | | |" in text  # an older eval.json: empty cells
    assert text.rstrip().splitlines()[-1].startswith("_Generated")
    assert "| 25.0% ± 2.0 | 35.0% ± 4.0 | 50.0% ± 5.0 |" in text
    assert ["accuracy.png"] == [f for f, _ in _plots(data, tmp_path)]
    # an older eval.json with pass@k but no stderr, and none with sampled figures at all
    old = {0: {"eval": _eval_json(0.2, passes=({"1": 0.25, "8": 0.6}, None))}}
    assert "| pass@8 |" in render(Config(), old, []) and "60.0% ± 0.0 |" in render(Config(), old, [])
    plain = render(Config(), {0: {"eval": _eval_json(0.2)}}, [])
    assert "maj@" not in plain and "pass@" not in plain and "| gain / SE |\n" in plain
    assert _plots(old, tmp_path) and _plots({0: {"eval": _eval_json(0.2)}}, tmp_path)


def test_report_after_an_evaluation_with_maj_at_k(fake_config):
    config = fake_config(evaluate={"count": 8, "pass_at_k": {"n": 4, "k": [1, 4]}})
    assert main(["evaluate", "--config", str(config), "--iter", "0"]) == 0
    assert main(["report", "--config", str(config)]) == 0
    cfg = load_config(config)
    result = json.loads((cfg.iter_dir(0) / "eval" / "eval.json").read_text())
    text = (cfg.run_dir / "report.md").read_text()
    maj, se = result["maj_at_k"]["values"]["4"], result["maj_at_k"]["stderr"]["4"]
    assert f"| {100 * maj:.1f}% ± {100 * se:.1f} |" in text and "| maj@1 | maj@4 | pass@4 |" in text
    assert (cfg.run_dir / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
