import os
import threading
import time

import pytest

from selfimprove.verifiers import Verdict, VerifyPool

HELPERS = "tests.helpers_verifiers"


def jobs_of(*texts, gold="7"):
    """One problem per text, one sample each."""
    return [({"question": "q", "answer": gold, "metadata": {}}, [{"text": t}]) for t in texts]


def flat(results):
    return [v for verdicts in results for v in verdicts]


@pytest.fixture(scope="module")
def sleepy():
    with VerifyPool(f"{HELPERS}:SleepyVerifier", workers=2, timeout_s=1.0) as pool:
        pool.verify(jobs_of("warm", "up"))  # workers started, so timings below are the items' own
        yield pool


def test_results_in_order_with_progress():
    jobs = [
        ({"question": "q", "answer": str(j), "metadata": {}}, [{"text": f"#### {j + s % 2}"} for s in range(j % 4)])
        for j in range(40)
    ]
    done = []
    with VerifyPool("numeric", workers=2) as pool:
        results = pool.verify(jobs, progress=done.append)
        assert pool.verify([]) == []
    assert [len(r) for r in results] == [j % 4 for j in range(40)]
    for j, verdicts in enumerate(results):
        for s, v in enumerate(verdicts):
            assert v == Verdict("correct" if s % 2 == 0 else "wrong", float(s % 2 == 0), str(j + s % 2), v.reason)
    assert sum(done) == sum(j % 4 for j in range(40))


def test_hanging_item_times_out_and_the_rest_is_verified(sleepy):
    started = time.monotonic()
    results = flat(sleepy.verify(jobs_of("a", "b", "sleep", "c", "d", "e")))
    elapsed = time.monotonic() - started
    assert results[2] == Verdict("timeout", 0.0, None, "verification exceeded 1.0 s")
    assert [v.extracted for i, v in enumerate(results) if i != 2] == ["a", "b", "c", "d", "e"]
    assert all(v.status == "correct" for i, v in enumerate(results) if i != 2)
    assert elapsed < 1.0 + 1.0  # the limit plus the slack allowed for killing


def test_many_hanging_items(sleepy):
    texts = ["sleep" if i % 3 == 0 else str(i) for i in range(9)]
    results = flat(sleepy.verify(jobs_of(*texts)))
    assert [v.status for v in results] == ["timeout" if t == "sleep" else "correct" for t in texts]
    assert [v.extracted for v in results if v.status == "correct"] == [t for t in texts if t != "sleep"]


def test_each_item_of_a_chunk_gets_its_own_limit():
    # Items that each take most of the limit must not time out just because they share a chunk.
    with VerifyPool(f"{HELPERS}:SleepyVerifier", workers=1, timeout_s=1.0) as pool:
        pool.verify(jobs_of("warm"))
        results = flat(pool.verify(jobs_of(*["nap"] * 4 + ["x"] * 60)))
    assert all(v.status == "correct" for v in results)


def test_worker_deaths_and_exceptions():
    texts = ["a", "exit", "b", "segv", "raise", "oom", "c"]
    with VerifyPool(f"{HELPERS}:CrashyVerifier", workers=2, timeout_s=5.0, memory_limit_mb=1024) as pool:
        results = flat(pool.verify(jobs_of(*texts)))
    by_text = dict(zip(texts, results))
    assert by_text["exit"] == Verdict("error", 0.0, None, "worker died: exit code 3")
    assert by_text["segv"] == Verdict("error", 0.0, None, "worker died: killed by SIGSEGV")
    assert by_text["raise"].status == "error"
    assert by_text["raise"].reason.startswith("verifier raised RuntimeError: boom xxx")
    assert len(by_text["raise"].reason) <= 300
    assert by_text["oom"].status == "error" and "MemoryError" in by_text["oom"].reason
    assert [by_text[t].status for t in "abc"] == ["correct"] * 3


def test_workers_are_limited_processes():
    with VerifyPool(f"{HELPERS}:ProcessInfoVerifier", workers=2, memory_limit_mb=2048) as pool:
        results = flat(pool.verify(jobs_of("x", "y", "z")))
    for v in results:
        pid, limit = v.extracted.removeprefix("pid ").split(" as ")
        assert int(pid) != os.getpid()
        assert int(limit) == 2048 * 1024 * 1024


def test_group_verifier_gets_a_limit_per_job():
    problem = {"question": "q", "answer": None, "metadata": {}}
    jobs = [
        (problem, [{"text": "a"}, {"text": "a"}, {"text": "b"}]),
        (problem, [{"text": "sleep"}, {"text": "x"}]),
        (problem, []),
        (problem, [{"text": "c"}]),
    ]
    with VerifyPool(f"{HELPERS}:GroupVerifier", workers=2, timeout_s=0.5) as pool:
        results = pool.verify(jobs)
    assert [v.status for v in results[0]] == ["correct", "correct", "wrong"]
    assert results[1] == [Verdict("timeout", 0.0, None, "verification exceeded 1.0 s")] * 2
    assert results[2] == []
    assert [v.status for v in results[3]] == ["correct"]


def test_hostile_outputs_through_math():
    def nested_frac(depth):
        return "\\frac{1}{" * depth + "7" + "}" * depth

    cases = [
        ("\\boxed{9^{9^{9^{9^{9}}}}}", "wrong"),
        (f"\\boxed{{{nested_frac(200)}}}", "wrong"),
        ("x" * 1_000_000 + " so \\boxed{7}", "correct"),
        ("y" * 1_000_000, "no_answer"),
        ("a\x00b\x00 \\boxed{7}", "correct"),
        ("\ud800 lone surrogate \\boxed{\udfff}", "wrong"),
        (" ".join(f"\\boxed{{{i}}}" for i in range(50)), "no_answer"),  # fifty different final answers: ambiguous
        ("The answer is " + "9" * 10_000, "wrong"),
        ("\\boxed{7}", "correct"),
    ]
    started = time.monotonic()
    with VerifyPool("math", workers=2, timeout_s=3.0) as pool:
        results = flat(pool.verify(jobs_of(*[text for text, _ in cases])))
    assert time.monotonic() - started < 30  # hard limit: workers start, then everything is quick or killed
    for (text, status), v in zip(cases, results):
        assert v.status == status and v.reason, (text[:40], v)
        (v.reason + (v.extracted or "")).encode("utf-8")  # storable as Parquet strings
    assert "two different final answers '48' and '49'" in results[6].reason


def test_pool_from_a_thread():
    out = {}

    def run():
        with VerifyPool("numeric", workers=2) as pool:
            out["results"] = pool.verify(jobs_of("#### 7", "#### 8"))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    assert [v.status for v in flat(out["results"])] == ["correct", "wrong"]


def test_bad_spec_or_params_fail_in_the_caller():
    with pytest.raises(ValueError, match="unknown verifier"):
        VerifyPool("no-such-verifier")
    with pytest.raises(ValueError, match="unknown parameter"):
        VerifyPool("numeric", {"tolerance": 1})
    with pytest.raises(ValueError, match="timeout_s"):
        VerifyPool("numeric", timeout_s=0)


def test_verifier_failing_in_a_worker_is_a_value_error():
    with VerifyPool(f"{HELPERS}:WorkerShyVerifier", workers=1) as pool:
        with pytest.raises(ValueError, match="failed to start in a worker: ValueError: I do not work in workers"):
            pool.verify(jobs_of("x"))


def test_close_stops_the_workers():
    pool = VerifyPool(f"{HELPERS}:ProcessInfoVerifier", workers=2)
    pids = {int(v.extracted.split()[1]) for v in flat(pool.verify(jobs_of("x", "y", "z", "w")))}
    pool.close()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # gone and reaped
    with pytest.raises(RuntimeError, match="closed"):
        pool.verify(jobs_of("x"))
