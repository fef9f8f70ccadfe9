"""`make bench [BENCH=name]`: run the benchmarks, merge their figures into results.json, print a table.

Each benchmark is a module `benchmarks/bench_<name>.py` with a docstring saying what it
measures and `run() -> dict[str, float]` returning named figures. Figures from benchmarks not
run this time are kept in results.json, each with the date it was measured and the machine it
was measured on (CPU model, cores, native bfloat16 or not: a ratio measured on one CPU does not
carry to another).

`make bench` runs each benchmark in a process of its own: what one leaves behind (an in-process
vLLM engine's threads and memory after the sample benchmark) must not slow the next one.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import benchmarks
from selfimprove.pipeline.hardware import describe_machine

RESULTS = Path(__file__).with_name("results.json")


def available() -> list[str]:
    return sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_"))


def load_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {"figures": {}, "measured": {}}


def main(argv: list[str] | None = None) -> int:
    names = available()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--only", choices=names, help="run one benchmark")
    parser.add_argument("--no-table", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.only:
        started = time.time()
        failed = [name for name in names
                  if subprocess.run([sys.executable, "-m", "benchmarks.run", "--only", name, "--no-table"]).returncode]
        print_table(load_results())
        print(f"\nmake bench: {len(names)} benchmarks in {(time.time() - started) / 60:.1f} min"
              + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
        return 1 if failed else 0
    ok = run_one(args.only)
    if not args.no_table:
        print_table(load_results())
    return 0 if ok else 1


def run_one(name: str) -> bool:
    """Run one benchmark and merge its figures into results.json; False if it failed."""
    module = importlib.import_module(f"benchmarks.bench_{name}")
    print(f"== {name}: {(module.__doc__ or '').strip().splitlines()[0]}", flush=True)
    started = time.time()
    try:
        figures = module.run()
    except Exception as e:  # reported, and the other benchmarks still run
        print(f"!! {name} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return False
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    results = load_results()  # read now: another `make bench BENCH=...` may have written meanwhile
    machine = describe_machine()
    for key, value in figures.items():
        results["figures"][key] = value
        results["measured"][key] = {"benchmark": name, "at": stamp, "machine": machine}
    print(f"== {name} done in {time.time() - started:.0f} s", flush=True)
    tmp = RESULTS.with_name(f".{RESULTS.name}.{os.getpid()}")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, RESULTS)  # readers never see half a file
    return True


def print_table(results: dict) -> None:
    figures = results["figures"]
    if not figures:
        return
    width = max(map(len, figures))
    print(f"\nthis machine: {describe_machine()}; each figure's own machine is in {RESULTS.name}")
    print(f"{'figure':<{width}}  {'value':>12}  benchmark   measured")
    for key in sorted(figures):
        value = figures[key]
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        where = results["measured"].get(key, {})
        print(f"{key:<{width}}  {text:>12}  {where.get('benchmark', ''):<10}  {where.get('at', '')}")


if __name__ == "__main__":
    sys.exit(main())
