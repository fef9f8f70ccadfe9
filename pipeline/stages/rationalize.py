"""rationalize: STaR's second chance for the problems no sample solved.

For each problem with a gold answer and no correct sample, the model is asked again with the
answer shown as a hint (`rationalize.hint`, appended to the user turn). The rationales are
verified like any sample, then stored with the hint-free prompt and `rationalized=true`, so
the next model learns to reach the answer without being told it. A rationale that merely
copies the hint (too short, or naming the hint) is marked wrong with that reason.

Shards match the verify stage's one to one, so dedup reads a shard of each. When the option
is off (the default for generic data) the stage writes empty shards and loads no engine.
Sample indices continue after the sample stage's (`sample.n + i`; with `sample.until_correct`
on, after its budget: `max_samples + i`), so (problem_id, sample_idx) stays unique across both
stages.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterator

import pyarrow as pa

from selfimprove.pipeline import schema
from selfimprove.pipeline.config import Config
from selfimprove.pipeline.engines import Request, SamplingParams, load_engine
from selfimprove.pipeline.runs import check, reader, sampling_config, stage_dir
from selfimprove.pipeline.skeleton import MappedStage, ShardOutput, run_mapped
from selfimprove.pipeline.generation import request_seed, sampling_fingerprint, shard_rows, use_request_seed
from selfimprove.pipeline.verification import build_verifier, open_pool, verify_table
from selfimprove.pipeline.tasks import get_task, render_prompt


def with_hint(messages: list[dict], hint: str, answer: str) -> list[dict]:
    """The same chat with the hint appended to the last user turn (str.replace: answers hold braces)."""
    out = [dict(m) for m in messages]
    last_user = max(i for i, m in enumerate(out) if m["role"] == "user")
    out[last_user]["content"] += hint.replace("{answer}", answer)
    return out


def copies_hint(text: str, min_words: int, forbid: list[str]) -> str | None:
    """Why a correct rationale is unusable without its hint, or None if it is usable."""
    words = len(text.split())
    if words < min_words:
        return f"rationalization copies the hint: {words} words, fewer than rationalize.min_words={min_words}"
    lowered = text.lower()
    for phrase in forbid:
        if phrase.lower() in lowered:
            return f"rationalization refers to the hint ({phrase!r})"
    return None


def first_rationalized_idx(cfg: Config) -> int:
    """The first sample index of a rationalization: past every index the sample stage may write
    (sample.n, or with until_correct on its per-problem budget)."""
    uc = cfg.sample.until_correct
    return max(cfg.sample.n, uc.max_samples) if uc.enabled else cfg.sample.n


def unsolved(verified: pa.Table, problems: dict[str, dict]) -> tuple[list[str], int]:
    """Problems of one shard with no correct sample and a gold answer; and how many lack gold."""
    solved, seen = set(), []
    for pid, status in zip(verified["problem_id"].to_pylist(), verified["status"].to_pylist()):
        if pid not in solved and pid not in seen:
            seen.append(pid)
        if status == "correct":
            solved.add(pid)
    todo = [pid for pid in seen if pid not in solved]
    with_gold = [pid for pid in todo if problems[pid]["answer"] not in (None, "")]
    return with_gold, len(todo) - len(with_gold)


class RationalizeStage(MappedStage):
    """Hinted samples for each verify shard's unsolved problems, verified here; an empty shard
    where a shard has none (or the option is off), and no engine unless a shard needs one."""

    name, source = "rationalize", "verify"

    def __init__(self, cfg: Config, iteration: int):
        super().__init__(cfg, iteration)
        self.problems = reader(cfg, iteration, "prepare")
        self.scfg = sampling_config(cfg, iteration)
        self.n = cfg.rationalize.n or cfg.sample.n
        self.counts: Counter = Counter()

    def fingerprint(self) -> dict:
        r = self.cfg.rationalize
        parts = {"input": self.input.output_hash, "rationalize": r.model_dump(mode="json")}
        if r.enabled:  # then it samples and verifies: everything that changes those outputs counts
            sampling = sampling_fingerprint(self.scfg, self.iteration, self.problems.output_hash)
            parts.update({k: v for k, v in sampling.items() if k != "input"}, problems=self.problems.output_hash,
                         verifier=build_verifier(self.cfg).fingerprint())
        return parts

    def work(self, names: list[str]) -> Iterator[tuple[str, ShardOutput]]:
        by_shard: dict[str, tuple[dict, list[str]]] = {}
        for name in names:
            gold = {row["problem_id"]: row for row in self.problems.read_shard(name).to_pylist()}
            pids, no_gold = ([], 0) if not self.cfg.rationalize.enabled else \
                unsolved(self.input.read_shard(name, columns=["problem_id", "status"]), gold)
            self.counts["no_gold"] += no_gold
            if pids:
                by_shard[name] = (gold, pids)
            else:
                yield name, ShardOutput(schema.empty(schema.VERIFIED))
        if by_shard:
            yield from self._hinted(by_shard)

    def _hinted(self, by_shard: dict[str, tuple[dict, list[str]]]) -> Iterator[tuple[str, ShardOutput]]:
        cfg, r, n = self.scfg, self.cfg.rationalize, self.n
        task = get_task(cfg.task)
        self.engine = load_engine(cfg)
        self.pool = open_pool(self.cfg).__enter__()
        verifier = build_verifier(self.cfg)
        per_request = use_request_seed(cfg, self.engine)
        sent: dict[str, tuple[list[Request], list[list[dict]]]] = {}  # hinted requests and hint-free prompts

        def shard_requests():
            for name, (gold, pids) in by_shard.items():
                plain = [render_prompt(cfg.task, task, gold[pid]["question"]) for pid in pids]
                requests = [Request(pid, with_hint(messages, r.hint, str(gold[pid]["answer"])),
                                    request_seed(cfg.run.seed + 1, self.iteration, pid) if per_request else None)
                            for pid, messages in zip(pids, plain)]
                sent[name] = (requests, plain)
                yield name, requests

        journal = stage_dir(self.cfg, self.iteration, "rationalize")
        for name, results in self.engine.generate_shards(shard_requests(), SamplingParams.of(cfg.sample, n=n),
                                                         journal_dir=journal, desc="rationalize"):
            gold, pids = by_shard[name]
            requests, plain = sent.pop(name)
            rows, rejects, _ = shard_rows(name, requests, results, n, self.engine, stage="rationalize",
                                          first_idx=first_rationalized_idx(cfg), prompts=plain,  # stored without the hint
                                          think_tags=cfg.sample.think_tags)
            out = verify_table(schema.table(rows, schema.SAMPLES), gold, self.pool, verifier.name).to_pylist()
            check(len(out) == (len(pids) - len(rejects)) * n,
                  f"rationalize {name}: {len(out)} rows for {len(pids) - len(rejects)} problems x n={n}")
            for row in out:
                row["rationalized"] = True
                if row["status"] == "correct":
                    why = copies_hint(row["text"], r.min_words, r.forbid)
                    if why:
                        row.update(status="wrong", score=0.0, reason=why)
                        self.counts["copied_hint"] += 1
                    else:
                        self.counts["correct"] += 1
            self.counts["problems"] += len(pids)
            self.counts["samples"] += len(out)
            yield name, ShardOutput(schema.table(out, schema.VERIFIED), schema.table(rejects, schema.REJECTS))

    def stats(self, writer, names: list[str]) -> dict:
        return {"new": dict(self.counts), "n": self.n}

    def summary(self, manifest: dict, resumed: int) -> str:
        if not self.cfg.rationalize.enabled:
            return "off (rationalize.enabled: false)"
        c = self.counts
        return (f"{c['problems']} unsolved problems x n={self.n} -> {c['samples']} hinted samples,"
                f" {c['correct']} correct, {c['copied_hint']} dropped as copying the hint"
                f" ({c['no_gold']} unsolved without a gold answer skipped)")


def run(cfg: Config, iteration: int, force: bool = False) -> dict:
    return run_mapped(RationalizeStage(cfg, iteration), force)
