"""`python -m rlef_jax.execute` (issue #3 item 7)."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBLEM = os.path.join(ROOT, "tests", "fixtures", "stdio_problems", "sum_two.json")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "rlef_jax.execute", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_judges_and_prints_feedback(tmp_path):
    code = tmp_path / "s.py"
    code.write_text("a, b = map(int, open(0).read().split())\nprint(a - b)\n")
    out = cli("--problem", PROBLEM, "--code", str(code), "--tests", "all", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["passed"] is False and len(report["tests"]) == 6
    assert report["tests"][0]["verdict"] == "wrong_answer"
    assert report["feedback"].startswith("Your code failed the following tests:\n\n- input `1 2\n` failed:\n"
                                         "Expected output `3\n` but got `-1\n`")
    code.write_text("a, b = map(int, open(0).read().split())\nprint(a + b)\n")
    out = cli("--problem", PROBLEM, "--code", str(code))
    assert out.returncode == 0 and "test 0: passed" in out.stdout and "passed: True" in out.stdout


def test_evalplus_problem(tmp_path):
    import gzip
    from rlef_jax.data import assets
    path = assets.benchmark_file(assets.HUMANEVAL_PLUS)  # shipped: rlef_jax/assets/benchmarks
    with gzip.open(path, "rt") as f:
        task = json.loads(f.readline())
    (tmp_path / "p.json").write_text(json.dumps(task))
    (tmp_path / "s.py").write_text(task["prompt"] + "    return False\n")
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-m", "rlef_jax.execute", "--problem", str(tmp_path / "p.json"), "--code",
                          str(tmp_path / "s.py")], capture_output=True, text=True, cwd=ROOT, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert "- Failure: `assertEqual(has_close_elements([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3), True)`:\n" \
           "`AssertionError: False != True`" in out.stdout


def test_malformed_input_is_one_clear_error(tmp_path):
    code = tmp_path / "s.py"
    code.write_text("print(1)\n")
    bad = tmp_path / "bad.json"
    bad.write_text('{"public_tests": {"input": ["1"], "output": []}}')
    out = cli("--problem", str(bad), "--code", str(code))
    assert out.returncode == 2 and "equal length" in out.stderr and "Traceback" not in out.stderr
    out = cli("--problem", str(tmp_path / "missing.json"), "--code", str(code))
    assert out.returncode == 2 and "cannot read --problem" in out.stderr
    bad.write_text('{"name": "x"}')
    out = cli("--problem", str(bad), "--code", str(code))
    assert out.returncode == 2 and "neither CodeContests fields" in out.stderr


def test_weak_sandbox_needs_the_flag(tmp_path):
    code = tmp_path / "s.py"
    code.write_text("a, b = map(int, open(0).read().split())\nprint(a + b)\n")
    out = cli("--problem", PROBLEM, "--code", str(code), "--sandbox", "weak")
    assert out.returncode == 2 and "--allow-weak-isolation" in out.stderr and "Traceback" not in out.stderr
    out = cli("--problem", PROBLEM, "--code", str(code), "--sandbox", "weak", "--allow-weak-isolation")
    assert out.returncode == 0 and "passed: True" in out.stdout, out.stderr
