"""evaluate: greedy accuracy of iteration k's model on held-out problems that never feed training.

With `evaluate.cot_decoding: {k}` each problem is also answered by CoT-decoding (the most
confident of k greedy paths: pipeline/decoding.py), so one eval.json compares greedy, CoT-decoding
and (with `evaluate.pass_at_k`) maj@k and pass@k on the same problems.

Iteration 0 is the base model (`model.path`); iteration k >= 1 is the model trained in
iteration k (`iter-k/model`). The problems are evaluate's own (`evaluate.task`; by default the
run's arithmetic generator, `evaluate.count` problems from seed `evaluate.seed_offset` =
1,000,000 on, far past any training range), never `iter-k/problems`, and the stage refuses to
run when one of them shares a problem id or a question with the run's training problems.
Answers are checked by the run's verifier in the same killable worker pool as the verify stage.

Writes `iter-k/eval/`: `part-NNNNN.parquet` (one row per problem: the greedy answer and its
verdict; with `evaluate.pass_at_k`, how many of n samples were correct and each sample's answer
and verdict), `eval.json` (accuracy, n, binomial stderr, accuracy per `steps` or other metadata
key, pass@k and maj@k with their standard errors) and the usual stage files. Shards are committed
as they finish, so an interrupted evaluation resumes.

maj@k (self-consistency) comes from the same n samples as pass@k: a majority vote over k of a
problem's samples is right or not (`metrics.maj_at_k`). Precision-first: a sample votes only with
a final answer the verifier judged correct or wrong (no_answer, timeout and error do not vote; a
problem with no vote scores 0). Every correct sample votes for one class, whatever its surface
form (0.5 and 1/2); wrong answers are grouped by their text after the verifier's `normalize`
where it has one (the exact verifier), else stripped. The largest class wins; of tied classes, the
one whose first sample (lowest sample index) comes first. For k < n the vote is averaged over
every k-subset of the n samples, or over MAJ_SUBSETS random ones (seeded by run.seed and the
problem id) where there are more; k == n is the one vote over all samples. Each row keeps
`sample_answers` (each sample's answer as it voted, null: no final answer) and `sample_correct`,
so the figure can be recomputed from the shards (`metrics.maj_at_k`, `metrics.maj_seed`).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from selfimprove.pipeline import schema
from selfimprove.pipeline.config import Config, TaskConfig, digest
from selfimprove.pipeline.decoding import cot_decode, require_branches, verifier_spans
from selfimprove.pipeline.engines import Request, SamplingParams, load_engine
from selfimprove.pipeline.runs import check, stage_dir
from selfimprove.pipeline.skeleton import MappedStage, ShardOutput, run_mapped
from selfimprove.pipeline.tasks.problems import normalise_question, problem_id, source_identity, validate_answer, validate_question
from selfimprove.pipeline.generation import request_seed, shard_rows, use_request_seed
from selfimprove.pipeline.metrics import maj_at_k, maj_seed, mean_stderr, pass_at_k, rate
from selfimprove.pipeline.runs import model_fingerprint, trained_model
from selfimprove.pipeline.verification import build_verifier, open_pool, verifier_spec, verify_table
from selfimprove.pipeline.store import SUCCESS, StageReader, atomic_write_json, part_name
from selfimprove.verifiers.base import MAX_ANSWER_CHARS
from selfimprove.pipeline.tasks import get_task, render_prompt

ROWS = pa.schema(
    [
        ("problem_id", pa.string()),
        ("question", pa.string()),
        ("answer", pa.string()),  # gold
        ("metadata", pa.string()),  # JSON, as in the problems table
        ("text", pa.string()),  # the greedy completion
        ("finish_reason", pa.string()),
        ("completion_tokens", pa.int32()),
        ("extracted", pa.string()),
        ("status", pa.string()),  # the verifier's verdict on the greedy completion
        ("reason", pa.string()),
        ("correct", pa.bool_()),
        ("cot_text", pa.string()),  # evaluate.cot_decoding: the most confident path (null when off)
        ("cot_extracted", pa.string()),
        ("cot_status", pa.string()),
        ("cot_correct", pa.bool_()),
        ("cot_confidence", pa.float64()),  # null: no path had an answer (greedy's own path was judged)
        ("cot_branch_rank", pa.int32()),  # the chosen path's first-token rank (1: greedy's)
        ("samples", pa.int32()),  # pass@k: samples drawn (null without pass@k)
        ("samples_correct", pa.int32()),
        ("sample_answers", pa.list_(pa.string())),  # maj@k: each sample's answer as it votes (null: no final answer)
        ("sample_correct", pa.list_(pa.bool_())),  # each sample's verdict is correct
    ]
)


def heldout_task(cfg: Config) -> TaskConfig:
    """evaluate.task, or by default the run's arithmetic task moved to the held-out seed range."""
    if cfg.evaluate.task is not None:
        return cfg.evaluate.task
    if cfg.task.name != "arithmetic":
        raise ValueError(
            f"evaluate.task: the run's task {cfg.task.name!r} has no built-in held-out range; set evaluate.task to a "
            "held-out set, e.g. {name: gsm8k, path: <gsm8k>/test.jsonl} or {name: math} for MATH-500"
        )
    task = cfg.task.model_copy(deep=True)
    task.limit = None
    task.arithmetic.count = cfg.evaluate.count
    task.arithmetic.seed_offset = cfg.evaluate.seed_offset
    return task


def load_problems(task_cfg: TaskConfig) -> tuple[list[dict], list[dict]]:
    """A task's problems, validated as the prepare stage does; the rest as rejects with reasons."""
    task = get_task(task_cfg)
    problems, rejects, seen = [], [], set()
    for row in task.rows():
        try:
            if row.error is not None:
                raise ValueError(row.error)
            item = task.to_problem(row.data)
            question = validate_question(item.question, task_cfg.max_question_chars)
            answer = validate_answer(item.answer)
            pid = problem_id(task.name, item.id, question)
            if pid in seen or normalise_question(question) in seen:
                raise ValueError(f"duplicate problem {pid}")
        except ValueError as e:
            rejects.append({"stage": "evaluate", "source_index": row.index, "problem_id": None, "reason": str(e), "raw": None})
            continue
        seen.update((pid, normalise_question(question)))
        problems.append({"problem_id": pid, "question": question, "answer": answer,
                         "metadata": json.dumps(item.metadata or {}, default=str, ensure_ascii=False)})
    return problems, rejects


def training_problems(cfg: Config) -> tuple[set[str], dict[str, str]]:
    """Ids and normalised questions of every problem this run prepared for training (all
    iterations on disk); before any is prepared, the configured training task's problems."""
    ids: set[str] = set()
    questions: dict[str, str] = {}
    dirs = sorted(p for p in cfg.run_dir.glob("iter-*/problems") if (p / SUCCESS).exists())
    if dirs:
        for d in dirs:
            for _, t in StageReader(d, "prepare").iter_shards(columns=["problem_id", "question"]):
                for pid, q in zip(t["problem_id"].to_pylist(), t["question"].to_pylist()):
                    ids.add(pid)
                    questions[normalise_question(q)] = pid
    else:
        for p in load_problems(cfg.task)[0]:
            ids.add(p["problem_id"])
            questions[normalise_question(p["question"])] = p["problem_id"]
    return ids, questions


MAX_REPEATED_SHARE = 0.05  # more held-out questions than this repeating training ones: the sets overlap


def check_overlap(heldout: list[dict], ids: set[str], questions: dict[str, str]) -> tuple[list[dict], list[dict]]:
    """Held-out problems that are not training problems, and the rest as rejects.

    A shared problem id means the two sets overlap (say, the same seed range): refused. A
    question that repeats a training question under another id is left out, with its reason;
    the arithmetic generator draws the same small problem now and then. More than
    MAX_REPEATED_SHARE of them is a set overlap too, and refused.
    """
    same_id = [p["problem_id"] for p in heldout if p["problem_id"] in ids]
    if same_id:
        raise ValueError(
            f"evaluate: {len(same_id)} of {len(heldout)} held-out problems are also training problems "
            f"(same id: {', '.join(same_id[:3])}); a held-out set must never feed training: for the arithmetic "
            "generator move evaluate.seed_offset (or evaluate.task.arithmetic.seed_offset) past the training count"
        )
    kept, rejects = [], []
    for p in heldout:
        twin = questions.get(normalise_question(p["question"]))
        if twin is None:
            kept.append(p)
        else:
            rejects.append({"stage": "evaluate", "source_index": None, "problem_id": p["problem_id"],
                            "reason": f"held-out question repeats training problem {twin}: left out", "raw": p["question"][:500]})
    if len(rejects) > MAX_REPEATED_SHARE * len(heldout):
        raise ValueError(
            f"evaluate: {len(rejects)} of {len(heldout)} held-out questions are also training questions, e.g. "
            f"{rejects[0]['problem_id']} ({rejects[0]['reason']}); a held-out set must never feed training: "
            "point evaluate.task at problems the run does not train on"
        )
    return kept, rejects


def eval_model(cfg: Config, k: int) -> str:
    """The model iteration k is scored on: the base model for 0, else the one trained in k."""
    if k < 0:
        raise ValueError(f"evaluate: iteration {k}; use 0 for the base model or k >= 1 for iteration k's model")
    return cfg.model.path if k == 0 else trained_model(cfg, k)


def scores(rows: list[dict], cfg: Config) -> dict:
    """eval.json's figures from the per-problem rows."""
    result = rate(sum(r["correct"] for r in rows), len(rows))
    breakdown = {}
    metas = [json.loads(r["metadata"] or "{}") for r in rows]
    for key in cfg.evaluate.breakdown:
        groups: dict[str, list[bool]] = defaultdict(list)
        for r, m in zip(rows, metas):
            if m.get(key) is not None:
                groups[str(m[key])].append(r["correct"])
        if groups:
            breakdown[key] = {v: rate(sum(g), len(g)) for v, g in sorted(groups.items())}
    result["by"] = breakdown
    result["statuses"] = dict(Counter(r["status"] for r in rows))
    result["finish_reasons"] = dict(Counter(r["finish_reason"] for r in rows))
    result["mean_completion_tokens"] = round(sum(r["completion_tokens"] for r in rows) / len(rows), 1) if rows else 0.0
    if cfg.evaluate.cot_decoding is not None and rows:
        cot = rate(sum(bool(r["cot_correct"]) for r in rows), len(rows))
        result["cot_decoding"] = {"k": cfg.evaluate.cot_decoding.k, **cot,
                                  "chose_greedy_path": sum(r["cot_branch_rank"] == 1 for r in rows),
                                  "no_path_with_answer": sum(r["cot_confidence"] is None for r in rows)}
        gain, se = mean_stderr([float(bool(r["cot_correct"])) - float(r["correct"]) for r in rows])
        result["cot_decoding"]["minus_greedy"] = {"value": round(gain, 4), "paired_stderr": round(se, 4)}
    pk = cfg.evaluate.pass_at_k
    if pk is not None and rows:
        passes = {k: [pass_at_k(r["samples"], r["samples_correct"], k) for r in rows] for k in pk.k}
        result["pass_at_k"] = {"n": pk.n, "temperature": pk.temperature, "top_p": pk.top_p, **_figures(passes)}
        maj_ks = pk.k if pk.maj_at_k is None else pk.maj_at_k
        if maj_ks:
            result["maj_at_k"] = {"n": pk.n, **_figures(majority_values(rows, maj_ks, cfg.run.seed))}
    return result


def _figures(per_problem: dict[int, list[float]]) -> dict:
    """{values, stderr} per k: the mean over problems and its standard error."""
    stats = {str(k): mean_stderr(v) for k, v in per_problem.items()}
    return {"values": {k: round(m, 4) for k, (m, _) in stats.items()},
            "stderr": {k: round(se, 4) for k, (_, se) in stats.items()}}


def majority_values(rows: list[dict], ks: list[int], run_seed: int) -> dict[int, list[float]]:
    """Per k, each problem's maj@k from its row's sample answers and verdicts."""
    for r in rows:
        if r.get("sample_answers") is None or len(r["sample_answers"]) != r["samples"]:
            raise ValueError(f"evaluate: row {r['problem_id']} has no per-sample answers for maj@k (a shard from "
                             "before maj@k); rerun `selfimprove evaluate` with --force")
    return {k: [maj_at_k(r["sample_answers"], r["sample_correct"], k, maj_seed(run_seed, r["problem_id"])) for r in rows]
            for k in ks}


def _samples_table(requests: list[Request], results, engine, n: int,
                   think_tags: list[str] | None = None) -> tuple[pa.Table, list[tuple[Request, str]]]:
    """Engine results as the sample stage writes them (generation.shard_rows: one place for a
    sample row), for verify_table; failed requests apart, with their reasons."""
    rows, rejects, _ = shard_rows("evaluate", requests, results, n, engine, stage="evaluate", think_tags=think_tags)
    by_key = {req.key: req for req in requests}
    return schema.table(rows, schema.SAMPLES), [(by_key[r["problem_id"]], r["reason"]) for r in rejects]


def fingerprint(cfg: Config, model: str, task_cfg: TaskConfig, verifier, problems: list[dict]) -> dict:
    # top_k, min_p, stop, chat-template arguments, thinking tags: part of it only where set
    # (the sample stage's strategy is not evaluate's: evaluate.cot_decoding is)
    extras = {k: v for k, v in cfg.sample.fingerprint_dump({"until_correct", "strategy", "cot_k"}).items()
              if k in cfg.sample.added_fields()}
    return {
        "problems": digest([p["problem_id"] for p in problems]),  # what is left after the overlap guard
        "model": {"path": model, "identity": model_fingerprint(model), **cfg.model.fingerprint_dump({"path"})},
        "engine": cfg.sample.engine,
        **({"sampling": extras} if extras else {}),
        "heldout": {**task_cfg.fingerprint_dump(), "default_user": get_task(task_cfg).default_user_prompt},
        "source": source_identity(task_cfg.path),
        "evaluate": evaluate_part(cfg),
        "verifier": verifier.fingerprint(),
        "seed": cfg.run.seed,
    }


def evaluate_part(cfg: Config) -> dict:
    """The evaluate section for the fingerprint. With pass@k its rows keep each sample's answer
    (for maj@k), so pass@k evaluations made before that are redone once; without, nothing changes."""
    part = cfg.evaluate.fingerprint_dump({"task", "count", "seed_offset"})
    if part.get("pass_at_k") is not None:
        part["pass_at_k"]["rows"] = "per-sample answers"
    return part


class EvaluateStage(MappedStage):
    """Greedy accuracy (and pass@k, maj@k) of iteration k's model on the held-out problems, in shards of
    `run.problems_per_shard`; no input stage: the shards are made from the held-out task."""

    name, source = "evaluate", None

    def __init__(self, cfg: Config, iteration: int):
        super().__init__(cfg, iteration)
        self.model = eval_model(cfg, iteration)
        self.task_cfg = heldout_task(cfg)
        problems, rejects = load_problems(self.task_cfg)
        problems, repeated = check_overlap(problems, *training_problems(cfg))
        self.problems, self.rejects = problems, rejects + repeated
        if not problems:
            raise ValueError(f"evaluate: the held-out task has no usable problems ({len(self.rejects)} rejected)")
        self.engine_cfg = cfg.model_copy(deep=True)
        self.engine_cfg.model.path = self.model
        self.engine_cfg.task = self.task_cfg  # the engine serves the held-out problems
        self.spec = verifier_spec(self.engine_cfg)
        self.verifier = build_verifier(self.engine_cfg)  # the held-out task's default verifier where verify.verifier is auto
        per_shard = cfg.run.problems_per_shard
        self.shards = {part_name(i): problems[s:s + per_shard] for i, s in enumerate(range(0, len(problems), per_shard))}
        ev = cfg.evaluate
        self.greedy = SamplingParams.of(cfg.sample, n=1, temperature=0.0, top_p=1.0, max_tokens=ev.max_tokens)
        pk = ev.pass_at_k
        self.sampled = None if pk is None else SamplingParams.of(cfg.sample, n=pk.n, temperature=pk.temperature,
                                                                 top_p=pk.top_p, max_tokens=ev.max_tokens)
        self.result: dict = {}
        normalize = getattr(self.verifier, "normalize", None)
        self.vote_key = normalize if callable(normalize) else str.strip  # how wrong answers group in maj@k

    def fingerprint(self) -> dict:
        return fingerprint(self.cfg, self.model, self.task_cfg, self.verifier, self.problems)

    def shard_names(self) -> list[str]:
        return list(self.shards)

    def open(self) -> None:
        self.engine = load_engine(self.engine_cfg)
        if self.cfg.evaluate.cot_decoding is not None:
            try:
                require_branches(self.engine)  # before any greedy work, not after it
            except ValueError:
                self.close()  # open failed: the skeleton closes only what opened
                raise
        self.pool = open_pool(self.cfg).__enter__()

    def work(self, names: list[str]) -> Iterator[tuple[str, ShardOutput]]:
        """All pending shards go to the engine at once (generate_shards keeps its batch full across
        them); each is yielded as soon as its verdicts are in (after its pass@k samples, if asked)."""
        task = get_task(self.task_cfg)
        messages = {p["problem_id"]: render_prompt(self.task_cfg, task, p["question"]) for n in names for p in self.shards[n]}
        requests = {name: [Request(p["problem_id"], messages[p["problem_id"]]) for p in self.shards[name]] for name in names}
        finished: dict[str, tuple[list[dict], list[dict]]] = {}
        more = self.cfg.evaluate.cot_decoding is not None or self.sampled is not None
        for name, results in self.engine.generate_shards(((n, requests[n]) for n in names), self.greedy,
                                                         desc="evaluate (greedy)"):
            rows, rejects = greedy_rows(self.shards[name], requests[name], results, self.engine, self.pool,
                                        self.verifier.name, self.cfg.sample.think_tags)
            if more:
                finished[name] = (rows, rejects)
            else:
                yield name, self._output(name, rows, rejects)
        if self.cfg.evaluate.cot_decoding is not None:
            for name in names:
                rows, rejects = finished[name]
                rejects += self._cot_decoding(name, rows, requests[name])
                if self.sampled is None:
                    yield name, self._output(name, *finished.pop(name))
        if self.sampled is not None:
            yield from self._pass_at_k(names, messages, finished)

    def _cot_decoding(self, name: str, rows: list[dict], requests: list[Request]) -> list[dict]:
        """Each row's CoT-decoding answer: the most confident of k greedy paths (greedy's own where no
        path has an answer), judged like the greedy one. A problem the engine could not serve leaves
        the shard as a reject. Returns those rejects."""
        k = self.cfg.evaluate.cot_decoding.k
        by_id = {r["problem_id"]: r for r in rows}
        asked = [req for req in requests if req.key in by_id]
        spans = verifier_spans(by_id, self.pool, self.verifier.name, self.cfg.sample.think_tags)
        decoded = cot_decode(self.engine, asked, k, self.cfg.evaluate.max_tokens, spans, params=self.greedy,
                             desc=f"evaluate (cot-decoding, k={k}) {name}")
        results = [d.result(1) for d in decoded]
        judged, rejects = greedy_rows([by_id[req.key] for req in asked], asked, results, self.engine,
                                      self.pool, self.verifier.name, self.cfg.sample.think_tags)
        cot = {r["problem_id"]: r for r in judged}
        chosen = {req.key: res.completions[0] for req, res in zip(asked, results) if res.error is None}
        rows[:] = [r for r in rows if r["problem_id"] in cot]
        for r in rows:
            c, path = cot[r["problem_id"]], chosen[r["problem_id"]]
            r.update(cot_text=c["text"], cot_extracted=c["extracted"], cot_status=c["status"], cot_correct=c["correct"],
                     cot_confidence=path.confidence, cot_branch_rank=path.branch_rank)
        return rejects

    def _pass_at_k(self, names, messages, finished) -> Iterator[tuple[str, ShardOutput]]:
        """A second pass over the shards, n samples per problem, each counted correct or not."""
        per_request = use_request_seed(self.cfg, self.engine)
        requests = {name: [Request(r["problem_id"], messages[r["problem_id"]],
                                   request_seed(self.cfg.run.seed, self.iteration, r["problem_id"]) if per_request else None)
                           for r in finished[name][0]]
                    for name in names}
        n = self.sampled.n
        for name, results in self.engine.generate_shards(((k, requests[k]) for k in names), self.sampled,
                                                         desc=f"evaluate (pass@{n})"):
            rows, rejects = finished.pop(name)
            rejects += count_correct(rows, requests[name], results, self.engine, self.pool,
                                     self.verifier.name, n, self.cfg.sample.think_tags, self.vote_key)
            yield name, self._output(name, rows, rejects)

    def _output(self, name: str, rows: list[dict], rejects: list[dict]) -> ShardOutput:
        failed = len(rejects)
        if name == part_name(0):
            rejects = rejects + self.rejects  # the held-out source's own rejects, kept once
        return ShardOutput(schema.table(rows, ROWS), schema.table(rejects, schema.REJECTS), info={"failed": failed})

    def check_total(self, writer, names: list[str]) -> None:
        rows = [r for n in names for r in pq.read_table(writer.path / n).to_pylist()]
        failed = sum(writer.done[n]["failed"] for n in names)
        check(len(rows) + failed == len(self.problems),
              f"evaluate: {len(rows)} rows + {failed} failed requests for {len(self.problems)} problems")
        self.result = self._result(rows, failed)

    def _result(self, rows: list[dict], failed: int) -> dict:
        return {"iteration": self.iteration, "model": self.model, "task": self.task_cfg.name,
                "verifier": self.spec, "max_tokens": self.cfg.evaluate.max_tokens, "problems": len(self.problems),
                **scores(rows, self.cfg), "engine_failed": failed, "left_out": len(self.rejects)}

    def refresh(self, writer) -> None:
        """Up to date: eval.json re-derived from the committed rows, so its figures follow the code
        that computes them from rows (e.g. how maj@k groups answers) without generating again."""
        rows = [r for n in self.shard_names() for r in pq.read_table(writer.path / n).to_pylist()]
        result = self._result(rows, len(self.problems) - len(rows))  # the rest failed: check_total held
        path = writer.path / "eval.json"
        if not path.exists() or json.loads(path.read_text()) != result:
            atomic_write_json(path, result)

    def stats(self, writer, names: list[str]) -> dict:
        atomic_write_json(writer.path / "eval.json", self.result)
        return {k: self.result[k] for k in ("accuracy", "n", "correct", "stderr")}

    def summary(self, manifest: dict, resumed: int) -> str:
        result = self.result
        by_steps = result["by"].get("steps", {})
        steps = "".join(f"; {s} step{'s' * (s != '1')} {v['accuracy']:.1%} (n={v['n']})" for s, v in by_steps.items())
        pk = "".join(f", pass@{k} {v:.1%}" for k, v in result.get("pass_at_k", {}).get("values", {}).items())
        pk += "".join(f", maj@{k} {v:.1%}" for k, v in result.get("maj_at_k", {}).get("values", {}).items())
        left_out = f"; {result['left_out']} held-out problems left out, see _rejects.parquet" if result["left_out"] else ""
        path = stage_dir(self.cfg, self.iteration, "evaluate") / "eval.json"
        cot = result.get("cot_decoding")
        pk = (f", CoT-decoding (k={cot['k']}) {cot['accuracy']:.1%} ± {cot['stderr']:.1%}" if cot else "") + pk
        return (f"iteration {self.iteration} ({self.model}): greedy accuracy {result['accuracy']:.1%} ± "
                f"{result['stderr']:.1%} ({result['correct']}/{result['n']} held-out {self.task_cfg.name} problems)"
                f"{steps}{pk}{left_out} -> {path}")


def run(cfg: Config, iteration: int, force: bool = False) -> dict:
    return run_mapped(EvaluateStage(cfg, iteration), force)


def _failed_rejects(failed: list[tuple[Request, str]]) -> list[dict]:
    return [{"stage": "evaluate", "source_index": None, "problem_id": req.key, "reason": f"engine: {reason}", "raw": None}
            for req, reason in failed]


def greedy_rows(problems, requests, results, engine, pool, verifier_name,
                think_tags=None) -> tuple[list[dict], list[dict]]:
    """One shard's greedy completions -> per-problem rows with their verdicts, and rejects for failed requests."""
    by_id = {p["problem_id"]: p for p in problems}
    table, failed = _samples_table(requests, results, engine, 1, think_tags)
    verdicts = {r["problem_id"]: r for r in verify_table(table, by_id, pool, verifier_name).to_pylist()}
    failed_ids = {req.key for req, _ in failed}
    rows = []
    for pid, p in by_id.items():
        if pid in failed_ids:
            continue
        v = verdicts[pid]
        rows.append({**p, "text": (v["reasoning"] or "") + v["text"], "finish_reason": v["finish_reason"], "completion_tokens": v["completion_tokens"],
                     "extracted": v["extracted"], "status": v["status"], "reason": v["reason"],
                     "correct": v["status"] == "correct", "samples": None, "samples_correct": None,
                     "sample_answers": None, "sample_correct": None})
    return rows, _failed_rejects(failed)


def count_correct(rows, requests, results, engine, pool, verifier_name, n, think_tags=None,
                  vote_key=str.strip) -> list[dict]:
    """pass@k and maj@k: sets each row's `samples`/`samples_correct` and per-sample
    `sample_answers`/`sample_correct` from its n samples; a problem whose request failed leaves
    its row (and the shard) and becomes a reject. Returns those rejects."""
    by_id = {r["problem_id"]: r for r in rows}
    table, failed = _samples_table(requests, results, engine, n, think_tags)
    verdicts: dict[str, list[dict]] = defaultdict(list)
    for v in verify_table(table, by_id, pool, verifier_name).to_pylist():
        verdicts[v["problem_id"]].append(v)
    failed_ids = {req.key for req, _ in failed}
    rows[:] = [r for r in rows if r["problem_id"] not in failed_ids]
    for r in rows:
        samples = sorted(verdicts[r["problem_id"]], key=lambda v: v["sample_idx"])
        check(len(samples) == n, f"evaluate: {len(samples)} verdicts for the {n} samples of {r['problem_id']}")
        r["samples"], r["sample_correct"] = n, [v["status"] == "correct" for v in samples]
        r["samples_correct"] = sum(r["sample_correct"])
        r["sample_answers"] = [vote_answer(v, vote_key) for v in samples]
    return _failed_rejects(failed)


def vote_answer(verdict: dict, vote_key=str.strip) -> str | None:
    """A sample's answer as it votes in maj@k: its extracted answer as `vote_key` groups it, where
    the verifier judged it correct or wrong; None without a clear final answer (a sample judged
    correct still votes, for the correct class; any other does not vote)."""
    answer = verdict["extracted"]
    if verdict["status"] not in ("correct", "wrong") or answer is None:
        return None
    return vote_key(answer[:MAX_ANSWER_CHARS]) or None
