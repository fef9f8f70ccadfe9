"""Dedup's rules are an ordered list, and the rationalized-share cap is one of them."""

import json
from collections import Counter

from selfimprove.pipeline import schema
from selfimprove.pipeline.config import DedupConfig
from selfimprove.pipeline.selection.rules import STEPS, select_rows


def rows(problems):
    out = []
    for pid, texts, hinted in problems:
        for i, text in enumerate(texts):
            out.append({"problem_id": pid, "sample_idx": i + (10 if hinted else 0), "text": text, "status": "correct",
                        "rationalized": hinted, "extracted": "7", "gold": "7", "model": "m", "verifier": "numeric",
                        "prompt": json.dumps([{"role": "user", "content": f"What is 3 + 4 for {pid}?"}])})
    return schema.table(out, schema.VERIFIED)


def test_the_steps_run_in_their_documented_order():
    assert [s.__name__ for s in STEPS] == [
        "not_correct", "count_problems", "answer_only", "decontaminate", "problem_rules", "exported_before",
        "exact_duplicate", "same_path", "near_duplicate", "cap", "rationalized_share"]


def test_rationalized_rows_are_capped_at_their_share_of_the_kept_rows():
    t = rows([("p1", ["3 + 4 = 7."], False), ("p2", ["4 + 3 = 7, so 7."], False),
              ("p3", ["We add 3 + 4 = 7."], True), ("p4", ["Adding: 3 + 4 = 7."], True), ("p5", ["3 plus 4 = 7."], True)])
    config = DedupConfig(max_per_problem=4, near_dup={"enabled": False})
    sel = select_rows(t, config, seed=1, max_rationalized_share=0.5)  # quota: as many hinted rows as own ones
    kept = sel.kept.to_pylist()
    assert sum(r["rationalized"] for r in kept) == 2 and sum(not r["rationalized"] for r in kept) == 2
    assert sel.removed == Counter(over_rationalized_share=1)
    emptied = [p for p, c in sel.problems.items() if c.get("emptied_by")]
    assert len(emptied) == 1 and sel.problems[emptied[0]]["emptied_by"] == ["over_rationalized_share"]
    again = select_rows(t, config, seed=1, max_rationalized_share=0.5)
    assert again.kept.equals(sel.kept)  # a seeded, deterministic choice
    assert select_rows(t, config, seed=1).kept.num_rows == 5  # no cap without a share
