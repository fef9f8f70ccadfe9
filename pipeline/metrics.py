"""Accuracy figures shared by evaluate (which measures them) and report (which plots them)."""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from collections import Counter

MAJ_SUBSETS = 2000  # maj@k averages over every k-subset of the n samples up to this many, else this many random ones


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def rate(correct: int, n: int) -> dict:
    p = correct / n if n else 0.0
    return {"n": n, "correct": correct, "accuracy": round(p, 4), "stderr": round(math.sqrt(p * (1 - p) / n), 4) if n else 0.0}


def mean_stderr(values: list[float]) -> tuple[float, float]:
    """Mean of per-problem values and its standard error (sample standard deviation / sqrt(n); 0 below 2 values)."""
    n = len(values)
    if n == 0:
        return 0.0, 0.0
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def answer_classes(answers: list[str | None], correct: list[bool]) -> list[int]:
    """Each sample's class in a self-consistency vote: 0 for every sample the verifier judged
    correct (they all equal the gold answer, whatever their surface form), 1, 2, ... for each
    distinct wrong answer, -1 for a sample that does not vote (no final answer). Wrong answers
    that state the same number ("7", "7.0", "14/2") or the same short formula up to spacing and
    \\dfrac are one class (`value_key`), so a wrong answer is not split into weaker votes."""
    from selfimprove.verifiers.extract import value_key

    if len(answers) != len(correct):
        raise ValueError(f"maj@k: {len(answers)} sample answers but {len(correct)} verdicts")
    wrong: dict[tuple, int] = {}
    classes = []
    for answer, ok in zip(answers, correct):
        if ok:
            classes.append(0)
        elif answer is None:
            classes.append(-1)
        else:
            key = value_key(answer) or ("text", answer.strip())
            classes.append(wrong.setdefault(key, len(wrong) + 1))
    return classes


def majority_correct(classes: list[int]) -> bool:
    """Whether the correct class (0) wins the vote of these samples, in sample order: the largest
    class wins; of tied ones, the class whose first sample comes first. No vote at all: False."""
    counts = Counter(c for c in classes if c >= 0)  # keys in order of first appearance
    # max returns the first maximal key: the tied class seen first
    return bool(counts) and max(counts, key=counts.__getitem__) == 0


def maj_seed(run_seed: int, problem_id: str) -> int:
    """The seed of a problem's random subsets for maj@k: from run.seed and the problem id only."""
    return int(hashlib.sha256(f"maj@k:{run_seed}:{problem_id}".encode()).hexdigest()[:16], 16)


def maj_at_k(answers: list[str | None], correct: list[bool], k: int, seed: int) -> float:
    """Self-consistency (Wang et al. 2022): the chance that a majority vote over k of a problem's
    n samples picks the correct answer, unbiased: the share of all k-subsets whose vote is right
    when there are at most MAJ_SUBSETS of them, else of MAJ_SUBSETS subsets drawn at random with
    `seed`. k == n is the single vote over all samples. `answers[i]` is sample i's answer as it
    votes (None: no final answer, no vote), `correct[i]` the verifier's verdict on it."""
    classes = answer_classes(answers, correct)
    n = len(classes)
    if not 1 <= k <= n:
        raise ValueError(f"maj@k: k={k} must be between 1 and the {n} samples of the problem")
    if 0 not in classes:
        return 0.0  # no correct sample: no vote can be right
    if math.comb(n, k) <= MAJ_SUBSETS:
        subsets = itertools.combinations(range(n), k)
    else:
        rng = random.Random(seed)
        subsets = (sorted(rng.sample(range(n), k)) for _ in range(MAJ_SUBSETS))
    wins = total = 0
    for subset in subsets:
        wins += majority_correct([classes[i] for i in subset])
        total += 1
    return wins / total
