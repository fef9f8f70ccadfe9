"""Export fills its shards in Arrow batches (to keep memory flat); the sft shards must hold exactly the selected rows."""

import json
from collections import Counter

import pyarrow.parquet as pq

from selfimprove.pipeline.cli import main
from selfimprove.pipeline.config import load_config
from selfimprove.pipeline.stages import export, reader, stage_dir
from tests.fake_engine import FakeEngine


def test_shards_hold_every_selected_row_once_in_order_across_batches(fake_config, monkeypatch):
    monkeypatch.setattr(export, "ARROW_BATCH", 3)  # several batches per shard, and shards that end mid-batch
    overrides = ["export.rows_per_shard=7", "export.validation_fraction=0.3", "task.arithmetic.count=40"]
    config = fake_config()
    assert main(["run", "--config", str(config), *sum((["--set", o] for o in overrides), [])]) == 0
    cfg = load_config(config, overrides)

    expected = {"train": [], "validation": []}
    for row in reader(cfg, 1, "dedup").read_all().to_pylist():
        expected[export.split_of(row["problem_id"], 0.3)].append((row["problem_id"], row["sample_idx"], row["text"]))
    out = stage_dir(cfg, 1, "export")
    for split, rows in expected.items():
        files = sorted(out.glob(f"sft-{split}-*.parquet"))
        assert len(rows) > 7 and len(files) == -(-len(rows) // 7)
        tables = [pq.read_table(f) for f in files]
        assert [t.num_rows for t in tables[:-1]] == [7] * (len(files) - 1)
        got = [(r["problem_id"], r["sample_idx"], r["completion"][0]["content"]) for t in tables for r in t.to_pylist()]
        assert got == rows
    # the other configs fill shards the same way, and the manifest counts every row once
    manifest = reader(cfg, 1, "export").manifest
    configs = manifest["stats"]["configs"]
    for config in ("preference", "prompts"):
        for split, n in configs[config].items():
            files = sorted(out.glob(f"{config}-{split}-*.parquet"))
            assert [pq.read_metadata(f).num_rows for f in files] == [7] * (n // 7) + ([n % 7] if n % 7 else [])
    assert configs["prompts"]["train"] + configs["prompts"]["validation"] == 40
    assert manifest["rows"] == sum(sum(c.values()) for c in configs.values())


CHATTER = "\n\nI hope this helps! Let me know if you have more questions."


class ChattyEngine(FakeEngine):
    """The test engine, rambling on after each final answer as small models do."""

    def generate(self, requests, params, desc=""):
        results = super().generate(requests, params, desc)
        for result in results:
            for c in result.completions:
                c.text += CHATTER
        return results


def _exported(cfg, config: str = "sft") -> list[dict]:
    return [r for f in sorted(stage_dir(cfg, 1, "export").glob(f"{config}-*.parquet")) for r in pq.read_table(f).to_pylist()]


def test_trim_after_answer_exports_each_completion_cut_at_its_final_answer(fake_config):
    config = fake_config(sample={"engine": "tests.test_export_shards:ChattyEngine"}, export={"trim_after_answer": True})
    assert main(["run", "--config", str(config)]) == 0
    cfg = load_config(config)
    sampled = {(r["problem_id"], r["sample_idx"]): r["text"] for r in reader(cfg, 1, "verify").read_all().to_pylist()}
    exported = _exported(cfg)
    assert exported and len(exported) == reader(cfg, 1, "dedup").rows
    for row in exported:
        text = sampled[(row["problem_id"], row["sample_idx"])]
        assert text.endswith(CHATTER)
        assert row["completion"] == [{"role": "assistant", "content": text[: -len(CHATTER)]}]
        assert row["completion"][0]["content"].endswith(f"The answer is {row['answer']}.")
    # rejected samples of the preference config are cut the same way: no pair differs in chatter alone
    pairs = _exported(cfg, "preference")
    assert pairs and all(not p["rejected"][0]["content"].endswith(CHATTER) for p in pairs)
    assert all(sampled[(p["problem_id"], p["rejected_sample_idx"])].startswith(p["rejected"][0]["content"]) for p in pairs)


class SignOffEngine(FakeEngine):
    """Every sample of a problem: the same working, then a sign-off of its own."""

    SIGN_OFFS = ["Cheers, and good luck with the rest of your homework tonight!",
                 "Feel free to ask me anything else about arithmetic or fractions.",
                 "Happy studying; remember to always double check each step you take.",
                 "That was a fun one: maybe try a harder version with bigger numbers next?"]

    def generate(self, requests, params, desc=""):
        results = super().generate(requests, params, desc)
        for req, result in zip(requests, results):
            gold = self.gold.get(self._question(req), "0")
            for j, c in enumerate(result.completions):
                c.text = f"I take {gold}0 and divide it by ten.\nThe answer is {gold}.\n\n{self.SIGN_OFFS[j % 4]}"
        return results


def test_samples_that_differ_only_after_their_answer_are_exported_once_when_trimmed(fake_config, tmp_path):
    """Dedup judges the text that is exported: trimmed, four samples with different sign-offs are one rationale."""
    for trim in (False, True):
        config = fake_config(sample={"engine": "tests.test_export_shards:SignOffEngine", "n": 4},
                             export={"trim_after_answer": trim}, run={"dir": str(tmp_path / f"trim-{trim}")})
        assert main(["run", "--config", str(config)]) == 0
        cfg = load_config(config)
        exported = _exported(cfg)
        by_problem = Counter(r["problem_id"] for r in exported)
        assert len({(r["problem_id"], r["completion"][0]["content"]) for r in exported}) == len(exported), \
            "a duplicate row was exported"
        removed = json.loads((stage_dir(cfg, 1, "dedup") / "stats.json").read_text())["removed"]
        if trim:
            assert set(by_problem.values()) == {1} and removed.get("exact_duplicate") == 3 * len(by_problem)
        else:  # the sign-offs differ enough that nothing is a duplicate of anything
            assert set(by_problem.values()) == {4} and not removed.get("exact_duplicate")
