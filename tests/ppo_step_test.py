"""benchmarks/ppo_step.py runs the trainer's update on a config and reports consistent figures (the
figures themselves are BUILD_NOTES.md's, not a test's)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from rlef_jax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # about 25 s: a benchmark in its own process
def test_ppo_step_benchmark_reports_the_update_it_ran():
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, "benchmarks", "ppo_step.py"),
       f"--config={os.path.join(ROOT, 'configs', 'tiny.py')}", "--batch=8", "--length=96", "--min_end=40", "--steps=2",
       "--set", "model.scan_layers=True", "--set", "model.remat=True",
       "--set", "rl.num_microbatches=-1",  # tiny's -4 needs 32 episodes on the tests' 8 devices
       "--json"],
      capture_output=True, text=True, timeout=600, check=False)
  assert out.returncode == 0, out.stdout + out.stderr
  row = json.loads(out.stdout.strip().splitlines()[-1])
  assert row["policy_params"] == _tiny_model().num_params()
  assert 0 < row["value_params"] < row["policy_params"]  # the backbone and a scalar head, no LM head
  assert (row["batch"], row["length"], row["remat"], row["scan_layers"]) == (8, 96, True, True)
  assert abs(row["tokens_s"] * row["step_s"] - 8 * 96) < 1e-6 * 8 * 96
  assert row["finite"] and 0 < row["mfu"] <= row["mfu_with_attention"] <= 1
  # Episodes of random lengths in [40, 96], run length-bucketed as configs/tiny.py sets it.
  assert row["update_bucket_tokens"] == 64 and 0 < row["padding_fraction"] < 1 - 40 / 96


def _tiny_model():
  spec = importlib.util.spec_from_file_location("tiny_config", os.path.join(ROOT, "configs", "tiny.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.model.scan_layers = True
  return config_lib.llama_config(c.model)
