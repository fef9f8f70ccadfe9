"""code: a Python solution passes the unit tests of its problem, run only inside the sandbox.

The solution is the last closed ```python block of the output (an unclosed last block means the
output was cut off: no answer). Tests come from the problem's metadata, in any of the common
forms (the first key found, or `tests_key`):

- `tests`: a list of {"input": stdin, "output": expected stdout} pairs, a list of assert
  statements, or a string of assert-style test code;
- `test_list` (MBPP): assert statements, with optional `test_setup_code` and `test_imports`;
- `input_output` (APPS): {"inputs": [...], "outputs": [...]} as stdin/stdout pairs, or, with
  "fn_name", arguments and return values of that function (or of that method of `Solution`);
- `test` + `entry_point` (HumanEval): code defining `check(candidate)`, called on the function.

Everything runs in one sandbox per sample (verifiers/sandbox.py): a small harness that first
makes itself unreadable to the solution and deletes the test file, then runs each stdin/stdout
test as its own process with its own time limit, or the solution followed by its assert tests
as one program that must reach its end. The solution only ever runs as a child of the harness,
with its output going to files in the sandbox, so it cannot write the harness's report. The
sandbox protects the machine; it does not make a solution written to game its tests honest.
"""

from __future__ import annotations

import json
import multiprocessing

from verifiers.base import Verdict, Verifier, clip, register
from verifiers.sandbox import MODES, Limits, Sandbox, SandboxUnavailable, warn_rlimits_mode

TEST_KEYS = ("tests", "test_list", "input_output", "test")
COMPARE = ("lines", "tokens", "exact")
MAX_REPORT_BYTES = 100_000

# The harness runs inside the sandbox. Its report is the one JSON line it prints.
_HARNESS = r'''
import ctypes, json, os, secrets, signal, subprocess, sys, time
ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: the solution cannot reach us through /proc
with open("tests.json") as f:
    spec = json.load(f)
os.remove("tests.json")

def run(args, stdin, timeout):
    with open("stdin.txt", "w") as f:
        f.write(stdin)
    with open("stdin.txt") as i, open("stdout.txt", "wb") as o, open("stderr.txt", "wb") as e:
        p = subprocess.Popen(args, stdin=i, stdout=o, stderr=e, start_new_session=True)
        try:
            p.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        try:
            os.killpg(p.pid, signal.SIGKILL)  # it and whatever it started
        except OSError:
            pass
        p.wait()
    def tail(name, n):
        with open(name, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - n))
            return f.read().decode("utf-8", "replace")
    return p.returncode, timed_out, tail("stdout.txt", 1 << 20), tail("stderr.txt", 600)

def same(got, want, how):
    if how == "exact":
        return got == want
    if how == "tokens":
        return got.split() == want.split()
    lines = lambda s: [l.rstrip() for l in s.rstrip().splitlines()]
    return lines(got) == lines(want)

def how_it_ended(code, timed_out, err, limit):
    if timed_out:
        return f"time limit of {limit} s exceeded"
    last = err.strip().splitlines()[-1] if err.strip() else ""
    return f"exit code {code}" + (f": {last}" if last else "")

report = {"passed": 0, "total": len(spec["tests"]) if spec["kind"] == "io" else 1, "failure": None}
if spec["kind"] == "io":
    for i, t in enumerate(spec["tests"]):
        code, timed_out, out, err = run([sys.executable, "solution.py"], t["input"], spec["test_timeout_s"])
        if timed_out or code != 0:
            report["failure"] = {"index": i, "kind": "crashed", "detail": how_it_ended(code, timed_out, err, spec["test_timeout_s"])}
            break
        if not same(out, t["output"], spec["compare"]):
            report["failure"] = {"index": i, "kind": "wrong_output", "expected": t["output"][:200], "got": out[:200]}
            break
        report["passed"] += 1
else:
    token = secrets.token_hex(16)  # printed after the last test, so exiting early is not passing
    with open("solution.py") as f:
        program = f.read() + "\n\n" + spec["code"] + f"\n\nprint({token!r})\n"
    with open("program.py", "w") as f:
        f.write(program)
    code, timed_out, out, err = run([sys.executable, "program.py"], "", spec["script_timeout_s"])
    if timed_out or code != 0:
        report["failure"] = {"index": 0, "kind": "crashed", "detail": how_it_ended(code, timed_out, err, spec["script_timeout_s"])}
    elif out.rstrip().rsplit("\n", 1)[-1].strip() != token:
        report["failure"] = {"index": 0, "kind": "early_exit", "detail": "the program ended before its tests finished"}
    else:
        report["passed"] = 1
print(json.dumps(report))
'''


def last_python_block(text: str) -> tuple[str | None, str]:
    """(code, why): the last closed ```python (or ```py) block; linear in the text."""
    blocks, current, lang = [], None, None
    for line in text.splitlines():
        stripped = line.strip()
        if current is None:
            if stripped.startswith("```"):
                lang = stripped[3:].strip().lower()
                current = []
        elif stripped.startswith("```") and not stripped[3:].strip():
            blocks.append((lang, "\n".join(current)))
            current = None
        else:
            current.append(line)
    python = [code for lang, code in blocks if lang in ("python", "python3", "py")]
    if current is not None and lang in ("python", "python3", "py"):
        return None, "the last ```python block is not closed (output cut off?)"
    if not python:
        return None, "no ```python block found"
    if not python[-1].strip():
        return None, "the last ```python block is empty"
    return python[-1], ""


def _maybe_json(value):
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _text(value) -> str:
    if isinstance(value, list):
        return "\n".join(map(str, value))
    return "" if value is None else str(value)


def tests_of(metadata: dict, key: str = "auto") -> dict:
    """The problem's tests as {"kind": "io", "tests": [...]} or {"kind": "script", "code": ...};
    ValueError naming the field when there are none or they are malformed."""
    keys = TEST_KEYS if key == "auto" else (key,)
    found = next((k for k in keys if metadata.get(k) not in (None, "", [], {})), None)
    if found is None:
        raise ValueError(f"problem has no tests: its metadata needs one of {', '.join(keys)}")
    value = _maybe_json(metadata[found])
    if found == "test":
        entry = metadata.get("entry_point")
        if not isinstance(value, str) or not isinstance(entry, str) or not entry.isidentifier():
            raise ValueError("metadata.test needs test code and metadata.entry_point, a function name")
        return {"kind": "script", "code": f"{value}\n\ncheck({entry})"}
    if found == "test_list":
        if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
            raise ValueError("metadata.test_list must be a list of assert statements")
        imports = metadata.get("test_imports") or []
        setup = metadata.get("test_setup_code") or ""
        return {"kind": "script", "code": "\n".join([*map(str, imports), str(setup), *value])}
    if found == "input_output":
        if not isinstance(value, dict) or not isinstance(value.get("inputs"), list) \
                or not isinstance(value.get("outputs"), list) or len(value["inputs"]) != len(value["outputs"]):
            raise ValueError("metadata.input_output must be {inputs: [...], outputs: [...]} of equal length")
        if value.get("fn_name"):
            return {"kind": "script", "code": _call_tests(str(value["fn_name"]), value["inputs"], value["outputs"])}
        return {"kind": "io", "tests": [{"input": _text(i), "output": _text(o)}
                                        for i, o in zip(value["inputs"], value["outputs"])]}
    # tests
    if isinstance(value, str):
        return {"kind": "script", "code": value}
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        return {"kind": "script", "code": "\n".join(value)}
    if isinstance(value, list) and all(isinstance(t, dict) and "input" in t and "output" in t for t in value):
        return {"kind": "io", "tests": [{"input": _text(t["input"]), "output": _text(t["output"])} for t in value]}
    raise ValueError("metadata.tests must be a list of {input, output} pairs, a list of asserts, or test code")


def _call_tests(fn_name: str, inputs: list, outputs: list) -> str:
    """Assert-style tests for APPS call-based problems: fn(*args) must equal the output."""
    if not fn_name.isidentifier():
        raise ValueError(f"metadata.input_output.fn_name {fn_name!r} is not a function name")
    cases = json.dumps(list(zip(inputs, outputs)))
    return (f"import json as _json\n"
            f"_fn = globals().get({fn_name!r}) or getattr(globals().get('Solution', object)(), {fn_name!r})\n"
            f"for _i, (_args, _want) in enumerate(_json.loads({cases!r})):\n"
            f"    _got = _fn(*_args)\n"
            f"    _got = list(_got) if isinstance(_got, tuple) else _got\n"
            f"    assert _got == _want or [_got] == _want, f'test {{_i + 1}}: expected {{_want!r}}, got {{_got!r}}'\n")


@register("code")
class CodeVerifier(Verifier):
    version = "1"
    needs_gold = False  # the unit tests in the problem row are the gold
    defaults = {
        "sandbox": "bwrap",  # or "rlimits": weaker, an explicit opt-in for machines without bubblewrap
        "tests_key": "auto",
        "compare": "lines",  # stdout vs expected: "lines" (trailing spaces ignored), "tokens", "exact"
        "timeout_s": 4.0,  # whole run in the sandbox; keep it below verify.timeout_s
        "test_timeout_s": 2.0,  # one stdin/stdout test
        "memory_mb": 512,
        "max_tests": 100,
        "max_code_chars": 100_000,
        "python": None,  # interpreter inside the sandbox; default /usr/bin/python3
    }

    def __init__(self, **params):
        super().__init__(**params)
        p = self._params
        if p["sandbox"] not in MODES:
            raise ValueError(f"verifier 'code': sandbox must be one of {MODES}, got {p['sandbox']!r}")
        if p["compare"] not in COMPARE:
            raise ValueError(f"verifier 'code': compare must be one of {COMPARE}, got {p['compare']!r}")
        if p["tests_key"] != "auto" and p["tests_key"] not in TEST_KEYS:
            raise ValueError(f"verifier 'code': tests_key must be 'auto' or one of {TEST_KEYS}, got {p['tests_key']!r}")
        for name in ("timeout_s", "test_timeout_s", "memory_mb", "max_tests", "max_code_chars"):
            if isinstance(p[name], bool) or not isinstance(p[name], (int, float)) or not p[name] > 0:
                raise ValueError(f"verifier 'code': {name} must be a number > 0, got {p[name]!r}")
        limits = Limits(wall_s=float(p["timeout_s"]), cpu_s=int(p["timeout_s"]) + 1, memory_mb=int(p["memory_mb"]),
                        output_bytes=MAX_REPORT_BYTES)
        try:
            self.sandbox = Sandbox(p["sandbox"], limits, p["python"])
        except SandboxUnavailable as e:
            raise ValueError(f"verifier 'code' refuses to run model-written code: {e}") from None
        if p["sandbox"] == "rlimits" and multiprocessing.parent_process() is None:
            warn_rlimits_mode()

    def verify(self, problem: dict, sample: dict) -> Verdict:
        p = self._params
        try:
            spec = tests_of(problem.get("metadata") or {}, p["tests_key"])
        except ValueError as e:
            return Verdict("error", 0.0, None, str(e))
        if spec["kind"] == "io" and len(spec["tests"]) > p["max_tests"]:
            spec["tests"] = spec["tests"][: p["max_tests"]]
        code, why = last_python_block(sample.get("text") or "")
        if code is None:
            return Verdict("no_answer", 0.0, None, why)
        extracted = clip(code, 200)
        if len(code) > p["max_code_chars"]:
            return Verdict("wrong", 0.0, extracted, f"solution is too long ({len(code)} characters)")
        # the assert program stops a little before the sandbox would, so its report still comes back
        spec.update(compare=p["compare"], test_timeout_s=p["test_timeout_s"],
                    script_timeout_s=round(max(p["timeout_s"] / 2, p["timeout_s"] - 0.5), 2))
        files = {"harness.py": _HARNESS, "solution.py": code, "tests.json": json.dumps(spec)}
        result = self.sandbox.run(["python", "-I", "harness.py"], files)
        if result.timed_out:
            return Verdict("wrong", 0.0, extracted, f"tests exceeded the time limit of {p['timeout_s']} s")
        try:
            report = json.loads(result.stdout.decode("utf-8", "replace").strip().splitlines()[-1])
            passed, total, failure = report["passed"], report["total"], report["failure"]
        except (ValueError, IndexError, KeyError, TypeError):
            detail = clip(result.stderr.decode("utf-8", "replace")[-300:], 200)
            return Verdict("error", 0.0, extracted, f"the test harness gave no report ({result.describe()}): {detail}")
        if failure is None:
            done = f"passed {passed}/{total} stdin/stdout tests" if spec["kind"] == "io" else "passed the assert tests"
            return Verdict("correct", 1.0, extracted, done)
        where = f"test {failure['index'] + 1}/{total}" if spec["kind"] == "io" else "the assert tests"
        if failure["kind"] == "wrong_output":
            detail = f"expected {clip(failure['expected'], 60)!r}, got {clip(failure['got'], 60)!r}"
        else:
            detail = clip(str(failure.get("detail", "")), 200)
        return Verdict("wrong", 0.0, extracted, f"failed {where}: {detail}")
