"""The sandbox contains model-written code, and the code verifier runs only inside it.

Each escape test runs real hostile code under bubblewrap and checks the harm did not happen
(outside the sandbox), not just that the code reported an error. Tests that need bubblewrap
skip, saying why, only where a trial sandbox cannot start; `make setup` installs bubblewrap.
"""

import os
import secrets
import socket
import time
from pathlib import Path

import pytest

from selfimprove.verifiers import get_verifier
from selfimprove.verifiers import sandbox as sandbox_module
from selfimprove.verifiers.sandbox import Limits, Sandbox, SandboxUnavailable, bwrap_problem

ROOT = Path(__file__).resolve().parents[1]
BWRAP = bwrap_problem()
needs_bwrap = pytest.mark.skipif(BWRAP is not None, reason=f"bubblewrap cannot sandbox code here: {BWRAP}")
LIMITS = Limits(wall_s=3.0, cpu_s=2, memory_mb=1024, nproc=16, fsize_mb=1, tmpfs_mb=8, output_bytes=100_000)
# rlimits mode as non-root is refused without this opt-in; these tests' own programs are harmless
UNSAFE_OK = os.geteuid() != 0


def survivors(marker: str) -> list[str]:
    """Command lines of live processes that carry `marker`, anywhere on the machine."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = next(line for line in (proc / "status").read_text().splitlines() if line.startswith("State:"))
            except (OSError, StopIteration):
                continue
            if marker in cmdline and "zombie" not in state:
                found.append(cmdline)
    return found


@pytest.fixture(scope="module")
def box():
    return Sandbox("bwrap", LIMITS)


def run_code(box, code, *args, files=None):
    marker = f"escape-test-{secrets.token_hex(6)}"
    result = box.run(["python", "-c", code, marker, *map(str, args)], files=files)
    return result, marker


# --- escapes, each contained ------------------------------------------------------------------


@needs_bwrap
def test_fork_bomb_is_contained_and_leaves_nothing(box):
    started = time.monotonic()
    result, marker = run_code(box, "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass")
    assert time.monotonic() - started < LIMITS.wall_s + 1
    assert result.timed_out or result.exit_code != 0
    time.sleep(0.2)
    assert survivors(marker) == []


FORK_COUNT = ("import os, sys\nn = 0\ntry:\n    while n < 500:\n        if os.fork() == 0:\n            import time; time.sleep(5); os._exit(0)\n"
              "        n += 1\nexcept OSError:\n    pass\nprint(n)")


@needs_bwrap
def test_fork_bomb_hits_the_process_limit(box):
    result, marker = run_code(box, FORK_COUNT)
    assert result.ok and int(result.stdout) < LIMITS.nproc
    assert survivors(marker) == []  # the sleeping children died with the sandbox


@needs_bwrap
def test_busy_loop_is_killed_at_the_wall_clock(box):
    started = time.monotonic()
    result = box.run(["python", "-c", "while True: pass"], limits=Limits(wall_s=1.0, cpu_s=30))
    assert result.timed_out and result.exit_code is None and result.describe() == "time limit exceeded"
    assert time.monotonic() - started < 1.0 + 1.0


@needs_bwrap
def test_cpu_limit_stops_a_busy_loop_before_the_wall_clock(box):
    result = box.run(["python", "-c", "while True: pass"], limits=Limits(wall_s=20, cpu_s=1))
    assert not result.timed_out and result.exit_code != 0 and result.seconds < 15


@needs_bwrap
def test_50_gb_allocation_fails_inside(box):
    result, _ = run_code(box, "x = bytearray(50 * 1024 ** 3)")
    assert result.exit_code == 1 and b"MemoryError" in result.stderr


@needs_bwrap
def test_no_network_not_even_the_hosts_loopback(box):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    port = server.getsockname()[1]
    code = ("import socket, sys\nfor host, port in [('127.0.0.1', int(sys.argv[2])), ('1.1.1.1', 53), ('8.8.8.8', 443)]:\n"
            "    s = socket.socket()\n    s.settimeout(1)\n    try:\n        s.connect((host, port))\n        print('connected', host)\n"
            "    except OSError as e:\n        print('refused', host, e.errno)")
    try:
        result, _ = run_code(box, code, port)
        with pytest.raises(socket.timeout):
            server.accept()  # nobody came
    finally:
        server.close()
    assert result.ok and b"connected" not in result.stdout and result.stdout.count(b"refused") == 3


@needs_bwrap
def test_cannot_write_outside_its_work_dir(box, tmp_path):
    targets = ["/pwned", "/usr/pwned", "/tmp/pwned", str(ROOT / "pwned"), str(tmp_path / "pwned")]
    code = ("import sys\nfor path in sys.argv[2:]:\n    try:\n        open(path, 'w').write('x')\n        print('wrote', path)\n"
            "    except OSError as e:\n        print('denied', path, type(e).__name__)\nopen('mine.txt', 'w').write('ok')\nprint('own dir ok')")
    result, _ = run_code(box, code, *targets)
    assert result.ok and b"wrote" not in result.stdout and b"own dir ok" in result.stdout
    for target in targets[3:]:
        assert not Path(target).exists()


@needs_bwrap
def test_file_size_limit(box):
    result, _ = run_code(box, "open('big', 'wb').write(b'x' * (4 << 20))")
    assert result.exit_code != 0  # SIGXFSZ or an error: the 1 MB limit holds


@needs_bwrap
def test_cannot_read_passwd_home_or_the_project(box):
    targets = ["/etc/passwd", "/etc/shadow", str(ROOT / "README.md"), str(ROOT / "pyproject.toml"), os.path.expanduser("~"), "/proc/1/environ"]
    code = ("import os, sys\nfor path in sys.argv[2:]:\n    try:\n        data = os.listdir(path) if os.path.isdir(path) else open(path, 'rb').read()\n"
            "        print('read', path, len(data))\n    except OSError as e:\n        print('denied', path, type(e).__name__)")
    result, _ = run_code(box, code, *targets)
    out = result.stdout.decode()
    assert result.ok, result.stderr
    for path in targets[:4]:
        assert f"denied {path}" in out
    assert "secret" not in out and "selfimprove" not in out


@needs_bwrap
def test_cannot_signal_anything_outside(box):
    code = ("import os, signal, sys\nfor pid in (os.getppid(), 1, int(sys.argv[2]), -1):\n    try:\n        os.kill(pid, signal.SIGKILL)\n"
            "        print('sent', pid)\n    except OSError as e:\n        print('refused', pid, type(e).__name__)\nprint('still here')")
    result, _ = run_code(box, code, os.getpid())
    assert b"refused " + str(os.getpid()).encode() in result.stdout
    assert os.getppid() > 1  # this test process and its parent are alive


@needs_bwrap
def test_processes_started_to_outlive_the_run_die_with_it(box):
    marker = f"97.{secrets.randbelow(10**6)}"
    code = ("import os, subprocess, sys\nsubprocess.Popen(['sleep', sys.argv[2]], start_new_session=True)\n"
            "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        os.execv('/bin/sleep', ['sleep', sys.argv[2]])\n    os._exit(0)\n"
            "print('spawned')")
    result, _ = run_code(box, code, marker)
    assert result.ok and b"spawned" in result.stdout
    time.sleep(0.3)
    assert survivors(marker) == []


@needs_bwrap
def test_output_is_capped(box):
    result, _ = run_code(box, "while True: print('x' * 1000)")
    assert result.output_exceeded and len(result.stdout) + len(result.stderr) <= 2 * LIMITS.output_bytes


@needs_bwrap
def test_sees_only_its_own_files_and_environment(box):
    os.environ["SELFIMPROVE_SECRET_TOKEN"] = "hunter2"
    try:
        code = "import os, json; print(json.dumps([sorted(os.listdir('.')), dict(os.environ), os.getcwd()]))"
        result, _ = run_code(box, code, files={"input.txt": "hello", "sub/data.txt": "x"})
    finally:
        del os.environ["SELFIMPROVE_SECRET_TOKEN"]
    assert result.ok
    assert b"hunter2" not in result.stdout and b'["input.txt", "sub"]' in result.stdout and b'"/sandbox"' in result.stdout


@needs_bwrap
def test_passed_descriptors_are_handed_over_and_stop_ends_the_run(box):
    import threading
    read, write = os.pipe()
    result = box.run(["python", "-c", f"import os; os.write({write}, b'through the pipe')"], pass_fds=(write,))
    assert result.ok and os.read(read, 100) == b"through the pipe"
    with pytest.raises(OSError):
        os.fstat(write)  # closed here once the program started: its end is the pipe's end
    assert os.read(read, 100) == b""
    os.close(read)
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    stopped = box.run(["python", "-c", "import time; time.sleep(30)"], stop=stop)
    assert stopped.stopped and stopped.exit_code is None and stopped.describe() == "stopped"
    assert time.monotonic() - started < 2.0


# --- rlimits mode: the weaker opt-in ----------------------------------------------------------


def test_rlimits_mode_still_limits_memory_time_and_processes():
    box = Sandbox("rlimits", Limits(wall_s=2.0, cpu_s=1, memory_mb=256, nproc=16), allow_unsafe_rlimits=UNSAFE_OK)
    assert box.run(["python", "-c", "x = bytearray(50 * 1024 ** 3)"]).exit_code == 1
    started = time.monotonic()
    busy = box.run(["python", "-c", "while True: pass"])
    assert busy.exit_code != 0 and time.monotonic() - started < 2.0 + 1.0
    ok = box.run(["python", "-c", "print(open('f.txt').read())"], files={"f.txt": "mine"})
    assert ok.ok and ok.stdout == b"mine\n"
    forks = box.run(["python", "-c", FORK_COUNT])
    assert forks.ok and int(forks.stdout) < 16
    if os.geteuid() == 0:  # as root each run has a uid of its own, and what it left running dies with it
        escape = "import os, sys, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(30)\nprint('left')"
        result, marker = run_code(box, escape)
        assert result.ok and result.stdout == b"left\n"
        assert survivors(marker) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give each run a uid of its own")
def test_rlimits_runs_at_once_do_not_share_the_process_limit():
    """Verify workers run code at the same time: one run's processes must not eat another's limit."""
    import threading
    # 1 GB: without a memory cgroup, 8 processes of 128 MB each (the budget is split between them)
    box = Sandbox("rlimits", Limits(wall_s=10.0, cpu_s=5, memory_mb=1024, nproc=8))
    sleeper = threading.Thread(target=box.run, args=(["python", "-c", "import os, time\nfor _ in range(6):\n    os.fork()\n    time.sleep(0.05)\ntime.sleep(3)"],))
    sleeper.start()
    time.sleep(1.0)  # the first run now holds its 8 processes
    try:
        forks = box.run(["python", "-c", FORK_COUNT.replace("500", "5")])
        assert forks.ok and int(forks.stdout) == 5
    finally:
        sleeper.join()


def test_code_verifier_refuses_without_bubblewrap_unless_opted_in(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # a machine without bwrap
    bwrap_problem.cache_clear()
    try:
        with pytest.raises(ValueError, match="refuses to run model-written code: bubblewrap .* is not installed.*sandbox: rlimits"):
            get_verifier("code")
        with pytest.raises(SandboxUnavailable):
            Sandbox("bwrap")
        monkeypatch.setattr(sandbox_module, "_warned", False)
        verifier = get_verifier("code", {"sandbox": "rlimits", **({"allow_unsafe_rlimits": True} if UNSAFE_OK else {})})
        assert "WARNING: sandbox mode 'rlimits'" in capsys.readouterr().err
        problem = {"question": "q", "answer": None, "metadata": {"test_list": ["assert f() == 1"]}}
        assert verifier.verify(problem, {"text": "```python\ndef f():\n    return 1\n```"}).status == "correct"
    finally:
        bwrap_problem.cache_clear()


def test_sandbox_arguments_are_checked():
    with pytest.raises(ValueError, match="mode must be one of"):
        Sandbox("docker")
    with pytest.raises(ValueError, match="wall_s"):
        Limits(wall_s=0).check()
    box = Sandbox("rlimits", allow_unsafe_rlimits=UNSAFE_OK)
    with pytest.raises(ValueError, match="relative"):
        box.run(["python", "-c", "pass"], files={"../x": "y"})


# --- the code verifier ------------------------------------------------------------------------

ADD = "Here is my solution.\n```python\ndef add(a, b):\n    return a + b\n```\n"
ADD_WRONG = "```python\ndef add(a, b):\n    return a - b\n```"
STDIN_ADD = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
IO = {"tests": [{"input": "2 3\n", "output": "5\n"}, {"input": "10 -4", "output": "6"}]}
MBPP = {"test_list": ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"], "test_imports": ["import math"]}
HUMANEVAL = {"test": "def check(candidate):\n    assert candidate(2, 3) == 5\n", "entry_point": "add"}
APPS_CALL = {"input_output": '{"fn_name": "add", "inputs": [[1, 2], [3, 4]], "outputs": [[3], [7]]}'}
APPS_IO = {"input_output": {"inputs": ["1 1\n", ["7 8"]], "outputs": ["2\n", ["15"]]}}

CODE_CASES = [
    (IO, STDIN_ADD, "correct", "passed 2/2 stdin/stdout tests"),
    (APPS_IO, STDIN_ADD, "correct", "passed 2/2 stdin/stdout tests"),
    (IO, ADD, "wrong", "failed test 1/2: expected '5', got ''"),
    (MBPP, ADD, "correct", "passed the assert tests"),
    (MBPP, ADD_WRONG, "wrong", "failed the assert tests: AssertionError at `assert add(2, 3) == 5`"),
    (HUMANEVAL, ADD, "correct", "passed the assert tests"),
    (HUMANEVAL, ADD_WRONG, "wrong", "AssertionError"),
    (APPS_CALL, ADD, "correct", "passed the assert tests"),
    (APPS_CALL, ADD_WRONG, "wrong", "test 1: expected [3], got -1"),
    ({"tests": "assert add(1, 1) == 2"}, ADD, "correct", "passed the assert tests"),
    (MBPP, "```python\nimport sys\ndef add(a, b):\n    return a - b\nsys.exit(0)\n```", "wrong", "ended before its tests finished"),
    (MBPP, "```python\nimport os\ndef add(a, b):\n    return 0\nos._exit(0)\n```", "wrong", "ended before its tests finished"),
    (MBPP, "```python\ndef add(a, b):\n    return a + b\nprint('" + "x" * 50 + "')\n```", "correct", "passed"),
    (IO, "```python\nwhile True: pass\n```", "wrong", "failed test 1/2: time limit of 1.0 s exceeded"),
    (IO, "No code, just words: 5", "no_answer", "no ```python block found"),
    (IO, "```python\nprint(5)\n```\nand a better one:\n```python\nprint(", "no_answer", "not closed"),
    (IO, "```js\nconsole.log(5)\n```", "no_answer", "no ```python block found"),
    ({}, ADD, "error", "problem has no tests"),
    ({"test": "def check(c): pass"}, ADD, "error", "entry_point"),
]


@needs_bwrap
@pytest.mark.parametrize("metadata, text, status, reason", CODE_CASES)
def test_code_verifier(metadata, text, status, reason):
    verifier = get_verifier("code", {"test_timeout_s": 1.0, "timeout_s": 3.0})
    verdict = verifier.verify({"question": "q", "answer": None, "metadata": metadata}, {"text": text})
    assert verdict.status == status and reason in verdict.reason, verdict


@needs_bwrap
def test_code_solution_cannot_forge_the_report_or_read_the_expected_outputs():
    forger = ("```python\nimport json, os\nprint(json.dumps({'passed': 2, 'total': 2, 'failure': None}))\n"
              "print(os.path.exists('tests.json'), sorted(os.listdir('.')))\n```")
    verdict = get_verifier("code").verify({"metadata": IO}, {"text": forger})
    assert verdict.status == "wrong" and "tests.json" not in verdict.reason and "False" in verdict.reason


@needs_bwrap
def test_code_compare_modes():
    spaced = {"tests": [{"input": "", "output": "1 2\n3"}]}
    text = "```python\nprint('1  2')\nprint('3   ')\n```"
    assert get_verifier("code", {"compare": "tokens"}).verify({"metadata": spaced}, {"text": text}).status == "correct"
    assert get_verifier("code", {"compare": "lines"}).verify({"metadata": spaced}, {"text": text}).status == "wrong"
    trailing = "```python\nprint('1 2')\nprint('3   ')\n```"
    assert get_verifier("code", {"compare": "lines"}).verify({"metadata": spaced}, {"text": trailing}).status == "correct"
    assert get_verifier("code", {"compare": "exact"}).verify({"metadata": spaced}, {"text": trailing}).status == "wrong"
