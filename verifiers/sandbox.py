"""Run code written by a model where it can do no harm: bubblewrap, rlimits, a wall-clock kill.

Model-written code is hostile input that executes. Under bubblewrap ("bwrap" mode) it gets:

- no network (its own empty network namespace) and its own PID namespace: it cannot see or
  signal any process outside, and when the sandbox ends every process in it dies, including
  ones it started in a new session to outlive the run;
- a read-only view of the system's programs and libraries (/usr and the interpreter, nothing
  else: no /etc, no home, no project, no /tmp of the host), a read-only /dev, and exactly two
  writable places, both size-capped tmpfs gone when the run ends: its working directory
  (`tmpfs_mb`) and /dev/shm (`shm_mb`);
- rlimits on CPU time, address space, processes (a fork bomb stops at `nproc`), file size and
  open files, set by a launcher inside the sandbox before the code starts;
- a wall-clock limit after which the whole process group is killed (SIGKILL), and a cap on the
  output it may write back.

`memory_mb` bounds the run as a whole, not each process. Where a memory cgroup can be made
here (cgroup v2 with the memory controller, or v1's memory hierarchy, writable by us), every
run gets one of its own, capped at `memory_mb`: all its processes together, and what they
write to its tmpfs, stay under it (past it the kernel kills one of them). Where none can be
made, the budget is split: the run may have at most memory_mb / FALLBACK_PROCESS_MB processes
(and no more than `nproc`), each with an equal share as its address-space limit. Memory a
process holds outside its address space (a memfd or SysV segment it wrote and unmapped, pipe
buffers) is then not counted; it is bounded only by `fsize_mb` times the open-file limit.

When run as root, the sandbox runs as the unprivileged user "nobody" (uid 65534): root is
exempt from the process limit, and nobody owns nothing outside.

"rlimits" mode, for machines without bubblewrap, keeps only the rlimits, the memory cgroup, a
private temporary directory, the uid drop and the wall-clock kill of the process group. The
code can then read whatever its user can read and use the network. It is a weaker opt-in with
a loud warning, never a silent fallback, and it is safe enough only as root: each run then gets
a uid of its own that no other process has, so RLIMIT_NPROC, which counts every process of a
user, counts only this run's; at the end every process with that uid is killed, and what that
uid left in the shared writable directories (/tmp, /var/tmp, /dev/shm, ...) and its SysV IPC
objects are removed. As any other user the code would run as that user, able to signal every
process of theirs (`os.kill(-1, 9)` takes the verifier and the shell with it) and to change
their files: Sandbox refuses that unless `allow_unsafe_rlimits=True`.

A run cleans up after itself even when its caller is killed mid-run (the verify pool kills a
worker at its deadline): under bubblewrap everything dies with the caller (--die-with-parent);
in rlimits mode, and for a run's cgroup, a janitor process started once per caller process is
told what each run made and, should the caller die, kills what is left and removes it.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import secrets
import select
import selectors
import shutil
import signal
import stat
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
FALLBACK_PROCESS_MB = 128  # without a memory cgroup, a process's share of memory_mb is at least this
# Where any user may write: what a run's own uid leaves here is removed after it (rlimits mode as root).
SHARED_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/shm", "/run/lock", "/var/lock", "/dev/mqueue")
CGROUP_PREFIX = "selfimprove-sandbox-"

WARNING = (
    "\n" + "!" * 78 + "\n"
    "WARNING: sandbox mode 'rlimits': model-written code runs WITHOUT bubblewrap.\n"
    "It is limited in CPU time, memory, processes and file size, and as root it runs as a user\n"
    "of its own, but it can read any file that user can read and use the network.\n"
    "Install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap) and use sandbox: bwrap.\n"
    + "!" * 78 + "\n"
)

UNSAFE_RLIMITS = (
    "sandbox: rlimits as a non-root user (uid {uid}) would run model-written code as you: it could kill "
    "every process of yours (os.kill(-1, 9) takes the verifier, the pipeline and your shell with it), read, "
    "change or delete any file you can, and leave processes running. Use sandbox: bwrap (install bubblewrap), "
    "or run as root (each run then gets a uid of its own), or accept the risk with allow_unsafe_rlimits: true"
)

# Runs inside the sandbox with the sandbox's own Python (-I -S: nothing from the environment),
# lowers the rlimits and replaces itself with the program. A limit lowered here cannot be raised
# again by the program. In rlimits mode it also asks for SIGKILL when its parent dies. With a
# cgroup it first waits on `gate` until the parent has moved it there (EOF: the parent died).
_LAUNCHER = r"""
import json, os, resource, sys
limits, death_signal, gate = json.loads(sys.argv[1])
if death_signal:
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL
if gate is not None:
    if not os.read(gate, 1):
        os._exit(125)
    os.close(gate)
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
    memory_mb: int = 512  # the whole run: a memory cgroup, else split over its processes (RLIMIT_AS)
    nproc: int = 32  # processes the code may have, itself included (RLIMIT_NPROC)
    fsize_mb: int = 16  # largest file it may write (RLIMIT_FSIZE)
    tmpfs_mb: int = 64  # size of the private working directory (bwrap mode)
    output_bytes: int = 1_000_000  # stdout + stderr kept; more kills the run
    shm_mb: int = 8  # size of its private /dev/shm (bwrap mode)

    def check(self) -> "Limits":
        for field in ("wall_s", "cpu_s", "memory_mb", "nproc", "fsize_mb", "tmpfs_mb", "output_bytes", "shm_mb"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"sandbox limit {field} must be a number > 0, got {value!r}")
        return self

    def shares(self, whole: bool) -> tuple[int, int]:
        """(processes, address-space MB of each). `whole`: a memory cgroup holds the whole run to
        memory_mb, so each process may have all of it; otherwise memory_mb is split between them."""
        if whole:
            return int(self.nproc), int(self.memory_mb)
        processes = max(1, min(int(self.nproc), int(self.memory_mb) // FALLBACK_PROCESS_MB))
        return processes, int(self.memory_mb) // processes

    def rlimits(self, other_tasks: int = 0, whole: bool = False) -> list[tuple[str, int, int]]:
        """`other_tasks`: processes of the same user outside the code, which RLIMIT_NPROC also
        counts (bubblewrap's init; in rlimits mode as non-root, every other process of ours)."""
        cpu = max(1, int(self.cpu_s + 0.999))
        processes, each_mb = self.shares(whole)
        nproc = processes + other_tasks
        return [
            ("RLIMIT_CPU", cpu, cpu + 1),  # SIGXCPU at the soft limit, SIGKILL a second later
            ("RLIMIT_AS", each_mb << 20, each_mb << 20),
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
                 _probe: bool = True, allow_unsafe_rlimits: bool = False):
        if mode not in MODES:
            raise ValueError(f"sandbox mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.limits = (limits or Limits()).check()
        self.python = python or find_python()
        if not os.path.isabs(self.python) or not os.access(self.python, os.X_OK):
            raise ValueError(f"sandbox python {self.python!r} is not an executable absolute path")
        self.bwrap = shutil.which("bwrap") or "bwrap"
        if mode == "rlimits" and os.geteuid() != 0 and allow_unsafe_rlimits is not True:
            raise SandboxUnavailable(UNSAFE_RLIMITS.format(uid=os.geteuid()))
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
        rlimits_mode = self.mode == "rlimits"
        # Everything the run makes outside the sandbox is in `record`, which a janitor is told
        # about as soon as it exists: a kill of this process mid-run leaves nothing behind either.
        record: dict = {"uid": _unused_uid() if rlimits_mode and os.geteuid() == 0 else None}
        run = _Janitor.begin(record)
        try:
            def announce(path: str, version: int) -> None:  # before it exists: a kill then leaves none
                record.update(cgroup=path, version=version)
                _Janitor.update(run, record)

            cgroup = _Cgroup.make(limits.memory_mb, announce)
            if rlimits_mode:
                record["workdir"] = tempfile.mkdtemp(prefix="selfimprove-sandbox-")
                _Janitor.update(run, record)
            # Under bubblewrap the run has its own user namespace, where only its own processes (and
            # bwrap's init) count; in rlimits mode as root it has a uid of its own; otherwise our
            # user's other processes count too.
            others = (_tasks_of(os.geteuid()) if record["uid"] is None else 0) if rlimits_mode else 1
            rlimits = limits.rlimits(others, whole=cgroup is not None)
            env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
            with tempfile.TemporaryFile() as stdin_file:
                stdin_file.write(stdin)
                stdin_file.seek(0)
                if self.mode == "bwrap":
                    return self._run_bwrap(argv, rlimits, files, env, stdin_file, limits, handed, stop, cgroup)
                return self._run_rlimits(argv, rlimits, files, env, stdin_file, limits, record, run, handed, stop,
                                         cgroup)
        finally:
            _clean({k: v for k, v in record.items() if k != "pgid"})  # its process group is already dead
            _Janitor.end(run)

    def _launcher(self, rlimits: list, death_signal: bool, gate: int | None) -> list[str]:
        return [self.python, "-I", "-S", "-c", _LAUNCHER, json.dumps([rlimits, death_signal, gate])]

    def _run_bwrap(self, argv, rlimits, files, env, stdin_file, limits, handed, stop, cgroup) -> SandboxResult:
        args = [self.bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
                "--new-session", "--clearenv", "--hostname", "sandbox", *_system_mounts(self.python),
                "--proc", "/proc", "--dev", "/dev",
                # the only writable places, each a size-capped tmpfs: /dev/shm and the work directory
                "--perms", "1777", "--size", str(limits.shm_mb << 20), "--tmpfs", "/dev/shm", "--remount-ro", "/dev",
                "--size", str(limits.tmpfs_mb << 20), "--tmpfs", WORKDIR]
        sources = []  # files reach the tmpfs through file descriptors bwrap copies from
        info_read, info_write = os.pipe()  # bwrap writes the host PID of the sandbox's init here
        block_read, block_write = os.pipe() if cgroup is not None else (None, None)
        mine = [info_read, info_write] + ([block_read, block_write] if cgroup is not None else [])
        try:
            args += ["--info-fd", str(info_write)]
            if cgroup is not None:  # the sandbox waits until its init is in the run's cgroup
                args += ["--block-fd", str(block_read)]
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
            command = [*args, "--", *self._launcher(rlimits, False, None), *argv]
            inherit = [info_write, *(f.fileno() for f in sources)] + ([block_read] if cgroup is not None else [])

            def started(proc: subprocess.Popen) -> int | None:
                """Our copies of bwrap's ends closed, the sandbox's init into the cgroup, then let it go."""
                for fd in (info_write, block_read):
                    if fd is not None:
                        os.close(fd)
                        mine.remove(fd)
                init = _sandbox_init(info_read, time.monotonic() + limits.wall_s)
                if cgroup is not None:
                    if init is not None:
                        cgroup.add(init)  # before the init starts the program: all of it is inside
                    os.close(block_write)
                    mine.remove(block_write)
                return init

            return _execute(command, None, {}, stdin_file, limits, inherit, handed, stop, started)
        finally:
            for fd in mine:
                os.close(fd)
            for f in sources:
                f.close()

    def _run_rlimits(self, argv, rlimits, files, env, stdin_file, limits, record, run, handed, stop,
                     cgroup) -> SandboxResult:
        work, run_uid = record["workdir"], record["uid"]
        for name, content in files.items():
            path = os.path.join(work, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(content)
        if run_uid is not None:  # the code runs as its own uid: give it its directory
            for root, dirs, names in os.walk(work):
                for path in [root, *(os.path.join(root, n) for n in dirs + names)]:
                    os.chown(path, run_uid, run_uid)
        gate = list(os.pipe()) if cgroup is not None else []  # the launcher waits there until it is in the cgroup
        try:
            command = [*self._launcher(rlimits, True, gate[0] if gate else None), *argv]

            def started(proc: subprocess.Popen) -> None:
                if run_uid is None:  # without a uid of its own, what it leaves is found by its process group
                    record["pgid"] = proc.pid
                    _Janitor.update(run, record)
                if cgroup is not None:
                    os.close(gate.pop(0))
                    cgroup.add(proc.pid)  # the launcher, waiting at its gate
                    os.write(gate[0], b"go")
                    os.close(gate.pop(0))
                return None

            return _execute(command, work, {**env, "HOME": work, "TMPDIR": work}, stdin_file, limits, gate[:1],
                            handed, stop, started, run_uid)
        finally:
            for fd in gate:
                os.close(fd)


def _execute(args: list[str], cwd: str | None, env: dict, stdin_file, limits: Limits, pass_fds: list[int],
             handed: list[int], stop: threading.Event | None, started=None,
             run_uid: int | None = None) -> SandboxResult:
    """Start args in a new session (as `run_uid`, else nobody, when we are root), collect at most
    `output_bytes` of output, and SIGKILL the process group at the end, at the wall-clock limit or
    when `stop` is set. `handed`: descriptors it inherits, closed here once it has started.
    `started(proc)`, called once it has, may return the host PID of bwrap's sandbox init, whose end
    means every process in it ended."""
    uid = run_uid if run_uid is not None else SANDBOX_UID
    as_nobody = {"user": uid, "group": uid, "extra_groups": []} if os.geteuid() == 0 else {}
    started_at = time.monotonic()
    deadline = started_at + limits.wall_s
    proc = subprocess.Popen(args, cwd=cwd, stdin=stdin_file, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, pass_fds=[*pass_fds, *handed], env=env, **as_nobody)
    for fd in handed:
        os.close(fd)
    handed.clear()
    out, err = bytearray(), bytearray()
    timed_out = exceeded = stopped = False
    sandbox_init = None
    try:
        if started is not None:
            sandbox_init = started(proc)
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
        _kill_group(proc, sandbox_init)
        proc.stdout.close()
        proc.stderr.close()
    code = None if (timed_out or exceeded or stopped) else proc.returncode
    cap = limits.output_bytes
    return SandboxResult(code, bytes(out[:cap]), bytes(err[:cap]), timed_out, exceeded,
                         time.monotonic() - started_at, stopped)


# --- processes, files and IPC objects of a run --------------------------------------------------


def _is_run_uid(uid) -> bool:
    return type(uid) is int and RUN_UIDS.start <= uid < RUN_UIDS.stop


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
    if not _is_run_uid(uid):
        raise ValueError(f"uid {uid} is not a run's own")
    deadline = time.monotonic() + 10.0
    while (pids := _tasks_by_pid(uid, live_only=True)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)


def _remove_files_of(uid: int) -> None:
    """Remove what a run's own uid left in the directories any user may write to: it could write
    nowhere else but its work directory. Its processes must be gone (nothing races us)."""
    if not _is_run_uid(uid):
        raise ValueError(f"uid {uid} is not a run's own")
    seen = set()
    for top in (*SHARED_WRITABLE, tempfile.gettempdir()):
        try:
            st = os.stat(top)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            _remove_owned(top, uid, seen, 0)


def _remove_owned(directory: str, uid: int, seen: set, depth: int) -> None:
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if st.st_uid == uid:
            if stat.S_ISDIR(st.st_mode):
                _rmtree(entry.path)
            else:
                try:
                    os.unlink(entry.path)
                except OSError:
                    pass
        elif stat.S_ISDIR(st.st_mode) and st.st_mode & 0o002 and depth < 8 and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))  # another's directory that anyone may write to: so could the run
            _remove_owned(entry.path, uid, seen, depth + 1)


def _remove_ipc_of(uid: int) -> None:
    """Remove the SysV shared memory, message queues and semaphores a run's uid made or owns
    (rlimits mode has no IPC namespace of its own: they would outlive it)."""
    if not _is_run_uid(uid):
        raise ValueError(f"uid {uid} is not a run's own")
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return
    kinds = {"shm": ("shmid", lambda i: libc.shmctl(i, 0, None)), "msg": ("msqid", lambda i: libc.msgctl(i, 0, None)),
             "sem": ("semid", lambda i: libc.semctl(i, 0, 0))}  # 0: IPC_RMID
    for kind, (id_column, remove) in kinds.items():
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                header, *rows = [line.split() for line in f if line.strip()]
            ids, owners = header.index(id_column), [header.index(c) for c in ("uid", "cuid") if c in header]
        except (OSError, ValueError):
            continue
        for row in rows:
            try:
                if any(int(row[c]) == uid for c in owners):
                    remove(int(row[ids]))
            except (IndexError, ValueError):
                continue


def _rmtree(path: str) -> None:
    """Remove a directory tree, whatever modes the code gave what it made in it. Only what is
    inside the tree is ever made accessible again: never the directory that holds it."""
    top = os.path.abspath(path)
    if not os.path.isdir(top) or os.path.islink(top):
        return
    if os.geteuid() != 0:  # root needs no permission; anyone else, on directories the code locked
        try:
            os.chmod(top, 0o700)
        except OSError:
            pass
        for root, dirs, _ in os.walk(top):
            for name in dirs:
                inner = os.path.join(root, name)
                try:
                    if not os.path.islink(inner):
                        os.chmod(inner, 0o700)
                except OSError:
                    pass
    shutil.rmtree(top, ignore_errors=True)


def _clean(run: dict) -> None:
    """Kill and remove whatever a run left: its process group (rlimits mode, not root), the
    processes of its cgroup and of its own uid, that uid's files and IPC objects, its work
    directory, its cgroup. Safe to repeat."""
    if run.get("pgid"):
        try:
            os.killpg(run["pgid"], signal.SIGKILL)
        except OSError:
            pass
    cgroup = _Cgroup(run["cgroup"], run.get("version", 2)) if run.get("cgroup") else None
    if cgroup is not None:
        cgroup.kill()
    if _is_run_uid(run.get("uid")):  # only ever a run's own uid: never ours, nobody's or another user's
        _kill_user(run["uid"])
        _remove_files_of(run["uid"])
        _remove_ipc_of(run["uid"])
    if run.get("workdir"):
        _rmtree(run["workdir"])
    if cgroup is not None:
        cgroup.remove()


class _Janitor:
    """A process that outlives its caller: told what each run made, it cleans what is left of the
    runs that have not ended when the caller's end of its pipe closes (the caller died, say killed
    by the verify pool at an item's deadline). One per caller process, started on first need."""

    _lock = threading.Lock()
    _proc: subprocess.Popen | None = None
    _owner = 0

    @classmethod
    def begin(cls, record: dict) -> str:
        run = secrets.token_hex(8)
        if any(v is not None for v in record.values()):
            cls._send({"run": run, **record})
        return run

    @classmethod
    def update(cls, run: str, record: dict) -> None:
        cls._send({"run": run, **record})

    @classmethod
    def end(cls, run: str) -> None:
        with cls._lock:
            if cls._proc is None or cls._owner != os.getpid():
                return
        cls._send({"end": run}, start=False)

    @classmethod
    def _send(cls, message: dict, start: bool = True) -> None:
        with cls._lock:
            if cls._proc is None or cls._owner != os.getpid() or cls._proc.poll() is not None:
                if not start:
                    return
                cls._proc, cls._owner = None, os.getpid()
                try:
                    command = [sys.executable or find_python(), "-I", "-S", os.path.abspath(__file__), "--janitor"]
                    cls._proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                                 start_new_session=True)
                except OSError:
                    return  # the run still cleans up after itself; only a killed caller's leftovers stay
            try:
                cls._proc.stdin.write(json.dumps(message).encode() + b"\n")
                cls._proc.stdin.flush()
            except (OSError, ValueError):
                cls._proc = None


def _janitor_main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the caller's; we go when its pipe closes
    runs: dict[str, dict] = {}
    for line in sys.stdin.buffer:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if "end" in message:
            runs.pop(message["end"], None)
        else:
            runs.setdefault(message.pop("run"), {}).update(message)
    for run in runs.values():  # the caller died with these unfinished
        try:
            _clean(run)
        except Exception as e:  # noqa: BLE001 - go on with the others
            print(f"sandbox janitor: {type(e).__name__}: {e}", file=sys.stderr)


# --- memory cgroups -----------------------------------------------------------------------------


class _Cgroup:
    """A cgroup of a run's own, its memory capped: every process of the run, together, and what
    they write to a tmpfs stay under memory_mb (past it the kernel kills one of them)."""

    def __init__(self, path: str, version: int):
        self.path, self.version = path, version

    @classmethod
    def make(cls, memory_mb: int, announce=None) -> _Cgroup | None:
        """A new one, or None where no memory cgroup can be made here. `announce(path, version)`
        is told where before it is made."""
        found = _cgroup_parent()
        if found is None:
            return None
        version, parent = found
        path = os.path.join(parent, f"{CGROUP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
        if announce is not None:
            announce(path, version)
        try:
            os.mkdir(path)
        except OSError:
            return None
        cgroup = cls(path, version)
        limit = str(memory_mb << 20)
        try:
            if version == 2:
                _write(path, "memory.max", limit)
                _write(path, "memory.swap.max", "0", missing_ok=True)
            else:
                _write(path, "memory.limit_in_bytes", limit)
                _write(path, "memory.memsw.limit_in_bytes", limit, missing_ok=True)  # no swap either
        except OSError:
            cgroup.remove()
            return None
        return cgroup

    def add(self, pid: int) -> None:
        _write(self.path, "cgroup.procs", str(pid))

    def pids(self) -> list[int]:
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as f:
                return [int(line) for line in f if line.strip()]
        except (OSError, ValueError):
            return []

    def kill(self) -> None:
        """SIGKILL every process in it."""
        if self.version == 2:
            try:
                _write(self.path, "cgroup.kill", "1")
                return
            except OSError:
                pass
        deadline = time.monotonic() + 10.0
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.01)

    def remove(self) -> None:
        deadline = time.monotonic() + 10.0
        while True:
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    return
                self.kill()  # busy: something still lives in it, or is still exiting
                time.sleep(0.01)


def _write(directory: str, name: str, value: str, missing_ok: bool = False) -> None:
    try:
        with open(os.path.join(directory, name), "w") as f:
            f.write(value)
    except FileNotFoundError:
        if not missing_ok:
            raise


@lru_cache(maxsize=None)
def _cgroup_parent() -> tuple[int, str] | None:
    """(cgroup version, directory) under which each run can get a memory cgroup of its own, or
    None: tried once, by really moving a process into a trial cgroup."""
    try:
        with open("/proc/self/cgroup") as f:
            own = [line.rstrip("\n").split(":", 2) for line in f if line.count(":") >= 2]
        with open("/proc/self/mountinfo") as f:
            mounts = []
            for line in f:
                left, _, right = line.partition(" - ")
                fields, more = left.split(), right.split()
                if len(fields) >= 5 and len(more) >= 3:
                    mounts.append((fields[3], fields[4], more[0], more[2]))  # root, mount point, type, options
    except OSError:
        return None
    candidates = []
    for hierarchy, controllers, path in own:
        for root, point, fstype, options in mounts:
            if hierarchy == "0" and not controllers and fstype == "cgroup2":
                directory = _cgroup_dir(point, root, path)
                while directory is not None:  # ours, then its parents: one whose children can have memory
                    try:
                        with open(os.path.join(directory, "cgroup.subtree_control")) as f:
                            if "memory" in f.read().split():
                                candidates.append((2, directory))
                    except OSError:
                        pass
                    directory = None if directory == point else os.path.dirname(directory)
            elif "memory" in controllers.split(",") and fstype == "cgroup" and "memory" in options.split(","):
                directory = _cgroup_dir(point, root, path)
                if directory is not None:
                    candidates.append((1, directory))
    for version, directory in candidates:
        if _cgroup_works(version, directory):
            return version, directory
    return None


def _cgroup_dir(point: str, root: str, path: str) -> str | None:
    if path != root and not path.startswith(root.rstrip("/") + "/"):
        return None
    return os.path.normpath(point + "/" + path[len(root):])


def _cgroup_works(version: int, parent: str) -> bool:
    path = os.path.join(parent, f"{CGROUP_PREFIX}probe-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.mkdir(path)
    except OSError:
        return False
    proc = None
    try:
        if not os.path.exists(os.path.join(path, "memory.max" if version == 2 else "memory.limit_in_bytes")):
            return False
        proc = subprocess.Popen([find_python(), "-I", "-S", "-c", "import sys; sys.stdin.read()"],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _write(path, "cgroup.procs", str(proc.pid))
        return True
    except OSError:
        return False
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
            proc.stdin.close()
        _Cgroup(path, version).remove()


# --- ends of a run ------------------------------------------------------------------------------


def _sandbox_init(info_fd: int, deadline: float) -> int | None:
    """The host PID of the sandbox's init, from bwrap's --info-fd report (None if bwrap made none)."""
    data = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([info_fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(info_fd, 4096)
        if not chunk:
            break
        data += chunk
        try:
            return int(json.loads(data)["child-pid"])
        except (ValueError, KeyError, TypeError):
            continue
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

if __name__ == "__main__" and sys.argv[1:] == ["--janitor"]:
    _janitor_main()
