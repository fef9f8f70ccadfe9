"""Test-only verifiers that misbehave on purpose, loaded by the pool as "tests.helpers_verifiers:Name"."""

import ctypes
import multiprocessing
import os
import resource
import time

from selfimprove.verifiers import Verdict, Verifier


class SleepyVerifier(Verifier):
    """Hangs forever on an output saying "sleep", takes 0.6 s on "nap", answers "correct" at once
    otherwise."""

    version = "test"
    defaults = {"echo": ""}

    def verify(self, problem, sample):
        if sample["text"] == "sleep":
            while True:
                time.sleep(1)
        if sample["text"] == "nap":
            time.sleep(0.6)
        return Verdict("correct", 1.0, sample["text"], f"echo {self._params['echo']}{sample['text']}")


class CrashyVerifier(Verifier):
    """Kills its own process on "exit", segfaults on "segv", raises on "raise", asks for more
    memory than the pool's limit on "oom"."""

    version = "test"

    def verify(self, problem, sample):
        text = sample["text"]
        if text == "exit":
            os._exit(3)
        if text == "raise":
            raise RuntimeError("boom " + "x" * 1000)
        if text == "segv":
            ctypes.string_at(0)
        if text == "oom":
            return Verdict("correct", 1.0, str(len(bytearray(64 * 1024**3))), "got 64 GiB")
        return Verdict("correct", 1.0, text, "fine")


class GroupVerifier(Verifier):
    """A group verifier: a sample is correct when its text is the most common one of its problem;
    sleeps forever when a problem's samples include "sleep"."""

    version = "test"
    group = True

    def verify_group(self, problem, samples):
        texts = [s["text"] for s in samples]
        if "sleep" in texts:
            while True:
                time.sleep(1)
        top = max(set(texts), key=texts.count)
        return [Verdict("correct" if t == top else "wrong", float(t == top), t, "majority") for t in texts]


class ProcessInfoVerifier(Verifier):
    """Reports where it runs: "pid <pid> as <RLIMIT_AS soft limit>"."""

    version = "test"

    def verify(self, problem, sample):
        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        return Verdict("correct", 1.0, f"pid {os.getpid()} as {limit}", "info")


class WorkerShyVerifier(Verifier):
    """Builds fine in the parent process and fails in any worker process."""

    version = "test"

    def __init__(self, **params):
        super().__init__(**params)
        if multiprocessing.parent_process() is not None:
            raise ValueError("I do not work in workers")

    def verify(self, problem, sample):
        return Verdict("correct", 1.0, None, "fine")
