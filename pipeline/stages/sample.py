"""sample: n chain-of-thought rationales per problem from the engine, one row per sample.

One request per problem asks for all n samples (`SamplingParams(n=k)`), so the prompt is
computed once; a whole shard goes to the engine in one call. The engine is loaded only if a
shard is left to do, so a finished or resumed stage starts in seconds. Shards are handed to the
engine lazily and committed as the engine finishes them (`Engine.generate_shards`), so an
engine may keep working across shard boundaries. A request the engine
cannot serve (say, a prompt longer than the context) goes to `_rejects.parquet`.

`sample.until_correct` (off by default) is difficulty-aware rejection sampling (DART-Math):
each shard's first round is judged here by the run's verifier (as rationalize does; the verify
stage judges every sample again), and the problems below their target of correct samples
(`uniform`: k; `prop2diff`: max(1, ceil(k x first-round fail rate))) get more rounds of
`sample.n` samples, up to `max_samples` per problem. Rounds run as waves: round 1 of every shard
streams through the engine as without the option; a shard that needs no more rounds is committed
at once, the others wait for the next wave (round 2 of the pending shards), and so on. A shard
is committed once, with all its rounds: a crash loses only shards still in later rounds, redone
from round 1 on resume (deterministic with the same seeds). Round r (from 0) has sample indices
r*n .. r*n+n-1, so a row's round is `sample_idx // sample.n`; its per-request seed, where the
engine takes them, is `request_seed(..., round=r)`. Each shard journals how many problems each
round asked for, how many the engine rejected and how many samples it drew (`rounds`), and the
count checks hold the totals to that.

`sample.strategy: cot_decoding` is CoT-decoding (pipeline/decoding.py): per problem the
`sample.cot_k` most likely first tokens, each continued greedily, judged by the run's verifier
in-stage for their final answers, and the `sample.n` paths the model is most confident of kept
as the problem's samples (`sample_idx` 0 the most confident; `confidence` and `branch_rank` say
why). One shard goes to the engine at a time; each shard journals how many paths it drew and
how many had an answer.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from selfimprove.pipeline import schema
from selfimprove.pipeline.config import Config
from selfimprove.pipeline.decoding import cot_decode, require_branches, verifier_spans
from selfimprove.pipeline.engines import Request, SamplingParams, load_engine
from selfimprove.pipeline.generation import (request_seed, sampling_fingerprint, shard_requests, shard_rows,
                                             use_request_seed)
from selfimprove.pipeline.runs import check, sampling_config, stage_dir
from selfimprove.pipeline.skeleton import MappedStage, ShardOutput, run_mapped
from selfimprove.pipeline.verification import build_verifier, open_pool, verify_table


def round_size(n: int, max_samples: int, r: int) -> int:
    """Samples per problem in round r (from 0): n, or what the budget leaves in the last round."""
    return max(0, min(n, max_samples - r * n))


def target(policy: str, k: int, first_correct: int, first_samples: int) -> int:
    """Correct samples a problem should reach: k (uniform), or k times its first-round fail rate,
    rounded up, at least 1 (prop2diff: k for a problem no first-round sample solved)."""
    if policy == "uniform":
        return k
    fail = 1 - first_correct / first_samples if first_samples else 1.0
    return max(1, math.ceil(k * fail - 1e-9))


@dataclass
class _Shard:
    """One shard between rounds: its problems, the rows of the rounds so far, and who goes on."""

    problems: dict[str, dict]  # prepared rows by problem id (question, gold answer, metadata)
    prompts: dict[str, list[dict]]  # the messages of each problem's request
    order: dict[str, int]  # problem id -> position in the shard
    sent: list[Request] = field(default_factory=list)  # this round's requests
    rows: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    tokens: int = 0
    rounds: list[list[int]] = field(default_factory=list)  # per round: [problems asked, rejected, samples]
    correct: Counter = field(default_factory=Counter)
    drawn: Counter = field(default_factory=Counter)
    targets: dict[str, int] = field(default_factory=dict)
    rejected: set = field(default_factory=set)
    todo: list[str] = field(default_factory=list)  # problems of the next round


class SampleStage(MappedStage):
    """n samples per problem of each prepared shard, from an engine in this process or on Ray
    actors (one engine each); the engine is opened only where shards are left to do."""

    name, source, distributable = "sample", "prepare", True
    no_output = "the engine returned nothing"

    def __init__(self, cfg: Config, iteration: int):
        super().__init__(sampling_config(cfg, iteration), iteration)
        self.per_request = False
        self.uc = self.cfg.sample.until_correct if self.cfg.sample.until_correct.enabled else None
        self.cot = self.cfg.sample.strategy == "cot_decoding"
        self.verifier = None
        self.round_seconds: list[float] = []  # this run's time per wave (until_correct)

    def fingerprint(self) -> dict:
        parts = sampling_fingerprint(self.cfg, self.iteration, self.input.output_hash)
        if self.uc or self.cot:  # which samples are drawn (kept) depends on the verdicts (extracted answers)
            parts["verifier"] = build_verifier(self.cfg).fingerprint()
        return parts

    def open(self) -> None:
        if self.uc or self.cot:
            self.verifier = build_verifier(self.cfg)
            if self.cot and self.verifier.uses_engine:
                raise ValueError(f"sample.strategy: cot_decoding ranks paths by the final answer the verifier finds; "
                                 f"{self.verifier.name!r} is judged by a model and finds none: use a verifier that "
                                 f"extracts answers (verify.verifier)")
        self.engine = load_engine(self.cfg)
        if self.cot:
            try:
                require_branches(self.engine)
            except ValueError:
                self.close()  # open failed: the skeleton closes only what opened
                raise
        self.per_request = use_request_seed(self.cfg, self.engine) if not self.cot else False  # greedy: no seeds
        if self.uc or self.cot:
            self.pool = open_pool(self.cfg).__enter__()

    def work(self, names: list[str]) -> Iterator[tuple[str, ShardOutput]]:
        """Shards handed to the engine lazily (`Engine.generate_shards` keeps it fed across them)."""
        if self.uc:
            yield from self._rounds(names)
            return
        if self.cot:
            yield from self._cot_decoding(names)
            return
        sent: dict[str, list[Request]] = {}  # requests of shards handed to the engine, not yet back

        def requests():
            for name in names:
                sent[name] = shard_requests(self.cfg, self.iteration, self.input.read_shard(name), self.per_request)
                yield name, sent[name]

        journal = stage_dir(self.cfg, self.iteration, "sample")
        for name, results in self.engine.generate_shards(requests(), SamplingParams.of(self.cfg.sample), journal_dir=journal):
            rows, rejects, tokens = shard_rows(name, sent.pop(name), results, self.cfg.sample.n, self.engine,
                                               think_tags=self.cfg.sample.think_tags)
            yield name, ShardOutput(schema.table(rows, schema.SAMPLES), schema.table(rejects, schema.REJECTS),
                                    extra={"tokens": tokens})

    def _cot_decoding(self, names: list[str]) -> Iterator[tuple[str, ShardOutput]]:
        """Each shard's problems branched (cot_k greedy paths each), the paths ranked by the
        model's confidence in the answers the verifier finds, the n most confident kept."""
        cfg, n = self.cfg, self.cfg.sample.n
        for name in names:
            table = self.input.read_shard(name)
            requests = shard_requests(cfg, self.iteration, table, per_request=False)
            problems = {row["problem_id"]: row for row in table.to_pylist()}
            decoded = cot_decode(self.engine, requests, cfg.sample.cot_k, cfg.sample.max_tokens,
                                 verifier_spans(problems, self.pool, self.verifier.name, cfg.sample.think_tags),
                                 SamplingParams.of(cfg.sample), desc=f"sample {name}")
            rows, rejects, _ = shard_rows(name, requests, [d.result(n) for d in decoded], n, self.engine,
                                          think_tags=cfg.sample.think_tags)
            paths = [s for d in decoded for s in d.ranked]
            yield name, ShardOutput(schema.table(rows, schema.SAMPLES), schema.table(rejects, schema.REJECTS),
                                    info={"paths": len(paths), "scored": sum(s.confidence is not None for s in paths)},
                                    extra={"tokens": sum(s.branch.completion_tokens for s in paths)})

    # -- until_correct: rounds as waves ---------------------------------------------------------
    def _rounds(self, names: list[str]) -> Iterator[tuple[str, ShardOutput]]:
        """Round 1 of every shard streams through the engine; each shard is verified as it comes
        back and committed unless some of its problems need another round; the shards left go
        through the engine again as the next wave, until none is left."""
        cfg, uc, n = self.cfg, self.uc, self.cfg.sample.n
        state: dict[str, _Shard] = {}

        def first_round():
            for name in names:
                table = self.input.read_shard(name)
                requests = shard_requests(cfg, self.iteration, table, self.per_request)
                problems = {row["problem_id"]: row for row in table.to_pylist()}
                state[name] = _Shard(problems, {req.key: req.messages for req in requests},
                                     {pid: i for i, pid in enumerate(problems)}, sent=requests)
                yield name, requests

        def next_round(pending: list[str], r: int):
            for name in pending:
                s = state[name]
                s.sent = [Request(pid, s.prompts[pid],
                                  request_seed(cfg.run.seed, self.iteration, pid, r) if self.per_request else None)
                          for pid in s.todo]
                yield name, s.sent

        journal = stage_dir(cfg, self.iteration, "sample")
        wave, r = first_round(), 0
        while True:
            size, started, pending = round_size(n, uc.max_samples, r), time.time(), []
            # the engine's request journal (openai) serves round 1 only: later rounds ask the same keys anew
            for name, results in self.engine.generate_shards(wave, SamplingParams.of(cfg.sample, n=size),
                                                             journal_dir=journal if r == 0 else None,
                                                             desc="sample" if r == 0 else f"sample round {r + 1}"):
                s = state[name]
                self._take_round(name, s, r, size, results)
                if s.todo:
                    pending.append(name)
                else:
                    yield name, self._output(state.pop(name))
            self.round_seconds.append(time.time() - started)
            if not pending:
                return
            r += 1
            wave = next_round(pending, r)

    def _take_round(self, name: str, s: _Shard, r: int, size: int, results: list) -> None:
        """One round of one shard: its rows and rejects, verdicts, and who needs another round."""
        uc, n = self.uc, self.cfg.sample.n
        rows, rejects, tokens = shard_rows(name, s.sent, results, size, self.engine, first_idx=r * n,
                                           think_tags=self.cfg.sample.think_tags)
        for rej in rejects:
            s.rejected.add(rej["problem_id"])
            if r:
                rej["reason"] = f"round {r + 1}: {rej['reason']}"
        s.rows += rows
        s.rejects += rejects
        s.tokens += tokens
        s.rounds.append([len(s.sent), len(rejects), len(rows)])
        has_gold = {pid for pid, p in s.problems.items() if p["answer"] not in (None, "")}
        judged = [row for row in rows if row["problem_id"] in has_gold]
        if judged:
            verdicts = verify_table(schema.table(judged, schema.SAMPLES), s.problems, self.pool, self.verifier.name)
            for pid, status in zip(verdicts["problem_id"].to_pylist(), verdicts["status"].to_pylist()):
                s.correct[pid] += status == "correct"
        for row in rows:
            s.drawn[row["problem_id"]] += 1
        if r == 0:
            s.targets = {pid: target(uc.policy, uc.k, s.correct[pid], s.drawn[pid]) if pid in has_gold else 0
                         for pid in s.problems if pid not in s.rejected}
        following = round_size(n, uc.max_samples, r + 1)
        s.todo = [req.key for req in s.sent if req.key not in s.rejected and following
                  and s.correct[req.key] < s.targets[req.key]]

    def _output(self, s: _Shard) -> ShardOutput:
        """A shard with all its rounds: rows by problem (shard order), then sample index."""
        rows = sorted(s.rows, key=lambda row: (s.order[row["problem_id"]], row["sample_idx"]))
        done = [pid for pid in s.targets if pid not in s.rejected]
        info = {"rounds": s.rounds,
                "reached": sum(s.correct[pid] >= s.targets[pid] and s.targets[pid] > 0 for pid in done),
                "at_budget": sum(s.correct[pid] < s.targets[pid] for pid in done),
                "no_gold": sum(s.targets[pid] == 0 for pid in done),
                "extra_problems": s.rounds[1][0] if len(s.rounds) > 1 else 0}
        return ShardOutput(schema.table(rows, schema.SAMPLES), schema.table(s.rejects, schema.REJECTS), info=info,
                           extra={"tokens": s.tokens})

    def check_shard(self, name: str, out: ShardOutput) -> None:
        if not self.uc:
            return
        counts = Counter(out.rows["problem_id"].to_pylist())
        worst = max(counts.values(), default=0)
        check(worst <= self.uc.max_samples,
              f"sample {name}: a problem has {worst} samples, over until_correct.max_samples={self.uc.max_samples}")
        keys = list(zip(out.rows["problem_id"].to_pylist(), out.rows["sample_idx"].to_pylist()))
        check(len(set(keys)) == len(keys), f"sample {name}: a (problem_id, sample_idx) appears twice")

    def committed(self, writer, name: str) -> None:
        # an engine's request journal of this shard (openai) is not needed once the shard is on disk
        (writer.path / f"_requests-{Path(name).stem}.jsonl").unlink(missing_ok=True)

    def check_total(self, writer, names: list[str]) -> None:
        samples = sum(writer.done[name]["rows"] for name in names)
        rejected = sum(writer.done[name].get("rejects", 0) for name in names)
        n = self.cfg.sample.n
        if not self.uc:
            check(samples == (self.input.rows - rejected) * n,
                  f"sample: {samples} samples for ({self.input.rows} problems - {rejected} rejected) x n={n}")
            return
        inputs = {s["file"]: s["rows"] for s in self.input.shards}
        for name in names:
            entry, survivors = writer.done[name], inputs[name]
            rounds = entry.get("rounds")
            check(isinstance(rounds, list) and rounds, f"sample {name}: no per-round counts journalled (until_correct)")
            for r, (asked, failed, drawn) in enumerate(rounds):
                check(asked <= survivors and drawn == (asked - failed) * round_size(n, self.uc.max_samples, r)
                      and (r > 0 or asked == inputs[name]),
                      f"sample {name}: round {r + 1} drew {drawn} samples for {asked} problems ({failed} rejected), "
                      f"{survivors} left from the round before")
                survivors = asked - failed
            check(sum(d for _, _, d in rounds) == entry["rows"] and sum(f for _, f, _ in rounds) == entry.get("rejects", 0),
                  f"sample {name}: {entry['rows']} rows and {entry.get('rejects', 0)} rejects, journalled rounds {rounds}")
        first = sum(writer.done[name]["rounds"][0][2] for name in names)
        first_rejected = sum(writer.done[name]["rounds"][0][1] for name in names)
        check(first == (self.input.rows - first_rejected) * n,
              f"sample: {first} first-round samples for ({self.input.rows} problems - {first_rejected} rejected) x n={n}")

    def stats(self, writer, names: list[str]) -> dict:
        out = {"n": self.cfg.sample.n, "problems": self.input.rows,
               "samples": sum(writer.done[name]["rows"] for name in names),
               "new_samples": sum(out.rows.num_rows for out in self.new),
               "new_completion_tokens": sum(out.extra["tokens"] for out in self.new),
               "shards_resumed": len(names) - len(self.new),
               **({"executor": "ray"} if self.executor() == "ray" else {})}
        if self.uc:
            out["until_correct"] = self.budget(writer, names)
        if self.cot:
            out["cot_decoding"] = {"k": self.cfg.sample.cot_k,
                                   "paths": sum(writer.done[name].get("paths", 0) for name in names),
                                   "paths_with_answer": sum(writer.done[name].get("scored", 0) for name in names)}
        return out

    def budget(self, writer, names: list[str]) -> dict:
        """What the extra rounds cost and gave, from every shard's journalled rounds (resumed ones too)."""
        entries = [writer.done[name] for name in names]
        depth = max(len(e["rounds"]) for e in entries)
        per_round = [sum(e["rounds"][r][2] for e in entries if len(e["rounds"]) > r) for r in range(depth)]
        asked = [sum(e["rounds"][r][0] for e in entries if len(e["rounds"]) > r) for r in range(depth)]
        return {**self.uc.model_dump(mode="json"),
                "rounds": depth, "samples_per_round": per_round, "problems_per_round": asked,
                "first_round_samples": per_round[0], "extra_samples": sum(per_round[1:]),
                "extra_problems": sum(e.get("extra_problems", 0) for e in entries),
                "reached_target": sum(e.get("reached", 0) for e in entries),
                "at_budget": sum(e.get("at_budget", 0) for e in entries),
                "no_gold": sum(e.get("no_gold", 0) for e in entries),
                # this run's time (resumed shards took theirs in an earlier run); per wave, round 1 first
                "seconds_per_round": [round(t, 1) for t in self.round_seconds],
                "extra_seconds": round(sum(self.round_seconds[1:]), 1)}

    def summary(self, manifest: dict, resumed: int) -> str:
        s, seconds = manifest["stats"], self.work_seconds
        rate = (f"; {s['new_samples'] / seconds:.1f} samples/s, {s['new_completion_tokens'] / seconds:.0f} tokens/s"
                if self.new and seconds else "")
        where = " on Ray" if self.executor() == "ray" else ""
        line = (f"{self.input.rows} problems x n={s['n']} -> {manifest['rows']} samples{where}"
                f" ({manifest['rejects']} problems rejected by the engine, {resumed} shards resumed){rate}")
        c = s.get("cot_decoding")
        if c:
            line += (f"; cot_decoding k={c['k']}: the {s['n']} most confident of {c['paths']} greedy paths,"
                     f" {c['paths_with_answer']} with an answer")
        b = s.get("until_correct")
        if b:
            line += (f"; until_correct {b['policy']} k={b['k']}: {b['extra_samples']} extra samples in"
                     f" {b['rounds'] - 1} more rounds for {b['extra_problems']} problems ({b['extra_seconds']:.0f} s),"
                     f" {b['reached_target']} problems reached their target, {b['at_budget']} stopped at"
                     f" max_samples={b['max_samples']}")
        return line

    def resources(self) -> tuple[int, dict]:
        """One engine per `model.tensor_parallel_size` GPUs, else one per CPU slot; a server's
        actors only send requests."""
        import ray

        r = self.cfg.run.ray
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if self.cfg.sample.engine == "openai":
            return r.engines or 1, {"num_cpus": 1}
        if gpus:
            per = self.cfg.model.tensor_parallel_size
            return r.engines or max(1, gpus // per), {"num_gpus": per}
        return r.engines or 1, {"num_cpus": 1}


def run(cfg: Config, iteration: int, force: bool = False) -> dict:
    return run_mapped(SampleStage(cfg, iteration), force)
