"""Verify pool: answers/s with all cores vs 1 worker vs plain single-process loops, and what hostile outputs cost.

The same 10,000 GSM8K-style outputs (benchmarks/outputs.py) go through
- the VerifyPool with the `math` verifier, 1 worker and one worker per core (the stage's default),
- the same verifier called in a loop in this process (no pool: what the pool's safety costs),
- a plain Math-Verify loop, `verify(parse(gold), parse(output))`, as a user of the library would write it.
The two pool sizes are timed alternately, several rounds, best round each, because other work on
the machine slows whichever side it happens to overlap. Then 1% of the outputs are replaced by
hostile ones (a power tower, deeply nested fractions, 1 MB, NUL bytes and invalid UTF-8, fifty
boxes, a box never closed, a million-digit answer): the throughput lost, and the longest any single item took (each hostile item timed alone
through the pool; the hard limit is `timeout_s` = 5 s).
"""

from __future__ import annotations

import time

from benchmarks.outputs import gsm8k_jobs, scale
from selfimprove.verifiers import VerifyPool, get_verifier
from selfimprove.verifiers.pool import _cpu_count

ROUNDS = 3
TIMEOUT_S = 5.0


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _inprocess(spec: str, jobs) -> float:
    verifier = get_verifier(spec)
    return _timed(lambda: [verifier.verify(p, s) for p, samples in jobs for s in samples])


def _plain_math_verify(jobs) -> float:
    from math_verify import parse, verify

    def loop():
        for problem, samples in jobs:
            gold = parse(f"${problem['answer']}$")
            for s in samples:
                verify(gold, parse(s["text"]))

    return _timed(loop)


def _scaling(spec: str, jobs, count: int) -> dict[str, float]:
    """Answers/s of 1 worker and of all cores, timed alternately, best of ROUNDS each; and the
    parent's CPU time per answer (what the pool costs beyond the verifying itself)."""
    best = {"one": float("inf"), "all": float("inf")}
    parent_cpu = float("inf")
    with VerifyPool(spec, workers=1, timeout_s=TIMEOUT_S) as one, VerifyPool(spec, workers=0, timeout_s=TIMEOUT_S) as every:
        pools = {"one": one, "all": every}
        for pool in pools.values():
            pool.verify(jobs[:50])  # workers started and warm
        for r in range(ROUNDS):
            for side in ("one", "all") if r % 2 == 0 else ("all", "one"):
                cpu = time.process_time()
                best[side] = min(best[side], _timed(lambda: pools[side].verify(jobs)))
                parent_cpu = min(parent_cpu, time.process_time() - cpu)
    return {"one": count / best["one"], "all": count / best["all"], "parent_cpu_s": parent_cpu / count}


def run() -> dict[str, float]:
    count = scale(10_000)
    jobs, _ = gsm8k_jobs(count)
    cores = _cpu_count()
    print(f"  {count} outputs, {cores} cores", flush=True)

    math_rates = _scaling("math", jobs, count)
    numeric_rates = _scaling("numeric", jobs, count)
    inprocess = count / min(_inprocess("math", jobs) for _ in range(ROUNDS))  # a loaded machine slows wall time
    cpu = time.process_time()
    _inprocess("math", jobs)
    verifier_cpu = (time.process_time() - cpu) / count
    # Load-independent: the parent's CPU per answer over the verifier's. With w workers on w cores
    # the parent takes its share of them, so CPU-bound scaling is at most w / (1 + share).
    share = math_rates["parent_cpu_s"] / verifier_cpu
    plain = count / _plain_math_verify(jobs)
    print(f"  math pool: 1 worker {math_rates['one']:.0f}/s, {cores} workers {math_rates['all']:.0f}/s; "
          f"in-process loop {inprocess:.0f}/s; plain Math-Verify loop {plain:.0f}/s", flush=True)
    print(f"  parent CPU per answer {math_rates['parent_cpu_s'] * 1e6:.1f} us, verifier CPU per answer "
          f"{verifier_cpu * 1e6:.1f} us: {cores}-core scaling at most {cores / (1 + share):.2f}x", flush=True)
    print(f"  numeric pool: 1 worker {numeric_rates['one']:.0f}/s, {cores} workers {numeric_rates['all']:.0f}/s", flush=True)

    hostile_jobs, flags = gsm8k_jobs(count, hostile_share=0.01, seed=1)
    clean_jobs, _ = gsm8k_jobs(count, seed=1)
    singles = [(p, [s]) for p, samples in hostile_jobs for s in samples]
    hostile_items = [job for job, hostile in zip(singles, flags) if hostile]
    with VerifyPool("math", workers=0, timeout_s=TIMEOUT_S) as pool:
        pool.verify(clean_jobs[:50])
        clean_s = hostile_s = float("inf")
        for _ in range(2):  # alternate, best of each: noise hits both sides alike
            clean_s = min(clean_s, _timed(lambda: pool.verify(clean_jobs)))
            hostile_s = min(hostile_s, _timed(lambda: pool.verify(hostile_jobs)))
        item_s, statuses = [], []
        for job in hostile_items:
            started = time.perf_counter()
            statuses.append(pool.verify([job])[0][0].status)
            item_s.append(time.perf_counter() - started)
    loss = 1 - clean_s / hostile_s
    print(f"  {len(hostile_items)} hostile outputs: throughput {count / clean_s:.0f}/s -> {count / hostile_s:.0f}/s "
          f"({loss:.1%} lost); longest item {max(item_s):.2f} s; verdicts "
          + ", ".join(f"{s} {statuses.count(s)}" for s in sorted(set(statuses))), flush=True)

    return {
        "verify_scaling_ratio": math_rates["all"] / math_rates["one"],
        "verify_scaling_ratio_numeric": numeric_rates["all"] / numeric_rates["one"],
        "verify_pool_1_vs_inprocess_ratio": math_rates["one"] / inprocess,
        "verify_pool_all_vs_plain_math_verify_ratio": math_rates["all"] / plain,
        "verify_pool_1_vs_plain_math_verify_ratio": math_rates["one"] / plain,
        "verify_pool_all_per_s": math_rates["all"],
        "verify_parent_cpu_share": share,
        "verify_scaling_ceiling": cores / (1 + share),
        "verify_cores": float(cores),
        "verify_hostile_throughput_loss": loss,
        "verify_hostile_max_item_s": max(item_s),
    }
