"""Selection as an ordered list of named rules over one shard's verdict rows.

Each rule is a small function that looks at the rows still kept and marks why others go; the
reason it writes is its count in `stats.json`. `select_rows` runs them in `STEPS` order. Rows
are walked in priority order (a problem's rows together; the model's own samples before
rationalized ones, then by sample index), so of duplicates the first is kept.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from selfimprove.pipeline import schema
from selfimprove.pipeline.config import DedupConfig
from selfimprove.pipeline.selection import balance, paths
from selfimprove.pipeline.selection.contamination import EvalIndex
from selfimprove.pipeline.selection.minhash import MinHasher, near_duplicates
from selfimprove.pipeline.selection.normalise import keyed, normalise_array, text_hashes
from selfimprove.pipeline.selection.reasoning import shows_work

# Reasons that drop rows because a rule says so; every other reason keeps one row of each
# group of duplicates, so it never empties a problem.
RULES = ("answer_only", "contaminated_question", "contaminated_text", "below_min_correct", "easy", "exported_before",
         "exact_duplicate_across_problems", "over_rationalized_share")


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


def question_from_prompt(prompt: str | None) -> str:
    try:
        messages = json.loads(prompt or "[]")
        return next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
    except (ValueError, TypeError, AttributeError, KeyError):
        return ""


@dataclass
class Shard:
    """One shard's rows in priority order (position `pos`), what every rule reads and writes."""

    table: pa.Table
    config: DedupConfig
    seed: int
    ctx: Context
    questions: dict[str, str]
    max_share: float | None  # of the shard's kept rows that may be rationalized (None: no cap)
    order: list[int]  # pos -> row index in `table`
    pid: list[str]
    gid: np.ndarray
    rat: list[bool]
    sidx: list[int]
    texts: pa.Array
    why: list[str | None]
    spans: dict[str, range] = field(default_factory=dict)  # a problem's rows are contiguous
    problems: dict[str, dict] = field(default_factory=dict)
    hashes: np.ndarray | None = None
    signatures: dict[int, np.ndarray] = field(default_factory=dict)
    easy: set[str] = field(default_factory=set)
    kept: list[int] = field(default_factory=list)
    repeated: int = 0
    decontaminated: list[dict] = field(default_factory=list)
    reject_rows: list[dict] = field(default_factory=list)
    _norm: pa.Array | None = None

    @classmethod
    def of(cls, table: pa.Table, config: DedupConfig, seed: int, ctx: Context, questions: dict[str, str],
           max_share: float | None = None) -> "Shard":
        n = table.num_rows
        pids = _column(table, "problem_id", "")
        sample_idx = _column(table, "sample_idx", -1)
        rationalized = [bool(v) for v in _column(table, "rationalized", False)]
        group_of: dict[str, int] = {}
        for p in pids:
            group_of.setdefault(p, len(group_of))
        order = sorted(range(n), key=lambda i: (group_of[pids[i]], rationalized[i], sample_idx[i], i))
        pid = [pids[i] for i in order]
        texts = pc.fill_null(table.column("text"), "").take(pa.array(order, pa.int64())) if n else pa.array([], pa.string())
        s = cls(table, config, seed, ctx, questions, max_share, order, pid, np.array([group_of[p] for p in pid], np.int64),
                [rationalized[i] for i in order], [sample_idx[i] for i in order], texts, [None] * n)
        for pos, p in enumerate(pid):
            s.spans[p] = range(s.spans[p].start if p in s.spans else pos, pos + 1)
        return s

    @property
    def norm(self) -> pa.Array:
        if self._norm is None:
            self._norm = normalise_array(self.texts)
        return self._norm

    def alive(self) -> list[int]:
        return [pos for pos in range(len(self.why)) if self.why[pos] is None]

    def pass_rate(self, p: str) -> float | None:
        s = self.problems[p]
        return s["model_correct"] / s["samples"] if s["samples"] else None


# -- the rules, in order ------------------------------------------------------------------------

def not_correct(s: Shard) -> None:
    """`not_correct`: the verifier did not accept the row."""
    status = _column(s.table, "status", "")
    for pos, i in enumerate(s.order):
        if status[i] != "correct":
            s.why[pos] = "not_correct"


def count_problems(s: Shard) -> None:
    """Per-problem counts from the verifier's verdicts (rationalized rows are not samples); no row goes."""
    for pos in range(len(s.why)):
        c = s.problems.setdefault(s.pid[pos], {"rows": 0, "samples": 0, "correct": 0, "model_correct": 0,
                                                "distinct_paths": None, "kept": 0})
        c["rows"] += 1
        c["samples"] += not s.rat[pos]
        c["correct"] += s.why[pos] is None
        c["model_correct"] += s.why[pos] is None and not s.rat[pos]


def answer_only(s: Shard) -> None:
    """`answer_only`: a correct row that states its answer and shows no step to it (`require_work`)."""
    if not s.config.require_work:
        return
    extracted = _column(s.table, "extracted", "")
    prompts = _column(s.table, "prompt", "")
    for pos in s.alive():
        i = s.order[pos]
        question = s.questions.get(s.pid[pos]) or question_from_prompt(prompts[i])
        if not shows_work(s.texts[pos].as_py(), extracted[i], question):
            s.why[pos] = "answer_only"


def decontaminate(s: Shard) -> None:
    """`contaminated_question` (every row of the problem) / `contaminated_text`: an n-gram shared
    with an evaluation set; each listed in the rejects and stats with the shared words."""
    index = s.ctx.eval_index
    if index is None or not s.why:
        return
    names = list(s.problems)
    question_text = [s.questions.get(p) or question_from_prompt(s.table.column("prompt")[s.order[s.spans[p].start]].as_py())
                     for p in names]
    bad_problem = dict(zip(names, index.find(question_text)))
    live = s.alive()
    text_matches = index.find(s.texts.take(pa.array(live, pa.int64()))) if live else []
    for pos, text_match in zip(live, text_matches):
        match, where = bad_problem[s.pid[pos]], "question"
        if match is None:
            match, where = text_match, "text"
        if match is None:
            continue
        s.why[pos] = f"contaminated_{where}"
        s.decontaminated.append({"problem_id": s.pid[pos], "sample_idx": s.sidx[pos], "rationalized": s.rat[pos],
                                 "where": where, "eval_set": match.eval_set, "eval_index": match.eval_index,
                                 "ngram": match.ngram})
        s.reject_rows.append({
            "stage": "dedup", "source_index": s.sidx[pos], "problem_id": s.pid[pos],
            "reason": f"contaminated_{where}: shares {index.ngram} words with {match.eval_set} row "
                      f"{match.eval_index}: {match.ngram!r}",
            "raw": s.texts[pos].as_py()[:500]})


def problem_rules(s: Shard) -> None:
    """`below_min_correct` (solved fewer than `min_correct` times) and `easy` (pass rate at
    least `easy_threshold`, with `easy_keep` 0) from the model's own pass rate."""
    c = s.config
    s.easy = {p for p in s.problems if c.easy_threshold is not None and s.pass_rate(p) is not None
              and s.pass_rate(p) >= c.easy_threshold}
    for pos in s.alive():
        if 0 < s.problems[s.pid[pos]]["model_correct"] < c.min_correct:
            s.why[pos] = "below_min_correct"
        elif s.pid[pos] in s.easy and c.easy_keep == 0:
            s.why[pos] = "easy"


def exported_before(s: Shard) -> None:
    """`exported_before`: an earlier iteration exported the same problem and normalised text."""
    live = s.alive()
    s.hashes = np.zeros(len(s.why), np.int64)
    if live:
        s.hashes[live] = text_hashes(s.norm.take(pa.array(live, pa.int64())), normalised=True)
    if s.config.across_iterations and s.ctx.exported and live:
        keys = keyed(s.hashes[live], [s.pid[pos] for pos in live])
        for pos, key in zip(live, keys.tolist()):
            if key in s.ctx.exported:
                s.why[pos] = "exported_before"


def exact_duplicate(s: Shard) -> None:
    """`exact_duplicate`: the same normalised text as a kept row of the problem."""
    seen: set[tuple[int, int]] = set()
    for pos in s.alive():
        key = (int(s.gid[pos]), int(s.hashes[pos]))
        if key in seen:
            s.why[pos] = "exact_duplicate"
        seen.add(key)


def same_path(s: Shard) -> None:
    """`same_path`: the same list of valid equations as a kept row of the problem (RFT; `paths`)."""
    if not s.config.paths:
        return
    seen: set[tuple] = set()
    live = s.alive()
    for p in {s.pid[pos] for pos in live}:
        s.problems[p]["distinct_paths"] = 0
    for pos, text in zip(live, s.texts.take(pa.array(live, pa.int64())).to_pylist() if live else []):
        key = paths.path_key(text)
        if key is None:  # no equations: never a duplicate path; together one path ()
            key = ()
            if (s.gid[pos], key) in seen:
                continue
        elif (s.gid[pos], key) in seen:
            s.why[pos] = "same_path"
            continue
        seen.add((s.gid[pos], key))
        s.problems[s.pid[pos]]["distinct_paths"] += 1


def near_duplicate(s: Shard) -> None:
    """`near_duplicate`: MinHash/LSH Jaccard >= `near_dup.threshold` with a kept row of the problem
    (the signatures also serve `cap_policy: diverse`)."""
    live = s.alive()
    near = s.config.near_dup
    if not live or not (near.enabled or s.config.cap_policy == "diverse"):
        return
    hasher = MinHasher(near.num_perm, near.ngram, near.unit, seed=1)
    sig = hasher.signatures(s.norm.take(pa.array(live, pa.int64())), normalised=True)
    s.signatures = {pos: sig[r] for r, pos in enumerate(live)}
    if near.enabled:
        for r in np.flatnonzero(near_duplicates(sig, s.gid[live], near.bands, near.threshold)).tolist():
            s.why[live[r]] = "near_duplicate"


def cap(s: Shard) -> None:
    """`exact_duplicate_across_problems` (`exact_across_problems`), then `over_cap` (or `easy` with
    `easy_keep`): rows beyond the problem's target (`max_per_problem`, `balance`, `cap_policy`);
    `balance: uniform` repeats rows of problems short of it (counted as `repeated`)."""
    c = s.config
    lengths = pc.utf8_length(s.texts).to_pylist() if s.why else []
    by_problem: dict[str, list[int]] = {}
    for pos in s.alive():
        by_problem.setdefault(s.pid[pos], []).append(pos)
    for p, rows in by_problem.items():
        if c.exact_across_problems:
            for pos in rows:
                if int(s.hashes[pos]) in s.ctx.kept_texts:
                    s.why[pos] = "exact_duplicate_across_problems"
            rows = [pos for pos in rows if s.why[pos] is None]
        k = balance.target(c.balance, c.max_per_problem, s.pass_rate(p))
        over = "over_cap"
        if p in s.easy:
            k, over = min(k, c.easy_keep), "easy"
        if len(rows) > k:
            keys = [balance.order_key(s.seed, p, s.sidx[pos], s.rat[pos]) for pos in rows]
            sigs = np.stack([s.signatures[pos] for pos in rows]) if c.cap_policy == "diverse" else None
            chosen = balance.choose(rows, k, c.cap_policy, keys, [lengths[pos] for pos in rows], sigs)
            for pos in set(rows) - set(chosen):
                s.why[pos] = over
            rows = chosen
        final = balance.repeat_to(rows, k) if c.balance == "uniform" else rows
        s.repeated += len(final) - len(rows)
        if c.exact_across_problems:
            s.ctx.kept_texts.update(int(s.hashes[pos]) for pos in rows)
        s.problems[p]["kept"] = len(final)
        s.kept.extend(final)


def rationalized_share(s: Shard) -> None:
    """`over_rationalized_share`: rationalized rows beyond `rationalize.max_share` of the shard's
    kept rows (the model's own rows are never dropped to make room; a seeded choice keeps the rest)."""
    share = s.max_share
    hinted = [pos for pos in dict.fromkeys(s.kept) if s.rat[pos]]
    if share is None or share >= 1 or not hinted:
        return
    plain = sum(1 for pos in s.kept if not s.rat[pos])
    quota = int(share / (1 - share) * plain + 1e-9)
    if len(hinted) <= quota:
        return
    ranked = sorted(hinted, key=lambda pos: balance.order_key(s.seed, s.pid[pos], s.sidx[pos], True))
    for pos in ranked[quota:]:
        s.why[pos] = "over_rationalized_share"
    dropped = set(ranked[quota:])
    for pos in dropped:
        s.problems[s.pid[pos]]["kept"] -= s.kept.count(pos)
    s.repeated -= sum(s.kept.count(pos) - 1 for pos in dropped)
    s.kept = [pos for pos in s.kept if pos not in dropped]


STEPS = (not_correct, count_problems, answer_only, decontaminate, problem_rules, exported_before, exact_duplicate,
         same_path, near_duplicate, cap, rationalized_share)


def select_rows(table: pa.Table, config: DedupConfig, seed: int, questions: dict[str, str] | None = None,
                context: Context | None = None, max_rationalized_share: float | None = None) -> Selection:
    """Which verdict rows of whole problems to keep, and why each other row went (every step of `STEPS`).

    `questions` maps problem id to question text (default: the last user turn of each row's
    prompt). `context` carries state across shards; it is updated.
    """
    s = Shard.of(table, config, seed, context if context is not None else Context(), questions or {},
                 max_rationalized_share)
    for step in STEPS:
        step(s)
    return _selection(s)


def _selection(s: Shard) -> Selection:
    out = s.table.take(pa.array([s.order[pos] for pos in s.kept], pa.int64()))
    columns = []
    for f in schema.SELECTED:
        if f.name in out.column_names:
            columns.append(out.column(f.name).cast(f.type))
        else:
            columns.append(pa.array([False if f.name == "rationalized" else None] * out.num_rows, f.type))
    reasons: list[str | None] = [None] * len(s.why)
    for pos, i in enumerate(s.order):
        reasons[i] = s.why[pos]
    for p, c in s.problems.items():
        c.pop("model_correct")
        c.pop("samples")
        if c["correct"] and not c["kept"]:
            # the rules that emptied it (duplicates of rows a rule then removed go with them)
            c["emptied_by"] = sorted({s.why[pos] for pos in s.spans[p] if s.why[pos] in RULES})
    return Selection(pa.Table.from_arrays(columns, schema=schema.SELECTED), Counter(r for r in s.why if r is not None),
                     s.repeated, reasons, s.problems, s.decontaminated, schema.table(s.reject_rows, schema.REJECTS))
