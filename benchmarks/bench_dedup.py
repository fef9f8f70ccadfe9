"""Dedup stage vs datatrove's MinHash dedup: rows/s on the same synthetic rationales, and our peak memory at 1M rows.

Data: DEDUP_BENCH_ROWS (default 1,000,000) rationales, 200 per problem, written as the verify
stage's Parquet shards. Each is 8-15 sentences (~110-200 words) drawn from a problem's own pool
of real GSM8K training-solution sentences; 30% are near-duplicates of another rationale of the
same problem (one sentence left out).

Ours: the real `dedup` stage (read shards, exact + MinHash/LSH within each problem, write
shards and stats) in a child process, with datatrove's default MinHash parameters: word
5-grams, 112 hashes = 14 bands x 8, threshold 0.8. Its peak RSS is the child's ru_maxrss.

Theirs: datatrove's four-step MinHash pipeline (signatures, buckets, clusters, filter+write)
with the same parameters, one process. datatrove tokenises each document with spaCy in Python
(under a hundred rows/s here), so it runs on the first DEDUP_BENCH_DATATROVE_ROWS rows
(default 5,000, whole shards) and ours runs again on exactly those rows for the ratio.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parents[1]
GSM8K_TRAIN = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
PER_PROBLEM = 200
PROBLEMS_PER_SHARD = 25
NEAR_DUP_SHARE = 0.3
NGRAM, BANDS, PER_BAND = 5, 14, 8


def sentence_pool() -> pa.Array:
    sentences = []
    for line in GSM8K_TRAIN.read_text().splitlines():
        answer = json.loads(line)["answer"].split("####")[0]
        sentences += [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n", answer) if len(s.split()) >= 4]
    return pa.array(sentences)


def shard_table(pool: pa.Array, shard: int, problems: int) -> pa.Table:
    rng = np.random.default_rng(shard)
    ids, pids, idx = [], [], []
    for p in range(problems):
        own = rng.choice(len(pool), size=40, replace=False)
        drawn = own[rng.integers(0, len(own), size=(PER_PROBLEM, 15))].tolist()
        lengths = rng.integers(8, 16, size=PER_PROBLEM).tolist()
        near = (rng.random(PER_PROBLEM) < NEAR_DUP_SHARE).tolist()
        pick = rng.random((PER_PROBLEM, 2)).tolist()
        rows: list[list[int]] = []
        for i in range(PER_PROBLEM):
            if i and near[i]:
                variant = list(rows[int(pick[i][0] * i)])
                if len(variant) > 4:
                    del variant[int(pick[i][1] * len(variant))]  # the same rationale less one sentence
                rows.append(variant)
            else:
                rows.append(drawn[i][: lengths[i]])
        ids += rows
        pids += [f"s{shard:04d}-p{p:03d}"] * PER_PROBLEM
        idx += list(range(PER_PROBLEM))
    offsets = np.zeros(len(ids) + 1, np.int32)
    offsets[1:] = np.cumsum([len(r) for r in ids])
    flat = pool.take(pa.array(np.fromiter((x for r in ids for x in r), np.int64, count=int(offsets[-1]))))
    texts = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), flat), " ")
    from selfimprove.pipeline import schema

    n = len(ids)
    columns = {"problem_id": pa.array(pids), "sample_idx": pa.array(idx, pa.int32()),
               "prompt": pa.array(['[{"role": "user", "content": "q"}]'] * n), "text": texts,
               "status": pa.array(["correct"] * n), "model": pa.array(["synthetic"] * n)}
    return pa.Table.from_arrays([columns.get(f.name, pa.nulls(n, f.type)).cast(f.type) for f in schema.VERIFIED],
                                schema=schema.VERIFIED)


def write_verified(run_dir: Path, pool: pa.Array, shards: int) -> float:
    """Write the verify stage's shards one at a time (this process stays small); mean words per row."""
    from selfimprove.pipeline.store import StageWriter, part_name

    words = []
    with StageWriter(run_dir / "iter-1" / "verified", "verify", {"bench": shards}, "bench") as w:
        names = []
        for i in range(shards):
            t = shard_table(pool, i, PROBLEMS_PER_SHARD)
            words.append(pc.mean(pc.list_value_length(pc.utf8_split_whitespace(t.column("text")))).as_py())
            names.append(part_name(i))
            w.write_shard(names[-1], t)
        w.finish(names)
    return float(np.mean(words))


# Peak RSS from /proc (VmHWM belongs to this process image; ru_maxrss would carry over the
# parent's resident size across fork + exec on Linux).
PEAK = """
def peak_mb():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""

OURS = """
import json, resource, sys, time
from selfimprove.pipeline.config import load_config
from selfimprove.pipeline.stages import dedup
cfg = load_config(None, [f"run.dir={sys.argv[1]}", "dedup.max_per_problem=200", "dedup.paths=false",
      "dedup.near_dup.threshold=0.8", "dedup.near_dup.ngram=%d", "dedup.near_dup.num_perm=%d", "dedup.near_dup.bands=%d"])
t = time.perf_counter()
m = dedup.run(cfg, 1)
print(json.dumps({"seconds": time.perf_counter() - t, "rss_mb": peak_mb(), "kept": m["rows"],
                  "removed": m["stats"]["removed"]}))
""" % (NGRAM, BANDS * PER_BAND, BANDS)

THEIRS = """
import json, resource, sys, time
from pathlib import Path
from datatrove.executor.local import LocalPipelineExecutor
from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                              MinhashDedupFilter, MinhashDedupSignature)
from datatrove.pipeline.readers import ParquetReader
from datatrove.pipeline.writers import ParquetWriter
from datatrove.utils.hashing import HashConfig
src, work = sys.argv[1], Path(sys.argv[2])
config = MinhashConfig(n_grams=%d, num_buckets=%d, hashes_per_bucket=%d, hash_config=HashConfig(precision=64))
def adapter(self, data, path, id_in_file):  # every non-null column travels, as our stage keeps them
    return {"text": data.pop("text"), "id": f"{data['problem_id']}/{data['sample_idx']}",
            "metadata": {k: v for k, v in data.items() if v is not None}}
read = lambda: ParquetReader(src, glob_pattern="part-*.parquet", adapter=adapter)
steps = [
    ([read(), MinhashDedupSignature(output_folder=str(work / "sigs"), config=config)], 1),
    ([MinhashDedupBuckets(input_folder=str(work / "sigs"), output_folder=str(work / "buckets"), config=config)], config.num_buckets),
    ([MinhashDedupCluster(input_folder=str(work / "buckets"), output_folder=str(work / "remove"), config=config)], 1),
    ([read(), MinhashDedupFilter(input_folder=str(work / "remove")), ParquetWriter(str(work / "out"))], 1),
]
t = time.perf_counter()
for i, (pipeline, tasks) in enumerate(steps):
    LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=1, logging_dir=str(work / f"logs{i}")).run()
seconds = time.perf_counter() - t
import pyarrow.parquet as pq
kept = sum(pq.read_metadata(p).num_rows for p in (work / "out").rglob("*.parquet"))
print(json.dumps({"seconds": seconds, "rss_mb": peak_mb(), "kept": kept}))
""" % (NGRAM, BANDS, PER_BAND)


def child(code: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "LOGURU_LEVEL": "WARNING"}
    proc = subprocess.run([sys.executable, "-c", "import resource\n" + PEAK + code, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run() -> dict[str, float]:
    rows = int(os.environ.get("DEDUP_BENCH_ROWS", 1_000_000))
    dt_rows = int(os.environ.get("DEDUP_BENCH_DATATROVE_ROWS", 5_000))
    shard_rows = PER_PROBLEM * PROBLEMS_PER_SHARD
    shards = max(1, rows // shard_rows)
    dt_shards = max(1, min(shards, dt_rows // shard_rows))
    rows, dt_rows = shards * shard_rows, dt_shards * shard_rows
    label = f"{rows // 1_000_000}m" if rows % 1_000_000 == 0 else f"{rows // 1000}k"
    work = Path(tempfile.mkdtemp(prefix="bench_dedup_"))
    try:
        started = time.time()
        pool = sentence_pool()
        words = write_verified(work / "full", pool, shards)
        write_verified(work / "subset", pool, dt_shards)  # the same first shards (seeded by index)
        print(f"  {rows} rows ({words:.0f} words on average) in {shards} shards, written in {time.time() - started:.0f} s", flush=True)

        ours_full = child(OURS, str(work / "full"))
        print(f"  ours, {rows} rows: {ours_full['seconds']:.1f} s, {rows / ours_full['seconds']:.0f} rows/s, "
              f"peak RSS {ours_full['rss_mb']:.0f} MB, removed {ours_full['removed']}", flush=True)
        ours_sub = child(OURS, str(work / "subset"))
        theirs = child(THEIRS, str(work / "subset" / "iter-1" / "verified"), str(work / "datatrove"))
        print(f"  on the first {dt_rows} rows: ours {ours_sub['seconds']:.1f} s ({dt_rows - ours_sub['kept']} removed), "
              f"datatrove {theirs['seconds']:.1f} s ({dt_rows - theirs['kept']} removed, peak RSS {theirs['rss_mb']:.0f} MB)",
              flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ours_rate = dt_rows / ours_sub["seconds"]
    theirs_rate = dt_rows / theirs["seconds"]
    return {
        f"dedup_rows_per_s_{label}": round(rows / ours_full["seconds"], 1),
        f"dedup_peak_rss_mb_{label}": round(ours_full["rss_mb"], 1),
        f"dedup_removed_share_{label}": round(1 - ours_full["kept"] / rows, 4),
        "dedup_rows_per_s_same_rows_as_datatrove": round(ours_rate, 1),
        "datatrove_minhash_rows_per_s": round(theirs_rate, 1),
        "datatrove_removed_share": round(1 - theirs["kept"] / dt_rows, 4),
        "dedup_vs_datatrove_ratio": round(ours_rate / theirs_rate, 2),
    }
