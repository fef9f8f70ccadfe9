#!/usr/bin/env bash
# The GPU check (docs/performance.md): on a machine with an NVIDIA GPU and PyPI access, install the
# `gpu` extra, run `make run` (one full iteration of the default config) and the sample benchmarks,
# and keep what they measured: sample_vs_vllm_defaults_ratio (the stage vs bare vLLM at its own
# defaults), sample_overhead_ratio, and make run's per-stage times.
#
#   bash benchmarks/gpu_check.sh            # results in data/gpu-check/
#   OUT=/somewhere bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-data/gpu-check}
mkdir -p "$OUT"
nvidia-smi -L >/dev/null 2>&1 || { echo "gpu_check: no NVIDIA GPU visible (nvidia-smi -L failed); this check is for a GPU machine" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
make setup  # the Makefile picks the gpu extra where nvidia-smi sees a GPU
started=$(date +%s)
make run 2>&1 | tee "$OUT/make-run.log"
echo "make run: $(( $(date +%s) - started )) s after setup" | tee -a "$OUT/make-run.log"
for m in data/runs/default/iter-1/*/_manifest.json; do cp "$m" "$OUT/manifest-$(basename "$(dirname "$m")").json"; done  # per-stage times, counts
for bench in sample_defaults sample; do
  make bench BENCH=$bench 2>&1 | tee "$OUT/bench-$bench.log"
done
cp benchmarks/results.json "$OUT/results.json"
python3 - "$OUT/results.json" <<'PY'
import json, sys
figures = json.load(open(sys.argv[1]))["figures"]
for key in ("sample_vs_vllm_defaults_ratio", "sample_overhead_ratio", "sample_stage_tokens_per_s", "vllm_defaults_tokens_per_s"):
    print(f"{key}: {figures.get(key, 'not measured')}")
PY
