"""rationalize: STaR's second chance for the problems no sample solved.

For each problem with a gold answer and no correct sample, the model is asked again with the
answer shown as a hint (`rationalize.hint`, appended to the user turn). The rationales are
verified like any sample, then stored with the hint-free prompt and `rationalized=true`, so
the next model learns to reach the answer without being told it. A rationale that merely
copies the hint (too short, or naming the hint) is marked wrong with that reason.

Shards match the verify stage's one to one, so dedup reads a shard of each. When the option
is off (the default for generic data) the stage writes empty shards and loads no engine.
Sample indices continue after the first round's (`sample.n + i`), so (problem_id,
sample_idx) stays unique across both rounds.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import pyarrow as pa

from selfimprove.pipeline import schema
from selfimprove.pipeline.config import Config
from selfimprove.pipeline.engines import Request, SamplingParams, load_engine
from selfimprove.pipeline.stages import check, open_writer, pending, reader, sampling_config, summary, up_to_date
from selfimprove.pipeline.generation import request_seed, sampling_fingerprint, shard_rows, use_request_seed
from selfimprove.pipeline.verification import build_verifier, open_pool, verifier_spec, verify_table
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


def run(cfg: Config, iteration: int, force: bool = False) -> dict:
    started = time.time()
    problems = reader(cfg, iteration, "prepare")
    verified = reader(cfg, iteration, "verify")
    r = cfg.rationalize
    scfg = sampling_config(cfg, iteration)
    n = r.n or cfg.sample.n
    parts = {"input": verified.output_hash, "rationalize": r.model_dump(mode="json")}
    if r.enabled:  # then it samples and verifies: everything that changes those outputs counts
        sampling = sampling_fingerprint(scfg, iteration, problems.output_hash)
        parts.update({k: v for k, v in sampling.items() if k != "input"}, problems=problems.output_hash,
                     verifier=build_verifier(cfg).fingerprint())
    with open_writer(cfg, iteration, "rationalize", parts, force) as writer:
        if writer.up_to_date:
            return up_to_date("rationalize", writer)
        todo = pending(verified, writer)
        counts: Counter = Counter()
        if not r.enabled:
            for name in todo:
                writer.write_shard(name, schema.empty(schema.VERIFIED))
        else:
            _rationalize(scfg, iteration, problems, verified, writer, todo, n, counts)
        manifest = writer.finish([s["file"] for s in verified.shards], stats={"new": dict(counts), "n": n})
    if not r.enabled:
        summary("rationalize", "off (rationalize.enabled: false)", started)
    else:
        summary(
            "rationalize",
            f"{counts['problems']} unsolved problems x n={n} -> {counts['samples']} hinted samples,"
            f" {counts['correct']} correct, {counts['copied_hint']} dropped as copying the hint"
            f" ({counts['no_gold']} unsolved without a gold answer skipped)",
            started,
        )
    return manifest


def _rationalize(cfg: Config, iteration: int, problems, verified, writer, todo: list[str], n: int, counts: Counter) -> None:
    r = cfg.rationalize
    task = get_task(cfg.task)
    spec = verifier_spec(cfg)
    verifier = build_verifier(cfg)
    by_shard: dict[str, tuple[dict, list[str]]] = {}
    for name in todo:
        gold = {row["problem_id"]: row for row in problems.read_shard(name).to_pylist()}
        pids, no_gold = unsolved(verified.read_shard(name, columns=["problem_id", "status"]), gold)
        counts["no_gold"] += no_gold
        if pids:
            by_shard[name] = (gold, pids)
        else:
            writer.write_shard(name, schema.empty(schema.VERIFIED))
    if not by_shard:
        return
    engine = load_engine(cfg)
    try:
        per_request = use_request_seed(cfg, engine)
        sent: dict[str, tuple[list[Request], list[list[dict]]]] = {}  # hinted requests and hint-free prompts

        def shard_requests():
            for name, (gold, pids) in by_shard.items():
                plain = [render_prompt(cfg.task, task, gold[pid]["question"]) for pid in pids]
                requests = [Request(pid, with_hint(messages, r.hint, str(gold[pid]["answer"])),
                                    request_seed(cfg.run.seed + 1, iteration, pid) if per_request else None)
                            for pid, messages in zip(pids, plain)]
                sent[name] = (requests, plain)
                yield name, requests

        with open_pool(cfg) as pool:
            for name, results in engine.generate_shards(shard_requests(), SamplingParams.of(cfg.sample, n=n), journal_dir=writer.path,
                                                        desc="rationalize"):
                gold, pids = by_shard[name]
                requests, plain = sent.pop(name)
                rows, rejects, _ = shard_rows(name, requests, results, n, engine, stage="rationalize",
                                              first_idx=cfg.sample.n, prompts=plain)  # stored without the hint
                out = verify_table(schema.table(rows, schema.SAMPLES), gold, pool, verifier.name).to_pylist()
                check(len(out) == (len(pids) - len(rejects)) * n,
                      f"rationalize {name}: {len(out)} rows for {len(pids) - len(rejects)} problems x n={n}")
                for row in out:
                    row["rationalized"] = True
                    if row["status"] == "correct":
                        why = copies_hint(row["text"], r.min_words, r.forbid)
                        if why:
                            row.update(status="wrong", score=0.0, reason=why)
                            counts["copied_hint"] += 1
                        else:
                            counts["correct"] += 1
                counts["problems"] += len(pids)
                counts["samples"] += len(out)
                writer.write_shard(name, schema.table(out, schema.VERIFIED), schema.table(rejects, schema.REJECTS))
    finally:
        engine.close()
