"""Test-only verifier that runs a long sandbox, loaded by the pool as "tests.helpers_sandbox:SandboxHog"."""

import tempfile

from selfimprove.verifiers import Verdict, Verifier
from selfimprove.verifiers.sandbox import Limits, Sandbox

# Leaves all it can behind, then waits: a process in a session of its own, files in the shared
# writable directories (rlimits mode: the host's; bwrap: its own) and one in its work directory.
HOG = """
import os, subprocess, sys, time
marker = sys.argv[1]
subprocess.Popen(['sleep', marker], start_new_session=True)
for d in ('/tmp', '/var/tmp', '/dev/shm', '.'):
    try:
        open(os.path.join(d, 'hog-' + marker), 'w').write('left behind')
    except OSError:
        pass
print('started', flush=True)
time.sleep(60)
"""


class SandboxHog(Verifier):
    """Runs HOG in a sandbox of `mode` with a 60 s limit: the pool kills the worker long before."""

    version = "test"
    defaults = {"mode": "bwrap", "marker": "", "tmp": ""}

    def verify(self, problem, sample):
        tempfile.tempdir = self._params["tmp"] or None  # where rlimits mode makes its work directory
        box = Sandbox(self._params["mode"], Limits(wall_s=60, cpu_s=60))
        result = box.run(["python", "-c", HOG, self._params["marker"]])
        return Verdict("wrong", 0.0, None, f"the sandbox ended: {result.describe()}")
