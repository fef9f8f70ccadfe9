"""dedup: keep correct, distinct, diverse and clean rationales, and report what went and why.

Selection is an ordered list of named rules (pipeline/selection/rules.py, `STEPS`), each a
small function whose reason is its count in stats.json and `_rejects.parquet`:
`not_correct`, `answer_only` (a right answer with no step to it; `require_work`),
`contaminated_question` / `contaminated_text` (`decontaminate`), `below_min_correct` / `easy`,
`exported_before` (`across_iterations`), `exact_duplicate`, `same_path` (`paths`),
`near_duplicate` (`near_dup`), `exact_duplicate_across_problems`, `over_cap` (`max_per_problem`,
`balance`, `cap_policy`; `balance: uniform` repeats rows, counted as `repeated`) and
`over_rationalized_share` (`rationalize.max_share` of each shard's kept rows). So `selected/`
is exactly what is exported.

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

from collections import Counter
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from selfimprove.pipeline import schema
from selfimprove.pipeline.config import Config, DedupConfig
from selfimprove.pipeline.selection.contamination import EvalIndex, load_index, run_eval_sets
from selfimprove.pipeline.selection.normalise import keyed, normalise, text_hashes
from selfimprove.pipeline.selection.rules import RULES, STEPS, Context, Selection, select_rows
from selfimprove.pipeline.runs import OUTPUT, check, reader, stage_dir
from selfimprove.pipeline.skeleton import MappedStage, ShardOutput, run_mapped
from selfimprove.pipeline.store import SUCCESS, StageReader, atomic_write_json
from selfimprove.pipeline.verification import trim_methods
from selfimprove.verifiers.extract import trim_after_answer

__all__ = ["RULES", "STEPS", "Context", "Selection", "normalise", "run", "select", "select_rows"]


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
    """Keyed hashes of every row exported by iterations 1..iteration-1 of this run (their `sft`
    config: the completion is one assistant message)."""
    from selfimprove.pipeline.store import StoreError

    exported: set[int] = set()
    found = []
    for j in range(1, iteration):
        path = cfg.iter_dir(j) / OUTPUT["export"]
        if not (path / SUCCESS).exists():
            found.append({"iteration": j, "export": None})
            continue
        earlier = StageReader(path, "export")
        shards = [(s["file"], s["rows"], schema.export_shard_of(s["file"])) for s in earlier.shards]
        if earlier.rows and not any(cs for _, _, cs in shards):
            raise StoreError(f"{path} was written by an older selfimprove (no sft-*.parquet shards); "
                             f"rerun `selfimprove export --iter {j} --force`")
        rows = 0
        for name, n, cs in shards:
            if cs and cs[0] == "sft":
                t = earlier.read_shard(name, columns=["problem_id", "completion"])
                texts = pa.array([m[-1]["content"] for m in t.column("completion").to_pylist()], pa.string())
                exported.update(keyed(text_hashes(texts), t.column("problem_id").to_pylist()).tolist())
                rows += n
        found.append({"iteration": j, "export": earlier.output_hash, "rows": rows})
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


def _questions(problems: StageReader | None, name: str) -> dict[str, str] | None:
    """The shard's questions by problem id (None where the problems are not there: rules then read
    the question from each row's prompt)."""
    if problems is None or not any(s["file"] == name for s in problems.shards):
        return None
    t = problems.read_shard(name, columns=["problem_id", "question"])
    return dict(zip(t.column("problem_id").to_pylist(), t.column("question").to_pylist()))


def trimmed(table: pa.Table, methods: tuple[str, ...]) -> pa.Table:
    """Correct rows' text cut after their final answer; other rows are dropped by dedup anyway."""
    texts = [trim_after_answer(t, methods) if s == "correct" and t else t
             for t, s in zip(table.column("text").to_pylist(), table.column("status").to_pylist())]
    i = table.schema.get_field_index("text")
    return table.set_column(i, table.schema.field(i), pa.array(texts, table.schema.field(i).type))


def _histogram(values) -> dict[str, int]:
    return {str(k): v for k, v in sorted(Counter(values).items())}


class DedupStage(MappedStage):
    """Each verdict shard (with its rationalized rows) through the rules, in order: the rules
    carry state from shard to shard (texts kept so far), so the work runs here, one shard after
    another."""

    name, source = "dedup", "verify"

    def __init__(self, cfg: Config, iteration: int):
        super().__init__(cfg, iteration)
        dc = cfg.dedup
        self.sources = _sources(cfg, iteration)
        self.ctx = Context(eval_index=load_index(run_eval_sets(cfg), dc.decontaminate.ngram))
        self.earlier: list[dict] = []
        if dc.across_iterations and iteration > 1:
            self.ctx.exported, self.earlier = _earlier_exports(cfg, iteration)
        self.trim = trim_methods(cfg)
        self.share = cfg.rationalize.max_share if cfg.rationalize.enabled else None
        self.input_rows = sum(s.rows for s in self.sources)
        prepared = (stage_dir(cfg, iteration, "prepare") / SUCCESS).exists()
        self.problems = reader(cfg, iteration, "prepare") if prepared else None  # opened once, not per shard
        self.report: dict = {}

    def fingerprint(self) -> dict:
        return {"input": [s.output_hash for s in self.sources], "dedup": self.cfg.dedup.model_dump(mode="json"),
                "seed": self.cfg.run.seed, "max_rationalized_share": self.share, "trim_after_answer": self.trim,
                "eval_sets": self.ctx.eval_index.digest() if self.ctx.eval_index else None,
                "earlier_exports": [e["export"] for e in self.earlier]}

    def todo(self, names: list[str], writer) -> list[str]:
        todo = super().todo(names, writer)
        if self.cfg.dedup.exact_across_problems and todo:
            # Kept texts of earlier shards decide later ones: redo everything after the first
            # shard not done, and rebuild the set from the shards before it.
            first = names.index(todo[0])
            todo = names[first:]
            for done in names[:first]:
                texts = pq.read_table(writer.path / done, columns=["text"]).column("text")
                self.ctx.kept_texts.update(text_hashes(texts).tolist())
        return todo

    def work(self, names: list[str]) -> Iterator[tuple[str, ShardOutput]]:
        dc = self.cfg.dedup
        for name in tqdm(names, desc="dedup", unit="shard", disable=len(names) < 2, leave=False):
            table = _read_inputs(self.sources, name)
            if self.trim:
                table = trimmed(table, self.trim)
            questions = _questions(self.problems, name) if self.ctx.eval_index or dc.require_work else None
            s = select_rows(table, dc, self.cfg.run.seed, questions, self.ctx, max_rationalized_share=self.share)
            check(s.kept.num_rows == table.num_rows - sum(s.removed.values()) + s.repeated,
                  f"dedup {name}: {s.kept.num_rows} kept != {table.num_rows} input rows"
                  f" - {sum(s.removed.values())} removed + {s.repeated} repeated")
            problems = {p: [v["rows"], v["correct"], v["distinct_paths"], v["kept"], v.get("emptied_by")]
                        for p, v in s.problems.items()}
            yield name, ShardOutput(s.kept, s.rejects, info={"removed": dict(s.removed), "repeated": s.repeated,
                                                              "problems": problems, "decontaminated": s.decontaminated})

    def check_total(self, writer, names: list[str]) -> None:
        self.report = _stats(writer, names, self.input_rows, self.earlier, self.ctx.eval_index)
        kept_rows = sum(writer.done[n]["rows"] for n in names)
        removed, repeated = sum(self.report["removed"].values()), self.report["repeated"]
        check(kept_rows == self.input_rows - removed + repeated,
              f"dedup: {kept_rows} kept != {self.input_rows} input rows - {removed} removed + {repeated} repeated")

    def stats(self, writer, names: list[str]) -> dict:
        atomic_write_json(writer.path / "stats.json", self.report)
        return {k: self.report[k] for k in ("input", "kept", "removed", "repeated", "problems")}

    def summary(self, manifest: dict, resumed: int) -> str:
        st = manifest["stats"]
        why = ", ".join(f"{k} {v}" for k, v in sorted(st["removed"].items())) or "nothing"
        extra = f", {st['repeated']} repeated" if st["repeated"] else ""
        pr = st["problems"]
        return (f"{self.input_rows} verdicts -> {manifest['rows']} kept ({pr['kept']}/{pr['solved']} solved problems); "
                f"removed: {why}{extra}")


def run(cfg: Config, iteration: int, force: bool = False) -> dict:
    return run_mapped(DedupStage(cfg, iteration), force)


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
