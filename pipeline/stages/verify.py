"""verify: every sample gets a verdict (correct | wrong | no_answer | timeout | error) and a reason.

Parsing and checking run in a pool of worker processes with a hard wall-clock limit per item,
so one pathological output cannot stall the stage. Rows are never dropped here: the verdict
says what happened, and the dedup stage keeps only the correct ones.

A verifier that needs the generation engine (`judge`, alone or as the last child of a
composite) cannot run in a worker: the pool runs the rule-based part, and this stage sends the
rows still undecided to the engine, one call per shard at temperature 0, and reads the replies.
The engine is loaded only when a shard has such rows.
"""

from __future__ import annotations

from collections import Counter
from contextlib import ExitStack
from typing import Iterator

from tqdm import tqdm

from selfimprove.pipeline.config import Config
from selfimprove.pipeline.runs import check, reader
from selfimprove.pipeline.skeleton import MappedStage, ShardOutput, run_mapped
from selfimprove.pipeline.verification import JudgeStep, build_verifier, open_pool, verifier_spec, verify_table
from selfimprove.verifiers import Verifier


def fingerprint(cfg: Config, samples, problems, verifier: Verifier, judge: "JudgeStep | None" = None) -> dict:
    """What the verdicts depend on; the local and the Ray executor write one stage directory with it."""
    parts = {
        "input": samples.output_hash,
        "problems": problems.output_hash,
        "verifier": verifier.fingerprint(),
        "timeout_s": cfg.verify.timeout_s,
        "memory_limit_mb": cfg.verify.memory_limit_mb,
    }
    if judge is not None:  # only then: adding the key would re-verify every existing run
        parts["judge"] = judge.identity()
    return parts


class VerifyStage(MappedStage):
    """Verdicts for each sample shard, from a worker pool here or on Ray actors (a pool each);
    a verifier that needs the engine (judge) runs here, where the engine is."""

    name, source = "verify", "sample"

    def __init__(self, cfg: Config, iteration: int):
        super().__init__(cfg, iteration)
        self.problems = reader(cfg, iteration, "prepare")
        self.spec = verifier_spec(cfg)
        self.verifier = build_verifier(cfg)
        self.judge = JudgeStep(cfg, verifier=self.verifier) if self.verifier.uses_engine else None
        self.distributable = self.judge is None
        if cfg.run.executor == "ray" and self.judge is not None:
            print("verify: this verifier asks the generation engine (judge); it runs on the driver", flush=True)
        self.pool = None
        self._stack = ExitStack()

    def fingerprint(self) -> dict:
        return fingerprint(self.cfg, self.input, self.problems, self.verifier, self.judge)

    def open(self) -> None:
        pool_spec = None if self.judge is None else self.judge.rules_part()
        if self.judge is None or pool_spec is not None:
            pool_spec, pool_params = pool_spec or (self.spec, self.cfg.verify.params)
            self.pool = self._stack.enter_context(open_pool(self.cfg, pool_spec, pool_params))
        if self.judge is not None:
            self._stack.callback(self.judge.close)

    def close(self) -> None:
        self._stack.close()
        self.pool = None

    def work(self, names: list[str]) -> Iterator[tuple[str, ShardOutput]]:
        total = sum(s["rows"] for s in self.input.shards if s["file"] in names)
        with tqdm(total=total, desc="verify", unit="sample", mininterval=1.0, disable=self.executor() == "ray") as bar:
            for name in names:
                gold = {r["problem_id"]: r for r in self.problems.read_shard(name).to_pylist()}
                verdicts = verify_table(self.input.read_shard(name), gold, self.pool, self.verifier.name, bar.update,
                                        judge=self.judge)
                yield name, ShardOutput(verdicts)

    def check_shard(self, name: str, out: ShardOutput) -> None:
        expected = next(s["rows"] for s in self.input.shards if s["file"] == name)
        check(out.rows.num_rows == expected, f"verify {name}: {out.rows.num_rows} verdicts for {expected} samples")

    def check_total(self, writer, names: list[str]) -> None:
        verdicts = sum(writer.done[n]["rows"] for n in names)
        check(verdicts == self.input.rows, f"verify: {verdicts} verdicts for {self.input.rows} samples")

    def statuses(self) -> Counter:
        return Counter(s for out in self.new for s in out.rows["status"].to_pylist())

    def stats(self, writer, names: list[str]) -> dict:
        return {"new_verdicts": dict(self.statuses()), **({"executor": "ray"} if self.executor() == "ray" else {})}

    def summary(self, manifest: dict, resumed: int) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.statuses().most_common())
        judged = f"; {self.judge.judged} judged by the engine" if self.judge is not None and self.judge.judged else ""
        where = " on Ray" if self.executor() == "ray" else ""
        return f"{self.input.rows} samples verified with {self.spec!r}{where}: {counts or 'all resumed'}{judged}"

    def resources(self) -> tuple[int, dict]:
        """A pool per actor, one actor per live node unless `run.ray.verify_actors` says otherwise."""
        import ray

        actors = self.cfg.run.ray.verify_actors or max(1, len([nd for nd in ray.nodes() if nd.get("Alive")]))
        return actors, {"num_cpus": 1}


def run(cfg: Config, iteration: int, force: bool = False) -> dict:
    """The stage on either executor (pipeline/skeleton.py owns the directory, resume and checks)."""
    return run_mapped(VerifyStage(cfg, iteration), force)
