"""The verifier interface, the Verdict it returns, and the registry that finds verifiers by name.

A verifier is looked up by a spec string, so a run config can name one without code changes:
a built-in name ("math", "numeric": every module of this package registers itself), a
"package.module:ClassName" path, or a name another distribution publishes under the entry-point
group "selfimprove.verifiers". Verifiers are built from (spec, params) wherever they run, so
worker processes never receive a pickled verifier.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
from dataclasses import dataclass
from typing import Any, ClassVar

STATUSES = ("correct", "wrong", "no_answer", "timeout", "error")
ENTRY_POINT_GROUP = "selfimprove.verifiers"
MAX_ANSWER_CHARS = 1000  # a "final answer" longer than this is not an answer; kept out of reasons/tables

# Modules of this package that are machinery, not verifiers.
_NOT_VERIFIERS = {"base", "extract", "pool", "sandbox", "check"}
_REGISTRY: dict[str, type[Verifier]] = {}
_builtins_loaded = False


@dataclass(frozen=True)
class Verdict:
    status: str  # one of STATUSES
    score: float  # 1.0 correct, 0.0 otherwise (a verifier may give partial scores)
    extracted: str | None  # the final answer found in the output, if any
    reason: str  # short and human-readable, e.g. "boxed answer 42 == gold 42"

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"Verdict status must be one of {STATUSES}, not {self.status!r}")


def clip(text: str, limit: int = 80) -> str:
    """Shorten text for a reason string; model output is unbounded and reasons must stay short."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Verifier:
    """Base class: subclasses set `name`, `version`, `defaults` and implement `verify`.

    `defaults` lists every accepted parameter with its default, so a typo in a config fails
    loudly at construction instead of silently running with the default. `version` must be
    bumped whenever verdicts can change, because it goes into the stage fingerprint.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "0"
    group: ClassVar[bool] = False  # True: needs all samples of a problem at once (verify_group)
    # True: needs the generation engine (an LLM judge), so the verify stage runs it, not a pool
    # worker; such a verifier offers judge_request(problem, sample) and parse_judgement(text).
    uses_engine: ClassVar[bool] = False
    # False for verifiers that judge without a gold answer (majority vote, unit tests in the
    # problem row): then the prepare stage keeps problems that have none instead of rejecting them.
    needs_gold: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("name"):
            cls.name = f"{cls.__module__}:{cls.__qualname__}"

    def __init__(self, **params):
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            allowed = ", ".join(sorted(self.defaults)) or "none"
            raise ValueError(f"verifier {self.name!r}: unknown parameter(s) {', '.join(unknown)}; allowed: {allowed}")
        self._params = {**self.defaults, **params}

    def params(self) -> dict:
        """The effective parameters, defaults filled in."""
        return dict(self._params)

    def fingerprint(self) -> dict:
        return {"name": self.name, "version": self.version, "params": self.params()}

    def verify(self, problem: dict, sample: dict) -> Verdict:
        raise NotImplementedError

    def verify_group(self, problem: dict, samples: list[dict]) -> list[Verdict]:
        return [self.verify(problem, s) for s in samples]


def register(name: str):
    """Class decorator: make a verifier available under `name`."""

    def deco(cls: type[Verifier]) -> type[Verifier]:
        if not (isinstance(cls, type) and issubclass(cls, Verifier)):
            raise TypeError(f"@register({name!r}) needs a Verifier subclass, got {cls!r}")
        other = _REGISTRY.get(name)
        if other is not None and other.__qualname__ != cls.__qualname__:
            raise ValueError(f"verifier name {name!r} is already registered by {other.__module__}.{other.__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_builtins() -> None:
    """Import every module of this package once, so each verifier file registers itself."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    import selfimprove.verifiers as verifiers

    for mod in pkgutil.iter_modules(verifiers.__path__):
        if mod.name not in _NOT_VERIFIERS and not mod.name.startswith("_"):
            importlib.import_module(f"selfimprove.verifiers.{mod.name}")
    _builtins_loaded = True


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available_verifiers() -> dict[str, str]:
    """Every name get_verifier accepts, mapped to where it comes from."""
    _load_builtins()
    found = {name: f"built-in ({cls.__module__})" for name, cls in sorted(_REGISTRY.items())}
    for name, ep in sorted(_entry_points().items()):
        found.setdefault(name, f"entry point {ep.value}")  # a built-in name cannot be shadowed
    return found


def _import_class(path: str) -> type:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"verifier spec {path!r} must look like 'package.module:ClassName'")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load verifier {path!r}: {type(e).__name__}: {e}") from e
    return obj


def get_verifier(spec: str, params: dict | None = None) -> Verifier:
    """Build the verifier named by `spec` with `params`; ValueError if either is wrong."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"verifier spec must be a non-empty string, got {spec!r}")
    _load_builtins()
    if ":" in spec:
        cls = _import_class(spec)
    elif spec in _REGISTRY:
        cls = _REGISTRY[spec]
    elif spec in (eps := _entry_points()):
        try:
            cls = eps[spec].load()
        except Exception as e:
            raise ValueError(f"cannot load verifier {spec!r} from entry point {eps[spec].value}: {e}") from e
    else:
        names = ", ".join(available_verifiers())
        raise ValueError(f"unknown verifier {spec!r}; available: {names} (or 'package.module:ClassName')")
    if not (isinstance(cls, type) and issubclass(cls, Verifier)):
        raise ValueError(f"verifier {spec!r} resolves to {cls!r}, which is not a Verifier subclass")
    try:
        return cls(**(params or {}))
    except TypeError as e:
        raise ValueError(f"verifier {spec!r}: bad parameters {params!r}: {e}") from e
