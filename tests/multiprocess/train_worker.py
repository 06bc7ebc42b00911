"""One process of the multi-process trainer tests (tests/distributed_test.py starts it per process).

`--part round`: one RLEF round on a tiny Llama, the way `rlef_jax.train` runs it: this process rolls
out its block of 8 fixed synthetic problems (all 8 in one process, 4 each in two) with the real
sampler, environment and execution pool, `round_batch.make_round_batch` gathers the round, and one PPO
update runs on all 8 episodes. Writes the gathered batch, the round and update metrics and the
updated params (gathered to host) to `<out>/round_<process>.npz`. With one sampling group, two
processes sample exactly the global batch one process samples, so everything must match.

`--part train`: `train.train` for two rounds of one update in a fresh workdir, stopped after the
first (as SIGTERM would) and resumed; writes `<out>/train_<process>.json` (the returned evaluation
summaries and a digest of the final policy params).

The process layout comes from the environment (`RLEF_COORDINATOR` etc.); the parent sets
`JAX_PLATFORMS=cpu` and the per-process CPU device count in `XLA_FLAGS`.
"""

import argparse
import importlib.util
import json
import os
import pathlib

import ml_collections
import numpy as np

from rlef_jax import distributed

ROOT = pathlib.Path(__file__).resolve().parents[2]
EPISODES = 8


def tiny_config(data_dir: str, **extra):
  spec = importlib.util.spec_from_file_location("tiny_config", ROOT / "configs" / "tiny.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  overrides = {
      "model.hidden_size": 32, "model.intermediate_size": 64, "model.num_layers": 1,
      "model.num_heads": 2, "model.num_kv_heads": 1, "model.head_dim": 16,
      "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 1,  # rows over data, params over fsdp
      "data.data_dir": data_dir, "data.train_split": "train[:16]",
      "sampling.max_new_tokens": 24,
      "rl.rollouts_per_round": EPISODES, "rl.minibatch_size": EPISODES, "rl.updates_per_round": 1,
      "rl.score_batch_size": 4,  # two scoring passes, by length
      "rl.num_microbatches": 2,  # train(): each update in two gradient passes of 4
      "train.num_updates": 2, "train.eval_every": 100, "train.checkpoint_every": 100,
      "train.log_every": 1,
      "eval.max_problems": 3, "eval.num_rollouts_per_problem": 1,  # 3 and 9 episodes: uneven split
      "eval.single_turn": True,
      "warmstart.enabled": False,
      "execution.workers": 1,
      "distributed.initialization_timeout_s": 60,
      **extra,
  }
  for key, value in overrides.items():
    group, field = key.split(".")
    config[group][field] = value
  return config


def round_part(out: str, data_dir: str) -> None:
  import jax
  from jax.experimental import multihost_utils
  from rlef_jax import model as model_lib, ppo, ppo_update, rollout as rollout_lib, round_batch, sharding
  from rlef_jax import experiment
  from rlef_jax.data import records as records_lib

  config = tiny_config(data_dir)
  run = experiment.build(config, os.path.join(out, "unused_workdir"))
  try:
    rng = jax.random.key(0)
    ref_params = sharding.init_params(run.policy_model, run.mesh, rng)
    value_params = model_lib.value_params_from_policy(ref_params, jax.random.key(1), run.llama_config)
    policy_opt, value_opt = ppo.make_optimizers(config.optim, total_steps=2)
    # The policy is the reference plus noise, so the KL penalty differs between episodes and the
    # advantages (all task rewards of a random model are equal) are not all zero.
    leaves, treedef = jax.tree.flatten(ref_params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    policy_params = jax.tree.unflatten(treedef, [
        x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])
    state = ppo.init_train_state(policy_params, value_params, policy_opt, value_opt, rng)
    state = round_batch.on_mesh(state, run.mesh)

    source = experiment.data_source(config, "train[:8]")
    problems = experiment.to_problems([records_lib.decode_example(source[i]) for i in range(EPISODES)],
                                     config, run.pool)
    per = EPISODES // jax.process_count()
    mine = problems[jax.process_index() * per:(jax.process_index() + 1) * per]
    settings = experiment.rollout_settings(config, evaluation=False)
    settings = rollout_lib.RolloutSettings(**{**settings.__dict__, "num_groups": 1})
    engine = rollout_lib.RolloutEngine(run.policy_model, run.llama_config, run.tokenizer, run.pool,
                                       config.env, settings, run.mesh)
    records, _ = engine.run(state.policy_params, mine, jax.random.key(5))
    fns = round_batch.make_score_fns(run)
    batch, round_metrics = round_batch.make_round_batch(run, state, ref_params, records, fns)
    update = ppo_update.make_update_step(run.policy_model, run.value_model, policy_opt, value_opt,
                                  run.ppo_settings, mesh=run.mesh,
                                  bucket_tokens=config.rl.update_bucket_tokens)  # configs/tiny.py: 64
    minibatch = {k: round_batch.to_device(run, batch[k]) for k in ppo.minibatch_keys(run.ppo_settings)}
    state, update_metrics = update(state, minibatch)
    params = multihost_utils.process_allgather(state.policy_params, tiled=True)
    flat = {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_leaves_with_path(params)}
    metric_names = sorted(round_metrics)
    update_names = sorted(update_metrics)
    np.savez(os.path.join(out, f"round_{jax.process_index()}.npz"),
             process_count=jax.process_count(), local_episodes=len(records),
             metric_names=np.array(metric_names),
             metric_values=np.array([round_metrics[k] for k in metric_names], np.float64),
             update_names=np.array(update_names),
             update_values=np.array([float(np.asarray(distributed.to_host(update_metrics[k])))
                                     for k in update_names], np.float64),
             **{"batch_" + k: v for k, v in batch.items()},
             **{"param" + k: v for k, v in flat.items()})
  finally:
    run.close()


def train_part(out: str, data_dir: str) -> None:
  import jax
  from rlef_jax import train as train_lib

  config = tiny_config(data_dir)
  workdir = os.path.join(out, "workdir")
  first = train_lib.train(config, workdir, stop_after_updates=1)
  results = train_lib.train(config, workdir)  # resumes from the step-1 checkpoint
  with open(os.path.join(out, f"train_{jax.process_index()}.json"), "w") as f:
    json.dump({"first_call": sorted(first), "results": results}, f)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", required=True)
  parser.add_argument("--data-dir", required=True)
  parser.add_argument("--part", choices=("round", "train"), required=True)
  args = parser.parse_args()
  dist = distributed.default_config()
  dist.initialization_timeout_s = 60
  distributed.initialize(ml_collections.ConfigDict({"distributed": dist}))
  os.makedirs(args.out, exist_ok=True)
  {"round": round_part, "train": train_part}[args.part](args.out, args.data_dir)


if __name__ == "__main__":
  main()
