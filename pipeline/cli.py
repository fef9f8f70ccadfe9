"""`selfimprove <stage> --config FILE --iter K`, `selfimprove run`, `selfimprove model default`.

Exit status 0 only when the stage or run completed; otherwise a one-line reason on stderr
and a non-zero status (2 for a usage or config problem, 1 for anything else).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from pipeline.config import ConfigError, load_config
from pipeline.stages import STAGES, InvariantError, reader, run_stage, stage_dir
from pipeline.store import StoreError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="run config YAML (default: built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config field, e.g. --set sample.n=8 (repeatable)")
    p.add_argument("--iter", dest="iteration", type=int, default=1, help="iteration number (default 1)")
    p.add_argument("--force", action="store_true", help="rebuild a stage directory made with another config")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfimprove", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run every stage of one iteration, then print the funnel")
    _common(p)
    for stage in STAGES:
        _common(sub.add_parser(stage, help=f"run the {stage} stage"))
    p = sub.add_parser("status", help="show each stage of an iteration: done, partial or missing")
    _common(p)
    p = sub.add_parser("verifiers", help="list verifiers, or measure one on labelled cases")
    vsub = p.add_subparsers(dest="verifiers_command", required=True)
    vsub.add_parser("list", help="every verifier found, and where from")
    c = vsub.add_parser("check", help="accuracy, precision and recall on a labelled JSONL file")
    c.add_argument("--verifier", required=True, help="a registered name or package.module:Class")
    c.add_argument("--cases", required=True, help="JSONL of {gold, pred, expected} or {problem, gold_answer, model_output, label}")
    c.add_argument("--params", default="{}", help="verifier params as JSON")
    c.add_argument("--workers", type=int, default=0)
    c.add_argument("--timeout", type=float, default=5.0, help="hard limit per item, seconds")
    c.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    p = sub.add_parser("model", help="prepare a model")
    p.add_argument("which", choices=["default"], help="default: convert the packaged SmolLM2-135M-Instruct once")
    p.add_argument("--target", default=None, help="output directory (default data/models/smollm2-135m-instruct)")
    return parser


def status(cfg, iteration: int) -> None:
    print(f"run {cfg.run.name}, iteration {iteration} ({cfg.iter_dir(iteration)})")
    for stage in STAGES:
        path = stage_dir(cfg, iteration, stage)
        if (path / "_SUCCESS").exists():
            m = reader(cfg, iteration, stage).manifest
            state = f"done     {m['rows']:>8} rows, {m['rejects']} rejects, {m['created']}"
        elif path.exists():
            state = "partial  (rerun to resume)"
        else:
            state = "missing"
        print(f"  {stage:<8} {state}")


def verifiers_command(args) -> int:
    from verifiers import available_verifiers
    from verifiers.check import check, format_report, load_cases

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
            from pipeline.model import ensure_default_model

            kwargs = {"target": args.target} if args.target else {}
            print(ensure_default_model(**kwargs))
            return 0
        if args.command == "verifiers":
            return verifiers_command(args)
        cfg = load_config(args.config, args.overrides)
        if args.iteration < 1:
            raise ConfigError("--iter must be 1 or more")
        if args.command == "status":
            status(cfg, args.iteration)
            return 0
        started = time.time()
        stages = STAGES if args.command == "run" else [args.command]
        manifest = None
        for stage in stages:
            manifest = run_stage(stage, cfg, args.iteration, force=args.force)
        if stages[-1] == "export" and manifest is not None:
            from pipeline.stages.export import print_funnel

            print_funnel(manifest)
            print(f"\nexport: {stage_dir(cfg, args.iteration, 'export')}  ({time.time() - started:.0f} s)")
        return 0
    except ConfigError as e:
        print(f"selfimprove: {e}", file=sys.stderr)
        return 2
    except (StoreError, InvariantError, ValueError, FileNotFoundError) as e:
        print(f"selfimprove: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("selfimprove: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
