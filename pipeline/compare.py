"""compare: one table and one plot across runs, e.g. the same iteration trained by SFT, DPO and GRPO.

`selfimprove compare RUN_DIR... --iter K` (K >= 1; K = 0 compares the runs' base models) reads each run's iteration-K evaluation and training
manifest, and the base model's evaluation (iteration 0 of the first run that has one), and writes
`<out>/compare.md` and `<out>/compare.png`: per run, how it trained (method, rows, steps, time),
greedy accuracy and every sampled figure its evaluation has (CoT-decoding, maj@k, pass@k), and its
gain over the base model and over the first run with paired standard errors (every model is
scored on the same held-out problems, so the error is that of the per-problem differences). Like
the report it reads only what the stages wrote.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from selfimprove.pipeline.config import load_config
from selfimprove.pipeline.runs import stage_dir, summary
from selfimprove.pipeline.stages.report import _save, evaluation, figure, paired_gain, sampled_columns
from selfimprove.pipeline.store import StoreError

UNITS = {"sft": "rows", "dpo": "pairs", "grpo": "prompts"}


@dataclass
class Arm:
    """One model on the held-out set: a run's trained model, or the base model."""

    label: str
    eval: dict
    solved: dict[str, bool]
    train: dict | None = None  # the train stage's manifest stats; None for the base model

    @property
    def method(self) -> str:
        return (self.train or {}).get("method", "sft") if self.train is not None else ""


def load_arm(run: Path, iteration: int) -> Arm:
    cfg = load_config(None, [f"run.dir={run}"])
    evaluated = evaluation(cfg, iteration)
    if evaluated is None:
        raise StoreError(f"{run}: iteration {iteration} has no finished evaluation "
                         f"({stage_dir(cfg, iteration, 'evaluate')}); run `selfimprove evaluate --iter {iteration}` "
                         "(or `make iterate`) for that run first")
    train = None
    if iteration > 0:
        manifest = stage_dir(cfg, iteration, "train") / "_manifest.json"
        train = json.loads(manifest.read_text()).get("stats", {}) if manifest.exists() else {}
    return Arm(run.name, *evaluated, train=train)


def base_arm(runs: list[Path]) -> Arm | None:
    """The base model's evaluation: iteration 0 of the first run that has one."""
    for run in runs:
        cfg = load_config(None, [f"run.dir={run}"])
        evaluated = evaluation(cfg, 0)
        if evaluated:
            return Arm("base model", *evaluated)
    return None


def _gain(reference: Arm | None, arm: Arm) -> str:
    if reference is None or reference is arm:
        return ""
    g, s, n = paired_gain(reference.solved, arm.solved)
    shared = "" if n == len(arm.solved) == len(reference.solved) else f" (n={n})"
    return f"{100 * g:+.1f} ± {100 * s:.1f}{shared}"


def _training(arm: Arm) -> str:
    t = arm.train
    if t is None:
        return "(none) | | |"
    if not t:
        return "(no train manifest) | | |"
    runtime = t.get("train_runtime_s")
    return (f"{arm.method}: {t.get('train_rows', '?')} {UNITS.get(arm.method, 'rows')} | {t.get('steps', '?')} | "
            + (f"{runtime / 60:.0f} min |" if runtime else " |"))


def render(arms: list[Arm], base: Arm | None, iteration: int) -> str:
    models = ([base] if base else []) + arms
    cols = sampled_columns({i: a.eval for i, a in enumerate(models)})
    first = arms[0]
    lines = [f"# Comparison: iteration {iteration} of {', '.join(a.label for a in arms)}", "",
             "| model | trained by | steps | train time | greedy | ± SE | vs base (paired SE) "
             f"| vs {first.label} (paired SE) |" + "".join(f" {c[0]} |" for c in cols),
             "|---|---|---|---|---|---|---|---|" + "---|" * len(cols)]
    for arm in models:
        e = arm.eval
        sampled = "".join(f" {100 * f[0]:.1f}% ± {100 * f[1]:.1f} |" if (f := figure(e, key, k)) else " |"
                          for _, key, k in cols)
        lines.append(f"| {arm.label} | {_training(arm)} {100 * e['accuracy']:.1f}% ({e['correct']}/{e['n']}) "
                     f"| {100 * e.get('stderr', 0):.1f} | {_gain(base, arm)} | {_gain(first, arm) if arm is not base else ''} |"
                     f"{sampled}")
    lines += ["", "Gains are in points, on the held-out problems both models answered, with the standard error of "
              "the per-problem differences; a gain is clear of noise when it exceeds twice its SE. Sampled figures "
              "(CoT-decoding, maj@k, pass@k) have the standard error over problems.", ""]
    return "\n".join(lines)


def plot(arms: list[Arm], base: Arm | None, out: Path) -> str:
    """Grouped bars: one group per decoding (greedy, CoT-decoding, maj@k, pass@k), one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = ([base] if base else []) + arms
    groups = [("greedy", None, None)] + sampled_columns({i: a.eval for i, a in enumerate(models)})
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(groups) + 2), 3.4))
    width = 0.8 / len(models)
    for j, arm in enumerate(models):
        xs, ys, es = [], [], []
        for i, (_, key, k) in enumerate(groups):
            f = (arm.eval["accuracy"], arm.eval.get("stderr", 0.0)) if key is None else figure(arm.eval, key, k)
            if f:
                xs.append(i + (j - (len(models) - 1) / 2) * width)
                ys.append(100 * f[0])
                es.append(200 * f[1])
        ax.bar(xs, ys, width, yerr=es, capsize=3, label=f"{arm.label} ({arm.method})" if arm.method else arm.label)
    ax.set_xticks(range(len(groups)), [g[0] for g in groups])
    ax.set(ylabel="held-out accuracy (%)", title="Held-out accuracy by model and decoding (bars: 2 SE)")
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out, "compare.png", "Held-out accuracy by model and decoding")[0]


def compare(runs: list[Path], iteration: int, out: Path) -> Path:
    started = time.time()
    if iteration < 0:
        raise ValueError(f"--iter must be 0 or more, got {iteration}")
    arms = [load_arm(Path(r), iteration) for r in runs]
    base = base_arm([Path(r) for r in runs]) if iteration > 0 else None  # --iter 0: the runs' base models
    out.mkdir(parents=True, exist_ok=True)
    png = plot(arms, base, out)
    text = render(arms, base, iteration) + f"\n![Held-out accuracy by model and decoding]({png})\n\n" \
        + f"_Generated {time.strftime('%Y-%m-%d %H:%M:%S')} by `selfimprove compare`._\n"
    path = out / "compare.md"
    tmp = path.with_name(".compare.md.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    figures = ", ".join(f"{a.label} {100 * a.eval['accuracy']:.1f}%" for a in ([base] if base else []) + arms)
    summary("compare", f"{path} (greedy held-out accuracy: {figures})", started)
    return path
