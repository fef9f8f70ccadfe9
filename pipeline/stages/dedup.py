"""dedup: keep correct, distinct, diverse and clean rationales, and report what went and why.

Steps, in this order, each set in the `dedup` config and each counted under its own reason:

1. `not_correct`: the verifier did not accept the row.
   `answer_only`: the row states its answer and shows no step to it (`require_work`; the rule
   is in pipeline/selection/reasoning.py): a right answer alone is not a rationale.
2. `contaminated_question` / `contaminated_text`: the problem's question (all its rows go) or
   the rationale shares a word n-gram with an evaluation set (`decontaminate`); listed in
   `_rejects.parquet` and stats.json with the evaluation row and the shared words.
3. `below_min_correct` / `easy`: problem rules from the model's own pass rate.
4. `exported_before`: an earlier iteration of this run already exported the same problem and
   normalised text (`across_iterations`).
5. `exact_duplicate`: the same normalised text as a row kept for the problem.
6. `same_path`: the same list of valid equations as a row kept for the problem (RFT; `paths`).
7. `near_duplicate`: MinHash/LSH Jaccard >= `near_dup.threshold` with a row kept for the problem.
8. `exact_duplicate_across_problems`: the same text as a row kept for an earlier problem.
9. `over_cap`: beyond the problem's target (`max_per_problem`, `balance`, `cap_policy`);
   `balance: uniform` repeats rows of problems short of it (counted as `repeated`).

With `export.trim_after_answer`, every correct row's text is first cut after the first statement
of its final answer, and the rules above judge (and the stage writes) that text: the one that is
exported and trained on. Two samples that differ only in what follows their answer are then
exact duplicates.

Of duplicates, the first in priority order is kept: the model's own samples before rationalized
ones, then by sample index. Selection is a function of the verdict rows (`select_rows`), so
rows of several sources (verified, rationalized) can be fed together.

Streaming: the stage works shard by shard (a problem's rows never span shards) and, inside a
shard, problem by problem. Beyond one shard it holds two sets of 8-byte hashes: rows exported by
earlier iterations and, with `exact_across_problems`, texts kept so far; as Python ints in a set
that is about 70 bytes a row, 70 MB per million rows. stats.json holds the full report.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from pipeline import schema
from pipeline.config import Config, DedupConfig
from pipeline.selection import balance, paths
from pipeline.selection.reasoning import shows_work
from pipeline.selection.contamination import EvalIndex, load_index
from pipeline.selection.minhash import MinHasher, near_duplicates
from pipeline.selection.normalise import keyed, normalise, normalise_array, text_hashes
from pipeline.stages import OUTPUT, check, open_writer, pending, reader, stage_dir, summary, up_to_date
from pipeline.store import SUCCESS, StageReader, atomic_write_json
from verifiers.extract import METHODS, trim_after_answer

__all__ = ["Context", "Selection", "normalise", "run", "select", "select_rows"]

# Reasons that drop rows because a rule says so; every other reason keeps one row of each
# group of duplicates, so it never empties a problem.
RULES = ("answer_only", "contaminated_question", "contaminated_text", "below_min_correct", "easy", "exported_before",
         "exact_duplicate_across_problems")


@dataclass
class Context:
    """What selection needs beyond one shard."""

    exported: set[int] = field(default_factory=set)  # keyed hashes (problem id, text) exported earlier
    kept_texts: set[int] = field(default_factory=set)  # text hashes kept so far (exact_across_problems)
    eval_index: EvalIndex | None = None


@dataclass
class Selection:
    kept: pa.Table
    removed: Counter
    repeated: int
    reasons: list[str | None]  # per input row: why it went, None if kept
    problems: dict[str, dict]  # per problem: rows, correct, distinct_paths, kept
    decontaminated: list[dict]
    rejects: pa.Table


def _column(table: pa.Table, name: str, default) -> list:
    if name not in table.column_names:
        return [default] * table.num_rows
    return [default if v is None else v for v in table.column(name).to_pylist()]


def _question_from_prompt(prompt: str | None) -> str:
    try:
        messages = json.loads(prompt or "[]")
        return next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
    except (ValueError, TypeError, AttributeError, KeyError):
        return ""


def _drop_answer_only(table: pa.Table, order: list[int], why: list[str | None], texts, questions: dict) -> None:
    """Mark `answer_only` the correct rows that show no step to their answer."""
    extracted = _column(table, "extracted", "")
    prompts = _column(table, "prompt", "")
    pids = _column(table, "problem_id", "")
    for pos, i in enumerate(order):
        if why[pos] is None:
            question = questions.get(pids[i]) or _question_from_prompt(prompts[i])
            if not shows_work(texts[pos].as_py(), extracted[i], question):
                why[pos] = "answer_only"


def select_rows(table: pa.Table, config: DedupConfig, seed: int, questions: dict[str, str] | None = None,
                context: Context | None = None) -> Selection:
    """Which verdict rows of whole problems to keep, and why each other row went.

    `questions` maps problem id to question text for decontamination (default: the last user
    turn of each row's prompt). `context` carries state across shards; it is updated.
    """
    ctx = context if context is not None else Context()
    n = table.num_rows
    pids = _column(table, "problem_id", "")
    sample_idx = _column(table, "sample_idx", -1)
    rationalized = [bool(v) for v in _column(table, "rationalized", False)]
    status = _column(table, "status", "")
    group_of: dict[str, int] = {}
    for p in pids:
        group_of.setdefault(p, len(group_of))
    order = sorted(range(n), key=lambda i: (group_of[pids[i]], rationalized[i], sample_idx[i], i))
    pid = [pids[i] for i in order]
    gid = np.array([group_of[p] for p in pid], np.int64)
    rat = [rationalized[i] for i in order]
    sidx = [sample_idx[i] for i in order]
    texts = pc.fill_null(table.column("text"), "").take(pa.array(order, pa.int64())) if n else pa.array([], pa.string())
    norm = normalise_array(texts)
    spans: dict[str, range] = {}  # a problem's rows are contiguous in priority order
    for pos, p in enumerate(pid):
        spans[p] = range(spans[p].start if p in spans else pos, pos + 1)
    why: list[str | None] = [None] * n
    for pos, i in enumerate(order):
        if status[i] != "correct":
            why[pos] = "not_correct"

    # per-problem counts, from the model's own samples (rationalized rows are not samples)
    problems: dict[str, dict] = {}
    for pos in range(n):
        s = problems.setdefault(pid[pos], {"rows": 0, "samples": 0, "correct": 0, "model_correct": 0,
                                           "distinct_paths": None, "kept": 0})
        s["rows"] += 1
        s["samples"] += not rat[pos]
        s["correct"] += why[pos] is None
        s["model_correct"] += why[pos] is None and not rat[pos]
    if config.require_work:  # after the counts: the pass rate is the verifier's, not this rule's
        _drop_answer_only(table, order, why, texts, questions or {})

    def alive() -> list[int]:
        return [pos for pos in range(n) if why[pos] is None]

    decontaminated: list[dict] = []
    reject_rows: list[dict] = []
    index = ctx.eval_index
    if index is not None and n:
        names = list(problems)
        qs = questions or {}
        question_text = [qs.get(p) or _question_from_prompt(table.column("prompt")[order[spans[p].start]].as_py())
                         for p in names]
        bad_problem = dict(zip(names, index.find(question_text)))
        live = alive()
        text_matches = index.find(texts.take(pa.array(live, pa.int64()))) if live else []
        for pos, text_match in zip(live, text_matches):
            match, where = bad_problem[pid[pos]], "question"
            if match is None:
                match, where = text_match, "text"
            if match is None:
                continue
            why[pos] = f"contaminated_{where}"
            entry = {"problem_id": pid[pos], "sample_idx": sidx[pos], "rationalized": rat[pos], "where": where,
                     "eval_set": match.eval_set, "eval_index": match.eval_index, "ngram": match.ngram}
            decontaminated.append(entry)
            reject_rows.append({
                "stage": "dedup", "source_index": sidx[pos], "problem_id": pid[pos],
                "reason": f"contaminated_{where}: shares {index.ngram} words with {match.eval_set} row "
                          f"{match.eval_index}: {match.ngram!r}",
                "raw": texts[pos].as_py()[:500]})

    def pass_rate(p: str) -> float | None:
        s = problems[p]
        return s["model_correct"] / s["samples"] if s["samples"] else None

    easy = {p for p in problems if config.easy_threshold is not None and pass_rate(p) is not None
            and pass_rate(p) >= config.easy_threshold}
    for pos in alive():
        s = problems[pid[pos]]
        if 0 < s["model_correct"] < config.min_correct:
            why[pos] = "below_min_correct"
        elif pid[pos] in easy and config.easy_keep == 0:
            why[pos] = "easy"

    live = alive()
    hashes = np.zeros(n, np.int64)
    if live:
        hashes[live] = text_hashes(norm.take(pa.array(live, pa.int64())), normalised=True)
    if config.across_iterations and ctx.exported and live:
        keys = keyed(hashes[live], [pid[pos] for pos in live])
        for pos, key in zip(live, keys.tolist()):
            if key in ctx.exported:
                why[pos] = "exported_before"

    seen: set[tuple[int, int]] = set()
    for pos in alive():
        key = (int(gid[pos]), int(hashes[pos]))
        if key in seen:
            why[pos] = "exact_duplicate"
        seen.add(key)

    if config.paths:
        seen_paths: set[tuple] = set()
        live = alive()
        for p in {pid[pos] for pos in live}:
            problems[p]["distinct_paths"] = 0
        for pos, text in zip(live, texts.take(pa.array(live, pa.int64())).to_pylist() if live else []):
            key = paths.path_key(text)
            if key is None:  # no equations: never a duplicate path; together one path ()
                if (gid[pos], ()) not in seen_paths:
                    seen_paths.add((gid[pos], ()))
                    problems[pid[pos]]["distinct_paths"] += 1
                continue
            if (gid[pos], key) in seen_paths:
                why[pos] = "same_path"
                continue
            seen_paths.add((gid[pos], key))
            problems[pid[pos]]["distinct_paths"] += 1

    live = alive()
    signatures: dict[int, np.ndarray] = {}
    near = config.near_dup
    if live and (near.enabled or config.cap_policy == "diverse"):
        hasher = MinHasher(near.num_perm, near.ngram, near.unit, seed=1)
        sig = hasher.signatures(norm.take(pa.array(live, pa.int64())), normalised=True)
        signatures = {pos: sig[r] for r, pos in enumerate(live)}
        if near.enabled:
            dropped = near_duplicates(sig, gid[live], near.bands, near.threshold)
            for r in np.flatnonzero(dropped).tolist():
                why[live[r]] = "near_duplicate"

    lengths = pc.utf8_length(texts).to_pylist() if n else []
    by_problem: dict[str, list[int]] = {}
    for pos in alive():
        by_problem.setdefault(pid[pos], []).append(pos)
    kept: list[int] = []
    repeated = 0
    for p, rows in by_problem.items():
        if config.exact_across_problems:
            for pos in rows:
                if int(hashes[pos]) in ctx.kept_texts:
                    why[pos] = "exact_duplicate_across_problems"
            rows = [pos for pos in rows if why[pos] is None]
        k = balance.target(config.balance, config.max_per_problem, pass_rate(p))
        over = "over_cap"
        if p in easy:
            k, over = min(k, config.easy_keep), "easy"
        if len(rows) > k:
            keys = [balance.order_key(seed, p, sidx[pos], rat[pos]) for pos in rows]
            sigs = np.stack([signatures[pos] for pos in rows]) if config.cap_policy == "diverse" else None
            chosen = balance.choose(rows, k, config.cap_policy, keys, [lengths[pos] for pos in rows], sigs)
            for pos in set(rows) - set(chosen):
                why[pos] = over
            rows = chosen
        final = balance.repeat_to(rows, k) if config.balance == "uniform" else rows
        repeated += len(final) - len(rows)
        if config.exact_across_problems:
            ctx.kept_texts.update(int(hashes[pos]) for pos in rows)
        problems[p]["kept"] = len(final)
        kept.extend(final)

    originals = [order[pos] for pos in kept]
    out = table.take(pa.array(originals, pa.int64()))
    columns = []
    for f in schema.SELECTED:
        if f.name in out.column_names:
            columns.append(out.column(f.name).cast(f.type))
        else:
            columns.append(pa.array([False if f.name == "rationalized" else None] * out.num_rows, f.type))
    kept_table = pa.Table.from_arrays(columns, schema=schema.SELECTED)
    reasons: list[str | None] = [None] * n
    for pos, i in enumerate(order):
        reasons[i] = why[pos]
    for p, s in problems.items():
        s.pop("model_correct")
        s.pop("samples")
        if s["correct"] and not s["kept"]:
            # the rules that emptied it (duplicates of rows a rule then removed go with them)
            s["emptied_by"] = sorted({why[pos] for pos in spans[p] if why[pos] in RULES})
    return Selection(kept_table, Counter(r for r in why if r is not None), repeated, reasons, problems,
                     decontaminated, schema.table(reject_rows, schema.REJECTS))


def select(table: pa.Table, max_per_problem: int | None = None, seed: int = 0, config: DedupConfig | None = None,
           questions: dict[str, str] | None = None, context: Context | None = None) -> tuple[pa.Table, Counter]:
    """Rows to keep from one shard's verdicts, and how many went for which reason."""
    config = config or DedupConfig()
    if max_per_problem is not None:
        config = config.model_copy(update={"max_per_problem": max_per_problem})
    s = select_rows(table, config, seed, questions, context)
    return s.kept, s.removed


# -- the stage ---------------------------------------------------------------------------------

def _earlier_exports(cfg: Config, iteration: int) -> tuple[set[int], list[dict]]:
    """Keyed hashes of every row exported by iterations 1..iteration-1 of this run."""
    exported: set[int] = set()
    found = []
    for j in range(1, iteration):
        path = cfg.iter_dir(j) / OUTPUT["export"]
        if not (path / SUCCESS).exists():
            found.append({"iteration": j, "export": None})
            continue
        earlier = StageReader(path, "export")
        for _, t in earlier.iter_shards(columns=["problem_id", "completion"]):
            exported.update(keyed(text_hashes(t.column("completion")), t.column("problem_id").to_pylist()).tolist())
        found.append({"iteration": j, "export": earlier.output_hash, "rows": earlier.rows})
    return exported, found


def _sources(cfg: Config, iteration: int) -> list[StageReader]:
    """Verdict stages that feed dedup: verify, and rationalize where that stage exists and ran."""
    sources = [reader(cfg, iteration, "verify")]
    if "rationalize" in OUTPUT and (stage_dir(cfg, iteration, "rationalize") / SUCCESS).exists():
        sources.append(reader(cfg, iteration, "rationalize"))
    return sources


def _read_inputs(sources: list[StageReader], name: str) -> pa.Table:
    tables = []
    for src in sources:
        if not any(s["file"] == name for s in src.shards):
            continue
        t = src.read_shard(name)
        if "rationalized" not in t.column_names:  # verdicts written before the column existed
            t = t.append_column("rationalized", pa.array([src.manifest.get("stage") == "rationalize"] * t.num_rows))
        tables.append(t)
    return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]


def _questions(cfg: Config, iteration: int, name: str) -> dict[str, str] | None:
    problems = reader(cfg, iteration, "prepare")
    if not any(s["file"] == name for s in problems.shards):
        return None
    t = problems.read_shard(name, columns=["problem_id", "question"])
    return dict(zip(t.column("problem_id").to_pylist(), t.column("question").to_pylist()))


def trim_methods(cfg: Config) -> tuple[str, ...] | None:
    """The extraction methods whose final-answer statement ends a trimmed text (the verifier's),
    or None when `export.trim_after_answer` is off."""
    if not cfg.export.trim_after_answer:
        return None
    return tuple(cfg.verify.params.get("methods", METHODS))


def trimmed(table: pa.Table, methods: tuple[str, ...]) -> pa.Table:
    """Correct rows' text cut after their final answer; other rows are dropped by dedup anyway."""
    texts = [trim_after_answer(t, methods) if s == "correct" and t else t
             for t, s in zip(table.column("text").to_pylist(), table.column("status").to_pylist())]
    i = table.schema.get_field_index("text")
    return table.set_column(i, table.schema.field(i), pa.array(texts, table.schema.field(i).type))


def _histogram(values) -> dict[str, int]:
    return {str(k): v for k, v in sorted(Counter(values).items())}


def run(cfg: Config, iteration: int, force: bool = False) -> dict:
    started = time.time()
    dc = cfg.dedup
    sources = _sources(cfg, iteration)
    names = [s["file"] for s in sources[0].shards]
    ctx = Context(eval_index=load_index(dc.decontaminate.eval_sets, dc.decontaminate.ngram))
    earlier: list[dict] = []
    if dc.across_iterations and iteration > 1:
        ctx.exported, earlier = _earlier_exports(cfg, iteration)
    trim = trim_methods(cfg)
    parts = {"input": [s.output_hash for s in sources], "dedup": dc.model_dump(mode="json"), "seed": cfg.run.seed,
             "trim_after_answer": trim,
             "eval_sets": ctx.eval_index.digest() if ctx.eval_index else None,
             "earlier_exports": [e["export"] for e in earlier]}
    input_rows = sum(s.rows for s in sources)
    with open_writer(cfg, iteration, "dedup", parts, force) as writer:
        if writer.up_to_date:
            return up_to_date("dedup", writer)
        todo = pending(sources[0], writer)
        if dc.exact_across_problems and todo:
            # Kept texts of earlier shards decide later ones: redo everything after the first
            # shard not done, and rebuild the set from the shards before it.
            first = names.index(todo[0])
            todo = names[first:]
            for done in names[:first]:
                ctx.kept_texts.update(text_hashes(pq.read_table(writer.path / done, columns=["text"]).column("text")).tolist())
        for name in tqdm(todo, desc="dedup", unit="shard", disable=len(todo) < 2, leave=False):
            table = _read_inputs(sources, name)
            if trim:
                table = trimmed(table, trim)
            questions = _questions(cfg, iteration, name) if ctx.eval_index or dc.require_work else None
            s = select_rows(table, dc, cfg.run.seed, questions, ctx)
            check(s.kept.num_rows == table.num_rows - sum(s.removed.values()) + s.repeated,
                  f"dedup {name}: {s.kept.num_rows} kept != {table.num_rows} input rows"
                  f" - {sum(s.removed.values())} removed + {s.repeated} repeated")
            writer.write_shard(name, s.kept, s.rejects, removed=dict(s.removed), repeated=s.repeated,
                               problems={p: [v["rows"], v["correct"], v["distinct_paths"], v["kept"], v.get("emptied_by")]
                                         for p, v in s.problems.items()},
                               decontaminated=s.decontaminated)
        stats = _stats(writer, names, input_rows, earlier, ctx.eval_index)
        kept_rows = sum(writer.done[n]["rows"] for n in names)
        check(  # before finish: a stage that breaks it is never marked _SUCCESS
            kept_rows == input_rows - sum(stats["removed"].values()) + stats["repeated"],
            f"dedup: {kept_rows} kept != {input_rows} input rows - {sum(stats['removed'].values())} removed"
            f" + {stats['repeated']} repeated",
        )
        atomic_write_json(writer.path / "stats.json", stats)
        short = {k: stats[k] for k in ("input", "kept", "removed", "repeated", "problems")}
        manifest = writer.finish(names, stats=short)
    why = ", ".join(f"{k} {v}" for k, v in sorted(stats["removed"].items())) or "nothing"
    extra = f", {stats['repeated']} repeated" if stats["repeated"] else ""
    pr = stats["problems"]
    summary("dedup", f"{input_rows} verdicts -> {manifest['rows']} kept ({pr['kept']}/{pr['solved']} solved problems); "
                     f"removed: {why}{extra}", started)
    return manifest


def _stats(writer, names: list[str], input_rows: int, earlier: list[dict], index: EvalIndex | None) -> dict:
    removed: Counter = Counter()
    repeated = 0
    per_problem: dict[str, dict] = {}
    decontaminated: list[dict] = []
    for n in names:
        entry = writer.done[n]
        removed.update(entry.get("removed", {}))
        repeated += entry.get("repeated", 0)
        decontaminated.extend(entry.get("decontaminated", []))
        for p, (rows, correct, distinct_paths, kept, emptied_by) in entry.get("problems", {}).items():
            per_problem[p] = {"rows": rows, "correct": correct, "distinct_paths": distinct_paths, "kept": kept}
            if emptied_by:
                per_problem[p]["emptied_by"] = emptied_by
    solved = [v for v in per_problem.values() if v["correct"]]
    return {
        "input": input_rows,
        "kept": sum(writer.done[n]["rows"] for n in names),
        "removed": dict(sorted(removed.items())),
        "repeated": repeated,
        "problems": {"total": len(per_problem), "solved": len(solved), "kept": sum(1 for v in solved if v["kept"])},
        "histograms": {
            "correct_per_problem": _histogram(v["correct"] for v in solved),
            "kept_per_problem": _histogram(v["kept"] for v in solved),
            "distinct_paths_per_problem": _histogram(v["distinct_paths"] for v in solved
                                                     if v["distinct_paths"] is not None),
        },
        "decontaminated": decontaminated,
        "eval_sets": {"names": index.names, "questions": index.questions, "ngram": index.ngram} if index else None,
        "earlier_exports": earlier,
        "per_problem": per_problem,
    }
