"""Execution throughput and per-test overhead, side by side in one run (issue #3 item 9).

    python benchmarks/execution.py [--tests 400] [--workers N] [--tasks 164]
                                   [--evalplus-python /tmp/evalplus-venv/bin/python]

Prints, for one machine state (load average printed before and after):
(a) test executions per second for a trivial stdin/stdout program through `ExecutionPool` in each
    sandbox mode vs the naive baseline, a fresh `python` subprocess per test (no isolation), at the
    same concurrency;
(b) the per-test overhead of the pool, defined as: wall time per test of the program `pass` run as
    one job of `--overhead-tests` stdin/stdout tests on a one-worker pool (each test a fresh, limited,
    isolated process in a fresh emptied directory, leftovers killed), minus the wall time per run of
    the same test body in-process (`exec` of the compiled `pass` in a fresh `__main__` dict). Printed
    with two reference points: the latency of a one-test job (adds the per-job hand-off: queue,
    compile, three messages) and the floor set by this machine's `fork()+_exit()+waitpid()` of a bare
    `python -I -S` process, which every isolated test must pay;
(c) the HumanEval+ canonical solutions over all their base+plus inputs through the pool, and, with
    `--evalplus-python`, EvalPlus's own evaluator on the same tasks and inputs at the same parallelism
    (see `evalplus_reference.py`; run with an interpreter that has `evalplus==0.3.1`).
"""
import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from rlef_jax.data import assets  # noqa: E402
from rlef_jax.execution import ExecutionPool, IOCase, Job, Limits  # noqa: E402
from rlef_jax.execution import evalplus  # noqa: E402
from rlef_jax.execution.sandbox import interpreter  # noqa: E402

TRIVIAL = "print(int(input()) + 1)\n"
HERE = os.path.dirname(os.path.abspath(__file__))
FORK_FLOOR = """
import os, time
n = 500
t0 = time.perf_counter()
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
print((time.perf_counter() - t0) / n * 1000)
"""


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def naive(n_tests, workers, flags):
    def one(i):
        out = subprocess.run([sys.executable, *flags, "-c", TRIVIAL], input=f"{i}\n", capture_output=True,
                             text=True, timeout=30)
        return out.stdout == f"{i + 1}\n"
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        ok = all(ex.map(one, range(n_tests)))
    return n_tests / (time.perf_counter() - t0), ok


def pooled(pool, n_tests, tests_per_job):
    jobs = [Job(TRIVIAL, [IOCase(f"{i}\n", f"{i + 1}\n") for i in range(j, min(j + tests_per_job, n_tests))])
            for j in range(0, n_tests, tests_per_job)]
    pool.map(jobs[:2])
    t0 = time.perf_counter()
    results = pool.map(jobs)
    return n_tests / (time.perf_counter() - t0), all(r.passed for r in results)


def in_process_ms(n=20000):
    """Wall time of the test body itself: `pass` compiled once, exec'd in a fresh module dict."""
    code = compile("pass\n", "main.py", "exec")
    t0 = time.perf_counter()
    for _ in range(n):
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    return (time.perf_counter() - t0) / n * 1000


def fork_floor_ms():
    out = subprocess.run([interpreter(), "-I", "-S", "-c", FORK_FLOOR], capture_output=True, text=True, check=True)
    return float(out.stdout)


def overhead(mode, n, rounds=3):
    """(per-test ms in an n-test job, best of `rounds`; median latency ms of a 1-test job; all passed)."""
    with ExecutionPool(workers=1, sandbox=mode, allow_weak=mode == "weak") as pool:
        job = Job("pass\n", [IOCase("", "")] * n)
        one = Job("pass\n", [IOCase("", "")])
        ok = pool.map([job])[0].passed
        per_test = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            ok &= pool.map([job])[0].passed
            per_test.append((time.perf_counter() - t0) / n * 1000)
        lat = []
        for _ in range(50):
            t1 = time.perf_counter()
            ok &= pool.submit(one).result().passed
            lat.append((time.perf_counter() - t1) * 1000)
    return min(per_test), statistics.median(lat), ok


def humaneval(pool, path, k):
    tasks = evalplus.load_tasks(path)[:k]
    cache = tempfile.mkdtemp(prefix="rlef_bench_cache_")
    t0 = time.perf_counter()
    exp = {w: evalplus.compute_expected(tasks, pool, w, cache_dir=cache) for w in ("base", "plus")}
    t_expected = time.perf_counter() - t0
    futures, n = [], 0
    t0 = time.perf_counter()
    for t in tasks:
        for w in ("base", "plus"):
            cases = evalplus.evalplus_cases(t, w, exp[w][t["task_id"]])
            n += len(cases)
            futures.append(pool.submit(Job(t["prompt"] + t["canonical_solution"], cases, entry_point=t["entry_point"],
                                           limits=Limits(time_s=20.0, memory_bytes=4 << 30))))
    results = [f.result() for f in futures]
    dt = time.perf_counter() - t0
    passed = sum(results[i].passed and results[i + 1].passed for i in range(0, len(results), 2))
    return n, dt, t_expected, passed, len(tasks)


def evalplus_reference(python, path, k, workers):
    """EvalPlus's own evaluator in its own interpreter; None and a reason when it cannot run."""
    cmd = [python, os.path.join(HERE, "evalplus_reference.py"), "--dataset", path, "--tasks", str(k),
           "--parallel", str(workers)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"{python} could not run it ({e})"
    if out.returncode != 0:
        return None, f"it failed (exit {out.returncode}): {out.stderr.strip().splitlines()[-1:]}"
    return json.loads(out.stdout.strip().splitlines()[-1]), None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tests", type=int, default=400)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--tests-per-job", type=int, default=4)
    ap.add_argument("--overhead-tests", type=int, default=300)
    ap.add_argument("--humaneval", default=str(assets.benchmark_file(assets.HUMANEVAL_PLUS)),
                    help="HumanEval+ .jsonl.gz (default: the v0.1.10 file shipped in rlef_jax/assets/benchmarks)")
    ap.add_argument("--tasks", type=int, default=164)
    ap.add_argument("--evalplus-python", default=None,
                    help="an interpreter with evalplus==0.3.1 installed (kept out of this environment), "
                         "e.g. /tmp/evalplus-venv/bin/python; EvalPlus's evaluator is timed only with it")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}, workers={args.workers}, "
          f"load average (1/5/15 min) at start: {load_average()}")
    base, ok0 = naive(args.tests, args.workers, [])
    base_is, ok1 = naive(args.tests, args.workers, ["-I", "-S"])
    print(f"naive fresh `python` per test (venv, site on):   {base:8.1f} tests/s  ok={ok0}")
    print(f"naive fresh `python -I -S` per test:             {base_is:8.1f} tests/s  ok={ok1}")
    body_ms, floor_ms = in_process_ms(), fork_floor_ms()
    for mode in ("bwrap", "unshare", "weak"):
        try:
            with ExecutionPool(workers=args.workers, sandbox=mode, allow_weak=mode == "weak") as pool:
                rate, ok = pooled(pool, args.tests, args.tests_per_job)
                rate1, ok1 = pooled(pool, args.tests, 1)
        except RuntimeError as e:
            print(f"pool[{mode}]: unavailable ({e})")
            continue
        print(f"pool[{mode}] {args.tests_per_job} tests/job:                       {rate:8.1f} tests/s  ok={ok}  "
              f"({rate / base:.1f}x naive, {rate / base_is:.1f}x naive -I -S)")
        print(f"pool[{mode}] 1 test/job:                         {rate1:8.1f} tests/s  ok={ok1}  "
              f"({rate1 / base:.1f}x naive, {rate1 / base_is:.1f}x naive -I -S)")
        per_test, latency, ok2 = overhead(mode, args.overhead_tests)
        print(f"pool[{mode}] overhead per test: {per_test - body_ms:.2f} ms  (= {per_test:.3f} ms/test for `pass` in "
              f"a {args.overhead_tests}-test job on 1 worker - {body_ms * 1000:.1f} us in-process)  ok={ok2}; "
              f"1-test job latency {latency:.2f} ms (median of 50); machine floor fork+exit+wait {floor_ms:.2f} ms")
    if os.path.exists(args.humaneval):
        with ExecutionPool(workers=args.workers) as pool:
            n, dt, t_exp, passed, k = humaneval(pool, args.humaneval, args.tasks)
        print(f"pool[{pool.mode}] HumanEval+ canonical, {k} tasks, {n} inputs (base+plus): {n / dt:8.1f} tests/s "
              f"({dt:.1f} s; {passed}/{k} tasks pass; expected outputs computed in {t_exp:.1f} s)")
        if args.evalplus_python:
            ref, why = evalplus_reference(args.evalplus_python, args.humaneval, args.tasks, args.workers)
            if ref is None:
                print(f"EvalPlus's evaluator: not measured: {why}")
            else:
                print(f"EvalPlus 0.3.1 evaluator, {ref['samples']} tasks, {ref['inputs']} inputs:           "
                      f"{ref['inputs'] / ref['seconds']:8.1f} tests/s ({ref['seconds']:.1f} s; {ref['passed']}/"
                      f"{ref['samples']} tasks pass; its ground truth computed in {ref['groundtruth_seconds']:.1f} s)")
        else:
            print("EvalPlus's evaluator: not measured (pass --evalplus-python=PY, an interpreter with "
                  "evalplus==0.3.1 installed in a separate virtualenv)")
    else:
        print(f"HumanEval+: {args.humaneval} not found - not measured")
    print(f"load average (1/5/15 min) at end: {load_average()}")


if __name__ == "__main__":
    main()
