"""Hostile programs, process hygiene, isolation and pool behaviour (issue #3 items 2-5, 8).

Every test that takes `pool` runs in each sandbox mode this machine has: bwrap, unshare (namespaces
built by the runner itself) and weak; isolation claims are checked only where the mode makes them.
"""
import os
import secrets
import socket
import subprocess
import sys
import time

import pytest

from rlef_jax.execution import AssertCase, CallCase, ExecutionPool, IOCase, Job, Limits, Verdict
from rlef_jax.execution.sandbox import _interpreter_paths, bwrap_works, site_packages, unshare_works

FAST = Limits(time_s=1.0)
ISOLATING = [m for m, works in (("bwrap", bwrap_works), ("unshare", unshare_works)) if works()]
MODES = ISOLATING + ["weak"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", params=MODES)
def pool(request):
    with ExecutionPool(workers=2, sandbox=request.param, allow_weak=request.param == "weak") as p:
        yield p


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


def run1(pool, program, stdin="", expected="", limits=FAST):
    result = pool.submit(Job(program, [IOCase(stdin, expected)], limits=limits)).result(timeout=60)
    if os.geteuid() == 0:
        assert processes_with_uids(pool.sandbox_uids) == [], "a test process outlived its test"
    return result.cases[0]


HOSTILE = {
    "fork_bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n", Verdict.TIMEOUT),
    "memory_bomb": ("x = bytearray(1 << 40)\n", Verdict.OUT_OF_MEMORY),
    "memory_growth": ("a = []\nwhile True:\n    a.append(' ' * 10**7)\n", Verdict.OUT_OF_MEMORY),
    "infinite_loop": ("while True:\n    pass\n", Verdict.TIMEOUT),
    "sleep_forever": ("import time\ntime.sleep(10**6)\n", Verdict.TIMEOUT),
    "ignore_sigterm": ("import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    pass\n", Verdict.TIMEOUT),
    "stdin_forever": ("import sys\nwhile True:\n    sys.stdin.read()\n", Verdict.TIMEOUT),
    "eof_error": ("input()\ninput()\n", Verdict.RUNTIME_ERROR),
    "deep_recursion": ("import sys\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return f(n + 1) + 1\nf(0)\n",
                       (Verdict.RUNTIME_ERROR, Verdict.OUT_OF_MEMORY, Verdict.TIMEOUT)),
    "default_recursion_limit": ("def f(n):\n    return f(n + 1) + 1\nf(0)\n", Verdict.RUNTIME_ERROR),
    "cpu_in_threads": ("import threading\ndef spin():\n    while True: pass\nfor _ in range(4):\n    threading.Thread(target=spin).start()\n", Verdict.TIMEOUT),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_program_gets_its_verdict(pool, name):
    program, verdict = HOSTILE[name]
    t0 = time.monotonic()
    r = run1(pool, program, stdin="1\n", limits=Limits(time_s=1.0 ,
                                                         memory_bytes=256 << 20))
    assert r.verdict in (verdict if isinstance(verdict, tuple) else (verdict,)), (name, r)
    assert time.monotonic() - t0 < 25


def test_infinite_output_is_capped(pool):
    r = run1(pool, "while True:\n    print('x' * 1000)\n", limits=Limits(time_s=5, output_bytes=1 << 20))
    assert r.verdict == Verdict.RUNTIME_ERROR and "Output limit exceeded" in r.error


def test_huge_stderr_does_not_block_or_fail(pool):
    r = run1(pool, "import sys\nsys.stderr.write('e' * 10**8)\nprint(7)\n", expected="7\n", limits=Limits(time_s=5))
    assert r.verdict == Verdict.PASSED, r


def test_binary_garbage_on_stdout_is_a_wrong_answer(pool):
    r = run1(pool, "import sys\nsys.stdout.buffer.write(bytes(range(256)) * 50)\n", expected="1\n")
    assert r.verdict == Verdict.WRONG_ANSWER and isinstance(r.actual, str) and len(r.actual) > 0


def test_legitimate_deep_recursion_works(pool):
    program = "import sys\nsys.setrecursionlimit(300000)\ndef f(n):\n    return 0 if n == 0 else 1 + f(n - 1)\nprint(f(100000))\n"
    assert run1(pool, program, expected="100000\n", limits=Limits(time_s=5)).verdict == Verdict.PASSED


def test_daemon_left_behind_is_killed(pool):
    program = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
               "        time.sleep(1000)\n    os._exit(0)\nprint('done')\n")
    assert run1(pool, program, expected="done\n").verdict == Verdict.PASSED


def test_clean_environment_and_no_parent_secrets(pool, tmp_path):
    os.environ["RLEF_TEST_SECRET"] = token = secrets.token_hex(8)
    secret = tmp_path / "secret.txt"
    secret.write_text(token)
    secret.chmod(0o600)
    program = (f"import os\nprint(sorted(os.environ))\nprint(os.environ.get('RLEF_TEST_SECRET'))\n"
               f"for p in ['{secret}', '/proc/%d/environ' % os.getppid(), '/proc/1/environ']:\n"
               f"    try:\n        print(open(p, 'rb').read())\n    except OSError as e:\n        print(type(e).__name__)\n")
    r = run1(pool, program, expected="x")
    assert token not in r.actual and "CUDA" not in r.actual and "XLA_FLAGS" not in r.actual
    assert "'PATH'" in r.actual


def test_cannot_write_outside_workdir(pool, tmp_path):
    target = tmp_path / "evil.txt"
    os.chmod(tmp_path, 0o777)
    program = (f"import os\nfor p in ['{target}', '/usr/evil', '/evil']:\n    try:\n"
               f"        open(p, 'w').write('x')\n        print('WROTE', p)\n    except OSError as e:\n"
               f"        print('denied')\nopen('ok.txt', 'w').write('fine')\nprint(open('ok.txt').read())\n")
    r = run1(pool, program, expected="x")
    if pool.mode != "weak":
        assert "WROTE" not in r.actual
        assert not target.exists()
    assert r.actual.strip().endswith("fine")


def test_network_is_unreachable_when_isolated(pool):
    if pool.mode == "weak":
        pytest.skip("the weak mode does not isolate the network (documented)")
    program = "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)\nprint('connected')\n"
    r = run1(pool, program, expected="connected\n", limits=Limits(time_s=5))
    assert r.verdict == Verdict.RUNTIME_ERROR and "OSError" in r.error or "unreachable" in r.error


def test_signalling_the_parent_harms_nothing(pool):
    program = ("import os, signal\nfor pid in (os.getppid(), 1, -1):\n    try:\n        os.kill(pid, signal.SIGKILL)\n"
               "    except OSError:\n        pass\nprint(42)\n")
    r = run1(pool, program, expected="42\n")
    assert r.verdict in (Verdict.PASSED, Verdict.OUT_OF_MEMORY, Verdict.RUNTIME_ERROR)
    assert run1(pool, "print(1)", expected="1").verdict == Verdict.PASSED


def test_exiting_before_function_checks_fails(pool):
    cases = [CallCase("f(1)", "[1]", "1"), CallCase("f(2)", "[2]", "2")]
    for program in ("def f(x):\n    return x\nimport os\nos._exit(0)\n", "def f(x):\n    return x\nexit()\n",
                    "def f(x):\n    import sys\n    sys.exit(0)\n", "def f(x):\n    import os\n    os._exit(0)\n"):
        r = pool.submit(Job(program, cases, entry_point="f")).result()
        assert [c.verdict for c in r.cases] == [Verdict.RUNTIME_ERROR] * 2, (program, r)
    r = pool.submit(Job("import sys\nsys.exit(0)\n", [AssertCase("assertTrue(False)", "assert False")])).result()
    assert r.cases[0].verdict == Verdict.RUNTIME_ERROR


def test_function_tests_are_reported_one_by_one(pool):
    program = "def f(x):\n    if x == 2:\n        raise KeyError(x)\n    if x == 3:\n        while True: pass\n    return x * 10\n"
    cases = [CallCase(f"f({i})", f"[{i}]", f"{i * 10}") for i in range(5)] + [CallCase("f(0)", "[0]", "1")]
    r = pool.submit(Job(program, cases, entry_point="f", limits=Limits(time_s=0.5))).result()
    assert [c.verdict for c in r.cases] == [Verdict.PASSED, Verdict.PASSED, Verdict.RUNTIME_ERROR, Verdict.TIMEOUT,
                                            Verdict.PASSED, Verdict.WRONG_ANSWER]
    assert "KeyError: 2" in r.cases[2].error and 'File "main.py", line 3, in f' in r.cases[2].error
    assert "_runner" not in r.cases[2].error and "/rlef/" not in r.cases[2].error
    assert r.cases[5].error == "AssertionError: 0 != 1"


def test_program_verdicts(pool):
    assert pool.submit(Job("  \n", [IOCase("", "")])).result().program_verdict == Verdict.NO_CODE
    r = pool.submit(Job("def f(:\n", [IOCase("", ""), IOCase("", "")])).result()
    assert r.program_verdict == Verdict.SYNTAX_ERROR and "SyntaxError" in r.cases[1].error
    assert not r.passed


def test_batch_deadline_and_pool_survives(pool):
    jobs = [Job("import time\ntime.sleep(100)\n", [IOCase("", "")] * 3, limits=Limits(time_s=30)) for _ in range(3)]
    t0 = time.monotonic()
    results = pool.map(jobs, deadline_s=1.0)
    assert time.monotonic() - t0 < 10
    assert all(c.verdict == Verdict.TIMEOUT for r in results for c in r.cases)
    assert pool.map([Job("print(5)", [IOCase("", "5")])])[0].passed


def test_many_concurrent_jobs(pool):
    futures = [pool.submit(Job(f"print(int(input()) * {k})", [IOCase(f"{i}\n", f"{i * k}\n") for i in range(3)]))
               for k in range(20)]
    assert all(f.result(timeout=60).passed for f in futures)


@pytest.mark.parametrize("mode", MODES)
def test_killed_sandbox_fails_only_its_job(mode):
    with ExecutionPool(workers=1, sandbox=mode, allow_weak=True) as pool:
        f = pool.submit(Job("import time\ntime.sleep(30)\n", [IOCase("", "")], limits=Limits(time_s=20)))
        time.sleep(1.0)
        with pool._lock:
            sandboxes = [s for s, _ in pool._active.values()]
        for s in sandboxes:
            s.proc.kill()
        assert f.result(timeout=30).cases[0].verdict == Verdict.RUNTIME_ERROR
        assert pool.submit(Job("print(3)", [IOCase("", "3")])).result(timeout=30).passed


def test_submit_after_close_raises():
    pool = ExecutionPool(workers=1, sandbox=MODES[0], allow_weak=True)
    pool.close()
    with pytest.raises(RuntimeError, match="after close"):
        pool.submit(Job("print(1)", [IOCase("", "1")]))


def test_importing_execution_does_not_import_jax_and_works_after_jax():
    code = ("import sys\nimport rlef_jax.execution, rlef_jax.execute\nassert 'jax' not in sys.modules\n"
            "import jax, jax.numpy as jnp\njnp.ones(3).block_until_ready()\n"
            "from rlef_jax.execution import ExecutionPool, Job, IOCase\n"
            "with ExecutionPool(workers=2) as p:\n    print(all(f.result().passed for f in "
            "[p.submit(Job('print(2)', [IOCase('', '2')])) for _ in range(4)]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr[-2000:]


def test_sandboxes_die_with_a_sigtermed_parent():
    code = ("import time\nfrom rlef_jax.execution import ExecutionPool, Job, IOCase, Limits\n"
            "p = ExecutionPool(workers=2)\n"
            "fs = [p.submit(Job('import time\\ntime.sleep(60)', [IOCase('', '')], limits=Limits(time_s=60))) for _ in range(2)]\n"
            "print(sorted(p.sandbox_uids), flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(__file__)))
    line = proc.stdout.readline()
    time.sleep(1.5)
    proc.terminate()
    proc.wait(timeout=10)
    uids = set(eval(line)) if line.strip() else set()
    time.sleep(1.0)
    if os.geteuid() == 0:
        assert processes_with_uids(uids) == []


# ------------------------------------------------------------------------------------------------
# Forged reports, self-kills, isolation without bubblewrap, clean-up on the host's death.
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
'''


@pytest.mark.parametrize("then", ["return -1", "os._exit(0)"])
def test_forged_report_lines_change_no_verdict(pool, then):
    """A program writing would-be passes (`{"i": k, "ok": true}`, `{"i": k, "value": expected}`, in
    order) to every fd it can reach, at import time and in every call, gets its real verdicts."""
    n = 3
    forged = [{"i": k, "ok": True} for k in range(n)] + [{"ready": True}] + \
        [{"i": k, "value": 2 * k} for k in range(n)]
    program = SPRAY + f"FORGED = {forged!r}\n_spray(FORGED)\ndef f(x):\n    _spray(FORGED)\n    {then}\n"
    real = Verdict.WRONG_ANSWER if then == "return -1" else Verdict.RUNTIME_ERROR
    asserts = [AssertCase(f"assertEqual(f({k}), {2 * k})", f"assert f({k}) == {2 * k}") for k in range(n)]
    calls = [CallCase(f"f({k})", f"[{k}]", f"{2 * k}") for k in range(n)]
    for cases in (asserts, calls):
        r = pool.submit(Job(program, cases, entry_point="f")).result(timeout=60)
        assert [c.verdict for c in r.cases] == [real] * n, (cases[0], r)


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM", "SIGABRT"])
def test_a_program_that_kills_itself_is_a_runtime_error(pool, sig):
    r = run1(pool, f"import os, signal\nprint(1, flush=True)\nos.kill(os.getpid(), signal.{sig})\n", expected="1\n")
    assert r.verdict == Verdict.RUNTIME_ERROR and r.error.startswith(f"Process killed by {sig}"), r
    program = f"import os, signal\ndef f(x):\n    os.kill(os.getpid(), signal.{sig})\n"
    r = pool.submit(Job(program, [CallCase("f(1)", "[1]", "1")], entry_point="f")).result(timeout=60)
    assert r.cases[0].verdict == Verdict.RUNTIME_ERROR and f"Process killed by {sig}" in r.cases[0].error, r


def test_a_kill_is_out_of_memory_only_at_the_memory_limit():
    from rlef_jax.execution import judge
    job = Job("x", [IOCase("", "")], limits=Limits(memory_bytes=256 << 20))
    for maxrss, verdict in ((250 << 20, Verdict.OUT_OF_MEMORY), (20 << 20, Verdict.RUNTIME_ERROR)):
        for sig in (9, 6):
            msg = {"type": "case", "outcome": "exited", "signal": sig, "cpu_s": 0.01, "maxrss": maxrss}
            assert judge.judge_case(job, job.cases[0], msg).verdict == verdict


def test_host_loopback_listeners_receive_nothing(pool):
    if pool.mode == "weak":
        pytest.skip("the weak mode does not isolate the network (documented)")
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    tcp.setblocking(False)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    program = (f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {tcp.getsockname()[1]}), timeout=2).sendall(b'LEAK')\n"
               f"    print('tcp sent')\nexcept OSError as e:\n    print('tcp', e)\ntry:\n"
               f"    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'LEAK', ('127.0.0.1', {udp.getsockname()[1]}))\n"
               f"    print('udp sent')\nexcept OSError as e:\n    print('udp', e)\n")
    try:
        r = run1(pool, program, limits=Limits(time_s=5))
        time.sleep(0.2)
        with pytest.raises(BlockingIOError):
            tcp.accept()
        with pytest.raises(BlockingIOError):
            udp.recv(100)
        assert "tcp sent" not in r.actual, r  # (a datagram may leave: to the sandbox's own loopback)
    finally:
        tcp.close()
        udp.close()


def test_host_files_are_invisible(pool):
    """A world-readable file in the host's /tmp and a problem file with expected outputs in the
    repository cannot be read (nor listed)."""
    if pool.mode == "weak":
        pytest.skip("the weak mode does not isolate the file system (documented)")
    token = secrets.token_hex(8)
    in_tmp = f"/tmp/rlef_test_{token}.txt"
    problem = os.path.join(ROOT, f"rlef_test_problem_{token}.json")
    try:
        for path in (in_tmp, problem):
            with open(path, "w") as f:
                f.write('{"private_tests": {"input": ["1"], "output": ["%s"]}}' % token)
            os.chmod(path, 0o644)
        program = (f"import os\nfor p in [{in_tmp!r}, {problem!r}]:\n    try:\n        print(open(p).read())\n"
                   f"    except OSError as e:\n        print(type(e).__name__)\nfor d in ['/tmp', {ROOT!r}, os.path.dirname({ROOT!r})]:\n"
                   f"    try:\n        print(os.listdir(d))\n    except OSError as e:\n        print(type(e).__name__)\n")
        r = run1(pool, program)
        lines = r.actual.splitlines()
        assert token not in r.actual and lines[:2] == ["FileNotFoundError"] * 2, r.actual
        # The host's /tmp is not there; only the directories on the way to what is bound (the
        # interpreter and the venv's site-packages) can be: a checkout under /tmp shows its own name.
        bound = _interpreter_paths() + site_packages()
        on_the_way = {os.path.relpath(p, "/tmp").split(os.sep)[0] for p in bound if p.startswith("/tmp/")}
        assert lines[2] == "FileNotFoundError" or set(eval(lines[2])) <= on_the_way, (r.actual, bound)
    finally:
        for path in (in_tmp, problem):
            if os.path.exists(path):
                os.unlink(path)


def test_writing_the_host_tmp_fails(pool):
    if pool.mode == "weak":
        pytest.skip("the weak mode does not isolate the file system (documented)")
    target = f"/tmp/rlef_evil_{secrets.token_hex(8)}"
    program = (f"import os\ntry:\n    open({target!r}, 'w').write('x')\n    print('wrote', os.path.exists({target!r}))\n"
               f"except OSError as e:\n    print('denied', type(e).__name__)\n")
    r = run1(pool, program)
    assert not os.path.exists(target) and r.actual.startswith("denied"), r.actual


@pytest.mark.parametrize("how", ["kill", "terminate"])
@pytest.mark.parametrize("mode", MODES)
def test_nothing_survives_a_killed_host(mode, how, tmp_path):
    """SIGKILL (or SIGTERM) of a process owning a pool, tests running, leaves no directory in its
    temporary directory and no process of its sandboxes."""
    code = ("import time\nfrom rlef_jax.execution import ExecutionPool, Job, IOCase, Limits\n"
            f"p = ExecutionPool(workers=2, sandbox={mode!r}, allow_weak=True)\n"
            "fs = [p.submit(Job('open(\"f\", \"w\").write(\"x\")\\nimport time\\ntime.sleep(60)', [IOCase('', '')], "
            "limits=Limits(time_s=60))) for _ in range(2)]\n"
            "time.sleep(1.0)\nprint(sorted(p.sandbox_uids), flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env=dict(os.environ, TMPDIR=str(tmp_path)))
    line = proc.stdout.readline()
    if mode == "weak":
        assert [n for n in os.listdir(tmp_path) if n.startswith("rlef_exec_")], "the weak pool used another directory"
    getattr(proc, how)()
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    uids = set(eval(line)) if line.strip() else set()
    while (os.listdir(tmp_path) or (os.geteuid() == 0 and processes_with_uids(uids))) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert os.listdir(tmp_path) == []
    if os.geteuid() == 0:
        assert uids and processes_with_uids(uids) == []


def test_weak_isolation_is_refused_unless_allowed(monkeypatch):
    from rlef_jax.execution import sandbox
    monkeypatch.setattr(sandbox, "bwrap_works", lambda: False)
    if unshare_works():
        with ExecutionPool(workers=1) as p:
            assert p.mode == "unshare" and p.submit(Job("print(1)", [IOCase("", "1")])).result(timeout=60).passed
    monkeypatch.setattr(sandbox, "unshare_works", lambda: False)
    with pytest.raises(RuntimeError, match="install bubblewrap") as e:
        ExecutionPool(workers=1)
    assert "--config.execution.allow_weak_isolation=True" in str(e.value)
    with pytest.raises(RuntimeError, match="allow_weak"):
        ExecutionPool(workers=1, sandbox="weak")
    with ExecutionPool(workers=1, allow_weak=True) as p:
        assert p.mode == "weak" and p.submit(Job("print(1)", [IOCase("", "1")])).result(timeout=60).passed
