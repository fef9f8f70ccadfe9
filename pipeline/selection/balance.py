"""How many rationales each problem keeps, and which.

Plain rejection sampling over-represents easy problems (DART-Math, Tong et al. 2024): a
problem the model always solves yields n correct samples, a hard one yields one. The target
per problem is therefore a policy:

- `none`: at most `max_per_problem` (RFT's cap).
- `uniform`: exactly `max_per_problem` for every solved problem; one with fewer distinct
  rationales has them repeated, in order, up to the target (the dedup stage cannot sample
  more; raise `sample.n` for more distinct ones). Repeats are counted in the report.
- `prop2diff`: at most `ceil(max_per_problem * (1 - pass rate))`, at least 1: hard problems keep
  up to the cap, easy ones fewer (DART-Math's weighting within what was sampled).

Which rows fill the target is `cap_policy`: `random` (seeded), `shortest`, or `diverse`
(greedy farthest-first by MinHash distance, as RFT's selection of diverse paths).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from selfimprove.pipeline.selection.minhash import farthest_first


def order_key(seed: int, problem_id: str, sample_idx: int, rationalized: bool) -> bytes:
    """A seeded, order-independent sort key of one row."""
    tag = ":r" if rationalized else ""
    return hashlib.sha256(f"{seed}:{problem_id}:{sample_idx}{tag}".encode()).digest()


def target(balance: str, max_per_problem: int, pass_rate: float | None) -> int:
    """Rows one problem should keep (pass_rate: the model's own, None if it sampled none)."""
    if balance == "prop2diff" and pass_rate is not None:
        return max(1, math.ceil(max_per_problem * (1.0 - pass_rate) - 1e-9))
    return max_per_problem


def choose(rows: list[int], k: int, policy: str, keys: list[bytes], lengths: list[int],
           signatures: np.ndarray | None) -> list[int]:
    """At most k of `rows` (in priority order) by `policy`, returned in priority order.

    keys, lengths and signatures are aligned with rows: each row's seeded order key, its text
    length, and its MinHash signature (needed by `diverse` only).
    """
    if len(rows) <= k:
        return list(rows)
    seeded = sorted(range(len(rows)), key=keys.__getitem__)
    if policy == "shortest":
        picked = sorted(range(len(rows)), key=lambda r: (lengths[r], r))[:k]
    elif policy == "diverse":
        if signatures is None:
            raise ValueError("cap_policy diverse needs MinHash signatures")
        picked = farthest_first(signatures, seeded, k)
    else:
        picked = seeded[:k]
    return [rows[r] for r in sorted(picked)]


def repeat_to(rows: list[int], k: int) -> list[int]:
    """`rows` cycled in order up to k entries (uniform balance)."""
    if not rows or len(rows) >= k:
        return list(rows)
    return [rows[i % len(rows)] for i in range(k)]
