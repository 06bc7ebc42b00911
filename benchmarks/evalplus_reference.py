"""EvalPlus's own evaluator on the HumanEval+ canonical solutions, timed (issue #3 item 9).

Run by `benchmarks/execution.py --evalplus-python=PY` with an interpreter that has `evalplus==0.3.1`
installed (a separate virtualenv: EvalPlus pins its own dependencies, which must not enter the
project's environment). It never touches the network: the dataset comes from HUMANEVAL_OVERRIDE_PATH
and EvalPlus's cache directory is a fresh temporary one (XDG_CACHE_HOME), so expected outputs are
recomputed by EvalPlus itself (`get_groundtruth`, timed apart).

The evaluation replays `evalplus.evaluate.evaluate`'s scheduling exactly: one `check_correctness` per
sample in a `ProcessPoolExecutor(parallel)`, which runs `untrusted_check` for the base and the plus
inputs (one fresh process per input set, EvalPlus's `reliability_guard`, default time limits). Calling
its functions instead of `evaluate()` lets a subset of the 164 tasks be timed (`evaluate()` insists
on all of them) and keeps its result-file and pass@k side effects out of the timing.

Prints one JSON line: {"inputs", "seconds", "groundtruth_seconds", "passed", "samples"}.
Standard library plus evalplus only; never imports rlef_jax.
"""
import argparse
import json
import os
import sys
import tempfile
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", required=True, help="HumanEvalPlus.jsonl.gz")
    ap.add_argument("--tasks", type=int, default=164)
    ap.add_argument("--parallel", type=int, default=os.cpu_count())
    args = ap.parse_args()
    os.environ["HUMANEVAL_OVERRIDE_PATH"] = os.path.abspath(args.dataset)
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="evalplus_cache_")
    from concurrent.futures import ProcessPoolExecutor

    from evalplus.data import get_human_eval_plus, get_human_eval_plus_hash
    from evalplus.eval import PASS
    from evalplus.evaluate import check_correctness, get_groundtruth

    problems = get_human_eval_plus()
    keep = list(problems)[:args.tasks]
    problems = {k: problems[k] for k in keep}
    t0 = time.perf_counter()
    expected = get_groundtruth(problems, get_human_eval_plus_hash(), [])
    t_gt = time.perf_counter() - t0
    n_inputs = sum(len(p["base_input"]) + len(p["plus_input"]) for p in problems.values())
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.parallel) as ex:
        futures = [ex.submit(check_correctness, "humaneval", 0, p, p["prompt"] + p["canonical_solution"],
                             expected[tid], False, True, tid)
                   for tid, p in problems.items()]
        results = [f.result() for f in futures]
    dt = time.perf_counter() - t0
    passed = sum(r["base"][0] == PASS and r["plus"][0] == PASS for r in results)
    print(json.dumps({"inputs": n_inputs, "seconds": dt, "groundtruth_seconds": t_gt, "passed": passed,
                      "samples": len(results)}))


if __name__ == "__main__":
    sys.exit(main())
