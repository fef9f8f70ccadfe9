"""What the terminal shows: the funnel table, --version, config show/fields, stage help, -q and -v,
and library output (warnings, vLLM-style log records) kept in the run's log file."""

import importlib.metadata
import json
import logging
import sys
import warnings

import pyarrow.parquet as pq
import pytest

from selfimprove.pipeline.cli import main
from selfimprove.pipeline.config import load_config
from selfimprove.pipeline.stages import reader, stage_dir
from tests.conftest import ROOT
from tests.fake_engine import FakeEngine

NOISY = "tests.test_cli_terminal:NoisyEngine"
FAILING = "tests.test_cli_terminal:FailingEngine"
NOISE = ["noisy-warning", "noisy-vllm", "noisy-lib"]


class NoisyEngine(FakeEngine):
    """The test engine, speaking as the libraries under a real one do while it starts: a Python
    warning (torch's FutureWarning), a record of a `vllm` logger, and a record of a library that
    gave its logger a stderr handler of its own (transformers, torch, datasets do)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("noisy-warning: `torch.distributed.reduce_op` is deprecated", FutureWarning)
        logging.getLogger("vllm.platforms.noisy").warning("noisy-vllm: libtcmalloc is not found in LD_PRELOAD")
        logging.getLogger("noisylib.sub").warning("noisy-lib: a library's own handler")


class FailingEngine(FakeEngine):
    def __init__(self, cfg):
        super().__init__(cfg)
        logging.getLogger("vllm.engine").error("noisy-error: the engine core died")
        raise ValueError("the engine could not start (test)")


@pytest.fixture
def noisylib(capsys):
    """A library logger with its own stderr handler, as transformers configures its own."""
    logger = logging.getLogger("noisylib")
    handler = logging.StreamHandler(sys.stderr)
    logger.addHandler(handler)
    logger.propagate = False
    yield logger
    logger.removeHandler(handler)
    logger.propagate = True


def _table(out: str) -> tuple[list[str], dict[str, list[str]]]:
    """The funnel's column names and each row's cells."""
    lines = out[out.index("\nfunnel\n") + len("\nfunnel\n"):].splitlines()
    header = [h.strip() for h in lines[0].split("   ") if h.strip()]
    rows = {}
    for line in lines[1:]:
        cells = line.split()
        if not cells or not cells[0].isalpha() or cells[0] == "configs:":
            continue
        rows[cells[0]] = cells[1:]
    return header, rows


def test_funnel_shows_first_round_and_rationalized_rows_in_their_own_columns(fake_config, capsys):
    config = fake_config(rationalize={"enabled": True})
    assert main(["run", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    cfg = load_config(config)
    f = json.loads((stage_dir(cfg, 1, "export") / "stats.json").read_text())["funnel"]
    selected = reader(cfg, 1, "dedup").read_all().to_pylist()
    hinted = reader(cfg, 1, "rationalize").read_all().to_pylist()
    hinted_kept = sum(bool(r["rationalized"]) for r in selected)
    assert hinted_kept and hinted_kept < len(selected), "the test run must export rows of both kinds"

    # the counts per column are in stats.json, next to the keys that were there before
    assert f["rationalized_kept"] == hinted_kept == f["rationalized_exported"]
    assert f["first_round_kept"] == len(selected) - hinted_kept == f["first_round_exported"]
    assert f["rationalized_problems"] == len({r["problem_id"] for r in hinted})
    assert f["kept"] == f["exported"] == len(selected)

    header, rows = _table(out)
    assert header == ["first round", "rationalized", "total"]
    s = f["samples"]
    assert rows["problems"] == [str(f["problems"]), str(f["rationalized_problems"]), str(f["problems"])]
    assert rows["samples"] == [str(s), str(f["rationalized_samples"]), str(s + f["rationalized_samples"])]
    hs = f["rationalized_samples"]
    assert rows["correct"] == [str(f["correct"]), f"{f['correct'] / s:.1%}", str(f["rationalized_correct"]),
                               f"{f['rationalized_correct'] / hs:.1%}", str(f["correct"] + f["rationalized_correct"])]
    first_kept = len(selected) - hinted_kept
    for step in ("kept", "exported"):
        assert rows[step] == [str(first_kept), f"{first_kept / s:.1%}", str(hinted_kept), f"{hinted_kept / hs:.1%}",
                              str(len(selected))]
    # "kept" never exceeds "correct" in a column: the first-round column counts first-round rows only
    assert int(rows["kept"][0]) <= int(rows["correct"][0]) and int(rows["kept"][2]) <= int(rows["correct"][2])
    assert "configs: sft" in out


def test_funnel_without_rationalization_has_one_column(fake_config, capsys):
    assert main(["run", "--config", str(fake_config())]) == 0
    header, rows = _table(capsys.readouterr().out)
    assert header == ["first round"]
    assert rows["samples"] == ["80"] and len(rows["correct"]) == 2


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"selfimprove {importlib.metadata.version('selfimprove')}"


@pytest.mark.parametrize("config", [None, "default.yaml", "gsm8k.yaml", "math.yaml", "demo.yaml"])
def test_config_show_reads_back_to_the_same_config(config, tmp_path, capsys):
    args = ["--config", str(ROOT / "configs" / config)] if config else []
    overrides = ["sample.n=8", "train.from=previous", "dedup.decontaminate.eval_sets=[a.jsonl]"]
    assert main(["config", "show", *args, *sum((["--set", o] for o in overrides), [])]) == 0
    shown = tmp_path / "shown.yaml"
    shown.write_text(capsys.readouterr().out)
    original = load_config(ROOT / "configs" / config if config else None, overrides)
    assert load_config(shown) == original
    assert original.sample.n == 8 and "from: previous" in shown.read_text()


def test_config_fields_lists_every_field_with_type_default_and_description(capsys):
    assert main(["config", "fields"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["sample.n"].split()[1:4] == ["int", "4", "samples"]
    assert "samples per problem" in lines["sample.n"]
    assert lines["train.from"].split()[1:5] == ["base", "|", "previous", '"base"']
    assert "rationalize.max_share" in lines and "dedup.near_dup.threshold" in lines and "evaluate.pass_at_k.k" in lines
    assert "sample" not in lines and "dedup.near_dup" not in lines  # sections are walked into, not listed


@pytest.mark.parametrize("stage,reads,writes", [("prepare", "task", "problems/"), ("sample", "problems/", "samples/"),
                                                ("dedup", "rationalized/", "selected/"), ("train", "export/", "model/")])
def test_stage_help_says_what_it_reads_and_writes(stage, reads, writes, capsys):
    with pytest.raises(SystemExit):
        main([stage, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"iter-K/{writes}" in text and reads in text.split("writes")[0]


def test_quiet_prints_only_the_funnel(fake_config, capsys):
    config = fake_config(rationalize={"enabled": True})
    assert main(["run", "--config", str(config), "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.out.lstrip().startswith("funnel") and "first round" in captured.out
    for summary in ("prepare:", "sample:", "verify:", "dedup:", "export:"):
        assert summary not in captured.out
    assert captured.err == ""  # no progress bars either
    log = (load_config(config).run_dir / "logs" / "run.log").read_text()
    assert "prepare:" in log and "dedup:" in log  # the summaries are kept, in the log file


def test_library_output_goes_to_the_log_file_not_the_terminal(fake_config, noisylib, capsys):
    config = fake_config(sample={"engine": NOISY})
    root_handlers, showwarning = list(logging.getLogger().handlers), warnings.showwarning
    assert main(["run", "--config", str(config)]) == 0
    captured = capsys.readouterr()
    for noise in NOISE:
        assert noise not in captured.out and noise not in captured.err
    assert "funnel" in captured.out and "sample:" in captured.out  # our own summaries stay on stdout
    log_path = load_config(config).run_dir / "logs" / "run.log"
    log = log_path.read_text()
    for noise in NOISE:
        assert f"[sample] " in log and noise in log
    assert "FutureWarning" in log and "vllm.platforms.noisy" in log
    # one line says where it went
    lines = [line for line in log.splitlines() if line.strip() and not line.startswith("# ")]
    assert [line for line in captured.err.splitlines() if "selfimprove" in line] == [
        f"selfimprove: library output ({len(lines)} lines: vLLM, torch, warnings, ...) is in {log_path} (-v shows it here)"]
    # and the process is left as it was
    assert logging.getLogger().handlers == root_handlers and warnings.showwarning is showwarning
    assert noisylib.handlers and not noisylib.propagate


def test_verbose_shows_library_output_on_the_terminal_again(fake_config, noisylib, capsys):
    config = fake_config(sample={"engine": NOISY})
    assert main(["run", "-v", "--config", str(config)]) == 0
    err = capsys.readouterr().err
    for noise in NOISE:
        assert noise in err
    assert "noisy-lib" in (load_config(config).run_dir / "logs" / "run.log").read_text()


def test_an_error_still_reaches_stderr_with_a_nonzero_exit(fake_config, capsys):
    config = fake_config(sample={"engine": FAILING})
    assert main(["run", "--config", str(config)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert "ERROR vllm.engine: noisy-error: the engine core died" in err  # library errors are shown
    assert "selfimprove: error: the engine could not start (test)" in err
    assert err[-1].startswith("selfimprove: library output (1 lines")  # last: where to read more
    assert main(["run", "-q", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "the engine could not start" in err and "noisy-error" in err and "library output" not in err
