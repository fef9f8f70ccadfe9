"""Accuracy figures shared by evaluate (which measures them) and report (which plots them)."""

from __future__ import annotations

import math


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def rate(correct: int, n: int) -> dict:
    p = correct / n if n else 0.0
    return {"n": n, "correct": correct, "accuracy": round(p, 4), "stderr": round(math.sqrt(p * (1 - p) / n), 4) if n else 0.0}
