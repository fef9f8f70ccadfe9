"""export: one directory with three Hugging Face dataset configs, a dataset card, and the funnel.

Every config is in a format TRL reads one way, whatever the hash seed (no row carries both a
`messages` and string `prompt`/`completion` columns, which TRL told apart by a set.pop()):

- `sft` (the default): conversational prompt-completion, `prompt` and `completion` as lists of
  messages; TRL's SFTTrainer applies the chat template and puts the loss on the completion only.
- `preference`: DPO pairs of one problem, `prompt`, `chosen` (a rationale `sft` exports) and
  `rejected` (a sample with a wrong or no final answer), with both verdicts and reasons.
- `prompts`: one row per sampled problem with its gold answer, the verifier that judges it and
  its pass rate in this iteration, for RL with verifiable rewards.

Rows are split by problem id, the same problems in every config (none sits in both splits).
Shards are named `<config>-<split>-00000-of-00002.parquet`; the card's YAML `configs` lets
`datasets.load_dataset(export_dir)` load `sft` and `load_dataset(export_dir, "preference")`
the others. Inputs are sharded by problem id, so each input shard holds every sample of its
problems: a first pass counts each config's rows (shard names carry the count), a second streams
them to the stage skeleton as each shard fills. `stats.json` holds the funnel and every problem's
pass rate; `config.yaml` the effective config; README.md the card (sources, licenses, model,
verifier, funnel, code version).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterator

import pyarrow as pa

from selfimprove.pipeline import card as export_card
from selfimprove.pipeline import schema
from selfimprove.pipeline.config import Config, digest
from selfimprove.pipeline.runs import check, reader, stage_dir
from selfimprove.pipeline.skeleton import MappedStage, ShardOutput, run_mapped
from selfimprove.pipeline.store import atomic_write_bytes, atomic_write_json
from selfimprove.pipeline.tasks import difficulty_of
from selfimprove.pipeline.verification import trim_methods, verifier_spec
from selfimprove.verifiers.extract import trim_after_answer

SPLITS = schema.EXPORT_SPLITS
CONFIGS = schema.EXPORT_CONFIGS
ARROW_BATCH = 1000  # rows converted to Arrow at a time while a shard fills


def split_of(problem_id: str, validation_fraction: float) -> str:
    h = int.from_bytes(hashlib.sha256(problem_id.encode()).digest()[:8], "big") / 2**64
    return "validation" if h < validation_fraction else "train"


def shard_name(config: str, split: str, i: int, total: int) -> str:
    return schema.export_shard_name(config, split, i, total)


def _turn(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def completion_text(row: dict, thinking: str = "keep") -> str:
    """What a sample exports as its completion: its thinking section (if any) and the text after
    it as the model wrote them (`export.thinking: keep`), or the text after it alone (`drop`)."""
    reasoning = row.get("reasoning")
    if not reasoning:
        return row["text"]
    return reasoning + row["text"] if thinking == "keep" else row["text"].lstrip()


def to_export_row(row: dict, iteration: int, task: str, thinking: str = "keep", difficulty: str | None = None,
                  first_round_pass_rate: float | None = None) -> dict:
    """A selected sample as an `sft` row (its text already trimmed by dedup where
    `export.trim_after_answer` is on), with its problem's difficulty and first-round pass rate."""
    return {
        "prompt": json.loads(row["prompt"]),
        "completion": _turn(completion_text(row, thinking)),
        "problem_id": row["problem_id"],
        "sample_idx": row["sample_idx"],
        "answer": row["gold"],
        "rationalized": bool(row.get("rationalized")),
        "iteration": iteration,
        "model": row["model"],
        "task": task,
        "verifier": row["verifier"],
        "difficulty": difficulty,
        "first_round_pass_rate": first_round_pass_rate,
    }


def preference_row(chosen: dict, rejected: dict, iteration: int, task: str, thinking: str = "keep") -> dict:
    """A pair as TRL's conversational preference row; the prompt is the one the rejected sample was drawn with."""
    return {
        "prompt": json.loads(rejected["prompt"]),
        "chosen": _turn(completion_text(chosen, thinking)),
        "rejected": _turn(completion_text(rejected, thinking)),
        "problem_id": rejected["problem_id"],
        "answer": rejected["gold"],
        "chosen_sample_idx": chosen["sample_idx"],
        "chosen_status": chosen["status"],
        "chosen_reason": chosen["reason"],
        "chosen_rationalized": bool(chosen.get("rationalized")),
        "rejected_sample_idx": rejected["sample_idx"],
        "rejected_status": rejected["status"],
        "rejected_reason": rejected["reason"],
        "rejected_answer": rejected["extracted"],
        "iteration": iteration,
        "model": rejected["model"],
        "task": task,
        "verifier": rejected["verifier"],
    }


def prompts_row(first: dict, samples: list[dict], verifier: dict, metadata: str | None, iteration: int, task: str,
                first_round_pass_rate: float | None = None) -> dict:
    """One problem for RL: its prompt, gold answer and verifier (from `first`, a whole verdict row)
    and its pass rate over `samples` (all of its verdicts)."""
    correct = sum(s["status"] == "correct" for s in samples)
    return {
        "prompt": json.loads(first["prompt"]),
        "problem_id": first["problem_id"],
        "answer": first["gold"],
        "verifier": verifier["spec"],
        "verifier_params": json.dumps(verifier["params"], sort_keys=True),
        "pass_rate": round(correct / len(samples), 4),
        "samples": len(samples),
        "correct": correct,
        "metadata": metadata,
        "iteration": iteration,
        "model": first["model"],
        "task": task,
        "difficulty": difficulty_of(json.loads(metadata or "{}")),
        "first_round_pass_rate": first_round_pass_rate,
    }


def _rank(seed: int, problem_id: str, sample_idx: int) -> bytes:
    return hashlib.sha256(f"{seed}:{problem_id}:{sample_idx}".encode()).digest()


def pick_pairs(chosen: list[dict], samples: list[dict], cfg: Config, methods: tuple[str, ...] | None) -> list[tuple[dict, dict]]:
    """One problem's (chosen, rejected) pairs under `export.preference`.

    Rejected candidates have an eligible verdict and some text; they are taken in the `pick`
    order (seeded), each at most once, and one whose (trimmed) text repeats an earlier one is
    skipped. Chosen rationales are used in a seeded order, cycling when `reuse_chosen` is on.
    Only sample_idx, status and text are read, so the counting pass needs no other column.
    """
    pc, seed = cfg.export.preference, cfg.run.seed
    eligible = [s for s in samples if s["status"] in pc.rejected_statuses and (s["text"] or "").strip()]
    if not chosen or not eligible:
        return []
    pid = samples[0]["problem_id"]
    chosen = sorted(chosen, key=lambda r: _rank(seed, pid, r["sample_idx"]))
    eligible.sort(key=lambda s: (pc.pick == "wrong_first" and s["status"] != "wrong", _rank(seed + 1, pid, s["sample_idx"])))
    limit = pc.pairs_per_problem if pc.reuse_chosen else min(pc.pairs_per_problem, len(chosen))
    pairs: list[tuple[dict, dict]] = []
    seen: set[str] = set()
    for s in eligible:
        text = trim_after_answer(s["text"], methods) if methods else s["text"]
        if text in seen:
            continue
        seen.add(text)
        pairs.append((chosen[len(pairs) % len(chosen)], {**s, "text": text}))
        if len(pairs) == limit:
            break
    return pairs


# -- the two passes ---------------------------------------------------------------------------
KEY_COLUMNS = ["problem_id", "sample_idx", "rationalized"]
VERDICT_COLUMNS = ["problem_id", "sample_idx", "status", "text"]


@dataclass
class Inputs:
    """The stages export reads (dedup applied every rule, the rationalized share among them:
    every selected row is exported)."""

    cfg: Config
    iteration: int
    selected: object
    verified: object
    problems: object
    verifier: dict  # what judged the samples: spec (for verifiers.get_verifier) and its effective params

    def __post_init__(self):
        self.verified_files = {s["file"] for s in self.verified.shards}
        self.problem_files = {s["file"] for s in self.problems.shards}

    def kept_rows(self, name: str, columns: list[str] | None = None) -> list[dict]:
        """The selected rows of one input shard: what the sft config exports."""
        return self.selected.read_shard(name, columns).to_pylist()

    def verdicts(self, name: str, table: pa.Table | None = None) -> list[tuple[str, list[dict]]]:
        """One input shard's verdicts by problem, in order, as the few columns pairing reads and
        `pos`, the row's position in the shard (the other columns are taken only where needed)."""
        if table is None:
            if name not in self.verified_files:
                return []
            table = self.verified.read_shard(name, VERDICT_COLUMNS)
        by_problem: dict[str, list[dict]] = {}
        for pos, r in enumerate(table.select(VERDICT_COLUMNS).to_pylist()):
            by_problem.setdefault(r["problem_id"], []).append({**r, "pos": pos})
        return list(by_problem.items())


@dataclass
class Plan:
    """What the counting pass found: rows per config and split, verdicts, pass rates."""

    rows: dict = field(default_factory=lambda: {c: Counter() for c in CONFIGS})
    statuses: Counter = field(default_factory=Counter)
    rates: dict = field(default_factory=dict)
    paired_problems: int = 0
    first_rates: dict = field(default_factory=dict)  # problem -> pass rate of its first round (sample_idx < n)
    difficulty: dict = field(default_factory=dict)  # problem -> difficulty bucket (None: the task has none)
    sft_rows: Counter = field(default_factory=Counter)  # problem -> sft rows
    extra: Counter = field(default_factory=Counter)  # sample.until_correct's extra rounds: samples, correct, kept, problems


def count_rows(inp: Inputs) -> Plan:
    """The first pass: how many rows each config and split gets (shard names carry the count)."""
    cfg, plan, methods = inp.cfg, Plan(), trim_methods(inp.cfg)
    frac, n = cfg.export.validation_fraction, cfg.sample.n
    for shard in inp.selected.shards:
        chosen = defaultdict(list)
        metadata = _metadata(inp.problems, shard["file"]) if shard["file"] in inp.problem_files else {}
        for r in inp.kept_rows(shard["file"], KEY_COLUMNS):
            plan.rows["sft"][split_of(r["problem_id"], frac)] += 1
            plan.sft_rows[r["problem_id"]] += 1
            plan.extra["kept"] += not r["rationalized"] and r["sample_idx"] >= n
            chosen[r["problem_id"]].append(r)
        for pid, samples in inp.verdicts(shard["file"]):
            split = split_of(pid, frac)
            plan.rows["prompts"][split] += 1
            statuses = [s["status"] for s in samples]
            plan.statuses.update(statuses)
            plan.rates[pid] = round(statuses.count("correct") / len(samples), 4)
            first = [s["status"] for s in samples if s["sample_idx"] < n]  # round r holds r*n .. r*n+n-1
            plan.first_rates[pid] = round(first.count("correct") / len(first), 4) if first else None
            plan.difficulty[pid] = difficulty_of(json.loads(metadata.get(pid) or "{}"))
            if len(first) < len(samples):
                plan.extra.update(samples=len(samples) - len(first), problems=1,
                                  correct=statuses.count("correct") - first.count("correct"))
            pairs = len(pick_pairs(chosen.get(pid, []), samples, cfg, methods))
            plan.rows["preference"][split] += pairs
            plan.paired_problems += pairs > 0
    return plan


class Sinks:
    """Each config's splits cut into shards of `rows_per_shard` rows, each handed back as it fills.

    The shard being filled is held as Arrow tables of ARROW_BATCH rows, a fraction of the memory
    of Python dicts. Content is deterministic, so a resumed export keeps its committed shards.
    """

    def __init__(self, plan: Plan, rows_per_shard: int):
        self.per_shard = rows_per_shard
        self.totals = planned_shards(plan, rows_per_shard)
        self.buffers: dict = {k: [] for k in self.totals}
        self.tables: dict = {k: [] for k in self.totals}
        self.filled = Counter()
        self.written = Counter()

    def add(self, config: str, split: str, row: dict) -> list[tuple[str, pa.Table]]:
        """Take one row; the shard it filled, if it filled one."""
        key = (config, split)
        self.buffers[key].append(row)
        self.filled[key] += 1
        if len(self.buffers[key]) >= ARROW_BATCH:
            self.tables[key].append(schema.table(self.buffers[key], schema.EXPORT_SCHEMAS[config]))
            self.buffers[key] = []
        return [self.cut(key)] if self.filled[key] >= self.per_shard else []

    def cut(self, key: tuple[str, str]) -> tuple[str, pa.Table]:
        config, split = key
        name = shard_name(config, split, self.written[key], self.totals[key])
        parts = self.tables[key] + [schema.table(self.buffers[key], schema.EXPORT_SCHEMAS[config])]
        self.written[key] += 1
        self.buffers[key], self.tables[key], self.filled[key] = [], [], 0
        return name, pa.concat_tables(parts).combine_chunks()

    def close(self) -> list[tuple[str, pa.Table]]:
        """The shards left partly filled; checks every planned shard was cut."""
        rest = [self.cut(key) for key in self.buffers if self.filled[key]]
        check(all(self.written[k] == self.totals[k] for k in self.totals),
              f"export: cut {dict(self.written)} shards, planned {self.totals}")
        return rest


def planned_shards(plan: Plan, rows_per_shard: int) -> dict[tuple[str, str], int]:
    """Shards per (config, split): what the counting pass found, cut into rows_per_shard rows."""
    return {(c, s): math.ceil(plan.rows[c][s] / rows_per_shard) for c in CONFIGS for s in SPLITS}


def write_rows(inp: Inputs, sinks: Sinks, plan: Plan) -> Iterator[tuple[str, pa.Table]]:
    """The second pass: every input shard's rows into the sinks, each export shard as it fills."""
    cfg, it, task, methods = inp.cfg, inp.iteration, inp.cfg.task.name, trim_methods(inp.cfg)
    frac, thinking = cfg.export.validation_fraction, cfg.export.thinking
    for shard in inp.selected.shards:
        name = shard["file"]
        chosen = defaultdict(list)
        for row in inp.kept_rows(name):
            pid = row["problem_id"]
            yield from sinks.add("sft", split_of(pid, frac), to_export_row(row, it, task, thinking, plan.difficulty.get(pid),
                                                                           plan.first_rates.get(pid)))
            chosen[row["problem_id"]].append(row)
        if name not in inp.verified_files:
            continue
        table = inp.verified.read_shard(name)
        problems = [(pid, samples, pick_pairs(chosen.get(pid, []), samples, cfg, methods))
                    for pid, samples in inp.verdicts(name, table)]
        # whole rows only for what is written: each problem's first verdict and its rejected samples
        wanted = sorted({s["pos"] for _, samples, pairs in problems for s in [samples[0], *(r for _, r in pairs)]})
        full = dict(zip(wanted, table.take(wanted).to_pylist()))
        metadata = _metadata(inp.problems, name) if name in inp.problem_files else {}
        for pid, samples, pairs in problems:
            split = split_of(pid, frac)
            for c, r in pairs:
                yield from sinks.add("preference", split,
                                     preference_row(c, {**full[r["pos"]], "text": r["text"]}, it, task, thinking))
            yield from sinks.add("prompts", split, prompts_row(full[samples[0]["pos"]], samples, inp.verifier,
                                                               metadata.get(pid), it, task, plan.first_rates.get(pid)))
    yield from sinks.close()


def _metadata(problems, name: str) -> dict[str, str]:
    t = problems.read_shard(name, columns=["problem_id", "metadata"])
    return dict(zip(t["problem_id"].to_pylist(), t["metadata"].to_pylist()))


# -- the stage --------------------------------------------------------------------------------
def fingerprint(cfg: Config, iteration: int, stages: dict) -> dict:
    """Everything the shards and the card depend on (the code version aside)."""
    t = cfg.task
    return {
        "input": stages["dedup"].output_hash,
        "verified": stages["verify"].output_hash,
        "problems": stages["prepare"].output_hash,
        "rationalized": stages["rationalize"].output_hash,
        "verifier": stages["verify"].manifest.get("fingerprint_parts", {}).get("verifier"),
        "verifier_spec": verifier_spec(cfg),
        "export": cfg.export.fingerprint_dump(),
        "task": t.name,
        "source": {"path": t.path, "split": t.split, "limit": t.limit,
                   "arithmetic": t.arithmetic.model_dump(mode="json") if t.name == "arithmetic" else None},
        "model": cfg.model.path,
        "iteration": iteration,
        "seed": cfg.run.seed,
        "trim_methods": trim_methods(cfg),
    }


class ExportStage(MappedStage):
    """Selected rows regrouped into configs and splits: the output shards are named by the
    counting pass (config, split, count), not after the input's; the second pass streams every
    row and hands each shard to the skeleton as it fills (a resumed export skips committed ones)."""

    name, source = "export", "dedup"
    no_output = "the second pass wrote no rows"

    def __init__(self, cfg: Config, iteration: int):
        super().__init__(cfg, iteration)
        self.stages = {s: reader(cfg, iteration, s) for s in ("prepare", "sample", "verify", "rationalize")}
        self.stages["dedup"] = self.input
        judged = self.stages["verify"].manifest.get("fingerprint_parts", {}).get("verifier") or {}
        verifier = {"spec": verifier_spec(cfg), "params": judged.get("params", cfg.verify.params)}
        self.inputs = Inputs(cfg, iteration, self.input, self.stages["verify"], self.stages["prepare"], verifier)
        self.plan: Plan | None = None
        self.report: dict = {}

    def fingerprint(self) -> dict:
        return fingerprint(self.cfg, self.iteration, self.stages)

    def shard_names(self) -> list[str]:
        """The counting pass, then every shard it plans, config by config and split by split."""
        self.plan = count_rows(self.inputs)
        return [shard_name(c, s, i, n) for (c, s), n in planned_shards(self.plan, self.cfg.export.rows_per_shard).items()
                for i in range(n)]

    def work(self, names: list[str]) -> Iterator[tuple[str, ShardOutput]]:
        wanted = set(names)
        for name, table in write_rows(self.inputs, Sinks(self.plan, self.cfg.export.rows_per_shard), self.plan):
            if name in wanted:
                yield name, ShardOutput(table)

    def check_total(self, writer, names: list[str]) -> None:
        rows = {c: {s: 0 for s in SPLITS} for c in CONFIGS}
        for n in names:
            config, split = schema.export_shard_of(n)
            rows[config][split] += writer.done[n]["rows"]
        exported = sum(rows["sft"].values())
        check(exported == self.input.rows, f"export: {exported} rows exported != {self.input.rows} selected")
        check(rows == {c: {s: self.plan.rows[c][s] for s in SPLITS} for c in CONFIGS},
              f"export: wrote {rows} rows, counted {self.plan.rows}")
        self.report = export_stats(self.cfg, self.stages, self.plan, rows)

    def stats(self, writer, names: list[str]) -> dict:
        """stats.json, the effective config and the dataset card beside the shards, before _SUCCESS."""
        content_hash = digest([writer.done[n]["sha256"] for n in names])[:16]
        atomic_write_json(writer.path / "stats.json", self.report)
        atomic_write_bytes(writer.path / export_card.CONFIG_FILE, export_card.config_yaml(self.cfg).encode())
        card = export_card.dataset_card(self.cfg, self.iteration, self.report,
                                        self.stages["verify"].manifest.get("fingerprint_parts", {}), content_hash)
        atomic_write_bytes(writer.path / "README.md", card.encode())
        return {k: self.report[k] for k in ("funnel", "splits", "configs", "sample_budget") if k in self.report}

    def summary(self, manifest: dict, resumed: int) -> str:
        rows = manifest["stats"]["configs"]
        pairs, prompts = (sum(rows[c].values()) for c in ("preference", "prompts"))
        return (f"{sum(rows['sft'].values())} sft rows ({rows['sft']['train']} train, "
                f"{rows['sft']['validation']} validation), {pairs} preference pairs, {prompts} prompts "
                f"in {stage_dir(self.cfg, self.iteration, self.name)}")


def run(cfg: Config, iteration: int, force: bool = False) -> dict:
    return run_mapped(ExportStage(cfg, iteration), force)


def export_stats(cfg: Config, stages: dict, plan: Plan, rows: dict) -> dict:
    """stats.json: the funnel, verdicts, rows per config and split, every problem's pass rate."""
    hinted = stages["rationalize"]
    hinted_correct, hinted_problems = 0, set()
    for _, t in hinted.iter_shards(columns=["problem_id", "status"]):
        hinted_correct += t["status"].to_pylist().count("correct")
        hinted_problems.update(t["problem_id"].to_pylist())
    hinted_kept = sum(sum(bool(v) for v in t["rationalized"].to_pylist())
                      for _, t in stages["dedup"].iter_shards(columns=["rationalized"]))
    exported = sum(rows["sft"].values())
    hinted_exported = hinted_kept  # every selected row is exported (dedup applied the rationalized share)
    over_share = stages["dedup"].manifest.get("stats", {}).get("removed", {}).get("over_rationalized_share", 0)
    funnel = {
        "problems": stages["prepare"].rows,
        "rejected_inputs": stages["prepare"].manifest["rejects"],
        "samples": stages["sample"].rows,
        "correct": plan.statuses.get("correct", 0),
        "kept": stages["dedup"].rows,
        "exported": exported,
        "rationalized_samples": hinted.rows,
        "rationalized_correct": hinted_correct,
        "rationalized_exported": hinted_exported,
        "rationalized_over_share": over_share,
        # first-round rows and rationalized ones apart ("kept" and "exported" above count both)
        "first_round_kept": stages["dedup"].rows - hinted_kept,
        "first_round_exported": exported - hinted_exported,
        "rationalized_problems": len(hinted_problems),
        "rationalized_kept": hinted_kept,
        # sample.until_correct's extra rounds apart (counted in samples, correct, kept and exported above too)
        "extra_samples": plan.extra["samples"],
        "extra_problems": plan.extra["problems"],
        "extra_correct": plan.extra["correct"],
        "extra_kept": plan.extra["kept"],
        "extra_exported": plan.extra["kept"],
    }
    rates = plan.rates
    budget = stages["sample"].manifest.get("stats", {}).get("until_correct")
    return {
        "funnel": funnel,
        "verdicts": dict(plan.statuses),
        "splits": dict(rows["sft"]),
        "configs": rows,
        "preference": {"pairs": sum(rows["preference"].values()), "problems": plan.paired_problems,
                       **cfg.export.preference.model_dump(mode="json")},
        "problems_solved": sum(1 for r in rates.values() if r > 0),
        "mean_pass_rate": round(sum(rates.values()) / len(rates), 4) if rates else 0.0,
        "pass_rates": rates,
        "first_round_pass_rates": plan.first_rates,
        "by_difficulty": by_difficulty(plan),
        **({"sample_budget": budget} if budget else {}),
    }


def by_difficulty(plan: Plan) -> dict:
    """Per difficulty bucket: problems, sft rows exported, problems solved (by the model's own samples,
    in the first round and in any round) and the mean pass rate in the first round."""
    out: dict = {}
    for pid, label in plan.difficulty.items():
        if label is None:
            continue
        b = out.setdefault(label, {"problems": 0, "exported": 0, "solved_first_round": 0, "solved": 0,
                                   "first_round_pass_rate": 0.0})
        rate = plan.first_rates.get(pid) or 0.0
        b["problems"] += 1
        b["exported"] += plan.sft_rows.get(pid, 0)
        b["solved_first_round"] += rate > 0
        b["solved"] += (plan.rates.get(pid) or 0.0) > 0
        b["first_round_pass_rate"] += rate
    for b in out.values():
        b["first_round_pass_rate"] = round(b["first_round_pass_rate"] / b["problems"], 4)
    return dict(sorted(out.items()))


def print_funnel(manifest: dict) -> None:
    """The funnel as a table: first-round rows and rationalized rows (sampled again with the gold
    answer as a hint) in columns of their own, each share a share of its own column's samples."""
    f = manifest["stats"]["funnel"]
    hinted_exported = f.get("rationalized_exported", 0)
    hinted_kept = f.get("rationalized_kept", hinted_exported)  # stats of an older export: every kept row is exported
    own = {"problems": f["problems"], "samples": f["samples"], "correct": f["correct"],
           "kept": f.get("first_round_kept", f["kept"] - hinted_kept),
           "exported": f.get("first_round_exported", f["exported"] - hinted_exported)}
    hinted = {"problems": f.get("rationalized_problems"), "samples": f.get("rationalized_samples", 0),
              "correct": f.get("rationalized_correct", 0), "kept": hinted_kept, "exported": hinted_exported}
    # sample.until_correct: the model's own samples split into the first round and the extra rounds
    extra = {"problems": f.get("extra_problems", 0), "samples": f.get("extra_samples", 0),
             "correct": f.get("extra_correct", 0), "kept": f.get("extra_kept", 0), "exported": f.get("extra_exported", 0)}
    first = {k: v if k == "problems" else v - extra[k] for k, v in own.items()}
    columns = [("first round", first)] + ([("extra rounds", extra)] if extra["samples"] else [])
    if hinted["samples"] or extra["samples"]:
        total = {"problems": f["problems"], "samples": own["samples"] + hinted["samples"],
                 "correct": own["correct"] + hinted["correct"], "kept": f["kept"], "exported": f["exported"]}
        columns += ([("rationalized", hinted)] if hinted["samples"] else []) + [("total", total)]
    steps = list(first)
    width = max(map(len, steps))

    def cell(name: str, values: dict, step: str) -> str:
        v, count = values[step], max(len(name) + 3, 9)
        if name == "total":
            return f"{v:>{count}}"
        shared = step not in ("problems", "samples") and v is not None and values["samples"]
        return f"{'-' if v is None else v:>{count}}" + (f" {v / values['samples']:6.1%}" if shared else " " * 7)

    print("\nfunnel")
    print(f"  {'':<{width}}" + "".join(f"{name:>{max(len(name) + 3, 9)}}" + ("" if name == "total" else " " * 7)
                                       for name, _ in columns).rstrip())
    for step in steps:
        print((f"  {step:<{width}}" + "".join(cell(name, values, step) for name, values in columns)).rstrip())
    if hinted["samples"]:
        print("  (% of the column's samples; rationalized: unsolved problems sampled again with the answer as a hint)")
    elif extra["samples"]:
        print("  (% of the column's samples; no rationalized rows)")
    else:
        print("  (% of samples; no rationalized rows)")
    budget = manifest["stats"].get("sample_budget")
    if extra["samples"] or budget:
        b = budget or {}
        print(f"  (extra rounds: sample.until_correct {b.get('policy', '')} k={b.get('k', '?')}, up to"
              f" max_samples={b.get('max_samples', '?')} per problem: {extra['samples']} extra samples for"
              f" {extra['problems']} problems; {b.get('reached_target', '?')} problems reached their target,"
              f" {b.get('at_budget', '?')} stopped at the budget)")
    if f.get("rationalized_over_share"):
        over = f["rationalized_over_share"]
        print(f"  ({over} rationalization{'s' if over != 1 else ''} left out by rationalize.max_share)")
    if f["rejected_inputs"]:
        print(f"  ({f['rejected_inputs']} input rows rejected: see problems/_rejects.parquet)")
    configs = manifest["stats"].get("configs")
    if configs:
        print("  configs: " + ", ".join(f"{c} {sum(configs[c].values())}" for c in CONFIGS if c in configs))
