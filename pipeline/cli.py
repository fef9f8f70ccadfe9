"""`selfimprove <stage> --config FILE --iter K`, `selfimprove run`, `selfimprove model default`.

Exit status 0 only when the stage or run completed; otherwise a one-line reason on stderr
and a non-zero status (2 for a usage or config problem, 1 for anything else).

The terminal gets our own summaries (stdout) and errors; what libraries log or warn goes to
`<run dir>/logs/<command>.log` (pipeline/logs.py), with one line saying where. `-v` shows
library warnings on the terminal as well, `-q` leaves only errors and the final funnel.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import sys
import time
import types
import typing
from pathlib import Path

from selfimprove.pipeline import logs
from selfimprove.pipeline.config import Config, ConfigError, load_config
from selfimprove.pipeline.stages import OUTPUT, STAGES, InvariantError, reader, run_stage, stage_dir
from selfimprove.pipeline.store import StoreError, run_lock

DATA_STAGES = STAGES[: STAGES.index("export") + 1]  # what `selfimprove run` does: the data, no training
NO_RUN_LOGS = Path("data/logs")  # library output of commands without a run directory (model, verifiers)


def version() -> str:
    try:
        return importlib.metadata.version("selfimprove")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def stage_reads_writes(stage: str) -> tuple[str, str]:
    """What a stage reads and writes, from the stage order and runs.OUTPUT."""
    i = STAGES.index(stage)
    writes = f"<run dir>/iter-K/{OUTPUT[stage]}/"
    if i == 0:
        reads = "the task's problems (task.name, task.path; generated for arithmetic)"
    else:
        before = STAGES[i - 1]
        reads = f"<run dir>/iter-K/{OUTPUT[before]}/ ({before}'s output)"
        if stage == "evaluate":
            reads += " and held-out problems (evaluate.task); --iter 0: the base model (model.path)"
    return reads, writes


def _stage_help(stage: str) -> tuple[str, str]:
    reads, writes = stage_reads_writes(stage)
    i = STAGES.index(stage)
    after = f" Then: selfimprove {STAGES[i + 1]}." if i + 1 < len(STAGES) else ""
    short = f"reads {reads.split(' (')[0]}, writes {writes}"
    shards = ("<config>-<split>-NNNNN-of-NNNNN.parquet shards of the sft, preference and prompts configs, README.md "
              "(the dataset card), config.yaml, stats.json" if stage == "export" else "part-NNNNN.parquet shards")
    long = (f"The {stage} stage. Reads {reads}; writes {writes} ({shards}, _manifest.json, "
            f"_rejects.parquet, _SUCCESS last). <run dir> is run.dir (default data/runs/<config name>), K is --iter."
            f"{after}")
    return short, long


def _verbosity_flags() -> argparse.ArgumentParser:
    """-v/-q, accepted before or after the subcommand."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                   help="show library output (vLLM, torch, warnings) on the terminal too; -vv adds its info lines")
    p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="print only errors and the final funnel (stage summaries go to the log file)")
    return p


def verbosity(args: argparse.Namespace) -> int:
    """-1 for -q, 0 by default, the number of -v otherwise."""
    v, q = getattr(args, "verbose", 0), getattr(args, "quiet", False)
    if v and q:
        raise ConfigError("-v and -q: choose one")
    return -1 if q else v


def _config_args(p: argparse.ArgumentParser, example: str = "sample.n=8") -> None:
    p.add_argument("--config", default=None, help="run config YAML (default: built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help=f"override a config field, e.g. --set {example} (repeatable)")


def _common(p: argparse.ArgumentParser) -> None:
    _config_args(p)
    p.add_argument("--iter", dest="iteration", type=int, default=1, help="iteration number (default 1)")
    p.add_argument("--force", action="store_true", help="rebuild a stage directory made with another config")


def build_parser() -> argparse.ArgumentParser:
    flags = _verbosity_flags()
    parser = argparse.ArgumentParser(
        prog="selfimprove", description=__doc__.splitlines()[0], parents=[flags],
        epilog="Library output (vLLM, torch, transformers, warnings) goes to <run dir>/logs/<command>.log.")
    parser.add_argument("--version", action="version", version=f"selfimprove {version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[flags], **kwargs)

    p = add("run", help="run the data stages of one iteration (prepare ... export), then print the funnel",
            description=f"The data stages of one iteration, {' -> '.join(DATA_STAGES)}: reads "
                        f"{stage_reads_writes(DATA_STAGES[0])[0]}; writes "
                        f"{', '.join(f'<run dir>/iter-K/{OUTPUT[s]}/' for s in DATA_STAGES)}; then prints the funnel. "
                        f"Finished stages are kept (resume); library output goes to <run dir>/logs/run.log.")
    _common(p)
    for stage in STAGES:
        short, long = _stage_help(stage)
        _common(add(stage, help=short, description=long))
    p = add("status", help="every iteration's stages: done, stale, partial or missing, with counts")
    _common(p)
    p.add_argument("--check", action="store_true",
                   help="also check every finished stage against its manifest, journal and checksums (reads every shard)")
    p = add("report", help="write <run dir>/report.md with plots from every iteration so far")
    _common(p)
    p = add("push", help="upload <run dir>/iter-K/export/ to a dataset repository on the Hugging Face hub",
            description="Reads <run dir>/iter-K/export/ (a finished export that passes its audit) and uploads, in one "
                        "commit, every dataset shard, README.md (the card), config.yaml and stats.json to the root of "
                        "the dataset repository --repo (created if missing), where `datasets.load_dataset(ORG/NAME)` "
                        "loads them; never the store's own files (_SUCCESS, _manifest.json, .lock, ...). The hub is "
                        "HF_ENDPOINT (default https://huggingface.co), the token HF_TOKEN (or `hf auth login`'s). "
                        "Offline (HF_HUB_OFFLINE=1, no network) it fails at once and uploads nothing.")
    _config_args(p, "run.dir=...")
    p.add_argument("--iter", dest="iteration", type=int, default=1, help="iteration number (default 1)")
    p.add_argument("--repo", required=True, metavar="ORG/NAME", help="the dataset repository on the hub")
    p.add_argument("--private", action="store_true",
                   help="create the repository private (an existing one keeps its visibility)")
    p.add_argument("--revision", default=None, metavar="BRANCH",
                   help="the branch to commit to (default main; created from main if missing)")
    p = add("config", help="the effective config as YAML, or every config field with its default and meaning")
    csub = p.add_subparsers(dest="config_command", required=True)
    c = csub.add_parser("show", parents=[flags], help="the effective config (file, defaults and --set) as YAML",
                        description="Print the effective config as YAML: the file's values, every default and the "
                                    "--set overrides applied. `selfimprove run --config` reads it back unchanged.")
    _config_args(c)
    csub.add_parser("fields", parents=[flags], help="every field: section.key, type, default, description")
    p = add("verifiers", help="list verifiers, or measure one on labelled cases")
    vsub = p.add_subparsers(dest="verifiers_command", required=True)
    vsub.add_parser("list", parents=[flags], help="every verifier found, and where from")
    c = vsub.add_parser("check", parents=[flags], help="accuracy, precision and recall on a labelled JSONL file")
    c.add_argument("--verifier", required=True, help="a registered name or package.module:Class")
    c.add_argument("--cases", required=True, help="JSONL, one case a line: {gold, pred, expected}, or {problem, gold_answer, "
                   "model_output, label} where a row may carry metadata (the problem's metadata, e.g. the unit tests "
                   "for code) with or instead of gold_answer")
    c.add_argument("--params", default="{}", help="verifier params as JSON")
    c.add_argument("--workers", type=int, default=0)
    c.add_argument("--timeout", type=float, default=5.0, help="hard limit per item, seconds")
    c.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    p = add("serve-reward", help="serve the run's verifier as an RL reward over HTTP (verl, OpenRLHF, your own trainer)",
            description="Scores completions with the run's verifier (verify.verifier, verify.params; auto: the task's "
                        "default) in its killable worker pool (verify.timeout_s, verify.workers, verify.memory_limit_mb), "
                        "thinking sections (sample.think_tags) left out: POST /score {completions, answers[, prompts]} -> "
                        "{rewards, statuses, reasons}; OpenRLHF's --remote_rm_url body {query, prompts, labels} at /score "
                        "or /get_reward; GET /health. Unauthenticated: loopback only unless --host says otherwise. "
                        "Stops on Ctrl-C or SIGTERM. See docs/rewards.md.")
    _config_args(p, "verify.timeout_s=10")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; another one exposes an unauthenticated endpoint)")
    p.add_argument("--port", type=int, default=8100, help="port (default 8100; 0: any free port, printed)")
    p.add_argument("--verifier", default=None, help="a registered name or package.module:Class, instead of verify.verifier")
    p = add("compare", help="one table and plot of several runs' iterations against the base model (e.g. SFT vs DPO vs GRPO)",
            description="Reads each run directory's evaluation (eval.json and its rows), sample, export and train "
                        "manifests for each iteration given, and the base model's evaluation (iteration 0 of the first "
                        "run that has one); writes <out>/compare.md (per iteration: method, samples drawn, rows, steps, "
                        "train time, greedy accuracy, CoT-decoding, maj@k, pass@k, and each run's gain over the base "
                        "model and over the first run with paired standard errors; per difficulty bucket the same gains "
                        "on that bucket's problems), <out>/compare.png and, over several iterations or buckets, "
                        "<out>/compare_curve.png. `make compare` runs it on SFT, DPO and GRPO; `make demo-hard` on the "
                        "demo with and without difficulty-aware sampling.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (data/runs/<name>), the first is the reference")
    p.add_argument("--iter", dest="iteration", type=int, nargs="+", default=[1],
                   help="the iteration(s) to compare, e.g. --iter 1 2 3 (default 1)")
    p.add_argument("--out", default="data/runs/compare", help="where compare.md and compare.png go (default data/runs/compare)")
    p = add("model", help="prepare a model")
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


def push_command(args, cfg: Config) -> int:
    from selfimprove.pipeline.hub import PushError, push

    if args.iteration < 1:
        raise ConfigError("--iter must be 1 or more")
    try:
        # the export cannot be rebuilt while it is read; a run directory that is not there is not made
        with run_lock(cfg.run_dir) if cfg.run_dir.exists() else contextlib.nullcontext():
            done = push(cfg, args.iteration, args.repo, private=args.private, revision=args.revision)
    except PushError as e:
        print(f"selfimprove: {e}", file=sys.stderr)
        return 1
    deleted = f", {len(done['deleted'])} stale shards deleted" if done["deleted"] else ""
    print(f"push: {len(done['files'])} files of {done['export']} to {done['url']} ({done['revision']}{deleted})\n"
          f"  commit {done['commit_url']}\n  datasets.load_dataset({args.repo!r}"
          + (f", revision={args.revision!r})" if args.revision else ")"), flush=True)
    return 0


def serve_reward_command(args, cfg: Config) -> int:
    from selfimprove.pipeline.rewards import is_loopback, serve, verifier_reward_from_config

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be 0..65535, got {args.port}")
    if not is_loopback(args.host):
        print(f"selfimprove: warning: listening on {args.host}, beyond this machine; the endpoint has no "
              "authentication, so anyone who can reach it can use it", file=sys.stderr, flush=True)
    serve(verifier_reward_from_config(cfg, args.verifier), args.host, args.port,
          announce=lambda line: print(line, flush=True))
    return 0


def config_yaml(cfg: Config) -> str:
    """The effective config as YAML that load_config reads back to the same config."""
    import yaml

    return yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False, allow_unicode=True, width=100)


def _type_name(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_name(a) for a in args)}]"
    if annotation is type(None):
        return "null"
    if annotation is typing.Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def _models_in(annotation) -> list[type]:
    """The config sections an annotation holds directly (X or X | None), not inside lists."""
    from pydantic import BaseModel

    candidates = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else (annotation,)
    return [a for a in candidates if isinstance(a, type) and issubclass(a, BaseModel)]


def config_fields(model: type = Config, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(section.key, type, default, description) of every field, sections walked into."""
    from pydantic import BaseModel

    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        sections = _models_in(field.annotation)
        default = field.get_default(call_default_factory=True)
        if sections and isinstance(default, BaseModel):  # a section that is always there: its fields only
            rows += config_fields(sections[0], key + ".")
            continue
        shown = "(required)" if field.is_required() else json.dumps(default, default=str)
        rows.append((key, _type_name(field.annotation), shown, field.description or ""))
        for section in sections:  # optional sections (null by default): their fields when given
            rows += config_fields(section, key + ".")
    return rows


def config_command(args) -> int:
    if args.config_command == "show":
        print(config_yaml(load_config(args.config, args.overrides)), end="")
        return 0
    rows = config_fields()
    wk, wt = (max(len(r[i]) for r in rows) for i in (0, 1))
    for key, kind, default, description in rows:
        print(f"{key:<{wk}}  {kind:<{wt}}  {default}  {description}".rstrip())
    return 0


def log_file(args, cfg: Config | None) -> Path:
    """Where a command's library output goes: <run dir>/logs/<command>.log."""
    return (cfg.run_dir / "logs" if cfg is not None else NO_RUN_LOGS) / f"{args.command}.log"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    capture: logs.Capture | None = None
    try:
        level = verbosity(args)
        if args.command == "config":
            return config_command(args)
        cfg = load_config(args.config, args.overrides) if hasattr(args, "overrides") else None
        capture = logs.Capture(log_file(args, cfg), level, " ".join(sys.argv[1:] if argv is None else argv))
        with capture:
            return _command(args, cfg, capture)
    except ConfigError as e:
        print(f"selfimprove: {e}", file=sys.stderr)
        return 2
    except (StoreError, InvariantError, ValueError, FileNotFoundError) as e:
        print(f"selfimprove: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `selfimprove config fields | head`: the reader has all it wants
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # as the Python docs advise (signal docs)
        return 1
    except OSError as e:  # a full disk, a permission: nothing half-written is kept
        print(f"selfimprove: error: {e}; fix that, then rerun the same command (finished shards are kept)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("selfimprove: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        if capture is not None:
            capture.where()  # last, after any error: the log may say more


def _command(args, cfg: Config | None, capture: logs.Capture) -> int:
    if args.command == "model":
        from selfimprove.pipeline.model import ensure_default_model

        kwargs = {"target": args.target} if args.target else {}
        print(ensure_default_model(**kwargs))
        return 0
    if args.command == "verifiers":
        return verifiers_command(args)
    if args.command == "status":
        damaged = status(cfg, args.config, check=args.check)
        return 1 if damaged else 0
    if args.command == "report":
        from selfimprove.pipeline.stages.report import run as report

        report(cfg)
        return 0
    if args.command == "compare":
        from selfimprove.pipeline.stages.report import compare

        compare([Path(r) for r in args.runs], args.iteration, Path(args.out))
        return 0
    if args.command == "push":
        return push_command(args, cfg)
    if args.command == "serve-reward":
        return serve_reward_command(args, cfg)
    if args.iteration < (0 if args.command == "evaluate" else 1):
        raise ConfigError("--iter must be 1 or more (0, the base model, only for evaluate)")
    started = time.time()
    stages = DATA_STAGES if args.command == "run" else [args.command]
    manifest = None
    with run_lock(cfg.run_dir):  # one command per run directory at a time
        for stage in stages:
            with capture.stage(stage):
                manifest = run_stage(stage, cfg, args.iteration, force=args.force)
    if stages[-1] == "export" and manifest is not None:
        from selfimprove.pipeline.stages.export import print_funnel

        print_funnel(manifest)
        with capture.stage("export"):  # with -q: to the log file, like the stage summaries
            print(f"\nexport: {stage_dir(cfg, args.iteration, 'export')}  ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
