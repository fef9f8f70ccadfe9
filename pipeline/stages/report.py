"""report: one page per run, `report.md` with PNG plots, refreshed after every iteration.

It reads only what the stages wrote (eval.json, stats.json, the verify and rationalize
shards), so it can be regenerated at any time and never changes data. Plots: held-out
accuracy per iteration (iteration 0 is the base model; greedy, and where eval.json has them
maj@k and pass@k for the largest k, each with 2-SE bars), the funnel per iteration, correct
samples per problem, pass@k on the training problems, and the share of rationalized rows. A
table by difficulty bucket (`steps=2`, `level=Level 5`: `tasks.difficulty_of`) shows, per
iteration, held-out accuracy (eval.json's breakdown) beside the rows exported and the
first-round pass rate of the training problems of that bucket (stats.json's `by_difficulty`).

Across runs, `compare` (`selfimprove compare RUN_DIR... --iter K [K ...]`, `make compare`,
`make demo-hard`) writes `<out>/compare.md` and `compare.png`: per iteration, each run's model
beside the base model, what it sampled and how it trained, every decoding its evaluation has, and
paired gains over the base model and the first run; per difficulty bucket the same gains on that
bucket's held-out problems, and `compare_curve.png`, accuracy over the iterations per bucket.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from selfimprove.pipeline.config import Config, load_config
from selfimprove.pipeline.stages import reader, stage_dir, summary
from selfimprove.pipeline.metrics import pass_at_k
from selfimprove.pipeline.tasks import difficulty_of
from selfimprove.pipeline.store import StoreError, atomic_write_bytes

FUNNEL_STEPS = ["samples", "correct", "kept", "exported"]


def iterations(cfg: Config) -> list[int]:
    found = []
    for p in cfg.run_dir.glob("iter-*"):
        suffix = p.name.removeprefix("iter-")
        if suffix.isdigit():
            found.append(int(suffix))
    return sorted(found)


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def evaluation(cfg: Config, k: int) -> tuple[dict, dict[str, bool], dict[str, str]] | None:
    """Iteration k's finished evaluation: eval.json, whether each held-out problem was solved, and
    each problem's difficulty bucket (`steps=2`) where its metadata has one; one read of the rows."""
    ev = stage_dir(cfg, k, "evaluate") / "eval.json"
    if not (ev.parent / "_SUCCESS").exists():
        return None
    solved: dict[str, bool] = {}
    bucket: dict[str, str] = {}
    for _, t in reader(cfg, k, "evaluate").iter_shards(columns=["problem_id", "correct", "metadata"]):
        for pid, correct, meta in zip(t["problem_id"].to_pylist(), t["correct"].to_pylist(), t["metadata"].to_pylist()):
            solved[pid] = correct
            label = difficulty_of(json.loads(meta or "{}"))
            if label:
                bucket[pid] = label
    return _json(ev), solved, bucket


def collect(cfg: Config) -> dict:
    """Everything the report shows, per iteration, from what the stages left on disk."""
    out = {}
    for k in iterations(cfg):
        item: dict = {}
        evaluated = evaluation(cfg, k)
        if evaluated:
            item["eval"], item["solved"], _ = evaluated
        export = stage_dir(cfg, k, "export")
        if (export / "_SUCCESS").exists():
            item["export"] = _json(export / "stats.json")
        if (stage_dir(cfg, k, "verify") / "_SUCCESS").exists():
            correct: Counter = Counter()
            total: Counter = Counter()
            # the first round only (sample.until_correct's extra rounds go to the problems it failed: biased)
            for _, t in reader(cfg, k, "verify").iter_shards(columns=["problem_id", "sample_idx", "status"]):
                for pid, idx, status in zip(t["problem_id"].to_pylist(), t["sample_idx"].to_pylist(), t["status"].to_pylist()):
                    if idx >= cfg.sample.n:
                        continue
                    total[pid] += 1
                    correct[pid] += status == "correct"
            item["correct_per_problem"] = [correct[p] for p in total]
            n = max(total.values(), default=0)
            item["pass_at_k"] = {
                kk: sum(pass_at_k(total[p], correct[p], kk) for p in total) / len(total)
                for kk in range(1, n + 1) if all(total[p] >= kk for p in total)
            } if total else {}
        if item:
            out[k] = item
    return out


def _save(fig, folder: Path, file: str, title: str) -> tuple[str, str]:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(folder / file, dpi=110)
    plt.close(fig)
    return file, title


def _plots(data: dict, folder: Path) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    evals = {k: d["eval"] for k, d in data.items() if d.get("eval")}
    if evals:
        ks = sorted(evals)
        fig, ax = plt.subplots(figsize=(5, 3.2))
        series = [("greedy", {k: (evals[k]["accuracy"], evals[k].get("stderr", 0.0)) for k in ks})]
        for key, name in (("cot_decoding", "CoT-decoding k="), ("maj_at_k", "maj@"), ("pass_at_k", "pass@")):
            top = largest_k(evals, key)
            if top is not None:
                series.append((f"{name}{top}", {k: f for k in ks if (f := figure(evals[k], key, top))}))
        for i, (label, points) in enumerate(series):
            xs = sorted(points)
            shift = 0.06 * (i - (len(series) - 1) / 2)  # side by side, so the bars do not hide each other
            ax.errorbar([x + shift for x in xs], [100 * points[x][0] for x in xs], yerr=[200 * points[x][1] for x in xs],
                        marker="o", capsize=4, label=label)
        ax.set(xlabel="iteration (0 = base model)", ylabel=f"held-out {'' if len(series) > 1 else 'greedy '}accuracy (%)",
               title="Held-out accuracy (bars: 2 standard errors)", xticks=ks)
        if len(series) > 1:
            ax.legend()
        ax.grid(alpha=0.3)
        made.append(_save(fig, folder, "accuracy.png", "Held-out accuracy per iteration"))
    funnels = {k: d["export"]["funnel"] for k, d in data.items() if d.get("export")}
    if funnels:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        width = 0.8 / len(funnels)
        for j, (k, f) in enumerate(sorted(funnels.items())):
            ax.bar([i + j * width for i in range(len(FUNNEL_STEPS))], [f.get(s, 0) for s in FUNNEL_STEPS],
                   width, label=f"iter {k}")
        ax.set_xticks([i + width * (len(funnels) - 1) / 2 for i in range(len(FUNNEL_STEPS))], FUNNEL_STEPS)
        ax.set(ylabel="rows", title="Funnel per iteration")
        ax.legend()
        made.append(_save(fig, folder, "funnel.png", "Funnel per iteration"))
    hists = {k: d["correct_per_problem"] for k, d in data.items() if d.get("correct_per_problem")}
    if hists:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        top = max(max(h) for h in hists.values())
        for k, h in sorted(hists.items()):
            counts = Counter(h)
            ax.plot(range(top + 1), [counts.get(i, 0) for i in range(top + 1)], marker="o", label=f"iter {k}")
        ax.set(xlabel="correct samples of a problem", ylabel="problems", title="Correct samples per problem")
        ax.legend()
        made.append(_save(fig, folder, "correct_per_problem.png", "Correct samples per problem (first round)"))
    curves = {k: d["pass_at_k"] for k, d in data.items() if d.get("pass_at_k")}
    if curves:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for k, curve in sorted(curves.items()):
            ax.plot(list(curve), [100 * v for v in curve.values()], marker="o", label=f"iter {k}")
        ax.set(xlabel="k", ylabel="pass@k (%)", title="pass@k on the training problems")
        ax.legend()
        made.append(_save(fig, folder, "pass_at_k.png", "pass@k on the sampled problems"))
    if funnels:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ks = sorted(funnels)
        share = [100 * funnels[k].get("rationalized_exported", 0) / max(1, funnels[k]["exported"]) for k in ks]
        ax.bar([str(k) for k in ks], share)
        ax.set(xlabel="iteration", ylabel="% of exported rows", title="Rationalized share of the export")
        made.append(_save(fig, folder, "rationalized.png", "Share of rationalized rows"))
    return made


def figure(ev: dict, key: str, k: int) -> tuple[float, float] | None:
    """(value, stderr) of eval.json's pass@k or maj@k (`key`) at k; None where it has none
    (older eval.json files have pass@k without stderr: 0). `cot_decoding` has one k."""
    if key == "cot_decoding":
        cot = ev.get(key)
        return (cot["accuracy"], cot["stderr"]) if cot and cot["k"] == k else None
    values = (ev.get(key) or {}).get("values") or {}
    if str(k) not in values:
        return None
    return values[str(k)], ((ev.get(key) or {}).get("stderr") or {}).get(str(k), 0.0)


def largest_k(evals: dict[int, dict], key: str) -> int | None:
    """The largest k any iteration's eval.json reports pass@k or maj@k (`key`) for."""
    if key == "cot_decoding":
        return max((ev[key]["k"] for ev in evals.values() if ev.get(key)), default=None)
    ks = [int(k) for ev in evals.values() for k in ((ev.get(key) or {}).get("values") or {})]
    return max(ks, default=None)


COLUMN_NAMES = {"cot_decoding": "CoT-decoding", "maj_at_k": "maj@k", "pass_at_k": "pass@k"}


def sampled_columns(evals: dict[int, dict]) -> list[tuple[str, str, int]]:
    """The held-out table's columns beyond greedy, where any iteration has them: CoT-decoding for
    each k, maj@k for each k, and pass@k for the largest k. (header, eval.json key, k)."""
    cot = sorted({ev["cot_decoding"]["k"] for ev in evals.values() if ev.get("cot_decoding")})
    maj = sorted({int(k) for ev in evals.values() for k in ((ev.get("maj_at_k") or {}).get("values") or {})})
    cols = [(f"CoT-decoding k={k}", "cot_decoding", k) for k in cot] + [(f"maj@{k}", "maj_at_k", k) for k in maj]
    top = largest_k(evals, "pass_at_k")
    return cols + ([(f"pass@{top}", "pass_at_k", top)] if top is not None else [])


def paired_gain(base: dict[str, bool], other: dict[str, bool]) -> tuple[float, float, int]:
    """Accuracy gain of `other` over `base` on the problems both answered, its standard error
    from the per-problem differences (paired: smaller than the two binomial errors combined
    when both models solve the same easy problems), and the number of problems."""
    common = [p for p in base if p in other]
    n = len(common)
    if n < 2:
        return 0.0, 0.0, n
    diffs = [int(bool(other[p])) - int(bool(base[p])) for p in common]
    mean = sum(diffs) / n
    variance = sum((d - mean) ** 2 for d in diffs) / (n - 1)
    return mean, math.sqrt(variance / n), n


def buckets(data: dict) -> dict[int, dict[str, dict]]:
    """Per iteration, per difficulty bucket (`key=value`): held-out accuracy (`eval`) and what the
    export holds of that bucket's training problems (`export`)."""
    out: dict[int, dict[str, dict]] = {}
    for k, d in data.items():
        found: dict[str, dict] = {}
        for key, values in ((d.get("eval") or {}).get("by") or {}).items():
            for value, r in values.items():
                found.setdefault(f"{key}={value}", {})["eval"] = r
        for label, b in ((d.get("export") or {}).get("by_difficulty") or {}).items():
            found.setdefault(label, {})["export"] = b
        if found:
            out[k] = dict(sorted(found.items()))
    return out


def difficulty_table(data: dict) -> list[str]:
    by = buckets(data)
    if not by:
        return []
    lines = ["## By difficulty", "",
             "| iteration | bucket | held-out accuracy | ± stderr | n | exported rows | training problems | first-round pass rate |",
             "|---|---|---|---|---|---|---|---|"]
    for k in sorted(by):
        for label, b in by[k].items():
            e, x = b.get("eval"), b.get("export")
            acc = f"{100 * e['accuracy']:.1f}% | {100 * e.get('stderr', 0):.1f} | {e['n']}" if e else " | | "
            rows = f"{x['exported']} | {x['problems']} | {100 * x['first_round_pass_rate']:.1f}%" if x else " | | "
            lines.append(f"| {k} | {label} | {acc} | {rows} |")
    lines += ["", "Accuracy is the model of that iteration on the held-out problems of the bucket (iteration 0: "
              "the base model); exported rows and the first-round pass rate are of the problems that iteration "
              "sampled for training.", ""]
    return lines


def render(cfg: Config, data: dict, plots: list[tuple[str, str]]) -> str:
    lines = [f"# {cfg.run.name}: self-improvement report", "",
             f"Task `{cfg.task.name}`, base model `{cfg.model.path}`, {len(data)} iteration(s) on disk.", ""]
    evals = {k: d["eval"] for k, d in data.items() if d.get("eval")}
    if evals:
        base = data.get(0, {}).get("solved")
        cols = sampled_columns(evals)
        title = ", ".join(["greedy"] + [COLUMN_NAMES[key] for key in dict.fromkeys(c[1] for c in cols)])
        lines += [f"## Held-out accuracy ({title})", "",
                  "| iteration | model | accuracy | ± stderr | n | vs base | paired SE | gain / SE |"
                  + "".join(f" {c[0]} |" for c in cols),
                  "|---|---|---|---|---|---|---|---|" + "---|" * len(cols)]
        for k in sorted(evals):
            e = evals[k]
            gain = se = ratio = ""
            if k and base and data[k].get("solved"):
                g, s, _ = paired_gain(base, data[k]["solved"])
                gain, se, ratio = f"{100 * g:+.1f} pts", f"{100 * s:.1f}", f"{g / s:.1f}" if s else ""
            model = "base" if k == 0 else f"iter-{k}/model"
            sampled = "".join(f" {100 * f[0]:.1f}% ± {100 * f[1]:.1f} |" if (f := figure(e, key, kk)) else " |"
                              for _, key, kk in cols)
            lines.append(f"| {k} | {model} | {100 * e['accuracy']:.1f}% | {100 * e.get('stderr', 0):.1f} | {e['n']} "
                         f"| {gain} | {se} | {ratio} |{sampled}")
        lines += ["", "Gains are measured on the same held-out problems, so their standard error is the paired one "
                  "(of the per-problem differences); a gain is clear of noise when gain / SE exceeds 2."]
        if cols:
            lines.append("CoT-decoding answers with the most confident of k greedy paths (docs/decoding.md); maj@k is a "
                         "majority vote over k of `evaluate.pass_at_k.n` samples per problem (self-consistency), "
                         "pass@k the chance that one of k is correct; ± is the standard error over problems.")
        lines.append("")
    funnels = {k: d["export"]["funnel"] for k, d in data.items() if d.get("export")}
    if funnels:
        lines += ["## Funnel", "", "| iteration | problems | samples | correct | rationalized correct | kept | exported "
                  "| extra-round samples | extra-round correct |", "|---|---|---|---|---|---|---|---|---|"]
        for k in sorted(funnels):
            f = funnels[k]
            lines.append(f"| {k} | {f['problems']} | {f['samples']} | {f['correct']} | {f.get('rationalized_correct', 0)}"
                         f" | {f['kept']} | {f['exported']} | {f.get('extra_samples', 0)} | {f.get('extra_correct', 0)} |")
        lines += ["", "samples and correct count every sample of the model's own (hint-free), the extra rounds of "
                  "`sample.until_correct` included; those are also shown apart."]
        lines.append("")
    lines += difficulty_table(data)
    for file, title in plots:
        lines += [f"### {title}", "", f"![{title}]({file})", ""]
    lines.append(f"_Generated {time.strftime('%Y-%m-%d %H:%M:%S')} by `selfimprove report`._")
    return "\n".join(lines) + "\n"


def run(cfg: Config, iteration: int | None = None, force: bool = False) -> Path:
    started = time.time()
    folder = cfg.run_dir
    folder.mkdir(parents=True, exist_ok=True)
    data = collect(cfg)
    plots = _plots(data, folder)
    out = folder / "report.md"
    tmp = out.with_name(".report.md.tmp")
    tmp.write_text(render(cfg, data, plots))
    tmp.replace(out)
    evals = {k: d["eval"]["accuracy"] for k, d in data.items() if d.get("eval")}
    acc = ", ".join(f"iter {k} {100 * v:.1f}%" for k, v in sorted(evals.items())) or "no evaluations yet"
    summary("report", f"{out} ({len(plots)} plots; held-out accuracy: {acc})", started)
    return out


# -- across runs: `selfimprove compare` ------------------------------------------------------
UNITS = {"sft": "rows", "dpo": "pairs", "grpo": "prompts"}


@dataclass
class Arm:
    """One model on the held-out set: a run's trained model, or the base model."""

    label: str
    eval: dict
    solved: dict[str, bool]
    train: dict | None = None  # the train stage's manifest stats; None for the base model
    bucket: dict[str, str] = field(default_factory=dict)  # held-out problem -> difficulty bucket (`steps=2`)
    export: dict | None = None  # the export's stats.json (by_difficulty: what it trained on, per bucket)
    drawn: dict | None = None  # samples drawn for training: first round, extra rounds (until_correct), hinted

    @property
    def method(self) -> str:
        return "" if self.train is None else self.train.get("method", "sft")


def samples_drawn(cfg: Config, k: int) -> dict | None:
    """What iteration k sampled to train on: the first round, until_correct's extra rounds, hinted samples."""
    manifest = _json(stage_dir(cfg, k, "sample") / "_manifest.json")
    if not manifest:
        return None
    budget = manifest.get("stats", {}).get("until_correct") or {}
    hinted = _json(stage_dir(cfg, k, "rationalize") / "_manifest.json") or {}
    return {"samples": manifest.get("rows", 0), "extra": budget.get("extra_samples", 0),
            "hinted": hinted.get("rows", 0)}


def load_arm(run: Path, iteration: int) -> Arm:
    cfg = load_config(None, [f"run.dir={run}"])
    evaluated = evaluation(cfg, iteration)
    if evaluated is None:
        raise StoreError(f"{run}: iteration {iteration} has no finished evaluation "
                         f"({stage_dir(cfg, iteration, 'evaluate')}); run `selfimprove evaluate --iter {iteration}` "
                         "(or `make iterate`) for that run first")
    ev, solved, bucket = evaluated
    arm = Arm(run.name, ev, solved, bucket=bucket)
    if iteration > 0:
        manifest = stage_dir(cfg, iteration, "train") / "_manifest.json"
        arm.train = json.loads(manifest.read_text()).get("stats", {}) if manifest.exists() else {}
        arm.export = _json(stage_dir(cfg, iteration, "export") / "stats.json")
        arm.drawn = samples_drawn(cfg, iteration)
    return arm


def base_arm(runs: list[Path]) -> Arm | None:
    """The base model's evaluation: iteration 0 of the first run that has one."""
    for run in runs:
        cfg = load_config(None, [f"run.dir={run}"])
        evaluated = evaluation(cfg, 0)
        if evaluated:
            ev, solved, bucket = evaluated
            return Arm("base model", ev, solved, bucket=bucket)
    return None


def _only(arm: Arm, label: str | None) -> dict[str, bool]:
    """arm's held-out verdicts on one bucket's problems, or on all of them."""
    return arm.solved if label is None else {p: c for p, c in arm.solved.items() if arm.bucket.get(p) == label}


def _gain(reference: Arm | None, arm: Arm, label: str | None = None) -> str:
    """arm's gain over reference in points with its paired SE, on one bucket's problems or all."""
    if reference is None or reference is arm:
        return ""
    theirs, ours = _only(reference, label), _only(arm, label)
    g, s, n = paired_gain(theirs, ours)
    shared = "" if n == len(ours) == len(theirs) else f" (n={n})"
    return f"{100 * g:+.1f} ± {100 * s:.1f}{shared}"


def _drawn(arm: Arm) -> str:
    d = arm.drawn
    if not d:
        return ""
    parts = [f"{d['samples'] - d['extra']}"] + [f"{d['extra']} extra"] * bool(d["extra"]) + [f"{d['hinted']} hinted"] * bool(d["hinted"])
    return " + ".join(parts)


def _training(arm: Arm) -> str:
    t = arm.train
    if t is None:
        return "(none) | | | |"
    if not t:
        return f"(no train manifest) | {_drawn(arm)} | | |"
    runtime = t.get("train_runtime_s")
    return (f"{arm.method}: {t.get('train_rows', '?')} {UNITS.get(arm.method, 'rows')} | {_drawn(arm)} | "
            f"{t.get('steps', '?')} | " + (f"{runtime / 60:.0f} min |" if runtime else " |"))


def render_comparison(models: list[Arm], base: Arm | None, cols: list[tuple[str, str, int]], iteration: int) -> str:
    arms = [m for m in models if m is not base]
    first = arms[0]
    lines = [f"## Iteration {iteration}", "",
             "| model | trained by | samples drawn | steps | train time | greedy | ± SE | vs base (paired SE) "
             f"| vs {first.label} (paired SE) |" + "".join(f" {c[0]} |" for c in cols),
             "|---|---|---|---|---|---|---|---|---|" + "---|" * len(cols)]
    for arm in models:
        e = arm.eval
        sampled = "".join(f" {100 * f[0]:.1f}% ± {100 * f[1]:.1f} |" if (f := figure(e, key, k)) else " |"
                          for _, key, k in cols)
        lines.append(f"| {arm.label} | {_training(arm)} {100 * e['accuracy']:.1f}% ({e['correct']}/{e['n']}) "
                     f"| {100 * e.get('stderr', 0):.1f} | {_gain(base, arm)} | {_gain(first, arm) if arm is not base else ''} |"
                     f"{sampled}")
    return "\n".join(lines + [""])


def bucket_labels(per_iteration: dict[int, list[Arm]], base: Arm | None) -> list[str]:
    """Every difficulty bucket the models' held-out problems fall in, sorted."""
    arms = [a for arms in per_iteration.values() for a in arms] + ([base] if base else [])
    return sorted({label for a in arms for label in a.bucket.values()})


def render_by_difficulty(per_iteration: dict[int, list[Arm]], base: Arm | None) -> list[str]:
    """Per difficulty bucket and iteration: each model's held-out accuracy there, its paired gain over
    the base model and over the first run on that bucket's problems, and what its run trained on."""
    labels = bucket_labels(per_iteration, base)
    if not labels:
        return []
    first = {k: arms[0] for k, arms in per_iteration.items()}
    lines = ["## By difficulty", "",
             "| bucket | iteration | model | held-out accuracy | ± SE | n | vs base (paired SE) | vs first run (paired SE) "
             "| training problems solved by own samples | exported rows |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label in labels:
        rows = [(0, base)] if base else []
        rows += [(k, a) for k in sorted(per_iteration) for a in per_iteration[k]]
        for k, arm in rows:
            mine = _only(arm, label)
            if not mine:
                continue
            acc, se = rate_of(mine)
            x = ((arm.export or {}).get("by_difficulty") or {}).get(label)
            trained = (f"{x.get('solved', '?')}/{x['problems']} | {x['exported']}" if x else " | ")
            lines.append(f"| {label} | {k} | {arm.label} | {100 * acc:.1f}% | {100 * se:.1f} | {len(mine)} "
                         f"| {_gain(base, arm, label) if k else ''} | {_gain(first[k], arm, label) if k else ''} | {trained} |")
    lines += ["", "Paired gains are on the bucket's held-out problems both models answered. Training problems "
              "solved: those of the bucket with at least one correct sample of the model's own (every round); "
              "exported rows: the bucket's rows in that iteration's export (hinted rows included).", ""]
    return lines


def rate_of(solved: dict[str, bool]) -> tuple[float, float]:
    """Accuracy and its binomial standard error."""
    n = len(solved)
    acc = sum(map(bool, solved.values())) / n
    return acc, math.sqrt(acc * (1 - acc) / n)


def plot_curves(per_iteration: dict[int, list[Arm]], base: Arm | None, out: Path) -> str:
    """Held-out accuracy over the iterations, one line per run, one panel for all problems and one per bucket."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [None] + bucket_labels(per_iteration, None)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False, sharey=True)
    runs = list(dict.fromkeys(a.label for arms in per_iteration.values() for a in arms))
    for ax, label in zip(axes[0], panels):
        for i, run in enumerate(runs):
            points = [(0, base)] if base else []
            points += [(k, a) for k in sorted(per_iteration) for a in per_iteration[k] if a.label == run]
            xs, ys, es = [], [], []
            for k, arm in points:
                mine = _only(arm, label)
                if mine:
                    acc, se = rate_of(mine)
                    xs.append(k + 0.05 * (i - (len(runs) - 1) / 2))
                    ys.append(100 * acc)
                    es.append(200 * se)
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=run)
        ax.set(title=label or "all held-out problems", xlabel="iteration (0 = base model)",
               xticks=sorted({0, *per_iteration}))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out greedy accuracy (%)")
    axes[0][0].legend(fontsize="small")
    return _save(fig, out, "compare_curve.png", "Held-out accuracy over the iterations (bars: 2 SE)")[0]


def plot_comparison(models: list[Arm], cols: list[tuple[str, str, int]], out: Path) -> str:
    """Grouped bars: one group per decoding (greedy, CoT-decoding, maj@k, pass@k), one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [("greedy", None, None)] + cols
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


def compare(runs: list[Path], iterations: list[int], out: Path) -> Path:
    started = time.time()
    if not iterations or min(iterations) < 0:
        raise ValueError(f"--iter takes iterations 0 or more, got {iterations}")
    iterations = sorted(set(iterations))
    per_iteration = {k: [load_arm(Path(r), k) for r in runs] for k in iterations}
    base = base_arm([Path(r) for r in runs]) if iterations[-1] > 0 else None  # --iter 0: the runs' base models
    last = iterations[-1]
    models = ([base] if base and last else []) + per_iteration[last]
    cols = sampled_columns({i: a.eval for i, a in enumerate(models)})
    out.mkdir(parents=True, exist_ok=True)
    png = plot_comparison(models, cols, out)
    trained = {k: arms for k, arms in per_iteration.items() if k > 0}
    curve = plot_curves(trained, base, out) if len(trained) > 1 or any(a.bucket for arms in trained.values() for a in arms) else None
    names = ", ".join(a.label for a in per_iteration[last])
    lines = [f"# Comparison: {names}, iteration{'s' if len(iterations) > 1 else ''} {', '.join(map(str, iterations))}", ""]
    for k in iterations:
        models_k = ([base] if base and k else []) + per_iteration[k]
        lines.append(render_comparison(models_k, base if k else None,
                                       sampled_columns({i: a.eval for i, a in enumerate(models_k)}), k))
    lines += ["Gains are in points, on the held-out problems both models answered, with the standard error of "
              "the per-problem differences; a gain is clear of noise when it exceeds twice its SE. Samples drawn: "
              "the first round + until_correct's extra rounds + hinted (rationalization) samples. Sampled figures "
              "(CoT-decoding, maj@k, pass@k) have the standard error over problems.", "",
              f"![Held-out accuracy by model and decoding, iteration {last}]({png})", ""]
    lines += render_by_difficulty(trained, base)
    if curve:
        lines += [f"![Held-out accuracy over the iterations]({curve})", ""]
    lines.append(f"_Generated {time.strftime('%Y-%m-%d %H:%M:%S')} by `selfimprove compare`._\n")
    path = out / "compare.md"
    atomic_write_bytes(path, "\n".join(lines).encode())
    figures = ", ".join(f"{a.label} {100 * a.eval['accuracy']:.1f}%" for a in models)
    summary("compare", f"{path} (greedy held-out accuracy, iteration {last}: {figures})", started)
    return path
