"""RLEF's PPO update step (paper §3): one jitted, donated, optionally sharded optimizer step of the
policy and the value network on a minibatch; the trainer runs `rl.updates_per_round` of them a round.

* `make_update_step`: the step the trainer calls, built from `ppo.PPOSettings` and the optimizers of
  `ppo.make_optimizers`; its pieces `make_update_fn` (the pure step) and `jit_sharded_update` (its
  sharded jit) are public so that the step can be lowered and compiled on abstract inputs
  (benchmarks/fit.py);
* `make_bucketed_update_step`: the same step with length-bucketed microbatches
  (`rl.update_bucket_tokens`): each row chunk runs only to its own longest episode;
* microbatching (`split_microbatches`, `accumulate_grads`, `microbatch_count`): gradients summed over
  row chunks, loss weights over the whole minibatch, so any chunking is the same update.

The losses are `rlef_jax.losses`; the targets a minibatch carries come from `ppo.compute_turn_targets`.

Shape letters: B episodes, L tokens, T turns, M microbatches.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlef_jax import distributed
from rlef_jax import logprobs as logprobs_lib
from rlef_jax import losses
from rlef_jax import ppo


def _check_minibatch(batch: dict[str, Any], num_microbatches: int,
                     keys: tuple[str, ...] = ppo.MINIBATCH_KEYS) -> dict[str, Any]:
  """The minibatch's `keys` entries (`ppo.minibatch_keys`), after checking their presence and shapes."""
  missing = [k for k in keys if k not in batch]
  if missing:
    raise ValueError(f"the minibatch lacks {missing}; it needs exactly {list(keys)}")
  B, L = batch["tokens_BxL"].shape
  T = batch["turn_mask_BxT"].shape[1]
  for k in keys:
    want = (B, L) if k.endswith("BxL") else (B, T)
    if tuple(batch[k].shape) != want:
      raise ValueError(f"minibatch[{k!r}] has shape {tuple(batch[k].shape)}, expected {want} "
                       f"(B={B} from tokens_BxL, L={L}, T={T} from turn_mask_BxT)")
  if B % num_microbatches:
    raise ValueError(f"minibatch size {B} is not divisible by num_microbatches={num_microbatches}")
  return {k: batch[k] for k in keys}


def _policy_loss_fn(policy_model, s: ppo.PPOSettings):
  def loss_fn(params, mb):
    logp_BxL, entropy_BxL = logprobs_lib.token_logprobs(policy_model, params, mb["tokens_BxL"],
                                                        s.logprob_chunk)
    loss, metrics = losses.policy_loss(
        logp_BxL, mb["old_logp_BxL"], mb["behaviour_logp_BxL"], mb["advantages_BxL"],
        mb["token_weights_BxL"], s.clip_eps, s.behaviour_correction)
    w_BxL = mb["token_weights_BxL"]
    metrics["entropy"] = jnp.sum(w_BxL * entropy_BxL)
    metrics["behaviour_logp_gap"] = jnp.sum(
        w_BxL * jnp.abs(jax.lax.stop_gradient(logp_BxL) - mb["behaviour_logp_BxL"]))
    return loss, metrics
  return loss_fn


def _value_loss_fn(value_model, s: ppo.PPOSettings):
  """The clipped value loss (paper §3) of the turn-level value, or of the token-level one (App. B):
  every response token's value against its turn's return, weighted like the policy loss's tokens."""
  def loss_fn(params, mb):
    out_BxL = value_model.apply({"params": params}, mb["tokens_BxL"])
    if s.value_level == "token":
      values = losses.token_values_BxL(out_BxL, mb["turn_id_BxL"])
      loss, metrics = losses.value_loss(
          values, mb["old_values_BxL"], losses.broadcast_to_tokens_BxL(mb["returns_BxT"], mb["turn_id_BxL"]),
          mb["token_weights_BxL"], s.value_clip)
    else:
      values = ppo.values_at_BxT(out_BxL, mb["value_index_BxT"])
      loss, metrics = losses.value_loss(values, mb["old_values_BxT"], mb["returns_BxT"],
                                        mb["turn_weights_BxT"], s.value_clip)
    return loss, (metrics, values)
  return loss_fn


def split_microbatches(batch: Any, num_microbatches: int) -> Any:
  """Every leaf `[B, ...]` of `batch` as `[num_microbatches, B // num_microbatches, ...]`."""
  M = num_microbatches
  return jax.tree.map(lambda x: x.reshape((M, x.shape[0] // M) + x.shape[1:]), batch)


def accumulate_grads(grad_fn, params, micro: Any, num_microbatches: int):
  """Sums `((loss, aux), grads)` of `grad_fn` (a `jax.value_and_grad(..., has_aux=True)`) over the
  leading microbatch axis of `micro` (`split_microbatches`); the loss weights must already be global,
  so that the sum is the whole batch's value. Also returns the stacked auxes."""
  if num_microbatches == 1:
    out = grad_fn(params, jax.tree.map(lambda x: x[0], micro))
    return out, jax.tree.map(lambda a: a[None], out[0][1])
  first = jax.tree.map(lambda x: x[0], micro)
  zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(grad_fn, params, first))

  def body(acc, mb):
    out = grad_fn(params, mb)
    return jax.tree.map(jnp.add, acc, out), out[0][1]

  return jax.lax.scan(body, zeros, micro)


PER_SHARD = -1  # `num_microbatches` value: one episode per data-parallel shard per microbatch (-k: k)


def microbatch_count(minibatch_size: int, num_microbatches: int,
                     mesh: Optional[jax.sharding.Mesh] = None) -> int:
  """The microbatches a minibatch of `minibatch_size` episodes is split into: `num_microbatches` when
  positive; a negative value -k sets the microbatch instead, k episodes per data-parallel shard:
  minibatch_size / (k × mesh data × fsdp) microbatches (`PER_SHARD`, -1: one episode per shard, the
  least activation memory). A microbatch per shard holds the same k episodes on any number of devices."""
  if num_microbatches > 0:
    return num_microbatches
  if num_microbatches == 0:
    raise ValueError("num_microbatches must be >= 1, or -k for k episodes per data-parallel shard, got 0")
  split = (1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]) * -num_microbatches
  if minibatch_size % split:
    raise ValueError(f"minibatch size {minibatch_size} must be a multiple of the mesh's data × fsdp × "
                     f"episodes per shard ({-num_microbatches}) = {split}")
  return minibatch_size // split


def _derived_minibatch(batch: dict[str, jax.Array], s: ppo.PPOSettings):
  """The minibatch plus its loss weights over the whole minibatch (so that chunk sums equal one pass),
  per-token advantages, and the (returns, mask) the explained variance compares the values with."""
  T = batch["turn_mask_BxT"].shape[1]
  derived = dict(batch)
  derived["token_weights_BxL"] = losses.token_weights_BxL(
      batch["policy_mask_BxL"], batch["turn_id_BxL"], T, s.loss_aggregation)
  derived["turn_weights_BxT"] = losses.turn_weights_BxT(batch["turn_mask_BxT"])
  if s.value_level == "token":
    returns, value_mask = (losses.broadcast_to_tokens_BxL(batch["returns_BxT"], batch["turn_id_BxL"]),
                           batch["turn_id_BxL"] >= 0)
  else:
    derived["advantages_BxL"] = losses.broadcast_to_tokens_BxL(batch["advantages_BxT"],
                                                               batch["turn_id_BxL"])
    returns, value_mask = batch["returns_BxT"], batch["turn_mask_BxT"]
  return derived, returns, value_mask


def _apply_grads(state: ppo.TrainState, policy_opt: optax.GradientTransformation,
                 value_opt: optax.GradientTransformation, sums: tuple, values, returns, value_mask
                 ) -> tuple[ppo.TrainState, dict]:
  """One AdamW step of both networks from the minibatch's summed `((p_loss, p_metrics), p_grads,
  (v_loss, v_metrics), v_grads)`, and the update's metrics."""
  (p_loss, p_metrics), p_grads, (v_loss, v_metrics), v_grads = sums
  p_updates, p_opt = policy_opt.update(p_grads, state.policy_opt_state, state.policy_params)
  v_updates, v_opt = value_opt.update(v_grads, state.value_opt_state, state.value_params)
  new_state = state.replace(
      policy_params=optax.apply_updates(state.policy_params, p_updates),
      value_params=optax.apply_updates(state.value_params, v_updates),
      policy_opt_state=p_opt, value_opt_state=v_opt, step=state.step + 1)
  metrics = {"policy_loss": p_loss, "value_loss": v_loss,
             "policy_grad_norm": optax.global_norm(p_grads),
             "value_grad_norm": optax.global_norm(v_grads),
             "explained_variance": losses.explained_variance(values, returns, value_mask),
             **{f"pg_{k}": v for k, v in p_metrics.items()},
             **{f"vf_{k}": v for k, v in v_metrics.items()}}
  return new_state, metrics


def make_update_fn(policy_model: nn.Module, value_model: nn.Module,
                   policy_opt: optax.GradientTransformation, value_opt: optax.GradientTransformation,
                   settings: ppo.PPOSettings, mesh: Optional[jax.sharding.Mesh] = None,
                   num_microbatches: int = 1
                   ) -> Callable[[ppo.TrainState, dict[str, jax.Array]], tuple[ppo.TrainState, dict]]:
  """The pure `update(state, minibatch) -> (state, metrics)` that `make_update_step` jits (the
  minibatch holds exactly `ppo.minibatch_keys(settings)`); `mesh` only resolves `num_microbatches=PER_SHARD`."""
  s = ppo.as_settings(settings)
  if num_microbatches == 0:
    raise ValueError("num_microbatches must be >= 1, or -k (k episodes per data-parallel shard per "
                     "microbatch), got 0")
  policy_grad = jax.value_and_grad(_policy_loss_fn(policy_model, s), has_aux=True)
  value_grad = jax.value_and_grad(_value_loss_fn(value_model, s), has_aux=True)

  def update(state: ppo.TrainState, batch: dict[str, jax.Array]):
    M = microbatch_count(batch["turn_mask_BxT"].shape[0], num_microbatches, mesh)
    derived, returns, value_mask = _derived_minibatch(batch, s)
    micro = split_microbatches(derived, M)
    p_sums, p_grads = accumulate_grads(policy_grad, state.policy_params, micro, M)[0]
    ((v_loss, (v_metrics, _)), v_grads), (_, stacked_values) = accumulate_grads(
        value_grad, state.value_params, micro, M)
    values = stacked_values.reshape(returns.shape)
    return _apply_grads(state, policy_opt, value_opt, (p_sums, p_grads, (v_loss, v_metrics), v_grads),
                        values, returns, value_mask)

  return update


def _check_data_split(batch: dict[str, Any], mesh: jax.sharding.Mesh) -> dict[str, Any]:
  """`batch`, after checking that its rows divide over the mesh's data axes."""
  split = mesh.shape["data"] * mesh.shape["fsdp"]
  if batch["tokens_BxL"].shape[0] % split:
    raise ValueError(f"minibatch size {batch['tokens_BxL'].shape[0]} must be a multiple of the "
                     f"mesh's data × fsdp = {split}")
  return batch


def _state_shardings(state: ppo.TrainState, mesh: jax.sharding.Mesh) -> Any:
  """The shardings an update keeps the state on: each leaf's own, replicated where it has none."""
  from rlef_jax import sharding  # pylint: disable=g-import-not-at-top
  named = lambda x: isinstance(getattr(x, "sharding", None), jax.sharding.NamedSharding)
  return jax.tree.map(lambda x: x.sharding if named(x) else sharding.replicated(mesh), state)


def response_ends_B(policy_mask_BxL: np.ndarray) -> np.ndarray:
  """Per row, the position just after its last response token (1 for a row without any)."""
  mask_BxL = np.asarray(policy_mask_BxL) > 0
  L = mask_BxL.shape[1]
  return np.where(mask_BxL.any(axis=1), L - np.argmax(mask_BxL[:, ::-1], axis=1), 1)


def chunk_order_and_widths(policy_mask_BxL: np.ndarray, rows_per_chunk: int, bucket_tokens: int
                            ) -> tuple[np.ndarray, list[int]]:
  """Length-bucketed microbatches: the minibatch's rows sorted by where their last response token ends,
  and each chunk's width — the longest end among its `rows_per_chunk` rows rounded up to a multiple of
  `bucket_tokens` (at most L). Columns past that width are padding for every row of the chunk: no loss
  term reads them (the policy's log-prob of token p comes from position p - 1, the values from
  positions before each response) and, the model being causal, they change nothing before them."""
  B, L = np.shape(policy_mask_BxL)
  end_B = response_ends_B(policy_mask_BxL)
  order = np.argsort(end_B, kind="stable")
  widths = [min(L, -(-int(end_B[order[i:i + rows_per_chunk]].max()) // bucket_tokens) * bucket_tokens)
            for i in range(0, B, rows_per_chunk)]
  return order.astype(np.int32), widths


def make_bucketed_update_step(policy_model: nn.Module, value_model: nn.Module,
                              policy_opt: optax.GradientTransformation,
                              value_opt: optax.GradientTransformation, settings: ppo.PPOSettings,
                              mesh: Optional[jax.sharding.Mesh] = None, num_microbatches: int = 1,
                              bucket_tokens: int = 64
                              ) -> Callable[[ppo.TrainState, dict[str, jax.Array]], tuple[ppo.TrainState, dict]]:
  """`make_update_step` with length-bucketed microbatches (`rl.update_bucket_tokens`): the minibatch's
  rows are sorted by length, cut into the same chunks of B / M rows, and each chunk runs only to its
  own width (`chunk_order_and_widths`) instead of the minibatch's padded length. The same update up to
  float rounding (the gradient sums run in another order); less compute when lengths differ (the tiny
  rounds are ~30-50% padding). One jitted gradient call per chunk, compiled once per width, then one
  jitted optimizer step; the state is donated. With a `mesh` the state keeps its shardings and the
  minibatch is sharded over the data axes, as in `make_update_step` (also over several processes:
  every process computes the same chunks from the gathered minibatch)."""
  s = ppo.as_settings(settings)
  if bucket_tokens < 1:
    raise ValueError(f"bucket_tokens must be >= 1, got {bucket_tokens}")
  policy_grad = jax.value_and_grad(_policy_loss_fn(policy_model, s), has_aux=True)
  value_grad = jax.value_and_grad(_value_loss_fn(value_model, s), has_aux=True)
  keys = ppo.minibatch_keys(s)
  derive = jax.jit(lambda batch: _derived_minibatch(batch, s))

  @functools.partial(jax.jit, static_argnames="width", donate_argnums=2)
  def chunk(policy_params, value_params, sums, derived, rows, width):
    mb = {k: (v[rows, :width] if k.endswith("BxL") else v[rows]) for k, v in derived.items()}
    p_out, p_grads = policy_grad(policy_params, mb)
    (v_loss, (v_metrics, values)), v_grads = value_grad(value_params, mb)
    out = (p_out, p_grads, (v_loss, v_metrics), v_grads)
    if s.value_level == "token":  # per token: back to the minibatch's length
      values = jnp.pad(values, ((0, 0), (0, derived["tokens_BxL"].shape[1] - width)))
    return (out if sums is None else jax.tree.map(jnp.add, sums, out)), values

  @functools.partial(jax.jit, donate_argnums=0)
  def finish(state, sums, values, order, returns, value_mask):
    return _apply_grads(state, policy_opt, value_opt, sums, jnp.concatenate(values),
                        returns[order], value_mask[order])

  def step(state, batch, place=lambda rows: rows):
    B = batch["tokens_BxL"].shape[0]
    rows = B // microbatch_count(B, num_microbatches, mesh)
    order, widths = chunk_order_and_widths(distributed.to_host(batch["policy_mask_BxL"]), rows,
                                           bucket_tokens)
    derived, returns, value_mask = derive(batch)
    sums, values = None, []
    for i, width in enumerate(widths):
      sums, v = chunk(state.policy_params, state.value_params, sums, derived,
                      place(order[i * rows:(i + 1) * rows]), width=width)
      values.append(v)
    return finish(state, sums, values, place(order), returns, value_mask)

  check_size = max(num_microbatches, 1)  # a negative count is checked by `microbatch_count`
  if mesh is None:
    return lambda state, batch: step(state, _check_minibatch(batch, check_size, keys))

  from rlef_jax import sharding  # pylint: disable=g-import-not-at-top

  def run_sharded(state, batch):
    batch = _check_data_split(_check_minibatch(batch, check_size, keys), mesh)
    state = jax.device_put(state, _state_shardings(state, mesh))
    # Host arrays go on the data axes; arrays already placed (global ones with several processes) stay.
    batch = {k: v if isinstance(v, jax.Array) else jax.device_put(v, sharding.data_sharding(mesh, v.ndim))
             for k, v in batch.items()}
    replicated = sharding.replicated(mesh)
    with sharding.use_mesh(mesh):  # row indices: the same on every process, replicated
      return step(state, batch, place=lambda rows: distributed.from_host(rows, replicated))

  return run_sharded


def jit_sharded_update(update: Callable, state_shardings: Any, batch_shardings: Any) -> Callable:
  """`update` jitted as the sharded trainer runs it: the state donated and kept on its shardings,
  the minibatch on `batch_shardings`. Call (or `.lower`) it under `sharding.use_mesh(mesh)`."""
  return jax.jit(update, in_shardings=(state_shardings, batch_shardings),
                 out_shardings=(state_shardings, None), donate_argnums=0)


def make_update_step(policy_model: nn.Module, value_model: nn.Module,
                     policy_opt: optax.GradientTransformation, value_opt: optax.GradientTransformation,
                     settings: ppo.PPOSettings, mesh: Optional[jax.sharding.Mesh] = None,
                     num_microbatches: int = 1, bucket_tokens: int = 0
                     ) -> Callable[[ppo.TrainState, dict[str, jax.Array]], tuple[ppo.TrainState, dict]]:
  """`update(state, minibatch) -> (state, metrics)`: one AdamW step of policy and value (paper §3).

  The minibatch (keys `ppo.minibatch_keys(settings)`, B rows) is split into `num_microbatches` chunks whose gradients
  are summed (negative: -k, k episodes per data-parallel shard each, `microbatch_count`); loss weights are computed
  over the whole minibatch first, so the result equals one pass over all B rows. The state is donated.
  With a `mesh`, the update is traced under the logical-axis rules (activations constrained), the
  state keeps the shardings it arrives with and the batch is sharded over the data axes. With
  `bucket_tokens` > 0 the chunks are length-bucketed (`make_bucketed_update_step`).
  """
  if bucket_tokens:
    return make_bucketed_update_step(policy_model, value_model, policy_opt, value_opt, settings, mesh,
                                     num_microbatches, bucket_tokens)
  update = make_update_fn(policy_model, value_model, policy_opt, value_opt, settings, mesh,
                          num_microbatches)
  check_size = max(num_microbatches, 1)  # a negative count is checked by `microbatch_count`
  keys = ppo.minibatch_keys(settings)

  if mesh is None:
    jitted = jax.jit(update, donate_argnums=0)

    def run(state, batch):
      return jitted(state, _check_minibatch(batch, check_size, keys))
    return run

  from rlef_jax import sharding  # pylint: disable=g-import-not-at-top
  compiled: dict[Any, Callable] = {}

  def run_sharded(state, batch):
    batch = _check_data_split(_check_minibatch(batch, check_size, keys), mesh)
    key = jax.tree.structure(state)
    if key not in compiled:
      state_shardings = _state_shardings(state, mesh)
      batch_shardings = {k: sharding.data_sharding(mesh, jnp.ndim(v)) for k, v in batch.items()}
      compiled[key] = (jit_sharded_update(update, state_shardings, batch_shardings), state_shardings)
    jitted, state_shardings = compiled[key]
    with sharding.use_mesh(mesh):
      return jitted(jax.device_put(state, state_shardings), batch)

  return run_sharded
