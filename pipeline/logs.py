"""The terminal and the log file: our summaries on stdout, library output in `<run dir>/logs/<command>.log`.

While a command runs (`capture`), every record of a logger outside `selfimprove` (vLLM, torch,
transformers, datasets, ...) and every `warnings.warn` is appended to the command's log file,
and only errors also reach the terminal (stderr). `-v` shows library warnings on the terminal
again, `-vv` their info records too; `-q` sends the stage summaries to the log file as well and
drops progress bars, so the terminal shows errors and the final funnel only.

How each library is reached:

- Loggers without a handler of their own propagate to the root logger, where the capture's
  handler sits (records that used to fall through to Python's last-resort stderr handler).
- Libraries that give their logger a handler on stderr/stdout (torch, transformers, datasets,
  huggingface_hub) have it taken off and their logger propagate, when the capture starts and
  right after such a library is imported during the command (`_AdoptOnImport`); put back after.
- vLLM configures its own logger when an engine starts, and again in every worker process it
  spawns (on GPU). `route_vllm()`, called by the engine just before, points
  VLLM_LOGGING_CONFIG_PATH at a dictConfig whose handler is `vllm_handler`: in this process it
  forwards to the active capture, in a worker process it appends to the same file.

What no Python handler sees stays on the terminal: lines C/C++ code writes to the file
descriptors (torch's "[W... utils.cpp] NUMA binding ..."), and the output of processes started
without this configuration (the verifier pool's forkserver workers, Ray workers). A user's own
VLLM_LOGGING_CONFIG_PATH or VLLM_CONFIGURE_LOGGING=0 is respected.

Our own loggers (`selfimprove.*`) print to stderr: info by default, debug with -v, warnings and
errors only with -q. The stage summaries are print()s on stdout, untouched (tests read them).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import io
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

OURS = "selfimprove"
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(processName)s %(process)d]: %(message)s"
TERMINAL_FORMAT = "%(levelname)s %(name)s: %(message)s"
# top-level packages that add a handler of their own when imported: adopt it right after
ADOPT_AFTER_IMPORT = frozenset({"torch", "transformers", "datasets", "huggingface_hub", "trl", "accelerate", "vllm"})
VLLM_CONFIG = "vllm-logging.json"  # beside the log file: vLLM reads it when an engine (or a worker) starts

_active: Capture | None = None


def adopt_again() -> None:
    """Take library loggers back into the command's log: for a library that adds its terminal
    handler only when one of its submodules loads, after the command started (huggingface_hub)."""
    if _active is not None:
        _active.adopt()


def echo_level(verbosity: int) -> int:
    """From which level a library record also shows on the terminal: errors only by default (and
    with -q), warnings with -v, info with -vv."""
    return logging.INFO if verbosity >= 2 else logging.WARNING if verbosity == 1 else logging.ERROR


class LibraryHandler(logging.Handler):
    """Appends records to the log file and, from `echo` up, writes them to stderr too.

    The file is opened per write: a fork, or vLLM's dictConfig closing every handler of the
    process, cannot leave it closed. Library records are rare enough for that to cost nothing.
    """

    def __init__(self, path: Path, echo: int, header: str | None = None):
        super().__init__(logging.NOTSET)
        self.path, self.echo, self.header = Path(path), echo, header
        self.stage: str | None = None
        self.setFormatter(logging.Formatter(FILE_FORMAT))
        self.terminal = logging.Formatter(TERMINAL_FORMAT)

    def write(self, text: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8", errors="replace") as f:
            if self.header:
                f.write(self.header)
                self.header = None
            f.write(text)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record).rstrip()
            self.write((f"[{self.stage}] " if self.stage else "") + line + "\n")
            if record.levelno >= self.echo:
                sys.stderr.write(self.terminal.format(record).rstrip() + "\n")
                sys.stderr.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


class _Forward(logging.Handler):
    """vLLM's handler (built by its dictConfig): to the active capture in this process; in a
    worker process vLLM started (no capture there), to the same file directly."""

    def __init__(self, path: str, echo: str = "ERROR"):
        super().__init__(logging.NOTSET)
        level = logging.getLevelName(echo)
        self.path, self.echo = path, level if isinstance(level, int) else logging.ERROR
        self.fallback: LibraryHandler | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if _active is not None:
            _active.handler.handle(record)
            return
        if self.fallback is None:
            self.fallback = LibraryHandler(Path(self.path), self.echo)
        self.fallback.handle(record)


def vllm_handler(path: str, echo: str = "ERROR") -> logging.Handler:
    """The factory VLLM_LOGGING_CONFIG_PATH's dictConfig names (`"()"`)."""
    return _Forward(path, echo)


class _Terminal(logging.StreamHandler):
    """Our own messages: to whatever sys.stderr is when they are emitted."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class _ToLog:
    """A stdout for -q: what is printed goes to the log file instead of the terminal."""

    def __init__(self, handler: LibraryHandler):
        self.handler = handler

    def write(self, text: str) -> int:
        if text:
            self.handler.write(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


class _NoProgress:
    """A stderr for -q: everything passes through except progress bars (text redrawn after a
    carriage return, and the newline that ends such a bar)."""

    def __init__(self, stream):
        self.stream, self.in_bar = stream, False

    def write(self, text: str) -> int:
        if text.startswith("\r") or (self.in_bar and text == "\n"):
            self.in_bar = text.startswith("\r")
            return len(text)
        self.in_bar = False
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


class _Then:
    """Runs the real loader, then `after`. The module's spec names the real loader again once
    it runs, so nothing outside the import sees this one."""

    def __init__(self, loader, after: Callable[[], None]):
        self.loader, self.after = loader, after

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        self.after()

    def __getattr__(self, name):
        return getattr(self.loader, name)


class _AdoptOnImport(importlib.abc.MetaPathFinder):
    """Adopt the handlers a library adds when it is imported, right after its import."""

    def __init__(self, after: Callable[[], None]):
        self.after, self.busy = after, False

    def find_spec(self, name, path=None, target=None):
        if name not in ADOPT_AFTER_IMPORT or self.busy:
            return None
        self.busy = True
        try:
            for finder in sys.meta_path:
                find = getattr(finder, "find_spec", None)
                if finder is self or find is None:
                    continue
                spec = find(name, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            self.busy = False
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Then(spec.loader, self.after)
        return spec


class Capture:
    """One command's library output in one log file (see the module docstring)."""

    def __init__(self, path: Path, verbosity: int = 0, command: str = ""):
        self.path, self.verbosity = Path(path), verbosity
        self.echo = echo_level(verbosity)
        self.start = self.path.stat().st_size if self.path.exists() else 0
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self.handler = LibraryHandler(self.path, self.echo, f"\n# {stamp} selfimprove {command} (pid {os.getpid()})\n")
        self.undo: list[Callable[[], None]] = []

    @property
    def quiet(self) -> bool:
        return self.verbosity < 0

    def adopt(self) -> None:
        """Take the terminal handlers off library loggers and let their records propagate to ours.

        A terminal handler is a plain `logging.StreamHandler` (what torch, transformers, datasets,
        huggingface_hub and vLLM's default config add); file handlers, subclasses (pytest's
        capture) and handlers writing into a StringIO stay.
        """
        for name, logger in list(logging.root.manager.loggerDict.items()):
            if not isinstance(logger, logging.Logger) or name.split(".")[0] == OURS:
                continue
            for h in list(logger.handlers):
                if type(h) is logging.StreamHandler and not isinstance(getattr(h, "stream", None), io.StringIO):
                    logger.removeHandler(h)
                    self.undo.append(lambda lg=logger, h=h: lg.addHandler(h))
                    if not logger.propagate:
                        logger.propagate = True
                        self.undo.append(lambda lg=logger: setattr(lg, "propagate", False))

    def set_env(self, name: str, value: str) -> None:
        old = os.environ.get(name)
        os.environ[name] = value
        self.undo.append(lambda: os.environ.__setitem__(name, old) if old is not None else os.environ.pop(name, None))

    def __enter__(self) -> Capture:
        global _active
        root, ours = logging.getLogger(), logging.getLogger(OURS)
        level, our_level, propagate = root.level, ours.level, ours.propagate
        root.addHandler(self.handler)
        root.setLevel(logging.INFO if self.verbosity >= 2 else logging.WARNING)
        terminal = _Terminal()
        terminal.setFormatter(logging.Formatter("selfimprove: %(message)s"))
        ours.addHandler(terminal)
        ours.setLevel(logging.WARNING if self.quiet else logging.DEBUG if self.verbosity > 0 else logging.INFO)
        ours.propagate = False
        if getattr(logging, "_warnings_showwarning", None) is None:  # not captured already (by whoever embeds us)
            logging.captureWarnings(True)
            self.undo.append(lambda: logging.captureWarnings(False))
        finder = _AdoptOnImport(self.adopt)
        sys.meta_path.insert(0, finder)
        self.undo.append(lambda: root.removeHandler(self.handler))
        self.undo.append(lambda: root.setLevel(level))
        self.undo.append(lambda: ours.removeHandler(terminal))
        self.undo.append(lambda: (ours.setLevel(our_level), setattr(ours, "propagate", propagate)))
        self.undo.append(lambda: sys.meta_path.remove(finder) if finder in sys.meta_path else None)
        self.adopt()
        _active = self
        return self

    def __exit__(self, *exc) -> None:
        global _active
        _active = None
        self.handler.stage = None
        while self.undo:
            self.undo.pop()()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Library records of this stage carry its name in the log; with -q its summary goes there too."""
        self.handler.stage = name
        try:
            if self.quiet:
                with contextlib.redirect_stdout(_ToLog(self.handler)), contextlib.redirect_stderr(_NoProgress(sys.stderr)):
                    yield
            else:
                yield
        finally:
            self.handler.stage = None

    def lines_added(self) -> int:
        """Lines this command added to the log file (its worker processes' included), header left out."""
        if not self.path.exists():
            return 0
        with open(self.path, "rb") as f:
            f.seek(self.start)
            lines = [line for line in f.read().splitlines() if line.strip()]
        return sum(1 for line in lines if not line.startswith(b"# "))

    def where(self) -> None:
        """One line on stderr saying where library output went, when there was any (not with -q)."""
        n = self.lines_added()
        if n and not self.quiet:
            shown = "also shown above" if self.verbosity > 0 else "-v shows it here"
            print(f"selfimprove: library output ({n} lines: vLLM, torch, warnings, ...) is in {self.path} ({shown})",
                  file=sys.stderr, flush=True)


def route_vllm() -> None:
    """Before a vLLM engine starts: its logger, here and in the worker processes it starts, writes
    to the active capture's log file (nothing without a capture, or where the user configured
    vLLM's logging: VLLM_LOGGING_CONFIG_PATH, VLLM_CONFIGURE_LOGGING=0)."""
    cap = _active
    if cap is None or os.environ.get("VLLM_CONFIGURE_LOGGING", "1") == "0":
        return
    config = (cap.path.parent / VLLM_CONFIG).resolve()
    if os.environ.get("VLLM_LOGGING_CONFIG_PATH") not in (None, str(config)):
        return
    level = os.environ.get("VLLM_LOGGING_LEVEL", "INFO").upper()
    spec = {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"selfimprove": {"()": f"{__name__}.vllm_handler", "path": str(cap.path.resolve()),
                                     "echo": logging.getLevelName(cap.echo)}},
        "loggers": {"vllm": {"handlers": ["selfimprove"], "level": level, "propagate": False}},
    }
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps(spec, indent=1) + "\n")
    cap.set_env("VLLM_LOGGING_CONFIG_PATH", str(config))
    cap.adopt()


def show_library_progress() -> bool:
    """Whether libraries' own progress bars (vLLM loading weights) belong on the terminal: with
    -v, or when no command captures library output (benchmarks, tests)."""
    return _active is None or _active.verbosity > 0
