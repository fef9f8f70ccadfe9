"""The dedup stage's steps on hand-built verdicts: each rule, its report, determinism, the stage."""

import json
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from selfimprove.pipeline import schema
from selfimprove.pipeline.config import DedupConfig, load_config
from selfimprove.pipeline.selection.contamination import EvalIndex, load_eval_set, load_index
from selfimprove.pipeline.selection.minhash import MinHasher
from selfimprove.pipeline.selection.normalise import keyed, normalise, text_hashes
from selfimprove.pipeline.selection.paths import equations, path_key
from selfimprove.pipeline.stages import dedup, stage_dir
from selfimprove.pipeline.stages.dedup import Context, select_rows
from selfimprove.pipeline.store import StageReader, StageWriter

from tests.conftest import SHARED

GSM8K_TEST = SHARED / "gsm8k" / "test.jsonl"


def verdicts(*problems, status="correct", rationalized=False) -> pa.Table:
    """problems: (problem_id, [texts]) pairs; every row correct unless `status` says otherwise."""
    rows = []
    for pid, texts in problems:
        for i, text in enumerate(texts):
            st = status[i] if isinstance(status, (list, tuple)) else status
            rows.append({"problem_id": pid, "sample_idx": i, "text": text, "status": st, "rationalized": rationalized,
                         "prompt": json.dumps([{"role": "user", "content": f"question of {pid}"}]),
                         "gold": "26", "model": "m", "verifier": "numeric"})
    return schema.table(rows, schema.VERIFIED)


def cfg(**kw) -> DedupConfig:
    """Rules under test on toy texts ("The answer is 7."), which the answer_only rule
    (tests/test_reasoning.py) would drop first."""
    return DedupConfig(**{"max_per_problem": 100, "require_work": False, **kw})


def kept_texts(sel) -> list[str]:
    return sel.kept.column("text").to_pylist()


LONG = ("Janet's ducks lay sixteen eggs per day and she eats three of them for breakfast every morning, "
        "then bakes muffins for her friends every day with four more, and she sells the remainder at the "
        "farmers market daily for two dollars per fresh duck egg, so she makes twenty six dollars every day")


# -- exact -------------------------------------------------------------------------------------

def test_exact_duplicates_ignore_whitespace_case_and_latex_spacing():
    assert normalise("  The  answer\n is \\, $7$ \\quad OK ") == "the answer is $7$ ok"
    t = verdicts(("p1", ["The answer is 7.", "the  answer\tis 7.", "The answer \\, is 7.", "The answer is 8."]))
    sel = select_rows(t, cfg(near_dup={"enabled": False}), seed=1)
    assert kept_texts(sel) == ["The answer is 7.", "The answer is 8."]
    assert sel.removed == Counter(exact_duplicate=2)
    assert sel.reasons == [None, "exact_duplicate", "exact_duplicate", None]


def test_exact_across_problems_is_optional_and_keeps_the_first_problem():
    t = verdicts(("p1", ["Same words here."]), ("p2", ["same words  here.", "Other words."]))
    off = select_rows(t, cfg(), seed=1)
    assert off.kept.num_rows == 3
    on = select_rows(t, cfg(exact_across_problems=True), seed=1)
    assert on.kept.column("problem_id").to_pylist() == ["p1", "p2"]
    assert on.removed == Counter(exact_duplicate_across_problems=1)
    # the set of kept texts carries over to the next shard
    ctx = Context()
    select_rows(verdicts(("p1", ["Same words here."])), cfg(exact_across_problems=True), 1, context=ctx)
    later = select_rows(verdicts(("p9", ["SAME words here."])), cfg(exact_across_problems=True), 1, context=ctx)
    assert later.kept.num_rows == 0 and later.problems["p9"]["emptied_by"] == ["exact_duplicate_across_problems"]


# -- near-duplicates ---------------------------------------------------------------------------

def test_near_duplicates_that_differ_in_wording_go_and_different_rationales_stay():
    reworded = LONG.replace("remainder", "rest")
    other = ("First find how many eggs are left after breakfast and baking, then multiply the eggs "
             "left by the price of one egg to get the money made at the market each day")
    t = verdicts(("p1", [LONG, reworded, other]))
    sig = MinHasher().signatures([LONG, reworded, other])
    assert (sig[0] == sig[1]).mean() >= 0.7 > 0.2 > (sig[0] == sig[2]).mean()
    loose = select_rows(t, cfg(paths=False, near_dup={"threshold": 0.7}), seed=1)
    assert kept_texts(loose) == [LONG, other] and loose.removed == Counter(near_duplicate=1)
    strict = select_rows(t, cfg(paths=False, near_dup={"threshold": 0.99}), seed=1)
    assert strict.kept.num_rows == 3
    # never across problems: the same rationale for two problems is two rows
    two = select_rows(verdicts(("p1", [LONG]), ("p2", [reworded])), cfg(paths=False, near_dup={"threshold": 0.7}), 1)
    assert two.kept.num_rows == 2


def test_char_ngrams_catch_spelling_variants():
    a = "the total cost of the apples and the oranges together is twenty six dollars"
    b = "the totl cost of the aples and the oranges together is twenty six dolars"
    t = verdicts(("p1", [a, b]))
    words = select_rows(t, cfg(paths=False, near_dup={"threshold": 0.6}), 1)
    chars = select_rows(t, cfg(paths=False, near_dup={"threshold": 0.6, "unit": "char", "ngram": 3}), 1)
    assert words.kept.num_rows == 2 and chars.kept.num_rows == 1


# -- reasoning paths ---------------------------------------------------------------------------

def test_equations_from_annotations_and_text_and_only_true_ones():
    assert equations("She sold 48/2 = <<48/2=24>>24 clips, then 48+24 = <<48+24=72>>72.") == ["48/2=24", "48+24=72"]
    assert equations("16 - 3 = 13 eggs, and 13 x 2 = 26 dollars.") == ["16-3=13", "13*2=26"]
    assert equations("2 + 3 = 5 + 1 = 6") == ["2+3=5", "5+1=6"]
    assert equations("$1,000 \\times 2 = 2,000$ and 10/3 = 3.33") == ["1000*2=2000", "10/3=3.33"]
    assert equations("3 * 4 = 13, so the answer is 13") == []  # does not evaluate to its result
    assert path_key("The answer is 26.") is None


def test_same_equations_in_different_words_are_one_path_different_equations_are_two():
    same_a = "She has 16 - 3 - 4 = 9 eggs left. Selling them gives 9 * 2 = 18 dollars. The answer is 18."
    same_b = "Eggs remaining: 16 - 3 - 4 = 9; at two dollars each that is 9 * 2 = 18. So 18."
    other = "Each egg is 2 dollars, so 16 * 2 = 32 and she uses 7 * 2 = 14, leaving 32 - 14 = 18. The answer is 18."
    t = verdicts(("p1", [same_a, same_b, other]))
    sel = select_rows(t, cfg(near_dup={"enabled": False}), seed=1)
    assert kept_texts(sel) == [same_a, other]
    assert sel.removed == Counter(same_path=1)
    assert sel.problems["p1"]["distinct_paths"] == 2
    assert select_rows(t, cfg(paths=False, near_dup={"enabled": False}), 1).kept.num_rows == 3


# -- cap and choice ----------------------------------------------------------------------------

def test_cap_random_is_seeded_and_deterministic():
    t = verdicts(("p1", [f"Rationale number {i} is its own thing entirely {i * 7}" for i in range(12)]))
    a = select_rows(t, cfg(max_per_problem=3), seed=5)
    b = select_rows(t, cfg(max_per_problem=3), seed=5)
    assert a.kept.equals(b.kept) and a.reasons == b.reasons and a.kept.num_rows == 3
    assert a.removed == Counter(over_cap=9)
    others = {tuple(select_rows(t, cfg(max_per_problem=3), seed=s).kept.column("sample_idx").to_pylist()) for s in range(6)}
    assert len(others) > 1, "the seed decides which rows stay"
    # the order of the input rows does not change the choice
    shuffled = t.take(pa.array([5, 2, 11, 0, 7, 3, 1, 9, 4, 10, 6, 8]))
    assert select_rows(shuffled, cfg(max_per_problem=3), seed=5).kept.equals(a.kept)


def test_cap_shortest_and_diverse():
    base = "we add the numbers one by one and carry the tens to get the final total of the sum"
    near_same = [base + f" step {i}" for i in range(4)]
    far = "completely different approach multiply price by quantity then subtract discount from the product"
    t = verdicts(("p1", near_same + [far, "short one"]))
    shortest = select_rows(t, cfg(max_per_problem=2, cap_policy="shortest", paths=False, near_dup={"enabled": False}), 1)
    assert sorted(kept_texts(shortest), key=len) == ["short one", near_same[0]]
    for seed in range(4):
        diverse = select_rows(t, cfg(max_per_problem=3, cap_policy="diverse", paths=False, near_dup={"enabled": False}), seed)
        texts = kept_texts(diverse)
        assert far in texts and "short one" in texts, "farthest-first picks the rationales unlike the rest"


# -- balance -----------------------------------------------------------------------------------

def _distinct(n, tag):
    return [f"{tag} rationale {i}: a distinct line of reasoning number {i} for {tag}" for i in range(n)]


def test_uniform_gives_every_solved_problem_the_same_number_and_reports_repeats():
    t = verdicts(("easy", _distinct(6, "easy")), ("hard", _distinct(1, "hard")))
    sel = select_rows(t, cfg(max_per_problem=4, balance="uniform"), 1)
    counts = Counter(sel.kept.column("problem_id").to_pylist())
    assert counts == {"easy": 4, "hard": 4}
    assert sel.repeated == 3 and sel.removed == Counter(over_cap=2)
    assert sel.kept.num_rows == t.num_rows - sum(sel.removed.values()) + sel.repeated


def test_prop2diff_keeps_more_for_harder_problems():
    hard_status = ["correct"] * 2 + ["wrong"] * 6
    t = pa.concat_tables([verdicts(("easy", _distinct(8, "easy"))),
                          verdicts(("hard", _distinct(8, "hard")), status=hard_status)])
    sel = select_rows(t, cfg(max_per_problem=8, balance="prop2diff"), 1)
    counts = Counter(sel.kept.column("problem_id").to_pylist())
    assert counts["easy"] == 1, "solved by every sample: pass rate 1 -> the minimum of one"
    assert counts["hard"] == 2, "pass rate 0.25 -> up to 6, but only 2 were correct"
    mid = select_rows(verdicts(("mid", _distinct(8, "mid")), status=["correct"] * 4 + ["wrong"] * 4),
                      cfg(max_per_problem=8, balance="prop2diff"), 1)
    assert mid.kept.num_rows == 4  # ceil(8 * (1 - 0.5))


def test_easy_threshold_and_min_correct():
    t = pa.concat_tables([
        verdicts(("always", _distinct(4, "always"))),
        verdicts(("lucky", _distinct(4, "lucky")), status=["correct", "wrong", "wrong", "wrong"]),
        verdicts(("fair", _distinct(4, "fair")), status=["correct", "correct", "wrong", "wrong"]),
    ])
    sel = select_rows(t, cfg(easy_threshold=1.0, min_correct=2), 1)
    assert set(sel.kept.column("problem_id").to_pylist()) == {"fair"}
    assert sel.removed == Counter(easy=4, below_min_correct=1, not_correct=5)
    assert sel.problems["always"]["emptied_by"] == ["easy"]
    assert sel.problems["lucky"]["emptied_by"] == ["below_min_correct"]
    down = select_rows(t, cfg(easy_threshold=1.0, easy_keep=1), 1)
    assert Counter(down.kept.column("problem_id").to_pylist())["always"] == 1
    assert down.removed["easy"] == 3


def test_rationalized_rows_share_sample_indices_and_rank_after_samples():
    samples = verdicts(("p1", ["The answer is 26, from 13 times 2.", "wrong"]), status=["correct", "wrong"])
    hinted = verdicts(("p1", ["the answer is 26, from 13 times 2.", "Thirteen eggs at two dollars make 26."]),
                      rationalized=True)
    sel = select_rows(pa.concat_tables([hinted, samples]), cfg(near_dup={"enabled": False}), 1)
    kept = list(zip(sel.kept.column("sample_idx").to_pylist(), sel.kept.column("rationalized").to_pylist()))
    assert kept == [(0, False), (1, True)], "the model's own sample wins over the rationalized copy"
    assert sel.removed == Counter(not_correct=1, exact_duplicate=1)
    # a problem only rationalization solved is not 'below min_correct': its model never solved it
    only = pa.concat_tables([verdicts(("p2", ["x", "y"]), status="wrong"), verdicts(("p2", ["Because 2 * 13 = 26."]), rationalized=True)])
    assert select_rows(only, cfg(min_correct=2), 1).kept.num_rows == 1


# -- across iterations -------------------------------------------------------------------------

def test_rows_exported_by_an_earlier_iteration_are_not_exported_again():
    ctx = Context()
    ctx.exported.update(keyed(text_hashes(["Because 13 * 2 = 26."]), ["p1"]).tolist())
    t = verdicts(("p1", ["because 13 * 2 =  26.", "Thirteen times two is 26."]), ("p2", ["Because 13 * 2 = 26."]))
    sel = select_rows(t, cfg(), 1, context=ctx)
    assert kept_texts(sel) == ["Thirteen times two is 26.", "Because 13 * 2 = 26."], "same text, other problem: kept"
    assert sel.removed == Counter(exported_before=1)
    assert select_rows(t, cfg(across_iterations=False), 1, context=ctx).kept.num_rows == 3


def _write_stage(path: Path, stage: str, shards: dict[str, pa.Table]) -> None:
    with StageWriter(path, stage, {"test": stage}, "test") as w:
        for name, table in shards.items():
            w.write_shard(name, table)
        w.finish(list(shards))


def _export_rows(rows: list[tuple[str, str]]) -> pa.Table:
    return schema.table([{"problem_id": p, "completion": [{"role": "assistant", "content": c}], "sample_idx": 0, "iteration": 1}
                         for p, c in rows], schema.SFT)


def test_stage_skips_rows_exported_by_earlier_iterations_and_writes_stats(tmp_path):
    c = load_config(None, [f"run.dir={tmp_path / 'run'}", "dedup.max_per_problem=4", "dedup.require_work=false"])
    _write_stage(stage_dir(c, 1, "export"), "export", {"sft-train-00000-of-00001.parquet": _export_rows([("p1", "Because 13 * 2 = 26.")])})
    t = verdicts(("p1", ["because 13 * 2 =  26.", "Thirteen times two is 26."]), ("p2", ["Because 13 * 2 = 26.", "no"]),
                 status=["correct", "correct"])
    _write_stage(stage_dir(c, 2, "verify"), "verify", {"part-00000.parquet": t})
    manifest = dedup.run(c, 2)
    out = StageReader(stage_dir(c, 2, "dedup")).read_all()
    assert sorted(zip(out["problem_id"].to_pylist(), out["text"].to_pylist())) == [
        ("p1", "Thirteen times two is 26."), ("p2", "Because 13 * 2 = 26."), ("p2", "no")]
    stats = json.loads((stage_dir(c, 2, "dedup") / "stats.json").read_text())
    assert stats["removed"] == {"exported_before": 1} and manifest["stats"]["removed"] == {"exported_before": 1}
    assert stats["earlier_exports"][0]["rows"] == 1
    assert stats["histograms"]["correct_per_problem"] == {"2": 2}
    assert stats["histograms"]["kept_per_problem"] == {"1": 1, "2": 1}
    assert stats["per_problem"]["p1"] == {"rows": 2, "correct": 2, "distinct_paths": 1, "kept": 1}


# -- decontamination ---------------------------------------------------------------------------

def test_contaminated_problem_with_a_reworded_prefix_is_dropped_and_listed(tmp_path):
    gsm = load_eval_set(str(GSM8K_TEST))
    index, question = gsm.texts[5]
    leaked = "A man named Kylar was shopping today. " + " ".join(question.split()[6:])
    clean_q = "Tom has 3 apples and buys 4 more. How many apples does he have now?"
    quoting = "Like the well known puzzle: " + gsm.texts[9][1]
    ctx = Context(eval_index=EvalIndex([gsm], ngram=13))
    t = verdicts(("leak", ["She pays 64 dollars.", "64"]), ("clean", ["3 + 4 = 7 apples.", quoting]))
    sel = select_rows(t, cfg(), 1, questions={"leak": leaked, "clean": clean_q}, context=ctx)
    assert kept_texts(sel) == ["3 + 4 = 7 apples."]
    assert sel.removed == Counter(contaminated_question=2, contaminated_text=1)
    first = sel.decontaminated[0]
    assert (first["problem_id"], first["where"], first["eval_index"]) == ("leak", "question", index)
    assert len(first["ngram"].split()) == 13 and first["ngram"] in " ".join(re.findall(r"\w+", question.lower()))
    assert sel.decontaminated[2]["where"] == "text" and sel.decontaminated[2]["eval_index"] == gsm.texts[9][0]
    assert sel.rejects.num_rows == 3 and all("shares 13 words" in r for r in sel.rejects.column("reason").to_pylist())
    # a question shorter than the n-gram only matches itself; reworded enough, nothing matches
    assert ctx.eval_index.find(["Tom has 3 apples"]) == [None]


def test_decontamination_from_config_and_clear_errors(tmp_path, monkeypatch):
    c = cfg(decontaminate={"eval_sets": [{"path": str(GSM8K_TEST), "field": "question"}], "ngram": 13})
    index = load_index(c.decontaminate.eval_sets, c.decontaminate.ngram)
    assert index.questions == 1319 and index.digest() == load_index([str(GSM8K_TEST)], 13).digest()
    assert index.digest() != load_index([str(GSM8K_TEST)], 8).digest()
    with pytest.raises(ValueError, match="file not found"):
        load_index([str(tmp_path / "missing.jsonl")], 13)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "q": "what"}\n')
    with pytest.raises(ValueError, match="set `field:`"):
        load_index([str(bad)], 13)
    assert load_eval_set(str(bad), field="q").texts == [(0, "what")]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ValueError, match="offline"):
        load_index(["someone/no-such-eval-set"], 13)


def test_stage_lists_decontaminated_rows_in_rejects_and_stats(tmp_path):
    gsm = load_eval_set(str(GSM8K_TEST))
    c = load_config(None, [f"run.dir={tmp_path / 'run'}", f"dedup.decontaminate.eval_sets=[{GSM8K_TEST}]"])
    problems = schema.table([{"problem_id": "leak", "task": "columns", "question": gsm.texts[0][1], "source_index": 0},
                             {"problem_id": "ok", "task": "columns", "question": "What is 2 + 2?", "source_index": 1}],
                            schema.PROBLEMS)
    _write_stage(stage_dir(c, 1, "prepare"), "prepare", {"part-00000.parquet": problems})
    _write_stage(stage_dir(c, 1, "verify"), "verify", {"part-00000.parquet": verdicts(("leak", ["18"]), ("ok", ["2 + 2 = 4"]))})
    dedup.run(c, 1)
    selected = StageReader(stage_dir(c, 1, "dedup"))
    assert selected.read_all().column("problem_id").to_pylist() == ["ok"]
    rejects = selected.rejects().to_pylist()
    assert [r["problem_id"] for r in rejects] == ["leak"] and "contaminated_question" in rejects[0]["reason"]
    stats = json.loads((selected.path / "stats.json").read_text())
    assert stats["decontaminated"][0]["eval_index"] == gsm.texts[0][0]
    assert stats["eval_sets"]["questions"] == 1319
