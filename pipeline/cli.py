"""`selfimprove <stage> --config FILE --iter K`, `selfimprove run`, `selfimprove model default`.

Exit status 0 only when the stage or run completed; otherwise a one-line reason on stderr
and a non-zero status (2 for a usage or config problem, 1 for anything else).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from selfimprove.pipeline.config import ConfigError, load_config
from selfimprove.pipeline.stages import STAGES, InvariantError, reader, run_stage, stage_dir
from selfimprove.pipeline.store import StoreError, run_lock

DATA_STAGES = STAGES[: STAGES.index("export") + 1]  # what `selfimprove run` does: the data, no training


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="run config YAML (default: built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config field, e.g. --set sample.n=8 (repeatable)")
    p.add_argument("--iter", dest="iteration", type=int, default=1, help="iteration number (default 1)")
    p.add_argument("--force", action="store_true", help="rebuild a stage directory made with another config")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfimprove", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the data stages of one iteration (prepare ... export), then print the funnel")
    _common(p)
    for stage in STAGES:
        _common(sub.add_parser(stage, help=f"run the {stage} stage"))
    p = sub.add_parser("status", help="every iteration's stages: done, stale, partial or missing, with counts")
    _common(p)
    p.add_argument("--check", action="store_true",
                   help="also check every finished stage against its manifest, journal and checksums (reads every shard)")
    p = sub.add_parser("report", help="write <run dir>/report.md with plots from every iteration so far")
    _common(p)
    p = sub.add_parser("verifiers", help="list verifiers, or measure one on labelled cases")
    vsub = p.add_subparsers(dest="verifiers_command", required=True)
    vsub.add_parser("list", help="every verifier found, and where from")
    c = vsub.add_parser("check", help="accuracy, precision and recall on a labelled JSONL file")
    c.add_argument("--verifier", required=True, help="a registered name or package.module:Class")
    c.add_argument("--cases", required=True, help="JSONL, one case a line: {gold, pred, expected}, or {problem, gold_answer, "
                   "model_output, label} where a row may carry metadata (the problem's metadata, e.g. the unit tests "
                   "for code) with or instead of gold_answer")
    c.add_argument("--params", default="{}", help="verifier params as JSON")
    c.add_argument("--workers", type=int, default=0)
    c.add_argument("--timeout", type=float, default=5.0, help="hard limit per item, seconds")
    c.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    p = sub.add_parser("model", help="prepare a model")
    p.add_argument("which", choices=["default"], help="default: convert the packaged SmolLM2-135M-Instruct once")
    p.add_argument("--target", default=None, help="output directory (default data/models/smollm2-135m-instruct)")
    return parser


def status(cfg, config_path: str | None, check: bool = False) -> int:
    """Every iteration on disk (at least iteration 1), each stage done, stale, partial or missing.

    Stale means what make means: older than the stage before it or than the config file, so
    `make iterate` will recheck it (and rebuild it if its fingerprint changed). With `check`,
    a finished stage whose files differ from its manifest or journal is `damaged`, with why;
    returns how many are.
    """
    from selfimprove.pipeline.stages.report import iterations

    config_mtime = Path(config_path).stat().st_mtime if config_path else 0.0
    damaged = 0
    print(f"run {cfg.run.name} ({cfg.run_dir})")
    for k in sorted(set(iterations(cfg)) | {1}):
        print(f"iteration {k}" + (" (base model)" if k == 0 else ""))
        previous = config_mtime
        for stage in STAGES:
            if k == 0 and stage != "evaluate":
                continue
            path = stage_dir(cfg, k, stage)
            done = path / "_SUCCESS"
            problems = stage_problems(path) if done.exists() and check else []
            damaged += bool(problems)
            if problems:
                state = "damaged  " + "; ".join(problems[:3]) + f". Rerun `selfimprove {stage} --iter {k}` to repair it"
                previous = float("inf")
            elif done.exists():
                m = json.loads((path / "_manifest.json").read_text())
                stale = done.stat().st_mtime < previous
                state = f"{'stale' if stale else 'done':<8} {m['rows']:>8} rows, {m['rejects']} rejects, {m['created']}"
                previous = max(previous, done.stat().st_mtime)
            else:
                state = "partial  (rerun to resume)" if path.exists() else "missing"
                previous = float("inf")
            print(f"  {stage:<12} {state}")
    return damaged


def stage_problems(path: Path) -> list[str]:
    """Why a finished stage directory is not what it promises (audit, then every checksum)."""
    from selfimprove.pipeline.store import StageReader, audit

    problems = audit(path)
    if problems:
        return problems
    try:
        reader = StageReader(path)
        for shard in reader.shards:
            reader.read_shard(shard["file"])
        reader.rejects()
    except StoreError as e:
        return [str(e).split(";")[0]]
    return []


def verifiers_command(args) -> int:
    from selfimprove.verifiers import available_verifiers
    from selfimprove.verifiers.check import check, format_report, load_cases

    if args.verifiers_command == "list":
        for name, where in available_verifiers().items():
            print(f"{name:<16} {where}")
        return 0
    report = check(args.verifier, json.loads(args.params), load_cases(args.cases), args.workers, args.timeout)
    print(format_report(report))
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "examples"}))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "model":
            from selfimprove.pipeline.model import ensure_default_model

            kwargs = {"target": args.target} if args.target else {}
            print(ensure_default_model(**kwargs))
            return 0
        if args.command == "verifiers":
            return verifiers_command(args)
        cfg = load_config(args.config, args.overrides)
        if args.command == "status":
            damaged = status(cfg, args.config, check=args.check)
            return 1 if damaged else 0
        if args.command == "report":
            from selfimprove.pipeline.stages.report import run as report

            report(cfg)
            return 0
        if args.iteration < (0 if args.command == "evaluate" else 1):
            raise ConfigError("--iter must be 1 or more (0, the base model, only for evaluate)")
        started = time.time()
        stages = DATA_STAGES if args.command == "run" else [args.command]
        manifest = None
        with run_lock(cfg.run_dir):  # one command per run directory at a time
            for stage in stages:
                manifest = run_stage(stage, cfg, args.iteration, force=args.force)
        if stages[-1] == "export" and manifest is not None:
            from selfimprove.pipeline.stages.export import print_funnel

            print_funnel(manifest)
            print(f"\nexport: {stage_dir(cfg, args.iteration, 'export')}  ({time.time() - started:.0f} s)")
        return 0
    except ConfigError as e:
        print(f"selfimprove: {e}", file=sys.stderr)
        return 2
    except (StoreError, InvariantError, ValueError, FileNotFoundError) as e:
        print(f"selfimprove: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a full disk, a permission: nothing half-written is kept
        print(f"selfimprove: error: {e}; fix that, then rerun the same command (finished shards are kept)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("selfimprove: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
