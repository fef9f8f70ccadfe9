"""export: fine-tuning-ready train/validation shards, a dataset card, and the run's funnel.

Rows are split by problem id (a problem's rationales never sit in both splits). Shards are
named `train-00000-of-00002.parquet` and the card's YAML `configs` lets
`datasets.load_dataset(export_dir)` load both splits. `stats.json` holds the funnel
(problems -> samples -> correct -> kept -> exported) and every problem's pass rate.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter, defaultdict

import pyarrow as pa

from pipeline import schema
from pipeline.config import Config, digest
from pipeline.stages import check, open_writer, reader, summary, up_to_date
from pipeline.store import atomic_write_bytes, atomic_write_json

SPLITS = ("train", "validation")
ARROW_BATCH = 1000  # rows converted to Arrow at a time while a shard fills


def split_of(problem_id: str, validation_fraction: float) -> str:
    h = int.from_bytes(hashlib.sha256(problem_id.encode()).digest()[:8], "big") / 2**64
    return "validation" if h < validation_fraction else "train"


def shard_name(split: str, i: int, total: int) -> str:
    return f"{split}-{i:05d}-of-{total:05d}.parquet"


def to_export_row(row: dict, iteration: int, task: str) -> dict:
    """A selected sample as a fine-tuning row (its text already trimmed by dedup where
    `export.trim_after_answer` is on)."""
    messages = json.loads(row["prompt"])
    user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    return {
        "messages": messages + [{"role": "assistant", "content": row["text"]}],
        "prompt": user,
        "completion": row["text"],
        "problem_id": row["problem_id"],
        "sample_idx": row["sample_idx"],
        "answer": row["gold"],
        "rationalized": bool(row.get("rationalized")),
        "iteration": iteration,
        "model": row["model"],
        "task": task,
        "verifier": row["verifier"],
    }


def dataset_card(cfg: Config, iteration: int, counts: dict, funnel: dict, content_hash: str) -> str:
    # The config name carries the content hash: `datasets` caches a local folder by its name and
    # config, so two exports both called "default" would load each other's cached rows.
    # `datasets` cannot load an empty split, so only splits with rows are listed.
    files = "".join(f'  - split: {s}\n    path: "{s}-*.parquet"\n' for s in SPLITS if counts[s])
    configs = f"configs:\n- config_name: iter{iteration}-{content_hash}\n  default: true\n  data_files:\n{files}" if files else ""
    return f"""---
{configs}tags:
- selfimprove
- rejection-sampling
---

# {cfg.run.name} iteration {iteration}

Chain-of-thought rationales sampled from `{cfg.model.path}` on task `{cfg.task.name}` and kept
because a verifier accepted their final answer (rejection sampling), written by selfimprove.

| split | rows |
|---|---|
| train | {counts['train']} |
| validation | {counts['validation']} |

Funnel: {funnel['problems']} problems -> {funnel['samples']} samples -> {funnel['correct']} correct
-> {funnel['kept']} kept -> {funnel['exported']} exported.

Columns: `messages` (chat turns; the user turn is the prompt as the model saw it, the assistant
turn the rationale), `prompt`, `completion`, `problem_id`, `sample_idx`, `answer` (the gold
answer the rationale reached), `rationalized` (sampled with the answer as a hint, which the
prompt here leaves out), `iteration`, `model`, `task`, `verifier`.

Load with `datasets.load_dataset("<this directory>")`. Config hash: `{cfg.config_hash()}`.
"""


def _rank(seed: int, problem_id: str, sample_idx: int) -> bytes:
    return hashlib.sha256(f"{seed}:{problem_id}:{sample_idx}".encode()).digest()


def rationalized_keep(selected, max_share: float, seed: int) -> tuple[set | None, int]:
    """Which rationalized rows fit under `max_share` of the export (None: all), and how many do not.

    The quota is max_share/(1-max_share) times the ordinary rows, so ordinary rows are never
    dropped to make room; which rationalized rows stay is a seeded, deterministic choice.
    Only keys of rationalized rows are held in memory.
    """
    plain, hinted = 0, []
    for _, t in selected.iter_shards(columns=["problem_id", "sample_idx", "rationalized"]):
        for pid, idx, rat in zip(t["problem_id"].to_pylist(), t["sample_idx"].to_pylist(), t["rationalized"].to_pylist()):
            if rat:
                hinted.append((pid, idx))
            else:
                plain += 1
    quota = len(hinted) if max_share >= 1 else math.floor(max_share / (1 - max_share) * plain)
    if quota >= len(hinted):
        return None, 0
    hinted.sort(key=lambda k: _rank(seed, *k))
    return set(hinted[:quota]), len(hinted) - quota


def pass_rates(cfg: Config, iteration: int) -> tuple[dict, Counter]:
    """Per problem: correct samples / samples; and verdict counts over the whole stage."""
    verified = reader(cfg, iteration, "verify")
    correct: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    statuses: Counter = Counter()
    for _, t in verified.iter_shards(columns=["problem_id", "status"]):
        for pid, status in zip(t["problem_id"].to_pylist(), t["status"].to_pylist()):
            total[pid] += 1
            correct[pid] += status == "correct"
            statuses[status] += 1
    return {pid: round(correct[pid] / total[pid], 4) for pid in total}, statuses


def run(cfg: Config, iteration: int, force: bool = False) -> dict:
    started = time.time()
    problems = reader(cfg, iteration, "prepare")
    samples = reader(cfg, iteration, "sample")
    selected = reader(cfg, iteration, "dedup")
    parts = {"input": selected.output_hash, "export": cfg.export.model_dump(mode="json"),
             "task": cfg.task.name, "iteration": iteration, "max_share": cfg.rationalize.max_share, "seed": cfg.run.seed}
    with open_writer(cfg, iteration, "export", parts, force) as writer:
        if writer.up_to_date:
            return up_to_date("export", writer)
        frac = cfg.export.validation_fraction
        keep_hinted, over_share = rationalized_keep(selected, cfg.rationalize.max_share, cfg.run.seed)

        def kept(pid: str, idx: int, rat: bool | None) -> bool:
            return not rat or keep_hinted is None or (pid, idx) in keep_hinted

        counts = Counter()
        for _, t in selected.iter_shards(columns=["problem_id", "sample_idx", "rationalized"]):
            for pid, idx, rat in zip(*(t[c].to_pylist() for c in ("problem_id", "sample_idx", "rationalized"))):
                if kept(pid, idx, rat):
                    counts[split_of(pid, frac)] += 1
        totals = {s: math.ceil(counts[s] / cfg.export.rows_per_shard) for s in SPLITS}
        # The shard being filled is held as Arrow tables of ARROW_BATCH rows, a fraction of the
        # memory of Python dicts: a 50,000-row shard as dicts took hundreds of MB.
        buffers: dict[str, list[dict]] = {s: [] for s in SPLITS}
        tables: dict[str, list[pa.Table]] = {s: [] for s in SPLITS}
        filled = {s: 0 for s in SPLITS}
        written = {s: 0 for s in SPLITS}
        names: list[str] = []
        hinted_exported = 0

        def flush(split: str) -> None:
            name = shard_name(split, written[split], totals[split])
            if not writer.is_done(name):  # deterministic content: a resumed export keeps its shards
                parts = tables[split] + [schema.table(buffers[split], schema.EXPORT)]
                writer.write_shard(name, pa.concat_tables(parts).combine_chunks())
            names.append(name)
            written[split] += 1
            buffers[split], tables[split], filled[split] = [], [], 0

        for _, t in selected.iter_shards():
            for row in t.to_pylist():
                if not kept(row["problem_id"], row["sample_idx"], row["rationalized"]):
                    continue
                hinted_exported += bool(row["rationalized"])
                split = split_of(row["problem_id"], frac)
                buffers[split].append(to_export_row(row, iteration, cfg.task.name))
                filled[split] += 1
                if len(buffers[split]) >= ARROW_BATCH:
                    tables[split].append(schema.table(buffers[split], schema.EXPORT))
                    buffers[split] = []
                if filled[split] >= cfg.export.rows_per_shard:
                    flush(split)
        for split in SPLITS:
            if filled[split]:
                flush(split)
        check(all(written[s] == totals[s] for s in SPLITS), f"export: wrote {written} shards, expected {totals}")
        exported = sum(writer.done[n]["rows"] for n in names)
        check(exported + over_share == selected.rows,
              f"export: {exported} rows exported + {over_share} over the rationalized share != {selected.rows} selected")

        rates, statuses = pass_rates(cfg, iteration)
        hinted = reader(cfg, iteration, "rationalize")
        hinted_correct = sum(t["status"].to_pylist().count("correct") for _, t in hinted.iter_shards(columns=["status"]))
        funnel = {
            "problems": problems.rows,
            "rejected_inputs": problems.manifest["rejects"],
            "samples": samples.rows,
            "correct": statuses.get("correct", 0),
            "kept": selected.rows,
            "exported": exported,
            "rationalized_samples": hinted.rows,
            "rationalized_correct": hinted_correct,
            "rationalized_exported": hinted_exported,
            "rationalized_over_share": over_share,
        }
        stats = {
            "funnel": funnel,
            "verdicts": dict(statuses),
            "splits": {s: counts[s] for s in SPLITS},
            "problems_solved": sum(1 for r in rates.values() if r > 0),
            "mean_pass_rate": round(sum(rates.values()) / len(rates), 4) if rates else 0.0,
            "pass_rates": rates,
        }
        content_hash = digest([writer.done[n]["sha256"] for n in names])[:12]
        atomic_write_json(writer.path / "stats.json", stats)
        atomic_write_bytes(writer.path / "README.md", dataset_card(cfg, iteration, counts, funnel, content_hash).encode())
        manifest = writer.finish(names, stats={"funnel": funnel, "splits": stats["splits"]})
    summary("export", f"{exported} rows ({counts['train']} train, {counts['validation']} validation) in {writer.path}", started)
    return manifest


def print_funnel(manifest: dict) -> None:
    f = manifest["stats"]["funnel"]
    steps = [("problems", f["problems"]), ("samples", f["samples"]), ("correct", f["correct"]),
             ("kept", f["kept"]), ("exported", f["exported"])]
    width = max(len(k) for k, _ in steps)
    print("\nfunnel")
    for k, v in steps:
        share = f"  {v / f['samples']:6.1%} of samples" if f["samples"] and k not in ("problems", "samples") else ""
        print(f"  {k:<{width}}  {v:>8}{share}")
    if f.get("rationalized_exported"):
        print(f"  ({f['rationalized_exported']} exported rows are rationalizations, sampled with the answer as a hint)")
    if f.get("rationalized_over_share"):
        print(f"  ({f['rationalized_over_share']} rationalizations left out by rationalize.max_share)")
    if f["rejected_inputs"]:
        print(f"  ({f['rejected_inputs']} input rows rejected: see problems/_rejects.parquet)")
