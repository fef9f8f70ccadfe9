"""A solution cannot make the `code` verifier say its tests passed without passing them.

Every attempt here is hostile code that really runs in the sandbox. The harness before this
one appended the tests and a print of a secret token to the solution's own file and took the
token as the last line of output for "the tests passed". It judged correct every attempt here
that reads the token and exits early (at import or inside a test), rewrites how a failed run
ended, answers `==` with True, raises StopIteration into a map(), patches or shadows what the
tests use, or reads the tests; writing to every process in reach did not fool it either, and
stays here as a guard. Tests that need bubblewrap skip where it cannot start.
"""

import json
from pathlib import Path

import pytest

from tests.conftest import selfimprove
from selfimprove.verifiers import get_verifier
from selfimprove.verifiers.sandbox import bwrap_problem

ROOT = Path(__file__).resolve().parents[1]
BWRAP = bwrap_problem()
needs_bwrap = pytest.mark.skipif(BWRAP is not None, reason=f"bubblewrap cannot sandbox code here: {BWRAP}")

MBPP = {"test_list": ["assert add(2, 3) == 5", "assert add(-1, 1) == 0", "assert add(10, 20) == 30"]}
HUMANEVAL = {"test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(7, 1) == 8\n",
             "entry_point": "add"}
APPS_CALL = {"input_output": {"fn_name": "add", "inputs": [[1, 2], [3, 4]], "outputs": [3, 7]}}
IO = {"tests": [{"input": "2 3\n", "output": "5\n"}, {"input": "10 -4", "output": "6"}]}
ASSERT_KINDS = [MBPP, HUMANEVAL, APPS_CALL]

# Finds the old harness's token in any file it can read (its own file held the tests and the token).
FIND_TOKEN = ("import os, re\n"
              "def _token():\n"
              "    for name in sorted(os.listdir('.')):\n"
              "        try:\n"
              "            found = re.findall(r\"print\\('([0-9a-f]{32})'\\)\", open(name).read())\n"
              "        except OSError:\n"
              "            continue\n"
              "        if found:\n"
              "            return found[-1]\n"
              "    return '{\"passed\": 1, \"total\": 1, \"failure\": null}'\n")


def verify(metadata, code, **params):
    verifier = get_verifier("code", {"test_timeout_s": 1.0, "timeout_s": 3.0, **params})
    return verifier.verify({"question": "q", "answer": None, "metadata": metadata}, {"text": f"```python\n{code}\n```"})


def assert_not_passed(metadata, code):
    verdict = verify(metadata, code)
    assert verdict.status != "correct", verdict


EXITS = {
    "exit": "exit(0)",
    "sys.exit": "import sys\nsys.exit(0)",
    "os._exit": "import os, sys\nsys.stdout.flush()\nos._exit(0)",
    "raise SystemExit": "raise SystemExit",
}


@needs_bwrap
@pytest.mark.parametrize("metadata", ASSERT_KINDS, ids=["mbpp", "humaneval", "apps_call"])
@pytest.mark.parametrize("how", list(EXITS))
def test_forged_token_then_early_exit(metadata, how):
    """Prints the token the tests would print, then leaves before any test runs."""
    assert_not_passed(metadata, FIND_TOKEN + "def add(a, b):\n    return 0\nprint(_token())\n" + EXITS[how])


@needs_bwrap
@pytest.mark.parametrize("metadata", ASSERT_KINDS, ids=["mbpp", "humaneval", "apps_call"])
@pytest.mark.parametrize("how", ["exit", "sys.exit", "os._exit"])
def test_exit_inside_a_test(metadata, how):
    """The function under test prints the token and exits when a test calls it."""
    body = EXITS[how].replace("\n", "\n    ")
    assert_not_passed(metadata, FIND_TOKEN + f"def add(a, b):\n    print(_token())\n    {body}\n")


@needs_bwrap
@pytest.mark.parametrize("metadata", ASSERT_KINDS, ids=["mbpp", "humaneval", "apps_call"])
def test_exit_inside_a_test_is_not_caught_by_the_tests(metadata):
    """sys.exit in the solution ends the tests even where they catch Exception."""
    tests = {"test": "def check(candidate):\n    try:\n        candidate(0, 0)\n    except Exception:\n        pass\n"
                     "    assert candidate(2, 3) == 5\n", "entry_point": "add"}
    code = "import sys\ncalls = []\ndef add(a, b):\n    calls.append(1)\n    if len(calls) == 1:\n        sys.exit(0)\n    return a + b"
    verdict = verify(tests, code)
    assert verdict.status == "wrong" and "exit" in verdict.reason, verdict


@needs_bwrap
@pytest.mark.parametrize("metadata", ASSERT_KINDS, ids=["mbpp", "humaneval", "apps_call"])
def test_fake_reports_after_failing_tests(metadata):
    """A wrong solution lets the tests fail, then an exit hook prints reports and the token and exits 0."""
    code = (FIND_TOKEN + "import atexit, json, os, sys\n"
            "def add(a, b):\n    return a - b\n"
            "def _forge():\n"
            "    print(json.dumps({'passed': 3, 'total': 3, 'failure': None}))\n"
            "    print('passed the assert tests')\n"
            "    print(_token())\n"
            "    sys.stdout.flush()\n"
            "    os._exit(0)\n"
            "atexit.register(_forge)\n"
            "sys.excepthook = lambda *a: None\n")
    assert_not_passed(metadata, code)


# Writes a fake report to every descriptor of every process it can reach, then kills them all.
REACH_EVERYONE = ("import json, os, signal\n"
                  "fake = (json.dumps({'passed': 3, 'total': 3, 'failure': None}) + '\\n').encode()\n"
                  "for pid in os.listdir('/proc'):\n"
                  "    if pid.isdigit() and int(pid) != os.getpid():\n"
                  "        try:\n"
                  "            fds = os.listdir(f'/proc/{pid}/fd')\n"
                  "        except OSError:\n"
                  "            continue\n"
                  "        for fd in fds:\n"
                  "            try:\n"
                  "                w = os.open(f'/proc/{pid}/fd/{fd}', os.O_WRONLY | os.O_NONBLOCK)\n"
                  "                os.write(w, fake)\n"
                  "                os.close(w)\n"
                  "            except OSError:\n"
                  "                pass\n"
                  "for pid in os.listdir('/proc'):\n"
                  "    if pid.isdigit() and int(pid) != os.getpid():\n"
                  "        try:\n"
                  "            os.kill(int(pid), signal.SIGKILL)\n"
                  "        except OSError:\n"
                  "            pass\n")


@needs_bwrap
@pytest.mark.parametrize("metadata", [*ASSERT_KINDS, IO], ids=["mbpp", "humaneval", "apps_call", "io"])
def test_fake_report_written_to_every_process_it_can_reach(metadata):
    assert_not_passed(metadata, FIND_TOKEN + REACH_EVERYONE + "print(_token())\nos._exit(0)\n")


EQ_ALWAYS = {
    "class": "class _Any:\n    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\n"
             "def add(a, b):\n    return _Any()\n",
    "int subclass": "class _Any(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
                    "def add(a, b):\n    return _Any(0)\n",
    "list subclass": "class _Any(list):\n    def __eq__(self, other):\n        return True\n"
                     "def add(a, b):\n    return _Any()\n",
}


@needs_bwrap
@pytest.mark.parametrize("metadata", ASSERT_KINDS, ids=["mbpp", "humaneval", "apps_call"])
@pytest.mark.parametrize("how", list(EQ_ALWAYS))
def test_result_whose_eq_is_always_true(metadata, how):
    assert_not_passed(metadata, EQ_ALWAYS[how])


@needs_bwrap
def test_stop_iteration_does_not_end_the_tests_loop():
    """StopIteration raised inside map() would end the map early, and all() of nothing is True."""
    tests = {"test_list": ["assert all(map(is_even, [2, 3, 5]))"]}
    assert_not_passed(tests, "def is_even(n):\n    raise StopIteration")
    assert verify(tests, "def is_even(n):\n    return True").status == "correct"


@needs_bwrap
def test_patching_a_library_the_tests_use():
    tests = {"test_list": ["assert math.isclose(area(2), 12.566, rel_tol=1e-3)"], "test_imports": ["import math"]}
    assert_not_passed(tests, "import math\nmath.isclose = lambda *a, **k: True\ndef area(r):\n    return 0")
    assert_not_passed(tests, "import builtins\nbuiltins.AssertionError = type('X', (Exception,), {})\n"
                             "def area(r):\n    return 0")
    assert verify(tests, "import math\ndef area(r):\n    return math.pi * r * r").status == "correct"


@needs_bwrap
def test_shadowing_a_builtin_the_tests_use():
    """Names of the solution's that are builtins or standard modules are the real ones in the tests."""
    tests = {"test": "def check(candidate):\n    assert abs(candidate(2) - 12.566) < 1e-3\n", "entry_point": "area"}
    assert_not_passed(tests, "def abs(x):\n    return 0\ndef area(r):\n    return 0")
    assert_not_passed({"tests": "assert all(f(x) == x * x for x in range(5))"}, "all = lambda *a: True\ndef f(x):\n    return 0")
    uses_math = {"test_list": ["assert math.isclose(area(2), 12.566, rel_tol=1e-3)"]}  # relies on the solution's import
    assert_not_passed(uses_math, "class math:\n    isclose = staticmethod(lambda *a, **k: True)\ndef area(r):\n    return 0")
    assert verify(uses_math, "import math\ndef area(r):\n    return math.pi * r * r").status == "correct"


@needs_bwrap
def test_reading_the_tests_to_answer_them():
    """The tests, and so their expected values, are not where the solution can read them."""
    code = ("import ast, os, re\n_answers = {}\n"
            "for _root, _dirs, _files in os.walk('/'):\n"
            "    _dirs[:] = [d for d in _dirs if _root != '/' or d not in ('proc', 'sys', 'usr', 'dev')]\n"
            "    for _name in _files:\n"
            "        try:\n"
            "            _text = open(os.path.join(_root, _name)).read()\n"
            "        except (OSError, UnicodeDecodeError):\n"
            "            continue\n"
            "        for _args, _want in re.findall(r'add[(]([-0-9, ]+)[)] == ([-0-9]+)', _text):\n"
            "            _answers[_args.replace(' ', '')] = int(_want)\n"
            "def add(a, b):\n    return _answers.get(f'{a},{b}')\n")
    assert_not_passed(MBPP, code)


@needs_bwrap
def test_the_report_comes_from_the_tests_not_from_what_the_solution_prints():
    assert verify(MBPP, "def add(a, b):\n    print('x' * 200_000)\n    return a + b").status == "correct"
    assert verify(MBPP, "print('{\"passed\": 1, \"total\": 1, \"failure\": null}')\ndef add(a, b):\n    return a - b"
                  ).status == "wrong"


# --- what an honest solution may still do -------------------------------------------------------

HONEST = [
    ({"test_list": ["assert max_chain([Pair(5, 24), Pair(15, 25), Pair(27, 40)]) == 2"]},
     "class Pair:\n    def __init__(self, a, b):\n        self.a, self.b = a, b\n"
     "def max_chain(pairs):\n    pairs = sorted(pairs, key=lambda p: p.b)\n    n, end = 0, float('-inf')\n"
     "    for p in pairs:\n        if p.a > end:\n            n, end = n + 1, p.b\n    return n"),
    ({"test_list": ["assert list(evens(5)) == [0, 2, 4]", "assert next(evens(3)) == 0"]},
     "def evens(n):\n    for i in range(0, n, 2):\n        yield i"),
    ({"test": "def check(candidate):\n    try:\n        candidate(-1)\n        assert False\n    except ValueError:\n        pass\n"
              "    assert candidate(4) == 2.0\n", "entry_point": "root"},
     "import math\ndef root(x):\n    if x < 0:\n        raise ValueError('negative')\n    return math.sqrt(x)"),
    ({"test_list": ["assert pairs({'a': 1}) == {('a', 1)}", "assert swap((1, 'x')) == ('x', 1)",
                    "assert raw('hi') == b'hi' and cplx() == 1 + 2j and big() == 2 ** 200"]},
     "def pairs(d):\n    return set(d.items())\ndef swap(t):\n    return t[::-1]\ndef raw(s):\n    return s.encode()\n"
     "def cplx():\n    return complex(1, 2)\ndef big():\n    return 2 ** 200"),
    ({"input_output": {"fn_name": "twice", "inputs": [[[1, 2]]], "outputs": [[2, 4]]}},
     "class Solution:\n    def twice(self, xs):\n        return [2 * x for x in xs]"),
    (MBPP, "def add(a, b):\n    return a + b\nif __name__ == '__main__':\n    print(add(int(input()), 1))"),
    ({"tests": "assert TABLE[2] == 4 and square(3) == 9"}, "TABLE = [i * i for i in range(10)]\ndef square(x):\n    return TABLE[x]"),
]


@needs_bwrap
@pytest.mark.parametrize("metadata, code", HONEST)
def test_honest_solutions_still_pass(metadata, code):
    verdict = verify(metadata, code)
    assert verdict.status == "correct", verdict


@needs_bwrap
def test_what_a_failing_test_reports():
    verdict = verify(MBPP, "def add(a, b):\n    return a - b")
    assert verdict.status == "wrong" and "AssertionError" in verdict.reason and "add(2, 3) == 5" in verdict.reason
    crashed = verify(MBPP, "def add(a, b):\n    return a + b\nundefined_name")
    assert crashed.status == "wrong" and "NameError" in crashed.reason, crashed
    returns_function = verify(MBPP, "def add(a, b):\n    return lambda: a + b")
    assert returns_function.status == "wrong", returns_function
    hangs = verify(MBPP, "def add(a, b):\n    while True:\n        pass")
    assert hangs.status == "wrong" and "time limit of 3.0 s exceeded" in hangs.reason, hangs


# --- `verifiers check` on labelled code cases ---------------------------------------------------

CASES = ROOT / "tests" / "cases" / "code_forgery.jsonl"


@needs_bwrap
def test_check_on_labelled_code_cases_has_no_false_positive():
    out = selfimprove("verifiers", "check", "--verifier", "code", "--cases", CASES, "--json").stdout
    figures = json.loads(out.strip().splitlines()[-1])
    rows = [json.loads(line) for line in CASES.read_text().splitlines() if line.strip()]
    assert figures["n"] == len(rows) and sum(not r["label"] for r in rows) >= 5
    assert figures["precision"] == 1.0 and figures["false_positives"] == 0, out
    assert figures["recall"] == 1.0, out
