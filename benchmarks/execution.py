"""Execution throughput, side by side in one run (issue #3 item 9).

    python benchmarks/execution.py [--tests 400] [--workers N] [--humaneval PATH] [--tasks K]

Prints test executions per second for (a) trivial stdin/stdout programs through ExecutionPool (full
isolation when bwrap works) vs a naive baseline (a fresh `python3` subprocess per test, no isolation) at
the same concurrency, (b) the per-test overhead of the pool (one worker, trivial program), and (c) the
HumanEval+ canonical solutions over all their base+plus inputs, plus EvalPlus's own evaluator when the
`evalplus` package is importable.
"""
import argparse
import concurrent.futures
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from rlef_jax.execution import ExecutionPool, IOCase, Job, Limits, Verdict  # noqa: E402
from rlef_jax.execution import evalplus  # noqa: E402

TRIVIAL = "print(int(input()) + 1)\n"


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


def overhead_ms(mode, n):
    with ExecutionPool(workers=1, sandbox=mode) as pool:
        job = Job("pass\n", [IOCase("", "")] * n)
        pool.map([job])
        t0 = time.perf_counter()
        r = pool.map([job])[0]
        per_test = (time.perf_counter() - t0) / n * 1000
        lat = []
        for _ in range(20):
            t1 = time.perf_counter()
            pool.submit(Job("pass\n", [IOCase("", "")])).result()
            lat.append((time.perf_counter() - t1) * 1000)
    return per_test, statistics.median(lat), r.passed


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
    passed = sum(f.result().passed for f in futures)
    dt = time.perf_counter() - t0
    return n, dt, t_expected, passed, len(futures)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tests", type=int, default=400)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--tests-per-job", type=int, default=4)
    ap.add_argument("--humaneval", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                                        "humanevalplus", "HumanEvalPlus.jsonl.gz"))
    ap.add_argument("--tasks", type=int, default=164)
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}, workers={args.workers}")
    base, ok0 = naive(args.tests, args.workers, [])
    base_is, ok1 = naive(args.tests, args.workers, ["-I", "-S"])
    print(f"naive fresh `python` per test (venv, site on):   {base:8.1f} tests/s  ok={ok0}")
    print(f"naive fresh `python -I -S` per test:             {base_is:8.1f} tests/s  ok={ok1}")
    for mode in ("bwrap", "weak"):
        try:
            with ExecutionPool(workers=args.workers, sandbox=mode) as pool:
                rate, ok = pooled(pool, args.tests, args.tests_per_job)
                rate1, ok1 = pooled(pool, args.tests, 1)
        except RuntimeError as e:
            print(f"pool[{mode}]: unavailable ({e})")
            continue
        print(f"pool[{mode}] {args.tests_per_job} tests/job:                       {rate:8.1f} tests/s  ok={ok}  "
              f"({rate / base:.1f}x naive, {rate / base_is:.1f}x naive -I -S)")
        print(f"pool[{mode}] 1 test/job:                         {rate1:8.1f} tests/s  ok={ok1}  "
              f"({rate1 / base:.1f}x naive, {rate1 / base_is:.1f}x naive -I -S)")
        per_test, latency, ok2 = overhead_ms(mode, 200)
        print(f"pool[{mode}] overhead: {per_test:.2f} ms/test within a job, {latency:.2f} ms median latency of a "
              f"1-test job (1 worker, trivial program)  ok={ok2}")
    if os.path.exists(args.humaneval):
        with ExecutionPool(workers=args.workers) as pool:
            n, dt, t_exp, passed, jobs = humaneval(pool, args.humaneval, args.tasks)
            print(f"HumanEval+ canonical, {args.tasks} tasks, {n} inputs (base+plus): {n / dt:8.1f} tests/s "
                  f"({dt:.1f} s; {passed}/{jobs} jobs pass; expected outputs computed in {t_exp:.1f} s)")
    try:
        import evalplus as _ep  # noqa: F401
        print("evalplus is importable: run `evalplus.evaluate --dataset humaneval --samples <canonical>` for its figure")
    except ImportError:
        print("EvalPlus's evaluator: not installed here (pip install evalplus) - not measured")


if __name__ == "__main__":
    main()
