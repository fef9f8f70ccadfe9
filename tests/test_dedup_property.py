"""Property: dedup never empties a solved problem unless a rule says so, and then it says which."""

from collections import Counter

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selfimprove.pipeline import schema
from selfimprove.pipeline.config import DedupConfig
from selfimprove.pipeline.selection import balance
from selfimprove.pipeline.stages.dedup import RULES, Context, select_rows

# Few distinct texts, so exact duplicates, shared paths and near-duplicates all happen.
TEXTS = [
    "16 - 3 = 13 and 13 * 2 = 26. The answer is 26.",
    "Left: 16 - 3 = 13; money: 13 * 2 = 26. So 26.",
    "16 - 3 = 13 and 13 * 2 = 26.  the answer is 26.",
    "She sells thirteen eggs at two dollars each which makes twenty six dollars in total today",
    "She sells thirteen eggs at two dollars each which makes twenty six dollars in total",
    "2 * 13 = 26",
    "The answer is 26.",
    "",
]

row = st.tuples(st.sampled_from(TEXTS), st.sampled_from(["correct", "correct", "wrong", "no_answer"]), st.booleans())
problem = st.lists(row, min_size=1, max_size=8)
config = st.fixed_dictionaries({
    "max_per_problem": st.integers(1, 5),
    "exact_across_problems": st.booleans(),
    "near_dup": st.fixed_dictionaries({"enabled": st.booleans(), "threshold": st.sampled_from([0.5, 0.8, 1.0]),
                                       "ngram": st.integers(1, 5)}),
    "paths": st.booleans(),
    "cap_policy": st.sampled_from(["random", "diverse", "shortest"]),
    "balance": st.sampled_from(["none", "uniform", "prop2diff"]),
    "easy_threshold": st.sampled_from([None, 0.5, 1.0]),
    "easy_keep": st.integers(0, 2),
    "min_correct": st.integers(1, 3),
})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(problem, min_size=1, max_size=4), config, st.integers(0, 3))
def test_dedup_never_silently_drops_the_last_correct_sample(problems, conf, seed):
    rows = []
    for p, samples in enumerate(problems):
        for i, (text, status, hinted) in enumerate(samples):
            rows.append({"problem_id": f"p{p}", "sample_idx": i, "text": text, "status": status, "rationalized": hinted})
    table = schema.table(rows, schema.VERIFIED)
    cfg = DedupConfig(**conf)
    sel = select_rows(table, cfg, seed, context=Context())

    # every row is accounted for, kept rows are correct, nothing is counted twice
    assert sel.kept.num_rows == table.num_rows - sum(sel.removed.values()) + sel.repeated
    assert Counter(r for r in sel.reasons if r) == sel.removed
    assert set(sel.kept.column("status").to_pylist()) <= {"correct"}
    kept = Counter(sel.kept.column("problem_id").to_pylist())
    for p, samples in enumerate(problems):
        pid = f"p{p}"
        reasons = [r for r, x in zip(sel.reasons, rows) if x["problem_id"] == pid and x["status"] == "correct"]
        if not reasons:
            continue
        if kept[pid] == 0:
            # emptied: only when a rule removed some of its rows, and the problem says which
            rules = sorted(set(reasons) & set(RULES))
            assert rules, f"dedup alone emptied {pid}: {reasons}"
            assert sel.problems[pid]["emptied_by"] == rules
        else:
            model = [s for s in samples if not s[2]]
            rate = sum(s[1] == "correct" for s in model) / len(model) if model else None
            k = balance.target(cfg.balance, cfg.max_per_problem, rate)
            if cfg.balance == "uniform" and not (cfg.easy_threshold and rate is not None and rate >= cfg.easy_threshold):
                assert kept[pid] == k
            else:
                assert kept[pid] <= k

    again = select_rows(table, cfg, seed, context=Context())
    assert again.kept.equals(sel.kept), "same seed, same output"
