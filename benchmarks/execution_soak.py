"""Soak test of the execution pool: many executions of a mix of programs, each with a known verdict.

    python benchmarks/execution_soak.py [--count 10000] [--mode auto|bwrap|unshare|weak] [--workers N]

Runs `--count` test executions through ONE pool: correct, wrong and crashing programs, timeouts, and
hostile ones (fork bomb, forged report lines on every fd, self-kill, memory hog, network to a host
listener, writes to the host's /tmp, daemons left behind), stdin/stdout and function tests, drawn at
random (seeded). Prints the number of verdicts that differ from the expected ones (must be 0), leaked
processes (processes of the sandboxes' test uids between batches and after close, when the host is
root; processes descending from this one after close), connections the host listener received and
files that reached the host's /tmp (0 unless the mode is "weak", which isolates neither), this
process's open file descriptors and the entries of its temporary directory before and after (must be
equal; set TMPDIR to an empty directory so that other programs' files do not count), and the wall
time. Not a test: run on demand (a few minutes per mode on 2 cores).
"""
import argparse
import collections
import glob
import os
import random
import secrets
import socket
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from rlef_jax.execution import AssertCase, CallCase, ExecutionPool, IOCase, Job, Limits, Verdict  # noqa: E402

V = Verdict
QUICK = Limits(time_s=0.3, memory_bytes=256 << 20)
NORMAL = Limits(time_s=5.0, memory_bytes=256 << 20)
SPRAY = '''
import json, os
def _spray(lines):
    data = "".join(json.dumps(line) + "\\n" for line in lines).encode()
    for fd in range(64):
        try:
            os.write(fd, data)
        except OSError:
            pass
    for name in os.listdir("/proc/self/fd"):
        try:
            with open("/proc/self/fd/" + name, "wb") as f:
                f.write(data)
        except OSError:
            pass
FORGED = [{"i": k, "ok": True} for k in range(3)] + [{"ready": True}] + [{"i": k, "value": 2 * k} for k in range(3)]
_spray(FORGED)
def f(x):
    _spray(FORGED)
    return -1
'''


def catalog(port: int, tmp_prefix: str, weak: bool):
    """name -> (weight, make(k) -> (Job, [expected verdict per test]))."""
    def stdio(program, verdict, limits=NORMAL, stdin=lambda k: f"{k}\n", out=lambda k: f"{2 * k}\n"):
        return lambda k: (Job(program, [IOCase(stdin(k), out(k))], limits=limits), [verdict])

    def function(program, verdict, limits=NORMAL, n=3):
        def make(k):
            cases = [CallCase(f"f({k + j})", f"[{k + j}]", f"{2 * (k + j)}") for j in range(n - 1)]
            cases.append(AssertCase(f"assertEqual(f({k}), {2 * k})", f"assert f({k}) == {2 * k}"))
            return Job(program, cases, entry_point="f", limits=limits), [verdict] * n
        return make

    net = (f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'LEAK')\n"
           f"    print('connected')\nexcept OSError:\n    print('blocked')\n")
    tmp = (f"import os\ntry:\n    open('{tmp_prefix}' + str(os.getpid()), 'w').write('x')\n    print('wrote')\n"
           f"except OSError:\n    print('blocked')\n")
    escaped = V.WRONG_ANSWER if weak else V.PASSED  # the weak mode isolates neither (documented)
    blocked = (lambda k: "blocked\n")
    return {
        "correct": (30, stdio("print(int(input()) * 2)\n", V.PASSED)),
        "wrong": (10, stdio("print(int(input()) * 2 + 1)\n", V.WRONG_ANSWER)),
        "crash": (8, stdio("x = int(input())\nraise ValueError(x)\n", V.RUNTIME_ERROR)),
        "exit_status": (3, stdio("import sys\nprint(int(input()) * 2)\nsys.exit(3)\n", V.RUNTIME_ERROR)),
        "syntax_error": (2, lambda k: (Job("def f(:\n", [IOCase("", "")]), [V.SYNTAX_ERROR])),
        "infinite_loop": (3, stdio("while True:\n    pass\n", V.TIMEOUT, QUICK)),
        "sleep": (2, stdio("import time\ntime.sleep(100)\n", V.TIMEOUT, QUICK)),
        "fork_bomb": (2, stdio("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
                               V.TIMEOUT, QUICK)),
        "memory_hog": (3, stdio("a = []\nwhile True:\n    a.append(' ' * 10**7)\n", V.OUT_OF_MEMORY)),
        "self_kill": (4, stdio("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", V.RUNTIME_ERROR)),
        "self_abort": (2, stdio("import os\nos.abort()\n", V.RUNTIME_ERROR)),
        "network": (4, stdio(net, escaped, out=blocked)),
        "tmp_write": (4, stdio(tmp, escaped, out=blocked)),
        "daemon": (3, stdio("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                            "        time.sleep(1000)\n    os._exit(0)\nprint(int(input()) * 2)\n", V.PASSED)),
        "fn_correct": (6, function("def f(x):\n    return 2 * x\n", V.PASSED)),
        "fn_wrong": (3, function("def f(x):\n    return 2 * x + 1\n", V.WRONG_ANSWER)),
        "fn_crash": (2, function("def f(x):\n    return {}[x]\n", V.RUNTIME_ERROR)),
        "fn_timeout": (1, function("def f(x):\n    while True:\n        pass\n", V.TIMEOUT, QUICK)),
        "fn_self_kill": (2, function("import os\ndef f(x):\n    os.kill(os.getpid(), 9)\n", V.RUNTIME_ERROR)),
        "fn_forged_reports": (4, function(SPRAY, V.WRONG_ANSWER)),
    }


def processes_with_uids(uids):
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/status") as f:
                    text = f.read()
            except OSError:
                continue
            if int(text.split("Uid:")[1].split()[0]) in uids:
                found.append(int(name))
    return found


def descendants(root_pid):
    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    parent[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = [], {root_pid}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier}
        found += sorted(frontier)
    return found


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=10000, help="test executions")
    ap.add_argument("--mode", default="auto", choices=["auto", "bwrap", "unshare", "weak"])
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--batch", type=int, default=200, help="jobs per pool.map (leaks are checked between)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    temp_dir = tempfile.gettempdir()
    fds_before, temp_before = len(os.listdir("/proc/self/fd")), sorted(os.listdir(temp_dir))

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    connections = []

    def accept():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            connections.append(conn.recv(16))
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    tmp_prefix = f"/tmp/rlef_soak_{secrets.token_hex(4)}_"

    t0 = time.perf_counter()
    pool = ExecutionPool(workers=args.workers, sandbox=args.mode, allow_weak=args.mode == "weak")
    kinds = catalog(listener.getsockname()[1], tmp_prefix, pool.mode == "weak")
    names = sorted(kinds)
    rng = random.Random(args.seed)
    done = wrong = uid_leaks = 0
    per_kind = collections.Counter()
    wrong_examples = []
    while done < args.count:
        batch = []
        while done < args.count and len(batch) < args.batch:
            name = rng.choices(names, weights=[kinds[n][0] for n in names])[0]
            job, expected = kinds[name][1](rng.randrange(1000))
            batch.append((name, job, expected))
            done += len(expected)
        results = pool.map([job for _, job, _ in batch])
        for (name, job, expected), result in zip(batch, results):
            got = [c.verdict for c in result.cases]
            per_kind[name] += len(got)
            if got != expected:
                wrong += sum(g != e for g, e in zip(got, expected))
                if len(wrong_examples) < 5:
                    wrong_examples.append((name, [g.value for g in got], [c.error for c in result.cases][:1]))
        if os.geteuid() == 0:
            uid_leaks += len(processes_with_uids(pool.sandbox_uids))
    mode, uids = pool.mode, set(pool.sandbox_uids)
    pool.close()
    wall = time.perf_counter() - t0
    time.sleep(0.5)
    listener.close()
    left_after_close = descendants(os.getpid())
    uid_left_after_close = processes_with_uids(uids) if os.geteuid() == 0 else []
    tmp_files = glob.glob(tmp_prefix + "*")
    for path in tmp_files:
        os.unlink(path)
    fds_after, temp_after = len(os.listdir("/proc/self/fd")), sorted(os.listdir(temp_dir))

    print(f"mode={mode} workers={args.workers} tests={done} jobs_kinds={len(names)} seed={args.seed} "
          f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"wrong verdicts: {wrong}" + (f"  e.g. {wrong_examples}" if wrong_examples else ""))
    print(f"leaked processes: test-uid processes seen between batches {uid_leaks}, after close "
          f"{len(uid_left_after_close)} (uid check {'on' if os.geteuid() == 0 else 'off: not root'}); "
          f"descendants of this process after close {len(left_after_close)}")
    print(f"host listener connections: {len(connections)}; files written to the host /tmp: {len(tmp_files)}"
          + ("  (weak mode: no network/filesystem isolation, expected)" if mode == "weak" else ""))
    print(f"open fds before/after: {fds_before}/{fds_after}; entries in {temp_dir} before/after: "
          f"{len(temp_before)}/{len(temp_after)} (new: {sorted(set(temp_after) - set(temp_before))[:5]}, "
          f"gone: {sorted(set(temp_before) - set(temp_after))[:5]})")
    print(f"wall time: {wall:.1f} s ({done / wall:.0f} tests/s)")
    print("tests per kind: " + ", ".join(f"{k} {per_kind[k]}" for k in names))
    ok = (wrong == 0 and uid_leaks == 0 and not uid_left_after_close and not left_after_close
          and fds_before == fds_after and temp_before == temp_after
          and (mode == "weak" or (not connections and not tmp_files)))
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
