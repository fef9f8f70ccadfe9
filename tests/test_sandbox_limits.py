"""What a hostile probe found the sandbox let through, each now detected, refused or contained.

- a `code` verifier whose own timeout is not below the pool's is refused, and a worker the pool
  kills mid-run leaves no process, work directory, file or cgroup behind, in either mode;
- under bubblewrap every writable place is a size-capped tmpfs (/dev is read-only, /dev/shm
  small);
- `memory_mb` bounds a run as a whole, not each of its processes;
- rlimits mode as a non-root user (the code would run as that user) is refused without an
  explicit opt-in;
- rlimits mode as root leaves nothing in /tmp, /var/tmp, /dev/shm or SysV IPC.

Sizes are small and nothing asserts a tight time: a loaded two-core CI machine passes these.
"""

import json
import os
import secrets
import threading
import time
from pathlib import Path

import pytest

from tests.test_sandbox import BWRAP, needs_bwrap, survivors
from selfimprove.verifiers import VerifyPool, get_verifier
from selfimprove.verifiers import sandbox as sandbox_module
from selfimprove.verifiers.sandbox import Limits, Sandbox, SandboxUnavailable

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="rlimits mode is safe, and tested, only as root (a uid per run)")
CGROUP = getattr(sandbox_module, "_cgroup_parent", lambda: None)()
# each mode, with a memory cgroup per run (where one can be made here) and without one
MODES = [pytest.param("bwrap", marks=needs_bwrap), pytest.param("rlimits", marks=needs_root)]
CGROUPS = [pytest.param(True, marks=pytest.mark.skipif(CGROUP is None, reason="no memory cgroup can be made here")),
           False]
RLIMITS_CODE = {"sandbox": "rlimits", **({} if IS_ROOT else {"allow_unsafe_rlimits": True})}  # built, never run


def wait_until(check, seconds: float = 15.0):
    """check() until it is true or `seconds` pass (a janitor cleans up in its own time); its last value."""
    deadline = time.monotonic() + seconds
    while not (value := check()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return value


def without_cgroups(monkeypatch):
    monkeypatch.setattr(sandbox_module, "_cgroup_parent", lambda: None, raising=False)


def our_cgroups() -> set[str]:
    if CGROUP is None:
        return set()
    return {name for name in os.listdir(CGROUP[1]) if name.startswith("selfimprove-sandbox-")}


# --- 12: the code verifier's own time limit, and a worker killed mid-run ------------------------


def test_pool_refuses_a_code_timeout_not_below_its_own():
    with pytest.raises(ValueError, match=r"timeout_s \(6 s.*below the pool's hard limit per item, verify.timeout_s \(1.5 s"):
        VerifyPool("code", {**RLIMITS_CODE, "timeout_s": 6.0}, timeout_s=1.5)
    with pytest.raises(ValueError, match=r"verifier 'code': its own timeout_s \(5 s"):
        VerifyPool("code", {**RLIMITS_CODE, "timeout_s": 5}, timeout_s=5.0)
    nested = {"verifiers": [{"verifier": "code", "params": {**RLIMITS_CODE, "timeout_s": 9}}]}
    with pytest.raises(ValueError, match=r"timeout_s \(9 s.*Raise verify.timeout_s above 9 s"):
        VerifyPool("all_of", nested, timeout_s=5.0)
    VerifyPool("code", RLIMITS_CODE, timeout_s=5.0).close()  # the defaults, 4 s inside 5 s, go together


@pytest.mark.parametrize("mode", MODES)
def test_a_worker_killed_mid_run_leaves_nothing_behind(mode, tmp_path):
    marker = f"93.{secrets.randbelow(10**6)}"
    tmp_path.chmod(0o755)  # the run's own uid reaches its work directory in here
    cgroups_before = our_cgroups()
    seen = []
    watching = threading.Event()

    def watch():  # the sandbox really ran when the pool killed its worker
        while not watching.is_set():
            if survivors(marker):
                seen.append(True)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with VerifyPool("tests.helpers_sandbox:SandboxHog", {"mode": mode, "marker": marker, "tmp": str(tmp_path)},
                        workers=1, timeout_s=4.0) as pool:
            [[verdict]] = pool.verify([({"question": "q", "answer": None, "metadata": {}}, [{"text": "x"}])])
    finally:
        watching.set()
        watcher.join()
    assert verdict.status == "timeout", verdict
    assert seen, "the sandbox never started: nothing was killed mid-run"
    leftovers = [f"/tmp/hog-{marker}", f"/var/tmp/hog-{marker}", f"/dev/shm/hog-{marker}"]
    try:
        assert wait_until(lambda: not survivors(marker)), survivors(marker)
        assert wait_until(lambda: not list(tmp_path.iterdir())), list(tmp_path.iterdir())  # its work directory
        assert wait_until(lambda: not any(os.path.lexists(p) for p in leftovers))
        assert wait_until(lambda: our_cgroups() <= cgroups_before), our_cgroups() - cgroups_before
    finally:
        for path in leftovers:
            if os.path.lexists(path):
                os.unlink(path)


# --- 13: every writable mount under bubblewrap is bounded --------------------------------------

FILL = """
import json, os
written = {}
for line in open('/proc/self/mounts'):
    source, point, fstype, options = line.split()[:4]
    if 'rw' not in options.split(',') or fstype in ('proc', 'sysfs', 'devpts') or not os.path.isdir(point):
        continue
    written[point] = 0
    for i in range(48):  # 512 kB files (below the file-size limit) until the mount is full, at most 24 MB
        try:
            with open(os.path.join(point, f'fill-{i}'), 'wb') as f:
                f.write(b'x' * (512 << 10))
            written[point] += 1
        except OSError:
            break
for point in ('/dev', '/dev/shm'):  # whatever /proc/self/mounts says
    try:
        open(point + '/probe', 'wb').write(b'x')
        written.setdefault(point + ' (probe)', 1)
    except OSError:
        pass
print(json.dumps(written))
"""


@needs_bwrap
def test_bwrap_writable_mounts_are_size_capped_and_dev_is_read_only():
    limits = Limits(wall_s=20, cpu_s=10, memory_mb=256, fsize_mb=1, tmpfs_mb=4)
    result = Sandbox("bwrap", limits).run(["python", "-c", FILL])
    assert result.ok, result
    written = {point: n / 2 for point, n in json.loads(result.stdout).items()}  # MB
    assert "/dev (probe)" not in written, written  # /dev itself is read-only
    assert set(written) <= {"/sandbox", "/dev/shm", "/dev/shm (probe)"}, written
    assert 3 <= written["/sandbox"] <= 4, written
    assert written.get("/dev/shm", 0) <= 8, written  # it wrote 24 MB there (1.5 GB unbounded) before


# --- 14: memory_mb bounds the whole run --------------------------------------------------------

HOLD = """
import os, sys, time
size, children, wait = int(sys.argv[1]) << 20, int(sys.argv[2]), float(sys.argv[3])
r, w = os.pipe()
pids = []
for _ in range(children):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        try:
            held = b'x' * size  # every page written: resident, not just reserved
        except MemoryError:
            os._exit(1)
        os.write(w, b'%d\\n' % os.getpid())
        time.sleep(60)
        os._exit(0)
    pids.append(pid)
time.sleep(wait)
os.set_blocking(r, False)
try:
    reported = {int(p) for p in os.read(r, 65536).split()}
except BlockingIOError:
    reported = set()
holding = [p for p in pids if p in reported and os.waitpid(p, os.WNOHANG) == (0, 0)]  # still alive, all at once
print(len(pids), len(holding))
"""


@pytest.mark.parametrize("cgroup", CGROUPS, ids=["cgroup", "no cgroup"])
@pytest.mark.parametrize("mode", MODES)
def test_memory_limit_bounds_the_run_as_a_whole(mode, cgroup, monkeypatch):
    if not cgroup:
        without_cgroups(monkeypatch)
    box = Sandbox(mode, Limits(wall_s=10, cpu_s=6, memory_mb=200, nproc=16))
    # four children of 100 MB each: 400 MB together, each well inside 200 MB of address space
    result = box.run(["python", "-c", HOLD, "100", "4", "4"])
    assert result.ok, result
    forked, holding = map(int, result.stdout.split())
    assert holding * 100 <= 200, f"{holding} processes held 100 MB each at once under memory_mb=200"
    if cgroup:  # processes as many as nproc, and one of them may use most of the memory
        assert forked == 4 and holding >= 1, result


def test_without_a_cgroup_memory_is_split_between_fewer_processes():
    assert Limits(memory_mb=512, nproc=32).shares(whole=False) == (4, 128)
    assert Limits(memory_mb=512, nproc=32).shares(whole=True) == (32, 512)
    assert Limits(memory_mb=100, nproc=32).shares(whole=False) == (1, 100)
    assert Limits(memory_mb=4096, nproc=8).shares(whole=False) == (8, 512)


# --- 15: rlimits mode as a non-root user ---------------------------------------------------------


def test_rlimits_as_non_root_is_refused_unless_opted_in(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SandboxUnavailable, match=r"non-root user \(uid 1000\).*os.kill\(-1, 9\).*allow_unsafe_rlimits: true"):
        Sandbox("rlimits")
    with pytest.raises(ValueError, match="refuses to run model-written code: sandbox: rlimits as a non-root user"):
        get_verifier("code", {"sandbox": "rlimits"})
    assert Sandbox("rlimits", allow_unsafe_rlimits=True).mode == "rlimits"
    assert get_verifier("code", {"sandbox": "rlimits", "allow_unsafe_rlimits": True}).params()["allow_unsafe_rlimits"]
    with pytest.raises(ValueError, match="allow_unsafe_rlimits must be true or false"):
        get_verifier("code", {"sandbox": "rlimits", "allow_unsafe_rlimits": "yes"})


@needs_root
def test_rlimits_as_root_kill_minus_one_reaches_only_the_run():
    """What the refusal protects: as root the run has a uid of its own, so kill(-1) finds nothing of ours."""
    import subprocess
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        result = Sandbox("rlimits", Limits(wall_s=10)).run(["python", "-c", "import os\nos.kill(-1, 9)\nprint('alive')"])
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
    assert result.exit_code in (0, -9), result  # it may take itself down; nothing else


# --- 16: rlimits mode as root leaves no files or IPC objects ------------------------------------

LITTER = """
import ctypes, os, sys
marker = sys.argv[1]
for d in ('/tmp', '/var/tmp', '/dev/shm'):
    open(f'{d}/litter-{marker}', 'w').write('x')
os.makedirs(f'/tmp/litter-{marker}-dir/sub')
open(f'/tmp/litter-{marker}-dir/sub/f', 'w').write('x')
os.chmod(f'/tmp/litter-{marker}-dir/sub', 0)
libc = ctypes.CDLL(None, use_errno=True)
shm = libc.shmget(0, 4096, 0o1000 | 0o600)  # IPC_PRIVATE, IPC_CREAT
print(shm, os.getuid())
"""


@needs_root
def test_rlimits_as_root_leaves_no_files_or_ipc_behind():
    marker = secrets.token_hex(6)
    paths = [f"/tmp/litter-{marker}", f"/var/tmp/litter-{marker}", f"/dev/shm/litter-{marker}", f"/tmp/litter-{marker}-dir"]
    try:
        result = Sandbox("rlimits", Limits(wall_s=10)).run(["python", "-c", LITTER, marker])
        assert result.ok, result
        shm, uid = map(int, result.stdout.split())
        assert [p for p in paths if os.path.lexists(p)] == []
        with open("/proc/sysvipc/shm") as f:
            rows = [line.split() for line in f][1:]
        assert shm < 0 or all(int(row[1]) != shm for row in rows), "its shared memory segment outlived it"
    finally:
        import shutil
        for path in paths:
            if os.path.isdir(path):
                for root, dirs, _ in os.walk(path):
                    for d in dirs:
                        os.chmod(os.path.join(root, d), 0o700)
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.lexists(path):
                os.unlink(path)
