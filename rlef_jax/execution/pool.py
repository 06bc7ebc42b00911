"""A bounded pool of sandboxed runners with an asynchronous API (paper §2: execution inside rollouts).

`submit(job)` returns a `concurrent.futures.Future[JobResult]` at once, so the rollout loop can keep
generating while programs run. Each worker thread owns one sandbox (a runner process started with
subprocess, i.e. fork+exec of a clean `python -I -S`: no JAX process is ever forked and the runner never
touches an accelerator: CUDA_VISIBLE_DEVICES etc. are absent from its empty environment). A crashed
or killed sandbox only fails the job it was running and is replaced; sandboxes are recycled every
`recycle_after` jobs. Everything is torn down on `close()`, at interpreter exit, and, because the
sandboxes run with parent-death signals, when the host process is killed (SIGTERM/SIGKILL).
"""
from __future__ import annotations

import atexit
import concurrent.futures
import os
import queue
import threading
import time
import weakref

from rlef_jax.execution import judge
from rlef_jax.execution.sandbox import SandboxDied, SandboxProcess, resolve_mode
from rlef_jax.execution.types import CaseResult, Job, JobResult, Verdict

_STOP = object()


class ExecutionPool:
    """Runs `Job`s concurrently in sandboxes.

    workers: concurrency (default: the machine's cores). sandbox: "auto" (bwrap when it works, else
    "unshare" when it works, else "weak" only if allow_weak), "bwrap", "unshare" or "weak" (see
    sandbox.py). allow_weak: permit the weak mode (no network or filesystem isolation: programs can
    read the host's files, private tests included); without it, creating a pool that would run weak
    raises RuntimeError naming the fix. work_bytes: size of each sandbox's tmpfs for working
    directories. recycle_after: jobs per sandbox before it is restarted.
    """

    def __init__(self, workers: int | None = None, sandbox: str = "auto", work_bytes: int = 256 << 20,
                 recycle_after: int = 500, allow_weak: bool = False):
        workers = workers if workers is not None else (os.cpu_count() or 1)
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"ExecutionPool(workers=...) must be a positive int, got {workers!r}")
        self.mode = resolve_mode(sandbox, allow_weak)
        self.workers = workers
        self._work_bytes, self._recycle_after = work_bytes, recycle_after
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._lock = threading.Lock()
        self._active: dict = {}
        self.sandbox_uids: set = set()
        self._threads = [threading.Thread(target=self._worker, name=f"rlef-exec-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()
        self._watchdog = threading.Thread(target=self._watch, name="rlef-exec-watchdog", daemon=True)
        self._watchdog.start()
        ref = weakref.ref(self)
        self._atexit = lambda: (ref() is not None and ref().close())
        atexit.register(self._atexit)

    # ------------------------------------------------------------------------------------------ API
    def submit(self, job: Job, deadline: float | None = None) -> concurrent.futures.Future:
        """Queue `job`; `deadline` is an absolute time.monotonic() after which it is killed (TIMEOUT)."""
        if self._closed:
            raise RuntimeError("ExecutionPool.submit() after close(); create a new pool")
        if not isinstance(job, Job):
            raise TypeError(f"ExecutionPool.submit expects a Job, got {type(job).__name__}")
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((job, future, deadline))
        return future

    def map(self, jobs, deadline_s: float | None = None) -> list[JobResult]:
        """Run a batch; with `deadline_s`, jobs still running after that many seconds are cut short."""
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        futures = [self.submit(j, deadline) for j in jobs]
        return [f.result() for f in futures]

    def close(self):
        """Stop the workers and end every sandbox (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for _ in self._threads:
            self._queue.put(_STOP)
        with self._lock:
            for sandbox, _ in list(self._active.values()):
                sandbox.kill()
        for t in self._threads:
            t.join(timeout=10)
        atexit.unregister(self._atexit)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------------------------- internals
    def _watch(self):
        while not self._closed:
            now = time.monotonic()
            with self._lock:
                overdue = [s for s, d in self._active.values() if d is not None and now >= d]
            for sandbox in overdue:
                sandbox.deadline_hit = True
                sandbox.kill()
            time.sleep(0.02)

    def _worker(self):
        sandbox = None
        me = threading.get_ident()
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                job, future, deadline = item
                if not future.set_running_or_notify_cancel():
                    continue
                if not job.program.strip():
                    n = max(1, len(job.cases))
                    future.set_result(JobResult(Verdict.NO_CODE, [CaseResult(Verdict.NO_CODE)] * n))
                    continue
                if deadline is not None and time.monotonic() >= deadline:
                    future.set_result(_cut_short(job, {}, "The batch deadline passed before the job started."))
                    continue
                try:
                    if sandbox is None or not sandbox.alive() or sandbox.jobs_run >= self._recycle_after:
                        if sandbox is not None:
                            sandbox.kill()
                        sandbox = SandboxProcess(self.mode, self._work_bytes)
                        self.sandbox_uids.add(sandbox.uid)
                        sandbox.deadline_hit = False
                    safety = time.monotonic() + 60 + len(job.cases) * (job.limits.time_s + 1) * 2
                    with self._lock:
                        self._active[me] = (sandbox, safety if deadline is None else min(deadline, safety))
                    future.set_result(self._run(sandbox, job))
                except BaseException as e:  # the pool must survive anything a job does
                    if not future.done():
                        future.set_exception(e)
                    if sandbox is not None:
                        sandbox.kill()
                        sandbox = None
                finally:
                    with self._lock:
                        self._active.pop(me, None)
                    if sandbox is not None and (sandbox.deadline_hit or not sandbox.alive()):
                        sandbox.kill()
                        sandbox = None
        finally:
            if sandbox is not None:
                sandbox.kill()

    def _run(self, sandbox: SandboxProcess, job: Job) -> JobResult:
        results: dict = {}
        try:
            for msg in sandbox.run(judge.job_message(job)):
                if msg["type"] == "program" and msg["syntax_error"]:
                    err = msg["syntax_error"]
                    return JobResult(Verdict.SYNTAX_ERROR,
                                     [CaseResult(Verdict.SYNTAX_ERROR, error=err)] * max(1, len(job.cases)))
                if msg["type"] == "case":
                    i = msg["i"]
                    results[i] = judge.judge_case(job, job.cases[i], msg)
        except SandboxDied:
            if getattr(sandbox, "deadline_hit", False):
                return _cut_short(job, results, "Execution took too long.")
            return _cut_short(job, results, "The sandbox crashed while running this test.", Verdict.RUNTIME_ERROR)
        return _cut_short(job, results, "The sandbox returned no report for this test.", Verdict.RUNTIME_ERROR)


def _cut_short(job: Job, results: dict, error: str, verdict: Verdict = Verdict.TIMEOUT) -> JobResult:
    return JobResult(None, [results.get(i) or CaseResult(verdict, error=error) for i in range(len(job.cases))])
