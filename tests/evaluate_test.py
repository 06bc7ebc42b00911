"""Evaluation statistics (paper §5.1) and the `python -m rlef_jax.evaluate` command."""

import json
import math
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlef_jax import checkpoint as checkpoint_lib
from rlef_jax import config as config_lib
from rlef_jax import evaluate
from rlef_jax import model as model_lib
from rlef_jax import ppo
from train_test import OVERRIDES, ROOT, tiny_config


def _percentile(sorted_values, q):
  """Linear interpolation between order statistics (the usual definition), written out."""
  pos = q / 100 * (len(sorted_values) - 1)
  lo = math.floor(pos)
  hi = min(lo + 1, len(sorted_values) - 1)
  return sorted_values[lo] + (pos - lo) * (sorted_values[hi] - sorted_values[lo])


@pytest.mark.parametrize("seed", [0, 3])
def test_bootstrap_interval_matches_an_independent_computation(seed):
  successes = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0]
  rng = np.random.default_rng(seed)
  means = []
  for _ in range(200):
    picks = rng.integers(0, len(successes), size=len(successes))
    means.append(sum(successes[i] for i in picks) / len(successes))
  means.sort()
  lo, hi = evaluate.bootstrap_interval(successes, seed=seed, resamples=200)
  assert lo == pytest.approx(_percentile(means, 2.5), abs=1e-12)
  assert hi == pytest.approx(_percentile(means, 97.5), abs=1e-12)


def test_bootstrap_interval_properties():
  rng = np.random.default_rng(0)
  x = (rng.random(2000) < 0.3).astype(float)
  lo, hi = evaluate.bootstrap_interval(x)
  p, half = x.mean(), 1.96 * math.sqrt(x.mean() * (1 - x.mean()) / x.size)
  assert lo < p < hi
  assert lo == pytest.approx(p - half, abs=0.006) and hi == pytest.approx(p + half, abs=0.006)
  assert evaluate.bootstrap_interval([1.0] * 5) == (1.0, 1.0)
  assert all(math.isnan(v) for v in evaluate.bootstrap_interval([]))


def _outcome(problem, public, solved):
  return {"problem": problem, "public_passed": [public], "solved": solved}


def test_single_turn_one_at_three_submits_first_public_pass_else_last():
  outcomes = [
      # first passes public and is correct -> 1 (later samples do not matter)
      _outcome("a", True, True), _outcome("a", False, False), _outcome("a", True, False),
      # second is the first to pass public but fails private; the correct third is not submitted -> 0
      _outcome("b", False, False), _outcome("b", True, False), _outcome("b", True, True),
      # none passes public: the last is submitted -> its result (1)
      _outcome("c", False, False), _outcome("c", False, False), _outcome("c", False, True),
      # none passes public and the last is wrong -> 0
      _outcome("d", False, True), _outcome("d", False, False), _outcome("d", False, False),
  ]
  assert evaluate.single_turn_one_at_three(outcomes) == [1.0, 0.0, 1.0, 0.0]


def test_format_summary_reads_every_metric():
  s = {"mean": 0.25, "ci95": [0.1, 0.4], "episodes": 8}
  text = evaluate.format_summary({"multi_turn_1at3": s, "single_turn_pass1": s, "single_turn_1at3": s})
  assert text.count("0.250 [0.100, 0.400] (n=8)") == 3 and text.startswith("MT 1@3 0.250")
  swept = evaluate.format_summary({"multi_turn_1at3": s, "max_turns": 5, "feedback": "random"})
  assert swept == "MT 1@5 (random feedback) 0.250 [0.100, 0.400] (n=8)"


@pytest.fixture(scope="module")
def workdir_with_checkpoint(tmp_path_factory):
  """A workdir whose latest train checkpoint (step 3) holds a random tiny policy."""
  data_dir = tmp_path_factory.getbasetemp() / "tfds"
  workdir = tmp_path_factory.mktemp("evaluate")
  config = tiny_config(data_dir)
  llama_config = config_lib.llama_config(config.model)
  rng = jax.random.key(1)
  params = nn.unbox(model_lib.Llama(llama_config).init(rng, jnp.zeros((1, 4), jnp.int32))["params"])
  policy_opt, value_opt = ppo.make_optimizers(config.optim, total_steps=config.train.num_updates)
  state = ppo.init_train_state(params, model_lib.value_params_from_policy(params, rng, llama_config),
                               policy_opt, value_opt, rng)
  with checkpoint_lib.Checkpointer(workdir / "checkpoints") as ckpt:
    ckpt.save(3, state, {"data_iterator": {}})
    ckpt.wait()
  return workdir, data_dir


def test_evaluate_command_writes_the_summary(workdir_with_checkpoint):
  workdir, data_dir = workdir_with_checkpoint
  flags = [f"--config.{k}={v}" for k, v in {**OVERRIDES, "data.data_dir": data_dir}.items()]
  cmd = [sys.executable, "-m", "rlef_jax.evaluate", "--config=configs/tiny.py",
         f"--workdir={workdir}", "--split=test", *flags]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "[eval evaluate_step_3_test] MT 1@3" in proc.stdout
  summary = json.loads((workdir / "eval" / "evaluate_step_3_test.json").read_text())
  problems = OVERRIDES["eval.max_problems"]
  assert summary["problems"] == problems
  assert summary["multi_turn_1at3"]["episodes"] == problems
  assert summary["single_turn_pass1"]["episodes"] == 3 * problems
  assert summary["single_turn_1at3"]["episodes"] == problems
  for key in ("multi_turn_1at3", "single_turn_pass1", "single_turn_1at3"):
    lo, hi = summary[key]["ci95"]
    assert 0 <= lo <= summary[key]["mean"] <= hi <= 1
  episodes = [json.loads(l) for l in (workdir / "eval" / "evaluate_step_3_test.episodes.jsonl")
              .read_text().splitlines()]
  assert [e["mode"] for e in episodes] == ["multi_turn"] * problems + ["single_turn"] * 3 * problems
  assert all(e["turns"] == 1 for e in episodes if e["mode"] == "single_turn")
  mt = [e for e in episodes if e["mode"] == "multi_turn"]
  assert summary["multi_turn_1at3"]["mean"] == pytest.approx(np.mean([e["solved"] for e in mt]))


def test_evaluate_command_without_checkpoint_is_a_clear_error(tmp_path_factory):
  data_dir = tmp_path_factory.getbasetemp() / "tfds"
  empty = tmp_path_factory.mktemp("empty")
  flags = [f"--config.{k}={v}" for k, v in {**OVERRIDES, "data.data_dir": data_dir}.items()]
  proc = subprocess.run([sys.executable, "-m", "rlef_jax.evaluate", "--config=configs/tiny.py",
                         f"--workdir={empty}", *flags], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode != 0
  assert "no train checkpoint" in proc.stderr and "--checkpoint" in proc.stderr


def test_warmstart_command_then_evaluate_the_warm_start(tmp_path_factory):
  data_dir = tmp_path_factory.getbasetemp() / "tfds"
  workdir = tmp_path_factory.mktemp("warmstart")
  flags = [f"--config.{k}={v}" for k, v in {**OVERRIDES, "data.data_dir": data_dir}.items()]
  warm = [sys.executable, "-m", "rlef_jax.warmstart", "--config=configs/tiny.py", f"--workdir={workdir}",
          *flags]
  proc = subprocess.run(warm, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "[warmstart] step 1:" in proc.stdout and "[warmstart] wrote" in proc.stdout
  assert (workdir / "reference_params").is_dir()
  proc = subprocess.run([sys.executable, "-m", "rlef_jax.evaluate", "--config=configs/tiny.py",
                         f"--workdir={workdir}", "--checkpoint=warmstart", "--split=test", *flags],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  summary = json.loads((workdir / "eval" / "evaluate_reference_test.json").read_text())
  assert summary["multi_turn_1at3"]["episodes"] == OVERRIDES["eval.max_problems"]
  proc = subprocess.run(warm, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and "exists already" in proc.stdout, proc.stdout + proc.stderr


def test_one_command_sweeps_feedback_variants_and_turn_budgets(workdir_with_checkpoint):
  """Evaluation settings are separate from training: one command evaluates a checkpoint with true,
  random and no feedback at several turn budgets (paper §5.7, Fig. 4a); single-turn samples once."""
  workdir, data_dir = workdir_with_checkpoint
  flags = [f"--config.{k}={v}" for k, v in {**OVERRIDES, "data.data_dir": data_dir}.items()]
  cmd = [sys.executable, "-m", "rlef_jax.evaluate", "--config=configs/tiny.py", f"--workdir={workdir}",
         "--split=test", "--feedback=true,random,none", "--max_turns=1,3", *flags]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  problems = OVERRIDES["eval.max_problems"]
  for feedback in ("true", "random", "none"):
    for turns in (1, 3):
      suffix = "" if (feedback, turns) == ("true", 3) else f"_{feedback}_t{turns}"
      summary = json.loads((workdir / "eval" / f"evaluate_step_3_test{suffix}.json").read_text())
      assert (summary["feedback"], summary["max_turns"], summary["checkpoint"], summary["step"]) == (
          feedback, turns, "step_3", 3)
      assert (summary["split"], summary["dataset"], summary["temperature"]) == ("test", "synthetic", 0.2)
      assert summary["multi_turn_1at3"]["episodes"] == problems
      first = (feedback, turns) == ("true", 1)
      assert ("single_turn_pass1" in summary) == first
      episodes = [json.loads(l) for l in (workdir / "eval" / f"evaluate_step_3_test{suffix}.episodes.jsonl")
                  .read_text().splitlines()]
      assert max(e["turns"] for e in episodes if e["mode"] == "multi_turn") <= turns
      if feedback == "none" and turns == 3:  # no early stop: always asked three times (paper §5.7)
        assert all(e["turns"] == 3 for e in episodes if e["mode"] == "multi_turn")
        assert all(t["feedback"] is None or t["feedback"].startswith("Give it another try")
                   for e in episodes for t in e["turn_log"])
  bad = subprocess.run(cmd[:-len(flags)] + ["--feedback=sometimes"] + flags, cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
  assert bad.returncode != 0 and "unknown variants ['sometimes']" in bad.stderr


def test_evaluated_checkpoints_are_kept_and_the_best_is_recorded_and_evaluated(tmp_path_factory):
  """Checkpoint selection on valid (paper App. A.1): every evaluated step keeps its checkpoint whatever
  keep_checkpoints says, best.json names the best by eval.select_metric, evaluate --checkpoint=best."""
  from rlef_jax import train as train_lib
  data_dir = tmp_path_factory.getbasetemp() / "tfds"
  workdir = tmp_path_factory.mktemp("best")
  config = tiny_config(data_dir, **{"train.num_updates": 3, "train.eval_every": 1,
                                    "train.checkpoint_every": 100, "train.keep_checkpoints": 1,
                                    "eval.max_problems": 3})
  train_lib.train(config, str(workdir))
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [1, 2, 3]  # keep_checkpoints=1 keeps only the newest besides the evaluated ones
  summaries = {s["checkpoint"]: s for s in (json.loads(p.read_text()) for p in (workdir / "eval").glob("step_*.json"))}
  assert set(summaries) == {"reference", "step_1", "step_2", "step_3"}
  values = {k: s["multi_turn_1at3"]["mean"] for k, s in summaries.items()}
  order = ["reference", "step_1", "step_2", "step_3"]
  want = max(order, key=lambda k: (values[k], -order.index(k)))  # ties: the earliest
  best = json.loads((workdir / "best.json").read_text())
  assert (best["checkpoint"], best["metric"], best["value"]) == (want, "multi_turn_1at3", values[want])
  flags = [f"--config.{k}={v}" for k, v in {**OVERRIDES, "data.data_dir": data_dir}.items()]
  proc = subprocess.run([sys.executable, "-m", "rlef_jax.evaluate", "--config=configs/tiny.py",
                         f"--workdir={workdir}", "--checkpoint=best", "--split=test", *flags],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  name = "reference" if want == "reference" else want
  assert f"best checkpoint by multi_turn_1at3 on valid: {want}" in proc.stdout
  assert (workdir / "eval" / f"evaluate_{name}_test.json").exists()


def test_eval_every_zero_means_no_evaluation_during_training(tmp_path_factory):
  from rlef_jax import config as config_lib
  data_dir = tmp_path_factory.getbasetemp() / "tfds"
  config_lib.validate(tiny_config(data_dir, **{"train.eval_every": 0}))
  with pytest.raises(ValueError, match="eval_every .* multiple of"):
    config_lib.validate(tiny_config(data_dir, **{"train.eval_every": 3, "rl.updates_per_round": 2,
                                                 "train.num_updates": 4, "rl.minibatch_size": 4}))


def test_evaluation_batch_size_bounds_memory_not_results(workdir_with_checkpoint, tmp_path):
  """`eval.batch_size` runs the episodes a few at a time (each call's KV caches hold only its rows):
  every episode's responses are the ones drawn when all run together (per-episode sampling keys)."""
  workdir, data_dir = workdir_with_checkpoint
  texts = {}
  for batch_size in (0, 2):
    overrides = {**OVERRIDES, "data.data_dir": data_dir, "eval.max_problems": 5,
                 "eval.batch_size": batch_size, "eval.single_turn": False}
    out = tmp_path / f"b{batch_size}"
    shutil.copytree(workdir / "checkpoints", out / "checkpoints")
    cmd = [sys.executable, "-m", "rlef_jax.evaluate", "--config=configs/tiny.py", f"--workdir={out}",
           "--split=test", *[f"--config.{k}={v}" for k, v in overrides.items()]]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    episodes = [json.loads(l) for l in (out / "eval" / "evaluate_step_3_test.episodes.jsonl")
                .read_text().splitlines()]
    texts[batch_size] = [[t["response"] for t in e["turn_log"]] for e in episodes]
  assert len(texts[0]) == 5  # calls of 2, 2 and 1 episodes
  assert texts[2] == texts[0]
