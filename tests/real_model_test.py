"""The real path end to end: SmolLM2-135M-Instruct (converted from its GGUF by the project's command),
its own ChatML template and stop ids, RLEF on MBPP problems, transfer evaluation on HumanEval+.

A few updates on a handful of problems with short answers: this checks that every step runs and is
wired right with a real Instruct model, not that it learns (that needs a GPU; BUILD_NOTES.md)."""
import importlib.util
import json
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from rlef_jax import checkpoint as checkpoint_lib
from rlef_jax import model as model_lib
from rlef_jax import train as train_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def smollm2_config(checkpoint_dir, data_dir):
  spec = importlib.util.spec_from_file_location("smollm2_config", ROOT / "configs" / "smollm2.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.model.init_checkpoint = str(checkpoint_dir / "params")
  c.tokenizer.path = str(checkpoint_dir / "tokenizer")
  c.data.data_dir = str(data_dir)
  c.data.train_split = "train[:4]"
  c.execution.workers = 2
  c.sampling.max_new_tokens = 48  # short answers: the test checks wiring, not quality
  c.sampling.max_context_length = 1024
  # Batches are multiples of the data-parallel size: the test process has 8 CPU devices (conftest)
  # and SmolLM2's 9/3 heads allow no tensor parallelism over them.
  c.mesh.data = 1  # params and Adam states sharded over the 8 devices
  c.mesh.fsdp = -1
  c.rl.rollouts_per_round = 16
  c.rl.minibatch_size = 8
  c.rl.updates_per_round = 2
  c.rl.score_batch_size = 8
  c.rl.num_microbatches = 1  # a minibatch of 8 is one episode per device already
  c.train.num_updates = 2
  c.train.eval_every = 2
  c.train.checkpoint_every = 2
  c.train.log_every = 1
  c.eval.max_problems = 2
  c.eval.temperature = 0.0  # greedy: the evaluation's answers are the model's most likely ones
  return c


@pytest.mark.slow
def test_rlef_with_smollm2_on_mbpp_evaluated_on_humaneval_plus(smollm2_checkpoint, tmp_path):
  config = smollm2_config(smollm2_checkpoint, tmp_path / "tfds")
  workdir = tmp_path / "run"
  results = train_lib.train(config, str(workdir))

  # Two updates were made and logged, with finite KL and losses, on real MBPP rollouts.
  metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in metrics] == [2]
  m = metrics[0]
  for key in ("kl/turn_mean", "policy_loss", "value_loss", "reward/task_mean", "episode/turns"):
    assert np.isfinite(m[key]), key
  assert m["episode/turns"] >= 1 and -1.4 <= m["reward/task_mean"] <= 1.0

  # The policy moved away from the reference (the KL reference is the converted Instruct model).
  ref, _ = checkpoint_lib.restore_params(workdir / "reference_params")
  state_dir = workdir / "checkpoints"
  assert sorted(p.name for p in state_dir.iterdir() if p.name.isdigit()) == ["2"]
  loaded, _ = checkpoint_lib.restore_params(smollm2_checkpoint / "params")
  assert config.model.scan_layers and "layers_0" in loaded  # converted unrolled, trained scanned
  loaded = model_lib.stack_layers(loaded)
  for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(loaded)):
    np.testing.assert_array_equal(a, b)
  state = ocp.PyTreeCheckpointer().restore(state_dir / "2" / "state")
  policy = state["policy_params"]
  assert jax.tree.structure(policy) == jax.tree.structure(ref)
  moved = [not np.array_equal(np.asarray(a), np.asarray(b))
           for a, b in zip(jax.tree.leaves(policy), jax.tree.leaves(ref))]
  assert sum(moved) > len(moved) // 2, f"{sum(moved)} of {len(moved)} parameter arrays changed"

  # HumanEval+ transfer evaluation before and after, with per-turn records of real responses.
  for name in ("before", "after"):
    summary = results[name]
    assert summary["problems"] == 2 and summary["multi_turn_1at3"]["episodes"] == 2
    assert summary["single_turn_pass1"]["episodes"] == 6
  episodes = [json.loads(line) for line in (workdir / "eval" / "step_0.episodes.jsonl").read_text().splitlines()]
  assert [e["problem"] for e in episodes[:2]] == ["HumanEval/0", "HumanEval/1"]
  for e in episodes:
    assert len(e["turn_log"]) == e["turns"] and e["final_groups"][0][0] == "public"
    for turn in e["turn_log"]:
      assert turn["response"] and set(turn["public_verdicts"]) <= set("PWETMNS")
    # The final solution's verdicts cover the base (public) and plus (private) inputs.
    assert len(e["final_verdicts"]) == sum(n for _, n in e["final_groups"]) or e["final_verdicts"] == ""
    if e["turns"] > 1:
      assert e["turn_log"][0]["feedback"].startswith("Your code failed some test cases:")
