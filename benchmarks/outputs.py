"""Realistic GSM8K-style model outputs and hostile ones, shared by the verify and non-generation benchmarks.

Rationales are GSM8K train solutions (calculator annotations removed) ending in "The answer
is N."; about a third state a wrong N, a few state none. Everything is seeded, so two runs
verify the same texts. Hostile outputs are the inputs that hang or blow up naive verifiers.
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

GSM8K_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "train.jsonl"
_CALC = re.compile(r"<<[^>]*>>")

HOSTILE_KINDS = ("power_tower", "nested_fractions", "one_megabyte", "nul_and_invalid_utf8", "fifty_boxes",
                 "unclosed_box", "million_digit_number")


def scale(n: int) -> int:
    """`BENCH_SCALE=0.1 make bench` runs every size at a tenth, for a quick look."""
    return max(1, int(n * float(os.environ.get("BENCH_SCALE", "1"))))


def gsm8k_rows() -> list[dict]:
    """[{question, rationale, answer}] from GSM8K train."""
    rows = []
    with open(GSM8K_TRAIN) as f:
        for line in f:
            r = json.loads(line)
            rationale, _, answer = r["answer"].rpartition("####")
            rows.append({"question": r["question"], "rationale": _CALC.sub("", rationale).strip(),
                         "answer": answer.strip().replace(",", "")})
    return rows


def output_text(row: dict, rng: random.Random) -> str:
    """One model-like output for a GSM8K row: right (~60%), wrong (~33%) or without an answer."""
    roll = rng.random()
    if roll < 0.6:
        return f"{row['rationale']}\nThe answer is {row['answer']}."
    if roll < 0.93:
        return f"{row['rationale']}\nThe answer is {int(float(row['answer'])) + rng.randint(1, 9)}."
    return row["rationale"][: rng.randint(20, 200)]  # cut off mid-way: no final answer


def hostile_text(kind: str, rng: random.Random) -> str:
    if kind == "power_tower":
        return "So the total is huge. \\boxed{9^{9^{9^{9^{9}}}}}"
    if kind == "nested_fractions":
        depth = rng.randint(200, 400)
        return "The answer is $" + "\\frac{1}{1+" * depth + "1" + "}" * depth + "$."
    if kind == "one_megabyte":
        return ("The sum is 12 + 30 = 42. " * 43_000)[: 1 << 20] + "The answer is 42."
    if kind == "nul_and_invalid_utf8":
        return "Total\x00 is \udcff\udcfe 4\x002. The answer is \x0042\udcff."
    if kind == "fifty_boxes":
        return " ".join(f"\\boxed{{{i}}}" for i in range(50))
    if kind == "unclosed_box":  # a brace matcher that backtracks is quadratic here
        return "\\boxed{" + "{" * 1_000_000
    if kind == "million_digit_number":  # int() of it is quadratic and Python refuses it
        return "The answer is " + "9" * 1_000_000 + "."
    raise ValueError(kind)


def gsm8k_jobs(count: int, per_problem: int = 4, hostile_share: float = 0.0, seed: int = 0):
    """`count` outputs as VerifyPool jobs [(problem, samples)], `per_problem` samples per problem;
    `hostile_share` of them replaced by hostile outputs, spread evenly. Returns (jobs, hostile flags)."""
    rng = random.Random(seed)
    rows = gsm8k_rows()
    every = round(1 / hostile_share) if hostile_share else 0
    jobs, flags, k = [], [], 0
    for p in range(-(-count // per_problem)):
        row = rows[p % len(rows)]
        problem = {"problem_id": f"gsm8k-{p}", "question": row["question"], "answer": row["answer"], "metadata": {}}
        samples = []
        for s in range(min(per_problem, count - p * per_problem)):
            hostile = bool(every) and k % every == every // 2
            text = hostile_text(HOSTILE_KINDS[(k // every) % len(HOSTILE_KINDS)], rng) if hostile else output_text(row, rng)
            samples.append({"sample_idx": s, "text": text, "finish_reason": "stop"})
            flags.append(hostile)
            k += 1
        jobs.append((problem, samples))
    return jobs, flags
