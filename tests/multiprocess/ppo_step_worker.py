"""One process of the multi-process PPO test (tests/distributed_test.py starts it, once per process).

Runs `ppo_update.make_update_step` for a few steps on a tiny Llama policy + value network with a fixed random
minibatch, on a ("data", "fsdp", "tensor") mesh over the devices of every process, and writes the
final params (gathered to host) and the per-step metrics to `<out>/process_<i>.npz`. Process 0 also
logs the metrics with `MetricsWriter` into `<out>/metrics`.

The process layout comes from the environment (`RLEF_COORDINATOR` etc., read by
`rlef_jax.distributed.initialize`); the parent sets `JAX_PLATFORMS=cpu` and the per-process CPU
device count in `XLA_FLAGS` before this interpreter starts.
"""

import argparse
import os

import ml_collections
import numpy as np

from rlef_jax import distributed

B, L, T, VOCAB = 8, 16, 2, 64


def fixed_minibatch(seed: int = 0) -> dict[str, np.ndarray]:
  """A plausible two-turn minibatch: prompt 0..3, turn 0 at 4..8, feedback 9..10, turn 1 at 11..15.

  Odd rows stop after turn 0 (their turn-1 positions are padding).
  """
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, VOCAB, size=(B, L)).astype(np.int32)
  turn_id = np.full((B, L), -1, np.int32)
  turn_id[:, 4:9] = 0
  turn_id[:, 11:16] = 1
  turn_mask = np.ones((B, T), np.int32)
  turn_mask[1::2, 1] = 0
  turn_id[1::2, 11:16] = -1
  tokens[1::2, 11:16] = 0
  policy_mask = (turn_id >= 0).astype(np.int32)
  old_logp = np.where(policy_mask, -rng.uniform(1.0, 5.0, size=(B, L)), 0.0).astype(np.float32)
  behaviour_logp = np.where(policy_mask, old_logp + rng.normal(0, 0.1, size=(B, L)),
                            0.0).astype(np.float32)
  return {
      "tokens_BxL": tokens, "policy_mask_BxL": policy_mask, "turn_id_BxL": turn_id,
      "behaviour_logp_BxL": behaviour_logp, "old_logp_BxL": old_logp,
      "advantages_BxT": (rng.normal(size=(B, T)) * turn_mask).astype(np.float32),
      "returns_BxT": (rng.normal(size=(B, T)) * turn_mask).astype(np.float32),
      "old_values_BxT": (rng.normal(size=(B, T)) * turn_mask).astype(np.float32),
      "value_index_BxT": np.tile(np.array([[3, 10]], np.int32), (B, 1)),
      "turn_mask_BxT": turn_mask,
  }


def run(out: str, steps: int, fsdp: int, tensor: int, devices=None, plan_source: str = "single"):
  """The PPO steps on a (1, fsdp, tensor) mesh over `devices` (default: every process's devices)."""
  import flax.linen as nn
  import jax
  from jax.experimental import multihost_utils
  from rlef_jax import config as config_lib, metrics, model, ppo, ppo_update, sharding

  cfg = config_lib.base_config()
  cfg.optim.lr = cfg.optim.value_lr = 1e-3
  cfg.optim.warmup_steps = 0
  llama = model.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_layers=2,
                            num_heads=4, num_kv_heads=2, rope_theta=10000.0,
                            max_position_embeddings=64)
  policy_model, value_model = model.Llama(llama), model.LlamaValue(llama)
  mesh = sharding.make_mesh({"data": 1, "fsdp": fsdp, "tensor": tensor}, devices)
  policy_opt, value_opt = ppo.make_optimizers(cfg.optim, cfg.train.num_updates)

  policy_shardings = sharding.param_shardings(policy_model, mesh)
  value_shardings = sharding.param_shardings(value_model, mesh)
  state_shardings = ppo.TrainState(
      policy_shardings, value_shardings,
      sharding.opt_state_shardings(policy_opt, policy_shardings,
                                   sharding.abstract_params(policy_model), mesh),
      sharding.opt_state_shardings(value_opt, value_shardings,
                                   sharding.abstract_params(value_model), mesh),
      sharding.replicated(mesh), sharding.replicated(mesh))

  def init_state(rng):
    init_rng, value_rng, state_rng = jax.random.split(rng, 3)
    tokens_BxL = jax.numpy.zeros((1, 1), jax.numpy.int32)
    policy_params = nn.unbox(policy_model.init(init_rng, tokens_BxL)["params"])
    value_params = model.value_params_from_policy(policy_params, value_rng, llama)
    return ppo.init_train_state(policy_params, value_params, policy_opt, value_opt, state_rng)

  with sharding.use_mesh(mesh):
    state = jax.jit(init_state, out_shardings=state_shardings)(jax.random.key(0))

  update = ppo_update.make_update_step(policy_model, value_model, policy_opt, value_opt,
                                 ppo.PPOSettings.from_config(cfg.rl), mesh=mesh)
  full_batch = fixed_minibatch()
  batch_sharding = sharding.data_sharding(mesh, 2)
  rows = distributed.local_rows(batch_sharding, full_batch["tokens_BxL"].shape)
  batch = distributed.global_batch({k: v[rows] for k, v in full_batch.items()}, batch_sharding, B)

  writer = metrics.MetricsWriter(os.path.join(out, "metrics"), total_steps=steps, log_every=1)
  logged = []
  for step in range(1, steps + 1):
    state, step_metrics = update(state, batch)
    writer.write(step, step_metrics)
    logged.append({k: metrics.to_scalar(k, v) for k, v in sorted(step_metrics.items())})
  writer.close()

  gathered = multihost_utils.process_allgather(
      {"policy": state.policy_params, "value": state.value_params}, tiled=True)
  gathered_batch = multihost_utils.process_allgather(batch, tiled=True)
  flat = {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(gathered)}
  names = sorted(logged[0])
  np.savez(os.path.join(out, f"process_{jax.process_index()}.npz"),
           metric_names=np.array(names),
           metric_values=np.array([[row[n] for n in names] for row in logged], np.float64),
           process_count=jax.process_count(), device_count=mesh.devices.size,
           local_device_count=len(mesh.local_devices), plan_source=plan_source,
           local_rows=np.array([rows.start, rows.stop]),
           mesh_shape=np.array(list(mesh.devices.shape)),
           **{"batch_" + k: np.asarray(v) for k, v in gathered_batch.items()},
           **{"param" + k: v for k, v in flat.items()})


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", required=True)
  parser.add_argument("--steps", type=int, default=2)
  parser.add_argument("--fsdp", type=int, default=-1)
  parser.add_argument("--tensor", type=int, default=1)
  args = parser.parse_args()
  dist = distributed.default_config()
  dist.initialization_timeout_s = 60
  plan = distributed.initialize(ml_collections.ConfigDict({"distributed": dist}))
  run(args.out, args.steps, args.fsdp, args.tensor, plan_source=plan.source)


if __name__ == "__main__":
  main()
