"""Run code written by a model where it can do no harm: bubblewrap, rlimits, a wall-clock kill.

Model-written code is hostile input that executes. Under bubblewrap ("bwrap" mode) it gets:

- no network (its own empty network namespace) and its own PID namespace: it cannot see or
  signal any process outside, and when the sandbox ends every process in it dies, including
  ones it started in a new session to outlive the run;
- a read-only view of the system's programs and libraries (/usr and the interpreter, nothing
  else: no /etc, no home, no project, no /tmp of the host) and a private, size-capped tmpfs as
  its working directory, gone when the run ends;
- rlimits on CPU time, address space, processes (a fork bomb stops at `nproc`), file size and
  open files, set by a launcher inside the sandbox before the code starts;
- a wall-clock limit after which the whole process group is killed (SIGKILL), and a cap on the
  output it may write back.

When run as root, the sandbox runs as the unprivileged user "nobody" (uid 65534): root is
exempt from the process limit, and nobody owns nothing outside.

"rlimits" mode, for machines without bubblewrap, keeps only the rlimits, a private temporary
directory, the uid drop and the wall-clock kill of the process group. The code can then read
whatever "nobody" can read, use the network, and (unless we are root) leave processes behind.
It is a weaker opt-in with a loud warning, never a silent fallback. As root, each rlimits run
gets a uid of its own that no other process has: RLIMIT_NPROC, which counts every process of a
user, then counts only this run's (not other runs of the verify pool, nor a killed run's
processes still exiting), and at the end every process with that uid is killed.
"""

from __future__ import annotations

import json
import os
import random
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import lru_cache

MODES = ("bwrap", "rlimits")
WORKDIR = "/sandbox"  # the code's private working directory inside the sandbox
SANDBOX_UID = 65534  # "nobody": what the code runs as when we are root
RUN_UIDS = range(1_900_000_000, 2_000_000_000)  # rlimits mode as root: one unused uid per run
PYTHON_CANDIDATES = ("/usr/bin/python3", "/usr/local/bin/python3")

WARNING = (
    "\n" + "!" * 78 + "\n"
    "WARNING: sandbox mode 'rlimits': model-written code runs WITHOUT bubblewrap.\n"
    "It is limited in CPU time, memory, processes and file size, but it can read any file the\n"
    "user 'nobody' (or you) can read, use the network, and leave processes running.\n"
    "Install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap) and use sandbox: bwrap.\n"
    + "!" * 78 + "\n"
)

# Runs inside the sandbox with the sandbox's own Python (-I -S: nothing from the environment),
# lowers the rlimits and replaces itself with the program. A limit lowered here cannot be raised
# again by the program. In rlimits mode it also asks for SIGKILL when its parent dies.
_LAUNCHER = r"""
import json, os, resource, sys
limits, death_signal = json.loads(sys.argv[1])
if death_signal:
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL
for name, soft, hard in limits:
    resource.setrlimit(getattr(resource, name), (soft, hard))
os.umask(0o077)
os.execv(sys.argv[2], sys.argv[2:])
"""


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot run here; the message says why and what to do."""


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0  # whole run, wall clock; then the process group is killed
    cpu_s: int = 10  # CPU seconds per process (RLIMIT_CPU)
    memory_mb: int = 512  # address space per process (RLIMIT_AS)
    nproc: int = 32  # processes of the sandbox user (RLIMIT_NPROC)
    fsize_mb: int = 16  # largest file it may write (RLIMIT_FSIZE)
    tmpfs_mb: int = 64  # size of the private working directory (bwrap mode)
    output_bytes: int = 1_000_000  # stdout + stderr kept; more kills the run

    def check(self) -> "Limits":
        for field in ("wall_s", "cpu_s", "memory_mb", "nproc", "fsize_mb", "tmpfs_mb", "output_bytes"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"sandbox limit {field} must be a number > 0, got {value!r}")
        return self

    def rlimits(self, other_tasks: int = 0) -> list[tuple[str, int, int]]:
        """`other_tasks`: processes of the same user outside this run, which RLIMIT_NPROC also counts
        when the run has no user namespace of its own (rlimits mode)."""
        cpu = max(1, int(self.cpu_s + 0.999))
        nproc = self.nproc + other_tasks
        return [
            ("RLIMIT_CPU", cpu, cpu + 1),  # SIGXCPU at the soft limit, SIGKILL a second later
            ("RLIMIT_AS", self.memory_mb << 20, self.memory_mb << 20),
            ("RLIMIT_NPROC", nproc, nproc),
            ("RLIMIT_FSIZE", self.fsize_mb << 20, self.fsize_mb << 20),
            ("RLIMIT_NOFILE", 256, 256),
            ("RLIMIT_CORE", 0, 0),
        ]


@dataclass(frozen=True)
class SandboxResult:
    exit_code: int | None  # None when the run was killed from outside (time or output limit)
    stdout: bytes
    stderr: bytes
    timed_out: bool = False
    output_exceeded: bool = False
    seconds: float = 0.0
    stopped: bool = False  # ended early because the caller's `stop` event was set

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.output_exceeded

    def describe(self) -> str:
        """Why the run ended, in a few words."""
        if self.timed_out:
            return "time limit exceeded"
        if self.stopped:
            return "stopped"
        if self.output_exceeded:
            return "output limit exceeded"
        code = self.exit_code
        if code is not None and code < 0:
            return f"killed by {_signal_name(-code)}"
        if code is not None and code > 128 and _signal_name(code - 128):  # bwrap reports 128 + signal
            return f"exit code {code} (killed by {_signal_name(code - 128)}?)"
        return f"exit code {code}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return ""


def find_python() -> str:
    """A system Python for the sandbox: one that lives under /usr, which the sandbox shows."""
    for path in PYTHON_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _system_mounts(python: str) -> list[str]:
    """Read-only binds of the programs and libraries, mirroring the host's layout."""
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    args += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    real = os.path.realpath(python)
    if not real.startswith("/usr/"):  # an interpreter outside /usr: show its installation, nothing more
        prefix = os.path.dirname(os.path.dirname(real))
        args += ["--ro-bind", prefix, prefix]
    return args


class Sandbox:
    """Runs one program at a time in a fresh sandbox; cheap to build, safe to reuse."""

    def __init__(self, mode: str = "bwrap", limits: Limits | None = None, python: str | None = None,
                 _probe: bool = True):
        if mode not in MODES:
            raise ValueError(f"sandbox mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.limits = (limits or Limits()).check()
        self.python = python or find_python()
        if not os.path.isabs(self.python) or not os.access(self.python, os.X_OK):
            raise ValueError(f"sandbox python {self.python!r} is not an executable absolute path")
        self.bwrap = shutil.which("bwrap") or "bwrap"
        if mode == "bwrap" and _probe:
            problem = bwrap_problem(self.python)
            if problem:
                raise SandboxUnavailable(problem)

    def run(self, argv: list[str], files: dict[str, str | bytes] | None = None, stdin: bytes = b"",
            limits: Limits | None = None, pass_fds: tuple[int, ...] = (),
            stop: threading.Event | None = None) -> SandboxResult:
        """Run argv (argv[0] an absolute path; "python" means the sandbox's Python) in its work
        directory, with `files` (relative names) written there first and `stdin` as its input.

        `pass_fds` (pipes, say, to another sandbox) are inherited at the same numbers and handed
        over: closed here as soon as the program has started, so that its end is their end. The
        run is killed when `stop` is set (for a run in another thread)."""
        handed = list(pass_fds)
        try:
            return self._run(argv, files, stdin, (limits or self.limits).check(), handed, stop)
        finally:
            for fd in handed:
                os.close(fd)

    def _run(self, argv, files, stdin, limits, handed, stop) -> SandboxResult:
        argv = [self.python if a == "python" and i == 0 else a for i, a in enumerate(argv)]
        files = {name: c.encode() if isinstance(c, str) else c for name, c in (files or {}).items()}
        for name in files:
            if not name or os.path.isabs(name) or ".." in name.split("/"):
                raise ValueError(f"sandbox file name must be relative and inside the work dir, got {name!r}")
        # Under bubblewrap the run has its own user namespace, where only its own processes count;
        # in rlimits mode as root it has a uid of its own; otherwise our user's other processes count too.
        run_uid = _unused_uid() if self.mode == "rlimits" and os.geteuid() == 0 else None
        others = _tasks_of(os.geteuid()) if self.mode == "rlimits" and run_uid is None else 0
        launcher = [self.python, "-I", "-S", "-c", _LAUNCHER, json.dumps([limits.rlimits(others), self.mode == "rlimits"])]
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
        with tempfile.TemporaryFile() as stdin_file:
            stdin_file.write(stdin)
            stdin_file.seek(0)
            if self.mode == "bwrap":
                return self._run_bwrap(launcher + argv, files, env, stdin_file, limits, handed, stop)
            return self._run_rlimits(launcher + argv, files, env, stdin_file, limits, run_uid, handed, stop)

    def _run_bwrap(self, command, files, env, stdin_file, limits, handed, stop) -> SandboxResult:
        args = [self.bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
                "--new-session", "--clearenv", "--hostname", "sandbox", *_system_mounts(self.python),
                "--proc", "/proc", "--dev", "/dev", "--size", str(limits.tmpfs_mb << 20), "--tmpfs", WORKDIR]
        sources = []  # files reach the tmpfs through file descriptors bwrap copies from
        info_read, info_write = os.pipe()  # bwrap writes the host PID of the sandbox's init here
        try:
            args += ["--info-fd", str(info_write)]
            for name, content in files.items():
                f = tempfile.TemporaryFile()
                sources.append(f)
                f.write(content)
                f.seek(0)
                if os.path.dirname(name):
                    args += ["--dir", f"{WORKDIR}/{os.path.dirname(name)}"]
                args += ["--file", str(f.fileno()), f"{WORKDIR}/{name}"]
            args += ["--remount-ro", "/", "--chdir", WORKDIR]
            for key, value in {**env, "HOME": WORKDIR, "TMPDIR": WORKDIR}.items():
                args += ["--setenv", key, value]
            return _execute([*args, "--", *command], None, {}, stdin_file, limits,
                            [info_write, *(f.fileno() for f in sources)], handed, stop, info_read)
        finally:
            os.close(info_write)
            os.close(info_read)
            for f in sources:
                f.close()

    def _run_rlimits(self, command, files, env, stdin_file, limits, run_uid: int | None, handed,
                     stop) -> SandboxResult:
        with tempfile.TemporaryDirectory(prefix="selfimprove-sandbox-") as work:
            for name, content in files.items():
                path = os.path.join(work, name)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(content)
            if run_uid is not None:  # the code runs as its own uid: give it its directory
                for root, dirs, names in os.walk(work):
                    for path in [root, *(os.path.join(root, n) for n in dirs + names)]:
                        os.chown(path, run_uid, run_uid)
            try:
                return _execute(command, work, {**env, "HOME": work, "TMPDIR": work}, stdin_file, limits, [],
                                handed, stop, run_uid=run_uid)
            finally:
                if run_uid is not None:
                    _kill_user(run_uid)


def _execute(args: list[str], cwd: str | None, env: dict, stdin_file, limits: Limits, pass_fds: list[int],
             handed: list[int], stop: threading.Event | None, info_fd: int | None = None,
             run_uid: int | None = None) -> SandboxResult:
    """Start args in a new session (as `run_uid`, else nobody, when we are root), collect at most
    `output_bytes` of output, and SIGKILL the process group at the end, at the wall-clock limit or
    when `stop` is set. `handed`: descriptors it inherits, closed here once it has started.
    `info_fd`: where bwrap reports its sandbox's init, whose end means every process in it ended."""
    uid = run_uid if run_uid is not None else SANDBOX_UID
    as_nobody = {"user": uid, "group": uid, "extra_groups": []} if os.geteuid() == 0 else {}
    started = time.monotonic()
    deadline = started + limits.wall_s
    proc = subprocess.Popen(args, cwd=cwd, stdin=stdin_file, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, pass_fds=[*pass_fds, *handed], env=env, **as_nobody)
    for fd in handed:
        os.close(fd)
    handed.clear()
    out, err = bytearray(), bytearray()
    timed_out = exceeded = stopped = False
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ, out)
            sel.register(proc.stderr, selectors.EVENT_READ, err)
            exited_at = None
            while sel.get_map() and not exceeded:
                now = time.monotonic()
                if now >= deadline:
                    timed_out = True
                    break
                if stop is not None and stop.is_set():
                    stopped = True
                    break
                if exited_at is None and proc.poll() is not None:
                    exited_at = now
                if exited_at is not None and now > exited_at + 0.2:
                    break  # the program is gone; whatever still holds its pipes (rlimits mode) is not waited for
                for key, _ in sel.select(timeout=min(0.1 if stop is None else 0.02, deadline - now)):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        continue
                    key.data.extend(chunk)
                    exceeded = len(out) + len(err) > limits.output_bytes
    finally:
        _kill_group(proc, _sandbox_init(info_fd) if info_fd is not None else None)
        proc.stdout.close()
        proc.stderr.close()
    code = None if (timed_out or exceeded or stopped) else proc.returncode
    cap = limits.output_bytes
    return SandboxResult(code, bytes(out[:cap]), bytes(err[:cap]), timed_out, exceeded, time.monotonic() - started,
                         stopped)


def _tasks_by_pid(uid: int, live_only: bool = False) -> dict[int, int]:
    """pid -> threads (what RLIMIT_NPROC counts) of the processes whose real user is uid;
    `live_only` leaves out zombies (dead, waiting for a parent to reap them)."""
    tasks = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/status") as f:
                    status = dict(line.split(":", 1) for line in f if ":" in line)
                if int(status["Uid"].split()[0]) == uid and not (live_only and status["State"].split()[0] in "ZX"):
                    tasks[int(entry.name)] = int(status["Threads"])
            except (OSError, KeyError, ValueError):
                continue
    return tasks


def _tasks_of(uid: int) -> int:
    return sum(_tasks_by_pid(uid).values())


def _unused_uid() -> int:
    """A uid from RUN_UIDS that no process has (a random pick is free unless runs number millions)."""
    rng = random.SystemRandom()
    while True:
        uid = rng.choice(RUN_UIDS)
        if not _tasks_by_pid(uid):
            return uid


def _kill_user(uid: int) -> None:
    """SIGKILL every process of a run's own uid (what it left behind, in any session), until none is left."""
    deadline = time.monotonic() + 10.0
    while (pids := _tasks_by_pid(uid, live_only=True)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)


def _sandbox_init(info_fd: int) -> int | None:
    """The host PID of the sandbox's init, from bwrap's --info-fd report, if it made one."""
    os.set_blocking(info_fd, False)
    try:
        return int(json.loads(os.read(info_fd, 4096))["child-pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _kill_group(proc: subprocess.Popen, sandbox_init: int | None = None) -> None:
    """SIGKILL the run's process group and reap it. Under bubblewrap, killing bwrap kills the
    sandbox's init, and the kernel then kills everything in its PID namespace; that init lives
    on until all of them are gone, so waiting for it makes the run's end the end of its processes."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    deadline = time.monotonic() + 10.0
    while sandbox_init is not None and time.monotonic() < deadline:
        try:
            with open(f"/proc/{sandbox_init}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return
        except (OSError, IndexError):
            return  # gone and reaped
        time.sleep(0.01)


@lru_cache(maxsize=None)
def bwrap_problem(python: str | None = None) -> str | None:
    """Why bubblewrap cannot sandbox code here, or None if a trial run works (checked once)."""
    if shutil.which("bwrap") is None:
        return ("bubblewrap (bwrap) is not installed. Install it (Debian/Ubuntu: apt-get install bubblewrap; "
                "`make setup` does this where it can), or opt in to the weaker rlimits-only sandbox with "
                "sandbox: rlimits (no file-system or network isolation)")
    python = python or find_python()
    try:
        result = Sandbox("bwrap", Limits(wall_s=20), python, _probe=False).run(["python", "-I", "-S", "-c", "print('ok')"])
    except OSError as e:
        return f"bubblewrap failed to start: {e}"
    if result.ok and result.stdout.strip() == b"ok":
        return None
    detail = (result.stderr or result.stdout).decode("utf-8", "replace").strip()[-300:]
    return (f"bubblewrap is installed but cannot create a sandbox here ({result.describe()}: {detail}). "
            "It needs unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, or in a container "
            "seccomp/AppArmor that allows them), or opt in to the weaker sandbox: rlimits")


def warn_rlimits_mode() -> None:
    """The loud warning of the weaker mode, once per process."""
    global _warned
    if not _warned:
        _warned = True
        print(WARNING, file=sys.stderr, flush=True)


_warned = False
