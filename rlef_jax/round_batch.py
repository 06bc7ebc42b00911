"""One collection round turned into PPO training arrays (paper §2–3): the episodes' token arrays,
their log-probs under the current policy π_θold and the frozen reference ρ, the turn values, and the
per-turn targets (KL-in-reward, returns, normalised advantages), plus the round's metrics.

`run` is the `rlef_jax.experiment.Run` of the trainer (this module reads its `config`, `mesh`, `tokenizer`
and `ppo_settings`).
With several processes every function here returns the same arrays on every process: the round is
gathered (`rlef_jax.distributed`) before it is scored.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlef_jax import distributed
from rlef_jax import env as env_lib
from rlef_jax import ppo
from rlef_jax import rollout as rollout_lib
from rlef_jax import sharding


def episode_arrays(records: Sequence[rollout_lib.EpisodeRecord], max_turns: int) -> dict:
  """Per-episode outcomes as arrays (gathered across processes with the batch, for the metrics)."""
  B = len(records)
  out = {"solved_B": np.zeros(B), "truncated_B": np.zeros(B),
         "public_passed_BxT": np.zeros((B, max_turns)), "valid_code_BxT": np.zeros((B, max_turns))}
  for b, rec in enumerate(records):
    ep = rec.episode
    out["solved_B"][b] = float(ep.solved)
    out["truncated_B"][b] = float(rec.truncated)
    for t, turn in enumerate(ep.turns):
      out["public_passed_BxT"][b, t] = float(env_lib.public_passed(ep.problem, turn.public_result))
      out["valid_code_BxT"][b, t] = float(turn.valid)
  return out


def to_device(run: Any, x: np.ndarray) -> jax.Array:
  """A host array that every process holds whole, as an input of the jitted functions: batch rows
  over the mesh's data axes, each process placing its own (in one process: `jnp.asarray`)."""
  if not distributed.is_multiprocess():
    return jnp.asarray(x)
  return distributed.from_host(x, sharding.data_sharding(run.mesh, np.ndim(x)))


def score_batch_size(config: Any, num_episodes: int, mesh: jax.sharding.Mesh) -> int:
  """Episodes per scoring pass: `config.rl.score_batch_size`; 0 = all `num_episodes`; -1 = one per
  data-parallel shard (`mesh` data × fsdp), the least memory on any number of devices."""
  n = config.rl.score_batch_size
  if n == -1:
    return mesh.shape["data"] * mesh.shape["fsdp"]
  return n or num_episodes


def make_score_fns(run: Any) -> dict:
  """The jitted functions `score` calls: "logprob" (π_θold and ρ) and "value" (at `rl.value_level`)."""
  settings = run.ppo_settings
  return {"logprob": ppo.make_logprob_fn(run.policy_model, mesh=run.mesh, chunk=settings.logprob_chunk),
          "value": ppo.make_value_fn(run.value_model, mesh=run.mesh, value_level=settings.value_level)}


def score(run: Any, state: ppo.TrainState, ref_params: Any, batch: dict, fns: dict
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """With `fns` from `make_score_fns(run)`: log-probs of the round's tokens under the current policy
  (π_θold) and the reference ρ, and the values at each turn's last prompt token: host arrays `[B, L]`,
  `[B, L]`, `[B, T]` (with `rl.value_level = "token"` the values are per response token, `[B, L]`).
  With `rl.old_logp = "sampler"` π_θold's are the sampler's own (`behaviour_logp_BxL`, zero off the
  policy tokens) and only ρ and the values are computed.

  With n = `score_batch_size(...)` below B the episodes are scored n at a time in order of length,
  each pass padded only to its own longest episode (rounded up to 64 tokens): less padding to
  compute and a smaller peak (the forward holds n × L × vocabulary logits).
  """
  per_token = run.ppo_settings.value_level == "token"
  tokens_BxL = batch["tokens_BxL"]
  where = batch["turn_id_BxL"] if per_token else batch["value_index_BxT"]  # where values are read
  B, L = tokens_BxL.shape

  rescore = run.config.rl.old_logp == "rescore"

  def one_pass(tokens_np, where_np):
    tokens = to_device(run, tokens_np)
    return (distributed.to_host(fns["logprob"](state.policy_params, tokens)) if rescore else None,
            distributed.to_host(fns["logprob"](ref_params, tokens)),
            distributed.to_host(fns["value"](state.value_params, tokens, to_device(run, where_np))))

  n = score_batch_size(run.config, B, run.mesh)
  if n == B:
    old_logp, ref_logp, old_values = one_pass(tokens_BxL, where)
    return (old_logp if rescore else batch["behaviour_logp_BxL"]), ref_logp, old_values
  order = np.argsort(batch["length_B"], kind="stable")
  old_logp, ref_logp = np.zeros((B, L), np.float32), np.zeros((B, L), np.float32)
  old_values = np.zeros(where.shape, np.float32)
  for start in range(0, B, n):
    rows = order[start:start + n]
    width = min(L, rollout_lib.round_up(int(batch["length_B"][rows].max()), 64))
    cols = slice(0, width) if per_token else slice(None)
    old_part, ref_logp[rows, :width], old_values[rows, cols] = one_pass(tokens_BxL[rows, :width],
                                                                         where[rows, cols])
    if rescore:
      old_logp[rows, :width] = old_part
  return (old_logp if rescore else batch["behaviour_logp_BxL"]), ref_logp, old_values


def make_round_batch(run: Any, state: ppo.TrainState, ref_params: Any,
                     records: Sequence[rollout_lib.EpisodeRecord], fns: dict) -> tuple[dict, dict]:
  """Training arrays for a round: old / reference log-probs, values and the per-turn targets.

  With several processes, `records` are this process's episodes; the batch (and so the advantage
  normalisation and the metrics) covers every process's episodes, in process order, and every
  process returns the same arrays.
  """
  c = run.config
  local = rollout_lib.to_batch(records, max_turns=c.env.max_turns, pad_id=run.tokenizer.pad_id,
                               min_length=distributed.agree_max(rollout_lib.batch_length(records)))
  local.update(episode_arrays(records, c.env.max_turns))
  batch = {key: distributed.allgather(value) for key, value in local.items()}
  B = batch["tokens_BxL"].shape[0]
  old_logp, ref_logp, old_values = score(run, state, ref_params, batch, fns)
  policy_mask = batch["policy_mask_BxL"]
  targets = ppo.compute_turn_targets(
      to_device(run, batch["task_rewards_BxT"]), to_device(run, old_logp * policy_mask),
      to_device(run, ref_logp * policy_mask), to_device(run, batch["turn_id_BxL"]),
      to_device(run, batch["turn_mask_BxT"]), to_device(run, old_values), run.ppo_settings)
  targets = {key: distributed.to_host(value) for key, value in targets.items()}
  per_token = run.ppo_settings.value_level == "token"
  advantages_key = "advantages_BxL" if per_token else "advantages_BxT"
  batch.update({"old_logp_BxL": old_logp, "old_values_BxL" if per_token else "old_values_BxT": old_values,
                advantages_key: targets[advantages_key], "returns_BxT": targets["returns_BxT"]})
  turn_mask = batch["turn_mask_BxT"]
  turns = max(np.sum(turn_mask), 1)
  mask = batch["policy_mask_BxL"]
  public = batch["public_passed_BxT"] * turn_mask
  metrics = {
      "reward/task_mean": float(np.sum(batch["task_rewards_BxT"]) / B),
      "reward/total_mean": float(np.sum(targets["rewards_BxT"] * turn_mask) / B),
      "reward/return_mean": float(np.sum(batch["returns_BxT"][:, 0]) / B),
      "solve/private": float(np.mean(batch["solved_B"])),
      "solve/public": float(np.mean(np.max(public, axis=1))),
      "episode/turns": float(np.sum(turn_mask) / B),
      # Repair rate: how often turn t passes the public tests when it is reached (t > 1 follows a
      # failure and its feedback, so this is the direct measure of using the feedback).
      **{f"solve/public_at_turn{t + 1}": float(np.sum(public[:, t]) / np.sum(turn_mask[:, t]))
         if np.sum(turn_mask[:, t]) else float("nan") for t in range(c.env.max_turns)},
      "episode/valid_code": float(np.sum(batch["valid_code_BxT"] * turn_mask) / turns),
      "episode/truncated": float(np.mean(batch["truncated_B"])),
      "episode/response_tokens": float(np.sum(mask) / turns),
      # The updates' padded length and the share of their token positions that are padding.
      "batch/padded_length": float(batch["tokens_BxL"].shape[1]),
      "batch/padding_fraction": float(1 - np.sum(batch["length_B"]) / batch["tokens_BxL"].size),
      "kl/turn_mean": float(np.sum(targets["kl_BxT"] * turn_mask) / turns),
      # The value of a turn's context, V(c_t) (per token: the value before each response token).
      "value/mean": float(np.sum(old_values * mask) / max(np.sum(mask), 1)) if per_token
                    else float(np.sum(old_values * turn_mask) / turns),
      # KL(behaviour || current policy), estimated on the sampled tokens: ~0 when the round was
      # sampled by the policy being updated, the freshness lost when it was sampled earlier
      # (rl.async_rollouts).
      "logp/behaviour_kl": float(
          np.sum((batch["behaviour_logp_BxL"] - batch["old_logp_BxL"]) * mask) / max(np.sum(mask), 1)),
      "logp/sampler_vs_trainer_abs_diff": float(
          np.sum(np.abs(batch["old_logp_BxL"] - batch["behaviour_logp_BxL"]) * mask) / max(np.sum(mask), 1)),
  }
  return batch, metrics


def on_mesh(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Every leaf on the mesh: sharded leaves stay, the rest (step, RNG, optimizer counts, the fresh
  value head: made on one device) are replicated. Jitted calls under the mesh reject a mix, and a
  resumed state is then placed exactly like a fresh one."""
  replicated = sharding.replicated(mesh)
  return jax.tree.map(
      lambda x: x if isinstance(getattr(x, "sharding", None), jax.sharding.NamedSharding)
      else distributed.replicate(x, replicated), tree)
