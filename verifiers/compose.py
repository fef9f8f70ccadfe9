"""Composition: all_of, any_of, and fallback chains of other verifiers.

Each takes `verifiers`, a list of {verifier: NAME, params: {...}}, and runs them in order,
per sample, stopping as soon as the outcome is decided:

- `all_of`: correct only when every child says correct (stops at the first that does not);
- `any_of`: correct when some child says correct (stops at the first that does);
- `fallback`: the next child runs only where the previous one's status is in `on_status`
  (default no_answer and error), e.g. `math`, then `judge` only where math found no usable answer.

The verdict keeps every child's reason, and the fingerprint every child's name, version and
params, so changing a child re-verifies. A child that needs the engine (`judge`) may only be
the last one: the pool runs the children before it (`rules_part`), and the verify stage runs
the judge for exactly the rows where the outcome still depends on it (`needs_engine`), then
combines both (`finish`). A child that needs all samples of a problem (`majority`) makes the
whole composite a group verifier.
"""

from __future__ import annotations

import re

from selfimprove.verifiers.base import STATUSES, Verdict, Verifier, clip, get_verifier, register


def _parse_children(owner: str, value) -> list[tuple[str, dict]]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"verifier {owner!r}: params.verifiers must be a non-empty list of {{verifier, params}}")
    children = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            item = {"verifier": item}
        if not isinstance(item, dict) or not isinstance(item.get("verifier"), str) or set(item) - {"verifier", "params"}:
            raise ValueError(f"verifier {owner!r}: params.verifiers[{i}] must be {{verifier: NAME, params: {{...}}}}, got {item!r}")
        params = item.get("params") or {}
        if not isinstance(params, dict):
            raise ValueError(f"verifier {owner!r}: params.verifiers[{i}].params must be a mapping")
        children.append((item["verifier"], params))
    return children


class Composite(Verifier):
    """Shared machinery; subclasses say when to go on to the next child and what the end result is."""

    version = "1"
    defaults = {"verifiers": None}

    def __init__(self, **params):
        super().__init__(**params)
        self.specs = _parse_children(self.name, self._params["verifiers"])
        self._params["verifiers"] = [{"verifier": s, "params": p} for s, p in self.specs]
        self.children: list[Verifier] = []
        for i, (spec, child_params) in enumerate(self.specs):
            try:
                self.children.append(get_verifier(spec, child_params))
            except ValueError as e:
                raise ValueError(f"verifier {self.name!r}: params.verifiers[{i}]: {e}") from None
        engine_children = [i for i, c in enumerate(self.children) if c.uses_engine]
        if engine_children and (engine_children != [len(self.children) - 1] or len(self.children) < 2
                                or isinstance(self.children[-1], Composite)):
            raise ValueError(f"verifier {self.name!r}: a verifier that needs the engine (like judge) can only be "
                             f"the last of two or more params.verifiers, and not inside another composite")
        self.uses_engine = bool(engine_children)  # type: ignore[misc]  # per instance: depends on the children
        self.group = any(c.group for c in self.children)  # type: ignore[misc]
        self.needs_gold = any(c.needs_gold for c in self.children)  # type: ignore[misc]

    def fingerprint(self) -> dict:
        params = {k: v for k, v in self.params().items() if k != "verifiers"}
        return {"name": self.name, "version": self.version,
                "params": {**params, "verifiers": [c.fingerprint() for c in self.children]}}

    # --- what a subclass decides -------------------------------------------------------------

    def goes_on(self, verdict: Verdict) -> bool:
        """After a child gave `verdict`, does the next child run?"""
        raise NotImplementedError

    def outcome(self, run: list[tuple[str, Verdict]]) -> Verdict:
        """The verdict of the children that ran, in order."""
        raise NotImplementedError

    # --- running ------------------------------------------------------------------------------

    def _rule_children(self) -> list[Verifier]:
        return self.children[:-1] if self.uses_engine else self.children

    def verify(self, problem: dict, sample: dict) -> Verdict:
        return self.verify_group(problem, [sample])[0]

    def verify_group(self, problem: dict, samples: list[dict]) -> list[Verdict]:
        runs: list[list[tuple[str, Verdict]]] = [[] for _ in samples]
        for child in self._rule_children():
            todo = [i for i, run in enumerate(runs) if not run or self.goes_on(run[-1][1])]
            if not todo:
                break
            if child.group:
                verdicts = child.verify_group(problem, samples)  # a vote needs every sample, decided or not
                verdicts = [verdicts[i] for i in todo]
            else:
                verdicts = [child.verify(problem, samples[i]) for i in todo]
            for i, v in zip(todo, verdicts):
                if not isinstance(v, Verdict):
                    raise TypeError(f"{child.name} returned {type(v).__name__}, not a Verdict")
                runs[i].append((child.name, v))
        return [self.outcome(run) for run in runs]

    # --- what the verify stage uses when the last child is a judge ------------------------------

    @property
    def engine_child(self) -> Verifier | None:
        return self.children[-1] if self.uses_engine else None

    def rules_part(self) -> tuple[str, dict]:
        """(spec, params) of this composite without its engine child, for the pool."""
        return self.name, {**self.params(), "verifiers": self._params["verifiers"][:-1]}

    def needs_engine(self, rules_verdict: Verdict) -> bool:
        """Whether the engine child must run, given the verdict of rules_part()."""
        return self.goes_on(rules_verdict)

    def finish(self, rules_verdict: Verdict, engine_verdict: Verdict) -> Verdict:
        """The whole composite's verdict, from rules_part()'s and the engine child's."""
        return self.outcome([("rules", rules_verdict), (self.children[-1].name, engine_verdict)])


_OWN_PREFIX = re.compile(r"^(?:all_of|any_of|fallback): (?:none correct: )?")


def _reasons(run: list[tuple[str, Verdict]]) -> str:
    """Every child's reason in order; a rules_part() verdict already carries its children's."""
    return clip(" -> ".join(_OWN_PREFIX.sub("", v.reason) if name == "rules" else f"{name}: {v.reason}"
                            for name, v in run), 480)


def _extracted(run: list[tuple[str, Verdict]]) -> str | None:
    return next((v.extracted for _, v in reversed(run) if v.extracted is not None), None)


@register("all_of")
class AllOf(Composite):
    def goes_on(self, verdict: Verdict) -> bool:
        return verdict.status == "correct"

    def outcome(self, run):
        last = run[-1][1]
        if last.status != "correct":
            return Verdict(last.status, 0.0, _extracted(run), f"all_of: {_reasons(run)}")
        return Verdict("correct", min(v.score for _, v in run), _extracted(run), f"all_of: {_reasons(run)}")


@register("any_of")
class AnyOf(Composite):
    def goes_on(self, verdict: Verdict) -> bool:
        return verdict.status != "correct"

    def outcome(self, run):
        last = run[-1][1]
        if last.status == "correct":
            return Verdict("correct", last.score, _extracted(run), f"any_of: {_reasons(run)}")
        status = "wrong" if any(v.status == "wrong" for _, v in run) else last.status
        return Verdict(status, 0.0, _extracted(run), f"any_of: none correct: {_reasons(run)}")


@register("fallback")
class Fallback(Composite):
    defaults = {"verifiers": None, "on_status": ["no_answer", "error"]}

    def __init__(self, **params):
        super().__init__(**params)
        on = self._params["on_status"]
        if not isinstance(on, list) or not on or any(s not in STATUSES or s == "correct" for s in on):
            raise ValueError(f"verifier {self.name!r}: params.on_status must be a non-empty list of statuses "
                             f"from {[s for s in STATUSES if s != 'correct']}, got {on!r}")

    def goes_on(self, verdict: Verdict) -> bool:
        return verdict.status in self._params["on_status"]

    def outcome(self, run):
        last = run[-1][1]
        return Verdict(last.status, last.score, _extracted(run), f"fallback: {_reasons(run)}")
