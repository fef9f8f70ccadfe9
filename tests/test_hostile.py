"""Hostile model output through every built-in verifier, in the killable pool.

Each hostile output ends in a verdict with a reason within its limit, and the ordinary outputs
in the same batch are verified as usual. A verification that hangs is stopped within its
limit plus one second, also when the pool is driven from a thread that is not the main one
(Math-Verify's own signal-based timeout cannot do that).
"""

import secrets
import threading
import time

import pytest

from tests.test_sandbox import needs_bwrap, survivors
from selfimprove.verifiers import VerifyPool, get_verifier
from selfimprove.verifiers.base import STATUSES

SYMPY_HANG = "\\boxed{(x+y+z)^{9999}}"  # passes every size guard; expanding it takes minutes
HOSTILE = {
    "power tower": "\\boxed{9^{9^{9^{9^{9}}}}}",
    "nested fractions": "\\boxed{" + "\\frac{1}{" * 200 + "7" + "}" * 200 + "}",
    "1 MB": "x" * 1_000_000 + "\nThe answer is 7.",
    "NUL bytes": "a\x00b\x00\nThe answer is \\boxed{7}\x00",
    "invalid UTF-8": "\ud800 \udfff \\boxed{\udcff\udcfe}",  # lone surrogates: what decoding invalid UTF-8 leaves
    "fifty boxes": " ".join(f"\\boxed{{{i}}}" for i in range(50)),
    "sympy hang": SYMPY_HANG,
    "deep parentheses": "The answer is " + "(" * 5000 + "7" + ")" * 5000 + ".",
    # precision: a final answer taken back, two answers, an answer only in code, a number broken up
    "taken back": "The answer is 7. " + "Hmm, wait, it is 8. " * 5_000,
    "seven or eight": "\\boxed{7} or \\boxed{8} " * 5_000,
    "code only": "```\n" + "The answer is 7.\n" * 10_000 + "```",
    "zero-width": "The answer is 7\u200b" * 5_000 + "7.",
    "nested boxes": "\\boxed{" * 100_000 + "7" + "}" * 100_000,
}
NEVER_CORRECT = {"power tower", "nested fractions", "invalid UTF-8", "fifty boxes", "sympy hang",
                 "taken back", "seven or eight", "code only", "zero-width"}
GOOD = "Adding them up gives 7.\nThe answer is 7."
PROBLEM = {"question": "Which is seven?", "answer": "7", "metadata": {"options": ["7", "8"]}}
TIMEOUT_S = 1.5

# Through the pool: the ones that parse with sympy (and so can hang), and one composite.
VERIFIERS = [
    ("numeric", {}),
    ("math", {}),
    ("any_of", {"verifiers": ["exact", "choice", "math"]}),
]
# Pure text work, linear in the output: checked in-process, where nothing would stop a hang.
TEXT_VERIFIERS = [
    ("exact", {}),
    ("regex", {"pattern": "{gold}"}),
    ("choice", {}),
    ("fallback", {"verifiers": ["exact", "numeric"]}),
    ("judge", {}),
]


@pytest.mark.parametrize("spec, params", VERIFIERS, ids=[v[0] for v in VERIFIERS])
def test_hostile_outputs_end_in_verdicts_and_the_batch_completes(spec, params):
    names = list(HOSTILE)
    texts = [t for name in names for t in (GOOD, HOSTILE[name])] + [GOOD]
    jobs = [(PROBLEM, [{"text": t, "finish_reason": "stop"}]) for t in texts]
    with VerifyPool(spec, params, workers=2, timeout_s=TIMEOUT_S) as pool:
        pool.verify(jobs[:2])  # workers up, so the time below is the batch's own
        started = time.monotonic()
        verdicts = [v[0] for v in pool.verify(jobs)]
        elapsed = time.monotonic() - started
    for text, v in zip(texts, verdicts):
        assert v.status in STATUSES and v.reason
        (v.reason + (v.extracted or "")).encode("utf-8")  # storable as Parquet strings
        if text is GOOD:
            assert v.status == "correct", (spec, v)
    by_name = dict(zip(names, verdicts[1::2]))
    for name in NEVER_CORRECT:
        assert by_name[name].status != "correct", (spec, name, by_name[name])
        if by_name[name].status == "timeout":
            assert by_name[name].reason == f"verification exceeded {TIMEOUT_S} s"
    # two workers; at worst every hostile item uses its whole limit, plus the killing and restarting
    assert elapsed < len(HOSTILE) * (TIMEOUT_S + 1.0), elapsed


@pytest.mark.parametrize("spec, params", TEXT_VERIFIERS, ids=[v[0] for v in TEXT_VERIFIERS])
def test_text_verifiers_are_quick_on_hostile_outputs(spec, params):
    verifier = get_verifier(spec, params)
    for name, text in HOSTILE.items():
        sample = {"text": text, "finish_reason": "stop"}
        started = time.monotonic()
        if spec == "judge":  # its text work: the request it builds and the reply it reads
            content = verifier.judge_request(PROBLEM, sample)[-1]["content"]
            assert len(content) < 7000
            v = verifier.parse_judgement(text)
        else:
            v = verifier.verify(PROBLEM, sample)
        # a bound against runaway (super-linear) parsing, which takes minutes; how fast each
        # item is, is measured by `make bench BENCH=verify` (verify_hostile_max_item_s)
        assert time.monotonic() - started < 5.0, (spec, name)
        assert v.status in STATUSES and v.reason
        if name in NEVER_CORRECT:
            assert v.status != "correct", (spec, name, v)


def test_majority_with_hostile_samples_in_the_group():
    samples = [{"text": t, "finish_reason": "stop"} for t in [GOOD, GOOD, *HOSTILE.values(), GOOD]]
    with VerifyPool("majority", {"min_share": 0.2}, workers=1, timeout_s=TIMEOUT_S) as pool:
        verdicts = pool.verify([(PROBLEM, samples)])[0]
    assert len(verdicts) == len(samples)
    assert [v.status for v in verdicts[:2]] == ["correct", "correct"] and verdicts[-1].status == "correct"
    assert all(v.reason.startswith("pseudo-label 7") for v in verdicts)


def test_sympy_hang_is_stopped_within_the_limit_off_the_main_thread():
    out = {}
    with VerifyPool("math", workers=1, timeout_s=1.0) as pool:
        pool.verify([(PROBLEM, [{"text": GOOD}])])

        def verify_in_thread():
            started = time.monotonic()
            out["verdicts"] = pool.verify([(PROBLEM, [{"text": SYMPY_HANG}])])
            out["seconds"] = time.monotonic() - started
            out["after"] = pool.verify([(PROBLEM, [{"text": GOOD}])])  # a fresh worker took over

        thread = threading.Thread(target=verify_in_thread)
        thread.start()
        thread.join(60)
    assert not thread.is_alive()
    assert out["verdicts"][0][0].status == "timeout" and out["after"][0][0].status == "correct"
    assert out["seconds"] < 1.0 + 1.0


def test_hung_item_alone_is_stopped_within_limit_plus_one_second_off_the_main_thread():
    out = {}
    with VerifyPool("tests.helpers_verifiers:SleepyVerifier", workers=1, timeout_s=1.0) as pool:
        pool.verify([(PROBLEM, [{"text": "warm"}])])

        def verify_in_thread():
            started = time.monotonic()
            out["verdicts"] = pool.verify([(PROBLEM, [{"text": "sleep"}])])
            out["seconds"] = time.monotonic() - started

        thread = threading.Thread(target=verify_in_thread)
        thread.start()
        thread.join(30)
    assert out["verdicts"][0][0].status == "timeout"
    assert out["seconds"] < 1.0 + 1.0


@needs_bwrap
def test_code_in_the_pool_hostile_solutions_and_a_killed_worker_leave_nothing_behind():
    marker = f"95.{secrets.randbelow(10**6)}"
    problem = {"question": "q", "answer": None, "metadata": {"tests": [{"input": "3", "output": "6"}]}}
    solutions = {  # busy loops, 50 GB and the like are in test_sandbox.py; here: the pool kills mid-sandbox
        "good": "print(int(input()) * 2)",
        "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
        "outlives the pool": f"import subprocess\nsubprocess.Popen(['sleep', '{marker}'], start_new_session=True)\nwhile True: pass",
        "flood": "while True: print('x' * 10000)",
    }
    jobs = [(problem, [{"text": f"```python\n{code}\n```"}]) for code in solutions.values()]
    # the code verifier's own limit just under the pool's (a longer one is refused: see
    # test_sandbox_limits.py, where a worker is killed mid-sandbox): whichever limit ends a run,
    # it ends it whole
    with VerifyPool("code", {"timeout_s": 1.4, "test_timeout_s": 1.0}, workers=2, timeout_s=1.5) as pool:
        verdicts = dict(zip(solutions, (v[0] for v in pool.verify(jobs))))
    assert verdicts["good"].status == "correct"
    for name in ("fork bomb", "outlives the pool", "flood"):
        assert verdicts[name].status in ("wrong", "timeout"), (name, verdicts[name])
    time.sleep(0.5)
    assert survivors(marker) == []
