"""Non-generation cost: prepare + verify + dedup + export per 100,000 samples, its growth 10k -> 1M, and peak memory.

No engine: a problems file of GSM8K-style questions goes through the real prepare stage, the
samples stage directory is written directly with StageWriter (n=4 outputs per problem, from
benchmarks/outputs.py, a tenth of them repeats for dedup to remove), then verify, dedup and
export run as they do in a real run, each in its own child process, so its peak RSS
(ru_maxrss) is the stage's own. Times are the stage's `run()` alone, without the child's
interpreter start. Linear cost means a growth ratio (seconds per sample at 1M / at 10k) near 1;
streaming means the same peak RSS at every size. `BENCH_SCALE=0.1` shrinks every size.
"""

from __future__ import annotations

import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import yaml

from benchmarks.outputs import gsm8k_rows, output_text, scale
from selfimprove.pipeline.stages import STAGES as ALL_STAGES

ROOT = Path(__file__).resolve().parents[1]
SIZES = (10_000, 100_000, 1_000_000)  # samples
N = 4  # samples per problem
# Big runs want big shards: every shard commit costs a few fsyncs (see shard_commit_ms), which at
# the default 64 problems per shard would outweigh the rows' own work.
PROBLEMS_PER_SHARD = 1024
# prepare, then every stage from verify to export but sample (rationalize too, where it exists: off
# by default, it writes empty shards and loads no engine)
STAGES = ["prepare"] + [s for s in ALL_STAGES[ALL_STAGES.index("verify") : ALL_STAGES.index("export") + 1] if s != "sample"]


def write_problems(path: Path, problems: int) -> None:
    rows = gsm8k_rows()
    with open(path, "w") as f:
        for i in range(problems):
            r = rows[i % len(rows)]
            # a number in the question keeps every question distinct (prepare collapses repeats)
            f.write(json.dumps({"question": f"{r['question']} (problem {i})", "answer": r["answer"]}) + "\n")


def write_samples(config: Path) -> int:
    """The samples stage directory, written as the sample stage would, without an engine."""
    from selfimprove.pipeline import schema
    from selfimprove.pipeline.config import load_config
    from selfimprove.pipeline.stages import open_writer, reader
    from selfimprove.pipeline.tasks import get_task, render_prompt

    cfg = load_config(config)
    task = get_task(cfg.task)
    problems = reader(cfg, 1, "prepare")
    by_answer: dict[str, dict] = {}
    for r in gsm8k_rows():
        by_answer.setdefault(r["answer"], r)
    rng = random.Random(0)
    total = 0
    with open_writer(cfg, 1, "sample", {"synthetic": True}, force=True) as writer:
        for name, table in problems.iter_shards(columns=["problem_id", "question", "answer"]):
            cols: dict[str, list] = {k: [] for k in schema.SAMPLES.names}
            for pid, question, answer in zip(*(table[c].to_pylist() for c in ("problem_id", "question", "answer"))):
                row = {"rationale": by_answer.get(answer, {}).get("rationale", "Adding up."), "answer": answer}
                prompt = json.dumps(render_prompt(cfg.task, task, question), ensure_ascii=False)
                texts = [output_text(row, rng) for _ in range(N)]
                if rng.random() < 0.4:
                    texts[-1] = texts[0]  # the model repeats itself: an exact duplicate
                for idx, text in enumerate(texts):
                    for k, v in (("problem_id", pid), ("sample_idx", idx), ("prompt", prompt), ("text", text),
                                 ("finish_reason", "stop"), ("prompt_tokens", 120), ("completion_tokens", len(text) // 4),
                                 ("cumulative_logprob", -0.5 * idx - 3.0), ("model", "synthetic"), ("seed", 1234)):
                        cols[k].append(v)
            writer.write_shard(name, pa.Table.from_pydict(cols, schema=schema.SAMPLES))
            total += len(cols["text"])
        writer.finish([s["file"] for s in problems.shards])
    return total


def run_child(stage: str, config: Path) -> dict:
    """Run one stage in a child process; its seconds, peak RSS and summary line."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_noneng", stage, str(config)], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{stage} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    result["summary"] = next((line for line in reversed(lines[:-1]) if line.startswith(f"{stage}:")), "")
    return result


def measure(label: str, samples: int, workdir: Path) -> dict:
    problems = samples // N
    source = workdir / "problems.jsonl"
    write_problems(source, problems)
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump({
        "run": {"dir": str(workdir / "run"), "problems_per_shard": PROBLEMS_PER_SHARD},
        "task": {"name": "columns", "path": str(source)},
        "verify": {"workers": 0},
    }))
    results = {"prepare": run_child("prepare", config)}
    started = time.time()
    written = write_samples(config)
    print(f"  {label}: {problems} problems, {written} samples written in {time.time() - started:.0f} s", flush=True)
    for stage in STAGES[1:]:
        results[stage] = run_child(stage, config)
    for stage in STAGES:
        r = results[stage]
        print(f"    {stage:<8} {r['seconds']:7.1f} s  peak RSS {r['rss_mb']:6.0f} MB   {r['summary']}", flush=True)
    return {"samples": written, **results}


def label(samples: int) -> str:
    """10000 -> "10k", 1000000 -> "1m": how figures name the size they were measured at."""
    return f"{samples // 1_000_000}m" if samples % 1_000_000 == 0 else f"{samples // 1000}k" if samples % 1000 == 0 else str(samples)


def run() -> dict[str, float]:
    figures: dict[str, float] = {}
    seconds: dict[str, float] = {}
    sizes = {label(scale(n)): scale(n) for n in SIZES}
    for name, samples in sizes.items():
        with tempfile.TemporaryDirectory(prefix=f"bench-noneng-{name}-") as tmp:
            r = measure(name, samples, Path(tmp))
        seconds[name] = sum(r[s]["seconds"] for s in STAGES) / r["samples"]
        for stage in STAGES:
            # dedup_peak_rss_mb_1m is bench_dedup's figure; this one is the whole stage in this run
            figures[f"{stage}_peak_rss_mb_{name}" if stage != "dedup" else f"dedup_stage_peak_rss_mb_{name}"] = r[stage]["rss_mb"]
            figures[f"noneng_{stage}_seconds_per_100k_{name}"] = r[stage]["seconds"] / r["samples"] * 100_000
    # The headline names say 10k, 100k and 1m; with BENCH_SCALE they hold the scaled sizes'
    # figures (smallest, middle, largest), and noneng_largest_samples says what the largest was.
    small, middle, large = sizes
    figures["noneng_largest_samples"] = float(sizes[large])
    figures["noneng_seconds_per_100k"] = seconds[large] * 100_000
    figures["noneng_growth_10k_to_100k"] = seconds[middle] / seconds[small]
    figures["noneng_growth_10k_to_1m"] = seconds[large] / seconds[small]
    # the same without each stage's fixed start-up (worker pool, imports): the cost per extra
    # sample from the middle size to the largest over that from the smallest to the middle; 1 is linear
    total = {k: seconds[k] * n for k, n in sizes.items()}
    figures["noneng_marginal_growth_100k_to_1m"] = ((total[large] - total[middle]) / (sizes[large] - sizes[middle])) / (
        (total[middle] - total[small]) / (sizes[middle] - sizes[small]))
    figures["shard_commit_ms"] = shard_commit_ms()
    print(f"  one shard commit (write, fsync, rename, journal): {figures['shard_commit_ms']:.1f} ms", flush=True)
    return figures


def shard_commit_ms(count: int = 20) -> float:
    """Median time to commit a small shard: the fixed cost every shard pays in every stage."""
    from selfimprove.pipeline import schema
    from selfimprove.pipeline.store import StageWriter

    with tempfile.TemporaryDirectory(prefix="bench-commit-") as tmp:
        with StageWriter(Path(tmp), "bench", {"bench": 1}, "x") as writer:
            rows = [{"stage": "bench", "source_index": i, "problem_id": str(i), "reason": "r", "raw": "x" * 100} for i in range(64)]
            table = schema.table(rows, schema.REJECTS)
            times = []
            for i in range(count):
                started = time.perf_counter()
                writer.write_shard(f"part-{i:05d}.parquet", table)
                times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2] * 1000


def _child(stage: str, config: str) -> None:
    from selfimprove.pipeline.config import load_config
    from selfimprove.pipeline.stages import run_stage

    cfg = load_config(config)
    started = time.perf_counter()
    run_stage(stage, cfg, 1)
    seconds = time.perf_counter() - started
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"seconds": seconds, "rss_mb": rss_mb}), flush=True)


if __name__ == "__main__":
    _child(*sys.argv[1:3])
