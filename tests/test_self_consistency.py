"""maj@k (self-consistency): the vote rules, and the k < n estimate against brute-force enumeration."""

import itertools
import math
import random

import pytest

from selfimprove.pipeline.metrics import MAJ_SUBSETS, maj_at_k, maj_seed
from selfimprove.pipeline.stages.evaluate import vote_answer
from selfimprove.verifiers import get_verifier


def reference_vote(answers, correct) -> bool:
    """The vote rule written out plainly, apart from metrics: correct samples are one class, wrong
    ones group by answer, samples without an answer abstain; most votes wins, a tie goes to the
    class whose first sample comes first."""
    votes, first = {}, {}
    for i, (a, ok) in enumerate(zip(answers, correct)):
        if not ok and a is None:
            continue
        key = "<correct>" if ok else ("wrong", a)
        votes[key] = votes.get(key, 0) + 1
        first.setdefault(key, i)
    if not votes:
        return False
    top = max(votes.values())
    winner = min((k for k in votes if votes[k] == top), key=first.__getitem__)
    return winner == "<correct>"


def brute_force(answers, correct, k) -> float:
    """maj@k as the share of every k-subset of the samples (in sample order) whose vote is right."""
    subsets = list(itertools.combinations(range(len(answers)), k))
    return sum(reference_vote([answers[i] for i in s], [correct[i] for i in s]) for s in subsets) / len(subsets)


def test_largest_class_wins_and_a_tie_goes_to_the_class_seen_first():
    assert maj_at_k(["7", "5", "5"], [False, True, True], 3, seed=0) == 1.0
    assert maj_at_k(["7", "7", "5"], [False, False, True], 3, seed=0) == 0.0
    # one vote each: the class of the lowest sample index wins
    assert maj_at_k(["7", "5"], [False, True], 2, seed=0) == 0.0
    assert maj_at_k(["5", "7"], [True, False], 2, seed=0) == 1.0
    # two votes each: the class whose first sample comes first wins ("8" at 0 before 5 at 1; 5 at 1 before "8" at 2)
    assert maj_at_k(["8", "5", "9", "8", "5"], [False, True, False, False, True], 5, seed=0) == 0.0
    assert maj_at_k(["9", "5", "8", "8", "5"], [False, True, False, False, True], 5, seed=0) == 1.0


def test_one_wrong_value_written_two_ways_is_one_class():
    """"7" and "7.0" (and "14/2") state one wrong answer: split into two classes, each would lose to
    the two correct samples and maj@k would be too kind."""
    assert maj_at_k(["7", "5", "7.0", "5", "14/2"], [False, True, False, True, False], 5, seed=0) == 0.0
    assert maj_at_k(["\\frac{1}{2}", "3", "\\dfrac{1}{2}"], [False, True, False], 3, seed=0) == 0.0
    # different values stay apart: 2-1-1-1 for the correct class
    assert maj_at_k(["7", "5", "8", "5", "9"], [False, True, False, True, False], 5, seed=0) == 1.0


def test_samples_without_an_answer_do_not_vote():
    # three samples have no answer; of the two that vote, the correct ones win 2-1
    assert maj_at_k([None, "7", None, "5", "5", None], [False, False, False, True, True, False], 6, seed=0) == 1.0
    # no-answer samples are not a class of their own that could outvote anything
    assert maj_at_k([None, None, None, "7"], [False, False, False, False], 4, seed=0) == 0.0
    assert maj_at_k([None, None, None, "5"], [False, False, False, True], 4, seed=0) == 1.0


def test_a_problem_without_any_answer_scores_zero():
    for k in (1, 2, 4):
        assert maj_at_k([None] * 4, [False] * 4, k, seed=0) == 0.0


def test_correct_answers_in_different_forms_are_one_class():
    """0.5, 1/2 and 0.50 are all the gold answer: three votes against the wrong 3's two."""
    answers, correct = ["3", "3", "0.5", "1/2", "0.50"], [False, False, True, True, True]
    assert maj_at_k(answers, correct, 5, seed=0) == 1.0
    # grouped by text instead, "3" would have won 2-1-1-1
    assert maj_at_k(answers, [False] * 5, 5, seed=0) == 0.0


def test_wrong_answers_group_by_the_verifiers_normalisation():
    exact = get_verifier("exact")
    verdicts = [{"status": "wrong", "extracted": e} for e in ("Paris.", " paris", "Lyon")]
    assert [vote_answer(v, exact.normalize) for v in verdicts] == ["paris", "paris", "lyon"]
    assert [vote_answer(v) for v in verdicts] == ["Paris.", "paris", "Lyon"]  # no normalisation: stripped text
    # normalised, the two Paris answers are one class and outvote the correct Rome; as plain text
    # they are two, the vote is a 1-1-1 tie and Rome, the first sample, wins
    judged = [True, False, False]
    assert maj_at_k(["Rome"] + [vote_answer(v, exact.normalize) for v in verdicts[:2]], judged, 3, seed=0) == 0.0
    assert maj_at_k(["Rome"] + [vote_answer(v) for v in verdicts[:2]], judged, 3, seed=0) == 1.0


def test_only_a_clear_verdict_with_an_answer_votes():
    assert vote_answer({"status": "wrong", "extracted": "  7 "}) == "7"
    for status in ("no_answer", "timeout", "error"):
        assert vote_answer({"status": status, "extracted": "7"}) is None
    assert vote_answer({"status": "wrong", "extracted": None}) is None
    assert vote_answer({"status": "wrong", "extracted": "   "}) is None
    # a sample judged correct votes for the correct class even where no answer text was kept
    assert maj_at_k([None, None], [True, False], 2, seed=0) == 1.0


def _random_problem(rng: random.Random, n: int):
    """A problem's n samples: correct, one of three wrong answers, or no answer."""
    answers, correct = [], []
    for _ in range(n):
        kind = rng.choice(["correct", "correct", "a", "b", "c", None])
        correct.append(kind == "correct")
        answers.append(None if kind is None else ("42" if kind == "correct" else kind))
    return answers, correct


def test_k_below_n_is_the_exact_average_over_all_subsets():
    rng = random.Random(1)
    for trial in range(60):
        n = rng.randint(1, 9)
        answers, correct = _random_problem(rng, n)
        for k in range(1, n + 1):
            assert maj_at_k(answers, correct, k, seed=trial) == pytest.approx(brute_force(answers, correct, k), abs=1e-12)


def test_k_equal_to_n_is_the_single_vote():
    rng = random.Random(2)
    for _ in range(100):
        answers, correct = _random_problem(rng, 7)
        assert maj_at_k(answers, correct, 7, seed=0) == float(reference_vote(answers, correct))


def test_many_subsets_are_estimated_from_seeded_random_ones():
    """C(16, 8) = 12,870 > MAJ_SUBSETS subsets: MAJ_SUBSETS random ones, unbiased, repeatable by seed."""
    assert math.comb(16, 8) > MAJ_SUBSETS
    rng = random.Random(3)
    checked = 0
    while checked < 2:
        answers, correct = _random_problem(rng, 16)
        exact = brute_force(answers, correct, 8)
        if not 0.2 < exact < 0.8:
            continue  # a problem whose subsets disagree, so the estimate has something to get wrong
        checked += 1
        seed = maj_seed(1234, f"p{checked}")
        estimate = maj_at_k(answers, correct, 8, seed)
        assert estimate == maj_at_k(answers, correct, 8, seed)  # the same seed, the same subsets
        assert (estimate * MAJ_SUBSETS) == pytest.approx(round(estimate * MAJ_SUBSETS))  # a share of MAJ_SUBSETS votes
        se = math.sqrt(exact * (1 - exact) / MAJ_SUBSETS)
        assert abs(estimate - exact) < 5 * se, (estimate, exact)
        others = [maj_at_k(answers, correct, 8, s) for s in range(20)]
        assert len(set(others)) > 1  # other seeds draw other subsets
        # unbiased: the mean over seeds closes in on the exact value (SE of that mean is se / sqrt(20))
        assert abs(sum(others) / len(others) - exact) < 5 * se / math.sqrt(20)


def test_subset_seed_depends_on_run_seed_and_problem_only():
    assert maj_seed(0, "arith-1") == maj_seed(0, "arith-1")
    assert len({maj_seed(0, "arith-1"), maj_seed(1, "arith-1"), maj_seed(0, "arith-2")}) == 3


def test_k_outside_the_samples_is_refused():
    with pytest.raises(ValueError, match="k=5 must be between 1 and the 4 samples"):
        maj_at_k(["1"] * 4, [True] * 4, 5, seed=0)
    with pytest.raises(ValueError, match="3 sample answers but 2 verdicts"):
        maj_at_k(["1"] * 3, [True] * 2, 1, seed=0)


def test_an_up_to_date_evaluation_rederives_eval_json_from_its_rows(fake_config):
    """How figures are computed from rows may change (the maj@k vote did): rerunning evaluate on a
    finished evaluation rewrites eval.json from the committed rows, generating nothing again."""
    import json

    from selfimprove.pipeline.cli import main
    from selfimprove.pipeline.config import load_config

    config = fake_config(evaluate={"count": 10, "pass_at_k": {"n": 4, "k": [1, 4]}})
    assert main(["evaluate", "--config", str(config), "--iter", "0"]) == 0
    folder = load_config(config).iter_dir(0) / "eval"
    fresh = json.loads((folder / "eval.json").read_text())
    shards = {p.name: p.stat().st_mtime_ns for p in folder.glob("part-*.parquet")}
    stale = {**fresh, "maj_at_k": {**fresh["maj_at_k"], "values": {"1": 0.99, "4": 0.99}}}
    (folder / "eval.json").write_text(json.dumps(stale))
    assert main(["evaluate", "--config", str(config), "--iter", "0"]) == 0
    assert json.loads((folder / "eval.json").read_text()) == fresh
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("part-*.parquet")} == shards
