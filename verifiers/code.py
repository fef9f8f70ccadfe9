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

Nothing the solution can reach decides whether its tests passed. Code in the solution's process
can read every file beside it, print anything, exit early, hook its own exit, patch modules, or
return an object whose `__eq__` is always True. So the solution runs in one sandbox
(verifiers/sandbox.py), under a server that imports it (or runs it once per stdin/stdout test),
and the tests run in a second sandbox that the solution cannot see, signal or read: its own PID,
mount and network namespaces. Only that second sandbox writes the report we read. The two talk
over two pipes in JSON lines: a test's call of a solution function goes across, and what comes
back is rebuilt as plain data (None, bool, int, float, complex, str, bytes, and lists, tuples,
dicts and sets of these) before any test sees it, so every comparison is made by Python's own
types in the tests' process. An object of the solution's own (a class it defines, an instance)
comes back as a stand-in that forwards calls and attribute reads but has no truth value and
equals only itself. The tests see the solution's top-level names (it is imported as the module
`solution`: a `__main__` block does not run), except those of builtins and standard modules (a
solution's own `abs` or `math`), which stay the real ones. An exit or crash of the solution, at
import or inside a call, fails the tests. The tests, and so their expected values and outputs,
never enter the solution's sandbox.

Limits: a test that hands a function of its own to the solution, or checks that the solution
changed an argument in place, fails; a test that uses a helper or name the solution defined
(HumanEval's `poly`, a `Counter` it imported) trusts it. With `sandbox: rlimits` the sandboxes
are only rlimits: as root each runs as a user of its own and the above holds; as any other user
the solution would run as you, could read and change what you can, and none of it would hold, so
that is refused unless `allow_unsafe_rlimits: true`.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time

from selfimprove.verifiers.base import Verdict, Verifier, clip, register
from selfimprove.verifiers.sandbox import MODES, Limits, Sandbox, SandboxResult, SandboxUnavailable, warn_rlimits_mode

TEST_KEYS = ("tests", "test_list", "input_output", "test")
COMPARE = ("lines", "tokens", "exact")
MAX_REPORT_BYTES = 100_000

# Both sides: data to and from JSON. Plain types stand for themselves, builtin containers and
# a few other builtin types are tagged {"t": tag, "v": value}; `other` does the rest, as each
# side sees fit. decode() makes only Python's own types (or raises ValueError/TypeError).
_WIRE = r'''
import json, sys

MAX_DEPTH = 100
MAX_ITEMS = 1_000_000  # of an iterator the solution returns
if hasattr(sys, "set_int_max_str_digits"):
    sys.set_int_max_str_digits(100_000)
CONTAINERS = {"tuple": tuple, "set": set, "frozenset": frozenset, "iter": iter}


def encode(x, other, depth=0):
    if depth > MAX_DEPTH:
        raise ValueError("data nested too deeply")
    d = depth + 1
    if x is None or isinstance(x, bool):
        return x if x is None else bool(x)
    if isinstance(x, (int, float, str)):  # subclasses too, as the value of their base type
        return int(x) if isinstance(x, int) else float(x) if isinstance(x, float) else str(x)
    if isinstance(x, list):
        return [encode(v, other, d) for v in x]
    if isinstance(x, (tuple, set, frozenset)):
        tag = "tuple" if isinstance(x, tuple) else "frozenset" if isinstance(x, frozenset) else "set"
        return {"t": tag, "v": [encode(v, other, d) for v in x]}
    if isinstance(x, dict):
        return {"t": "dict", "v": [[encode(k, other, d), encode(v, other, d)] for k, v in x.items()]}
    if isinstance(x, (bytes, bytearray)):
        return {"t": "bytes", "v": bytes(x).hex()}
    if isinstance(x, complex):
        return {"t": "complex", "v": [float(x.real), float(x.imag)]}
    if isinstance(x, range):
        return {"t": "range", "v": [int(x.start), int(x.stop), int(x.step)]}
    return other(x, d)


def decode(x, other, depth=0):
    if depth > MAX_DEPTH + 2:
        raise ValueError("data nested too deeply")
    d = depth + 1
    if x is None or type(x) in (bool, int, float, str):
        return x
    if type(x) is list:
        return [decode(v, other, d) for v in x]
    if type(x) is not dict or set(x) != {"t", "v"}:
        raise ValueError("malformed data")
    tag, v = x["t"], x["v"]
    if tag in CONTAINERS and type(v) is list:
        return CONTAINERS[tag]([decode(i, other, d) for i in v])
    if tag == "dict" and type(v) is list and all(type(p) is list and len(p) == 2 for p in v):
        return {decode(k, other, d): decode(i, other, d) for k, i in v}
    if tag == "bytes" and type(v) is str:
        return bytes.fromhex(v)
    if tag == "complex" and type(v) is list and len(v) == 2 and all(type(i) in (int, float) for i in v):
        return complex(v[0], v[1])
    if tag == "range" and type(v) is list and len(v) == 3 and all(type(i) is int for i in v):
        return range(*v)
    return other(tag, v)
'''

# The solution's side, run as `server.py KIND IN_FD OUT_FD` in the solution's sandbox. It is no
# more trusted than the solution (which can rewrite it): all it can do is send data.
_SERVER = _WIRE + r'''
import itertools, os, signal, subprocess, types

objects, ids = [], {}  # what the tests hold stand-ins for, by number


def other(x, depth):
    if isinstance(x, types.ModuleType):
        return {"t": "module", "v": x.__name__}
    if hasattr(type(x), "__next__"):  # a generator or iterator: run it out
        items = list(itertools.islice(x, MAX_ITEMS + 1))
        if len(items) > MAX_ITEMS:
            raise ValueError(f"an iterator of more than {MAX_ITEMS} items")
        return {"t": "iter", "v": [encode(v, other, depth) for v in items]}
    if id(x) not in ids:
        ids[id(x)] = len(objects)
        objects.append(x)
    return {"t": "ref", "v": ids[id(x)]}


def ref(tag, value):
    if tag == "ref" and type(value) is int and 0 <= value < len(objects):
        return objects[value]
    raise ValueError(f"no object {tag} {value!r}")


def load():
    # Import solution.py as the module `solution`. What it prints goes nowhere (so no amount of
    # it ends the run); only the last line of an error on import reaches our stderr.
    stderr, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    module = types.ModuleType("solution")
    module.__file__ = os.path.abspath("solution.py")
    sys.modules["solution"] = module
    try:
        with open("solution.py") as f:
            exec(compile(f.read(), "solution.py", "exec"), module.__dict__)
    except Exception as e:
        os.write(stderr, f"{type(e).__name__}: {str(e)[:300]}\n".encode("utf-8", "replace"))
        raise
    names = []
    for name, value in list(vars(module).items()):
        if not name.startswith("__"):
            try:
                names.append([name, other(value, 0) if callable(value) else encode(value, other)])
            except Exception:
                pass
    return names


def run(stdin, timeout):
    with open("stdin.txt", "w") as f:
        f.write(stdin)
    with open("stdin.txt") as i, open("stdout.txt", "wb") as o, open("stderr.txt", "wb") as e:
        p = subprocess.Popen([sys.executable, "solution.py"], stdin=i, stdout=o, stderr=e, start_new_session=True)
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
            f.seek(max(0, f.tell() - n))
            return f.read().decode("utf-8", "replace")
    return {"code": p.returncode, "timed_out": timed_out, "stdout": tail("stdout.txt", 1 << 20),
            "stderr": tail("stderr.txt", 600)}


def answer(msg):
    try:
        if msg["op"] == "io":
            return run(msg["stdin"], msg["timeout"])
        if msg["op"] == "call":
            kwargs = {k: decode(v, ref) for k, v in msg["kwargs"]}
            result = ref("ref", msg["f"])(*decode(msg["args"], ref), **kwargs)
        else:
            result = getattr(ref("ref", msg["o"]), msg["name"])
        return {"ok": encode(result, other)}
    except BaseException as e:
        try:
            text = str(e)[:300]
        except BaseException:
            text = ""
        return {"raised": {"type": type(e).__name__, "message": text, "exit": not isinstance(e, Exception)}}


requests, replies = os.fdopen(int(sys.argv[2]), "rb"), os.fdopen(int(sys.argv[3]), "wb")


def reply(msg):
    replies.write(json.dumps(msg).encode() + b"\n")
    replies.flush()


if sys.argv[1] == "script":
    reply({"names": load()})
for line in requests:
    reply(answer(json.loads(line)))
'''

# The tests' side, run as `runner.py OUT_FD IN_FD` in a sandbox of its own, with tests.json.
# It prints one line, the report, and nothing else reaches its stdout.
_RUNNER = _WIRE + r'''
import builtins, ctypes, importlib, os, select, time, traceback

ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: with sandbox: rlimits the solution may share our user
MAX_MESSAGE = 64 << 20


class Abort(BaseException):
    # Ends the tests; a BaseException, so that no `except Exception` in a test swallows it.
    kind = "failed"


class Ended(Abort):
    kind = "ended"


class SolutionExit(Abort):
    kind = "exit"


class Overtime(Abort):
    kind = "timeout"


class Garbled(Abort):
    kind = "garbled"


class SolutionError(Exception):
    """An exception of a type the solution made up, raised by it during a test."""


class Channel:
    # JSON lines to and from the solution's sandbox; no wait outlasts the tests' deadline.
    def __init__(self, out_fd, in_fd, deadline):
        self.out, self.inp, self.deadline, self.buffer = out_fd, in_fd, deadline, bytearray()
        os.set_blocking(out_fd, False)

    def wait(self, fd, writing):
        left = max(0.0, self.deadline - time.monotonic())
        ready = select.select([] if writing else [fd], [fd] if writing else [], [], left)
        if not ready[0] and not ready[1]:
            raise Overtime("time limit exceeded")

    def send(self, msg):
        data = memoryview((json.dumps(msg) + "\n").encode())
        while data:
            self.wait(self.out, True)
            try:
                data = data[os.write(self.out, data):]
            except BlockingIOError:
                continue
            except BrokenPipeError:
                raise Ended("the solution ended before its tests finished") from None

    def recv(self):
        start = 0
        while (end := self.buffer.find(b"\n", start)) < 0:
            if len(self.buffer) > MAX_MESSAGE:
                raise Garbled(f"the solution sent more than {MAX_MESSAGE >> 20} MB at once")
            start = len(self.buffer)
            self.wait(self.inp, False)
            chunk = os.read(self.inp, 1 << 20)
            if not chunk:
                raise Ended("the solution ended before its tests finished")
            self.buffer += chunk
        line = bytes(self.buffer[:end])
        del self.buffer[:end + 1]
        try:
            msg = json.loads(line)
        except (ValueError, RecursionError):
            msg = None
        if type(msg) is not dict:
            raise Garbled("the solution sent malformed data")
        return msg


class Remote:
    """An object of the solution's: calls and attribute reads go to its sandbox. It has no truth
    value and equals only itself, so the solution decides no comparison."""
    __slots__ = ("rid",)

    def __init__(self, rid):
        self.rid = rid

    def __call__(self, *args, **kwargs):
        return ask({"op": "call", "f": self.rid, "args": encode(list(args), mine),
                    "kwargs": [[str(k), encode(v, mine)] for k, v in kwargs.items()]})

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return ask({"op": "getattr", "o": self.rid, "name": name})

    def __bool__(self):
        raise TypeError("an object of the solution's has no truth value in the tests")

    def __repr__(self):
        return f"<solution object {self.rid}>"


remotes, ABORTED, LOADING = {}, [], [True]
STDLIB = getattr(sys, "stdlib_module_names", frozenset())


def mine(x, depth):
    if type(x) is Remote:
        return {"t": "ref", "v": x.rid}
    raise TypeError(f"a {type(x).__name__} cannot be passed to the solution")


def theirs(tag, value):
    if tag == "ref" and type(value) is int:
        return remotes.setdefault(value, Remote(value))
    if tag == "module" and LOADING and type(value) is str and value.split(".")[0] in STDLIB:
        return importlib.import_module(value)
    raise ValueError(f"unknown data {tag!r}")


def ask(msg):
    try:
        return _ask(msg)
    except Abort as e:
        ABORTED.append(e)  # re-raised after the tests, should a bare `except:` in them swallow it
        raise


def _ask(msg):
    CHANNEL.send(msg)
    reply = CHANNEL.recv()
    try:
        if "ok" in reply:
            return decode(reply["ok"], theirs)
        name, text, exits = str(reply["raised"]["type"]), str(reply["raised"]["message"]), reply["raised"]["exit"]
    except (ValueError, TypeError, KeyError, RecursionError, ImportError) as e:
        raise Garbled(f"the solution sent data the tests cannot use: {e}") from None
    if exits is not False:
        raise SolutionExit(f"the solution called exit ({name}) during the tests")
    cls = getattr(builtins, name, None)  # a builtin exception, so that tests can expect a ValueError
    try:  # but no StopIteration, which would end a map() or generator in the tests early, as a pass
        ok = isinstance(cls, type) and issubclass(cls, Exception)
        error = cls(text) if ok and not issubclass(cls, (StopIteration, StopAsyncIteration)) else None
    except Exception:
        error = None
    raise error or SolutionError(f"{name}: {text}")


def solution_names():
    hello = CHANNEL.recv()
    names = {}
    for pair in hello.get("names") if type(hello.get("names")) is list else []:
        try:
            name, value = pair
            # a solution's own `abs`, `all` or `math` must not be what the tests compare with
            if type(name) is not str or not name.isidentifier() or name.startswith("__") or name in vars(builtins):
                continue
            names[name] = importlib.import_module(name) if name in STDLIB else decode(value, theirs)
        except Exception:
            continue  # a name the tests cannot use (say, a module that is not in the standard library)
    LOADING.clear()
    return names


def what_failed(e, source):
    text = type(e).__name__ + (f": {e}" if str(e) else "")
    frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == "<tests>"]
    lines = source.splitlines()
    if frames and 0 < frames[-1].lineno <= len(lines):
        text += f" at `{lines[frames[-1].lineno - 1].strip()}`"
    return text[:300]


def same(got, want, how):
    if how == "exact":
        return got == want
    if how == "tokens":
        return got.split() == want.split()
    lines = lambda s: [l.rstrip() for l in s.rstrip().splitlines()]
    return lines(got) == lines(want)


def run_io(spec, report):
    for i, t in enumerate(spec["tests"]):
        CHANNEL.send({"op": "io", "stdin": t["input"], "timeout": spec["test_timeout_s"]})
        r = CHANNEL.recv()
        code, timed_out, out, err = (r.get(k) for k in ("code", "timed_out", "stdout", "stderr"))
        if type(code) not in (int, type(None)) or type(timed_out) is not bool or {type(out), type(err)} != {str}:
            raise Garbled("the solution's side sent a malformed result")
        if timed_out or code != 0:
            last = err.strip().splitlines()[-1] if err.strip() else ""
            detail = f"time limit of {spec['test_timeout_s']} s exceeded" if timed_out else \
                f"exit code {code}" + (f": {last}" if last else "")
            report["failure"] = {"index": i, "kind": "crashed", "detail": detail}
            return
        if not same(out, t["output"], spec["compare"]):
            report["failure"] = {"index": i, "kind": "wrong_output", "expected": t["output"][:200], "got": out[:200]}
            return
        report["passed"] += 1


def run_script(spec, report):
    try:
        tests = compile(spec["code"], "<tests>", "exec")
    except (SyntaxError, ValueError) as e:
        report["failure"] = {"index": 0, "kind": "bad_tests", "detail": f"the tests do not compile: {e}"}
        return
    names = solution_names()
    try:
        exec(tests, {**names, "__name__": "__main__", "__builtins__": builtins})
    except Abort:
        raise
    except BaseException as e:
        report["failure"] = {"index": 0, "kind": "failed", "detail": what_failed(e, spec["code"])}
        return
    if ABORTED:
        raise ABORTED[0]
    report["passed"] = 1


with open("tests.json") as f:
    SPEC = json.load(f)
CHANNEL = Channel(int(sys.argv[1]), int(sys.argv[2]), SPEC["deadline"])  # the host's clock: no namespace has its own
REPORT_FD = os.dup(1)
os.dup2(2, 1)  # what the tests print goes to stderr
report = {"passed": 0, "total": len(SPEC["tests"]) if SPEC["kind"] == "io" else 1, "failure": None}
try:
    (run_io if SPEC["kind"] == "io" else run_script)(SPEC, report)
except Abort as e:
    report["failure"] = {"index": report["passed"], "kind": e.kind, "detail": str(e)}
except BaseException as e:
    report["failure"] = {"index": report["passed"], "kind": "failed", "detail": what_failed(e, "")}
os.write(REPORT_FD, (json.dumps(report) + "\n").encode())
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
            f"_fn = globals()[{fn_name!r}] if {fn_name!r} in globals() else getattr(Solution(), {fn_name!r})\n"
            f"for _i, (_args, _want) in enumerate(_json.loads({cases!r})):\n"
            f"    _got = _fn(*_args)\n"
            f"    _got = list(_got) if isinstance(_got, tuple) else _got\n"
            f"    assert _got == _want or [_got] == _want, f'test {{_i + 1}}: expected {{_want!r}}, got {{_got!r}}'\n")


@register("code")
class CodeVerifier(Verifier):
    # 2: the tests run apart from the solution, which can no longer forge their report;
    # 3: memory_mb bounds each sandbox run as a whole, /dev/shm is capped, rlimits as non-root needs an opt-in
    version = "3"
    needs_gold = False  # the unit tests in the problem row are the gold
    defaults = {
        "sandbox": "bwrap",  # or "rlimits": weaker, an explicit opt-in for machines without bubblewrap
        "tests_key": "auto",
        "compare": "lines",  # stdout vs expected: "lines" (trailing spaces ignored), "tokens", "exact"
        "timeout_s": 4.0,  # whole run in the sandbox; must be below verify.timeout_s (the pool refuses otherwise)
        "test_timeout_s": 2.0,  # one stdin/stdout test
        "memory_mb": 512,  # each sandbox (the solution's, the tests') as a whole, all its processes together
        "max_tests": 100,
        "max_code_chars": 100_000,
        "python": None,  # interpreter inside the sandbox; default /usr/bin/python3
        # sandbox: rlimits as a non-root user runs the solution as you (it can kill your processes and
        # change your files): refused unless this is true
        "allow_unsafe_rlimits": False,
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
        if not isinstance(p["allow_unsafe_rlimits"], bool):
            raise ValueError("verifier 'code': allow_unsafe_rlimits must be true or false, "
                             f"got {p['allow_unsafe_rlimits']!r}")
        self.time_limit_s = float(p["timeout_s"])  # its own wall-clock limit: the pool's must be longer
        limits = Limits(wall_s=float(p["timeout_s"]), cpu_s=int(p["timeout_s"]) + 1, memory_mb=int(p["memory_mb"]),
                        output_bytes=MAX_REPORT_BYTES)
        try:
            self.sandbox = Sandbox(p["sandbox"], limits, p["python"], allow_unsafe_rlimits=p["allow_unsafe_rlimits"])
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
        # the tests stop a little before their sandbox would, however slow it is to start, so that
        # their report still comes back (CLOCK_MONOTONIC is the same inside)
        spec.update(compare=p["compare"], test_timeout_s=p["test_timeout_s"],
                    deadline=time.monotonic() + max(p["timeout_s"] / 2, p["timeout_s"] - 0.5))
        tests, solution = self._run(spec, code)
        if tests.timed_out:
            return Verdict("wrong", 0.0, extracted, f"tests exceeded the time limit of {p['timeout_s']} s")
        try:
            report = json.loads(tests.stdout.decode("utf-8", "replace").strip().splitlines()[-1])
            passed, total, failure = report["passed"], report["total"], report["failure"]
        except (ValueError, IndexError, KeyError, TypeError):
            detail = clip(tests.stderr.decode("utf-8", "replace")[-300:], 200)
            return Verdict("error", 0.0, extracted, f"the test harness gave no report ({tests.describe()}): {detail}")
        if failure is None:
            done = f"passed {passed}/{total} stdin/stdout tests" if spec["kind"] == "io" else "passed the assert tests"
            return Verdict("correct", 1.0, extracted, done)
        if failure["kind"] == "bad_tests":
            return Verdict("error", 0.0, extracted, clip(str(failure["detail"]), 200))
        where = f"test {failure['index'] + 1}/{total}" if spec["kind"] == "io" else "the assert tests"
        return Verdict("wrong", 0.0, extracted, f"failed {where}: {self._failure(failure, solution)}")

    def _failure(self, failure: dict, solution: SandboxResult | BaseException) -> str:
        if failure["kind"] == "wrong_output":
            return f"expected {clip(failure['expected'], 60)!r}, got {clip(failure['got'], 60)!r}"
        if failure["kind"] == "timeout":
            return f"time limit of {self._params['timeout_s']} s exceeded"
        detail = str(failure.get("detail", ""))
        if failure["kind"] == "ended":
            if isinstance(solution, BaseException):
                how = f"{type(solution).__name__}: {solution}"
            else:
                err = solution.stderr.decode("utf-8", "replace").strip()
                how = solution.describe() + (f": {err.splitlines()[-1]}" if err else "")
            detail = f"{detail} ({how})"
        return clip(detail, 200)

    def _run(self, spec: dict, code: str) -> tuple[SandboxResult, SandboxResult | BaseException]:
        """The solution in one sandbox (in a thread), the tests in another, two pipes between."""
        to_solution, from_solution = os.pipe(), os.pipe()
        ours = [to_solution[1], from_solution[0]]
        theirs = (to_solution[0], from_solution[1])
        stop, ended = threading.Event(), []

        def solution():
            try:
                ended.append(self.sandbox.run(["python", "-I", "server.py", spec["kind"], *map(str, theirs)],
                                              {"server.py": _SERVER, "solution.py": code}, pass_fds=theirs, stop=stop))
            except BaseException as e:  # noqa: BLE001 - reported with the verdict
                ended.append(e)

        thread = threading.Thread(target=solution, name="code-solution", daemon=True)
        try:
            thread.start()
        except BaseException:
            for fd in [*ours, *theirs]:
                os.close(fd)
            raise
        try:
            tests = self.sandbox.run(["python", "-I", "runner.py", *map(str, ours)],
                                     {"runner.py": _RUNNER, "tests.json": json.dumps(spec)}, pass_fds=tuple(ours))
        finally:
            stop.set()
            thread.join()
        return tests, ended[0]
