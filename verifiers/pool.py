"""Run a verifier over many samples in worker processes, with a hard wall-clock limit per item.

Model output is hostile input: one answer can make a parser or sympy run for hours or eat all
memory. So verification runs in separate processes, each with an address-space limit, and a
worker that overruns its item's deadline is killed (SIGKILL) and replaced. Its item gets a
"timeout" verdict, a worker that dies gets its item an "error" verdict, and everything else in
the batch is verified as usual, results in input order.

Workers come from the "forkserver" context, because the parent may hold a multithreaded
inference engine that a plain fork would copy in a broken state. Each worker builds its own
verifier from (spec, params): verifier objects are never pickled.

Items go to a worker in chunks, and only to an idle worker, so a send never waits on a busy
one; the worker sends back the whole chunk's verdicts in one message. Messages per item would
cost the parent more than verifying a number costs a worker (measured: 40 us of parent CPU per
item against 70 us of verifying), and on two cores the parent would starve the workers. Per-item
deadlines need no messages: before each item the worker writes the item's id and start time to
memory it shares with the parent, which reads them when it wakes at the earliest deadline, so
every item gets the full limit to itself. When a worker is killed or dies mid-chunk, its item
gets the verdict; the chunk's other items are verified again by another worker.

A verifier with a wall-clock limit of its own (`time_limit_s`: the `code` verifier's timeout_s)
must have it below the pool's: otherwise the pool kills the worker first, mid-run, and every slow
answer gets "timeout" instead of the verifier's verdict. The pool refuses such a pair (see
`time_limit_problem`). What a killed worker was running in a sandbox is cleaned up by the
sandbox's janitor (verifiers/sandbox.py): no process, work directory or cgroup is left behind.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
import threading
import time
from collections import deque
from multiprocessing.connection import wait
from typing import Callable

from selfimprove.verifiers.base import MAX_ANSWER_CHARS, Verdict, Verifier, clip, get_verifier
from selfimprove.verifiers.extract import clean_text

MAX_CHUNK = 128  # samples per chunk, at most (fewer near the end of a batch, to spread the tail)
MAX_CHUNK_CHARS = 2_000_000  # and text per chunk: a send blocks until the worker has read it all
START_TIMEOUT_S = 120.0  # a worker that is not ready by then is broken, not slow


def _worker_main(conn, state, spec: str, params: dict | None, memory_limit_mb: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if memory_limit_mb:
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = memory_limit_mb * 1024 * 1024
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        verifier = get_verifier(spec, params)
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises
        conn.send(("init_error", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            chunk = conn.recv()
        except EOFError:
            return
        if chunk is None:
            return
        verdicts = []
        for task_id, problem, samples in chunk:
            # start time first, then the id: the parent reads the id first, so it never pairs an
            # item with an older start (CLOCK_MONOTONIC is the parent's clock too)
            state[1] = time.monotonic()
            state[0] = task_id
            verdicts.append(_run(verifier, problem, samples))
        state[0] = -1
        conn.send(("done", verdicts))


def _run(verifier: Verifier, problem: dict, samples: list[dict]) -> list[tuple]:
    """Verdicts of one task as plain tuples; anything the verifier raises becomes an error verdict."""
    try:
        if verifier.group:
            verdicts = verifier.verify_group(problem, samples)
        else:
            verdicts = [verifier.verify(problem, samples[0])]
        if not isinstance(verdicts, list) or len(verdicts) != len(samples):
            raise TypeError(f"verifier gave {type(verdicts).__name__} for {len(samples)} samples, not a list of Verdicts")
        bad = next((v for v in verdicts if not isinstance(v, Verdict)), None)
        if bad is not None:
            raise TypeError(f"verifier returned {type(bad).__name__}, not a Verdict")
        return [
            (v.status, float(v.score), None if v.extracted is None else clean_text(str(v.extracted)[:MAX_ANSWER_CHARS]),
             clean_text(clip(str(v.reason), 500)))
            for v in verdicts
        ]
    except BaseException as e:  # noqa: BLE001 - includes MemoryError, RecursionError, SystemExit
        try:
            detail = f"{type(e).__name__}: {e}"
        except BaseException:  # noqa: BLE001 - even str(e) can fail on hostile input
            detail = type(e).__name__
        return [("error", 0.0, None, clean_text(clip(f"verifier raised {detail}", 300)))] * len(samples)


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"worker died: killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            pass
    return f"worker died: exit code {exitcode}"


class _Worker:
    def __init__(self, ctx, spec: str, params: dict | None, memory_limit_mb: int):
        self.conn, child = ctx.Pipe()  # chunks down; "ready", "init_error", ("done", verdicts) up
        self.state = ctx.RawArray("d", [-1.0, 0.0])  # [task id being verified or -1, when it started]
        self.proc = ctx.Process(target=_worker_main, args=(child, self.state, spec, params, memory_limit_mb), daemon=True)
        self.proc.start()
        child.close()
        self.ready = False
        self.started = time.monotonic()
        self.queue: list[int] = []  # task ids of the chunk it is verifying, in order
        self.sent_at = 0.0  # when that chunk was sent

    def current(self) -> tuple[int, float]:
        """(position in the chunk of the item being verified, when it started). Before the worker
        starts the chunk's first item, that item counts as started when the chunk was sent."""
        task_id = int(self.state[0])
        started = self.state[1]
        if task_id >= 0 and task_id in self.queue:
            return self.queue.index(task_id), started
        return 0, self.sent_at

    def ask_to_exit(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass

    def stop(self, grace_s: float = 0.0) -> None:
        self.proc.join(grace_s)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


class VerifyPool:
    """A pool of verifier worker processes; use as a context manager or call close()."""

    def __init__(self, spec: str, params: dict | None = None, workers: int = 0, timeout_s: float = 5.0,
                 memory_limit_mb: int = 4096):
        self.verifier = get_verifier(spec, params)  # a bad spec or params fails here, in the caller
        if self.verifier.uses_engine:
            raise ValueError(f"verifier {spec!r} needs the generation engine (an LLM judge): the verify stage runs it, "
                             "not a worker pool")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be an integer >= 0 (0 = one per CPU), got {workers!r}")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
            raise ValueError(f"timeout_s must be a number > 0, got {timeout_s!r}")
        problem = time_limit_problem(self.verifier, timeout_s)
        if problem:
            raise ValueError(problem)
        if isinstance(memory_limit_mb, bool) or not isinstance(memory_limit_mb, int) or memory_limit_mb < 0:
            raise ValueError(f"memory_limit_mb must be an integer >= 0 (0 = no limit), got {memory_limit_mb!r}")
        self.spec, self.params = spec, dict(params or {})
        self.timeout_s = float(timeout_s)
        self.memory_limit_mb = memory_limit_mb
        self.workers = workers or _cpu_count()
        self._ctx = multiprocessing.get_context("forkserver")
        self._pool: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> VerifyPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        self._stop_all(kill=False)

    def _stop_all(self, kill: bool) -> None:
        if not kill:
            for w in self._pool:
                w.ask_to_exit()
        for w in self._pool:
            w.stop(grace_s=0.0 if kill else 2.0)
        self._pool = []

    def verify(self, jobs: list[tuple[dict, list[dict]]], progress: Callable[[int], None] | None = None) -> list[list[Verdict]]:
        """One verdict per sample of each (problem, samples) job, in input order."""
        if self._closed:
            raise RuntimeError("VerifyPool is closed")
        with self._lock:
            try:
                return self._verify(jobs, progress)
            except BaseException:
                self._stop_all(kill=True)  # workers may hold half-done work; start clean next time
                raise

    def _verify(self, jobs, progress) -> list[list[Verdict]]:
        return _Batch(self, jobs).run(progress)

    def _start(self) -> _Worker:
        return _Worker(self._ctx, self.spec, self.params, self.memory_limit_mb)


class _Batch:
    """One `verify` call: its items handed out to the pool's workers in chunks, each item's
    deadline watched, a dead or overrunning worker replaced and its unfinished items handed out
    again (the one that overran gets its `timeout` verdict)."""

    def __init__(self, pool: VerifyPool, jobs: list[tuple[dict, list[dict]]]):
        self.pool, self.jobs = pool, jobs
        self.results: list[list[Verdict | None]] = [[None] * len(samples) for _, samples in jobs]
        if pool.verifier.group:  # a task is (job, first sample, number of samples)
            self.tasks = [(j, 0, len(samples)) for j, (_, samples) in enumerate(jobs) if samples]
        else:
            self.tasks = [(j, i, 1) for j, (_, samples) in enumerate(jobs) for i in range(len(samples))]
        self.pending = deque(range(len(self.tasks)))
        self.left = sum(n for _, _, n in self.tasks)  # samples without a verdict yet

    def limit(self, task_id: int) -> float:
        return self.pool.timeout_s * self.tasks[task_id][2]

    def finish(self, task_id: int, verdicts: list[Verdict]) -> int:
        j, i, n = self.tasks[task_id]
        self.results[j][i : i + n] = verdicts
        return n

    def text_size(self, task_id: int) -> int:
        j, i, n = self.tasks[task_id]
        return sum(len(t) for s in self.jobs[j][1][i : i + n] if isinstance(s, dict) and isinstance(t := s.get("text"), str))

    def deadline(self, w: _Worker) -> float:
        pos, started = w.current()
        return started + self.limit(w.queue[pos])

    def collect(self, w: _Worker) -> tuple[int, bool]:
        """Read the worker's messages: (samples finished, whether its pipe is still open)."""
        done, is_open = 0, True
        try:
            while w.conn.poll():
                kind, detail = w.conn.recv()
                if kind == "ready":
                    w.ready = True
                elif kind == "init_error":
                    raise ValueError(f"verifier {self.pool.spec!r} failed to start in a worker: {detail}")
                elif kind == "done":
                    for task_id, verdicts in zip(w.queue, detail):
                        done += self.finish(task_id, [Verdict(*v) for v in verdicts])
                    w.queue = []
        except (EOFError, OSError):
            is_open = False
        return done, is_open

    def replace(self, k: int, verdict: Verdict | None) -> int:
        """Start a new worker in place of dead worker k. Its current item gets `verdict` (or,
        with None, goes back in line); the rest of its chunk goes back in line, to be
        verified again (the dead worker's finished items were never reported)."""
        workers = self.pool._pool
        w = workers[k]
        w.stop()
        workers[k] = self.pool._start()
        if not w.queue:
            return 0
        pos, _ = w.current()  # the dead worker's last word
        task_id = w.queue[pos]
        rest = w.queue[:pos] + w.queue[pos + 1 :]
        self.pending.extendleft(reversed(w.queue if verdict is None else rest))
        return 0 if verdict is None else self.finish(task_id, [verdict] * self.tasks[task_id][2])

    def hand_out(self, now: float) -> None:
        """Give each idle worker a chunk: about an even share of what is left, capped in samples and characters."""
        for w in self.pool._pool:
            if not (w.ready and not w.queue and self.pending):
                continue
            size = max(1, min(MAX_CHUNK, self.left // (2 * len(self.pool._pool))))  # in samples
            chunk = [self.pending.popleft()]
            samples, chars = self.tasks[chunk[0]][2], self.text_size(chunk[0])
            while self.pending and samples + self.tasks[self.pending[0]][2] <= size and chars < MAX_CHUNK_CHARS:
                samples += self.tasks[self.pending[0]][2]
                chars += self.text_size(self.pending[0])
                chunk.append(self.pending.popleft())
            w.queue = chunk
            w.sent_at = now
            try:
                w.conn.send([(t, self.jobs[self.tasks[t][0]][0],
                              self.jobs[self.tasks[t][0]][1][self.tasks[t][1] : self.tasks[t][1] + self.tasks[t][2]])
                             for t in chunk])
            except OSError:  # died while idle: nothing was started, so nothing is lost
                self.pending.extendleft(reversed(w.queue))
                w.queue = []

    def tend(self, k: int, w: _Worker) -> int:
        """Collect worker k's results; replace it if it died or overran its item's deadline."""
        alive = w.proc.is_alive()  # checked first: a dead worker's messages are all in its pipe
        done, pipe_open = self.collect(w)
        if not (alive and pipe_open):
            w.proc.join(1.0)
            done += self.collect(w)[0]  # a chunk finished between the check and its death
            if not w.ready:
                raise RuntimeError(f"verifier worker exited before it was ready ({_death(w.proc.exitcode)}); "
                                   f"see its traceback above (memory_limit_mb={self.pool.memory_limit_mb})")
            return done + self.replace(k, Verdict("error", 0.0, None, _death(w.proc.exitcode)))
        if w.queue and time.monotonic() >= self.deadline(w):
            w.proc.kill()
            w.proc.join()
            done += self.collect(w)[0]  # it may have finished the chunk just before the kill
            if w.queue and time.monotonic() >= self.deadline(w):
                pos, _ = w.current()
                return done + self.replace(k, Verdict("timeout", 0.0, None, f"verification exceeded {self.limit(w.queue[pos])} s"))
            return done + self.replace(k, None)  # it had moved on to an item with time left: nothing overran
        if not w.ready and time.monotonic() >= w.started + START_TIMEOUT_S:
            raise RuntimeError(f"verifier worker not ready after {START_TIMEOUT_S:.0f} s")
        return done

    def run(self, progress: Callable[[int], None] | None) -> list[list[Verdict]]:
        workers = self.pool._pool
        while len(workers) < min(self.pool.workers, len(self.tasks)):
            workers.append(self.pool._start())
        while self.left:
            now = time.monotonic()
            self.hand_out(now)
            deadlines = [self.deadline(w) for w in workers if w.queue]
            deadlines += [w.started + START_TIMEOUT_S for w in workers if not w.ready]
            timeout = max(0.0, min(deadlines) - now) if deadlines else None
            wait([w.conn for w in workers] + [w.proc.sentinel for w in workers], timeout)
            done = sum(self.tend(k, w) for k, w in enumerate(list(workers)))
            if done:
                self.left -= done
                if progress is not None:
                    progress(done)
        return self.results  # type: ignore[return-value]


def time_limit_problem(verifier: Verifier, timeout_s: float) -> str | None:
    """Why `timeout_s`, the pool's hard limit per item, cannot go with this verifier, or None: it
    (or a composite's child) has a wall-clock limit of its own, `time_limit_s`, that is not below."""
    stack = [verifier]
    while stack:
        v = stack.pop()
        stack.extend(getattr(v, "children", ()))
        own = getattr(v, "time_limit_s", None)
        if isinstance(own, (int, float)) and own >= timeout_s:
            return (f"verifier {v.name!r}: its own timeout_s ({own:g} s; verify.params.timeout_s in a run config) "
                    f"must be below the pool's hard limit per item, verify.timeout_s ({timeout_s:g} s; --timeout of "
                    "`verifiers check`): past that the worker is killed first, mid-run, and every slow answer would get "
                    f"'timeout' instead of the verifier's own verdict. Raise verify.timeout_s above {own:g} s, or lower "
                    "the verifier's timeout_s")
    return None


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the CPUs this process may use, not all the machine has
    except AttributeError:
        return os.cpu_count() or 1
