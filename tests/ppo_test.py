"""The PPO update step (rlef_jax.ppo) on a tiny random Llama policy and value network."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlef_jax import config as config_lib
from rlef_jax import model as model_lib
from rlef_jax import ppo, ppo_update, sharding

V, B, L, T = 48, 4, 24, 3
CFG = model_lib.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_layers=2,
                            num_heads=4, num_kv_heads=2, rope_theta=10000.0)
POLICY = model_lib.Llama(CFG)
VALUE = model_lib.LlamaValue(CFG)
OPTIM = dict(lr=3e-3, value_lr=3e-3, weight_decay=0.1, warmup_steps=0, schedule_after_warmup="constant",
             b1=0.9, b2=0.95, eps=1e-8, grad_clip_norm=1.0)
RL_FIELDS = dict(clip_eps=0.2, value_clip=0.2, kl_coef=0.05, gamma=1.0, kl_clamp=20.0,
                 advantage_norm="batch", behaviour_correction=True, loss_aggregation="token_mean",
                 logprob_chunk=0, value_level="turn")
RL = ppo.PPOSettings.from_config(RL_FIELDS)


def _rl(**changes) -> ppo.PPOSettings:
  return ppo.PPOSettings.from_config(dict(RL_FIELDS, **changes))


LOGPROB = ppo.make_logprob_fn(POLICY)
VALUES = ppo.make_value_fn(VALUE)
TOKEN_VALUES = ppo.make_value_fn(VALUE, value_level="token")  # the App. B ablation (rl.value_level)
SGD = (optax.sgd(0.5), optax.sgd(0.5))  # equivalence tests compare plain gradient steps (Adam
                                        # would amplify float noise in near-zero gradients)


@pytest.fixture(scope="module")
def adam_update():
  optimizers = ppo.make_optimizers(OPTIM)
  return optimizers, ppo_update.make_update_step(POLICY, VALUE, *optimizers, RL)


@pytest.fixture(scope="module")
def sgd_update():
  return ppo_update.make_update_step(POLICY, VALUE, *SGD, _rl(loss_aggregation="turn_mean"))


@pytest.fixture(scope="module")
def nets():
  policy = jax.device_get(POLICY.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
  value = jax.device_get(model_lib.value_params_from_policy(policy, jax.random.key(1), CFG))
  return policy, value


def _episodes(seed):
  """Dialogues laid out as prompt, response, feedback, response, ... with the per-turn arrays."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, V, (B, L)).astype(np.int32)
  turn_id = np.full((B, L), -1, np.int32)
  turn_mask = np.zeros((B, T), np.float32)
  value_index = np.zeros((B, T), np.int32)
  for b in range(B):
    pos = rng.integers(2, 5)
    for t in range(rng.integers(1, T + 1)):
      n = rng.integers(2, 5)
      value_index[b, t] = pos - 1
      turn_id[b, pos:pos + n] = t
      turn_mask[b, t] = 1
      pos += n + rng.integers(1, 3)
  return rng, tokens, turn_id, turn_mask, value_index


def _minibatch(nets, seed=0, value_level="turn"):
  """A minibatch with its old log-probs and values from the networks and targets from
  `compute_turn_targets`: per-turn values and advantages, or per-token ones (value_level "token")."""
  policy, value = nets
  rng, tokens, turn_id, turn_mask, value_index = _episodes(seed)
  old_logp = np.asarray(LOGPROB(policy, jnp.asarray(tokens)))
  per_token = value_level == "token"
  old_values = np.asarray((TOKEN_VALUES if per_token else VALUES)(
      value, jnp.asarray(tokens), jnp.asarray(turn_id if per_token else value_index)))
  task = rng.choice([-1.0, -0.2, 0.0, 1.0], (B, T)).astype(np.float32)
  targets = ppo.compute_turn_targets(jnp.asarray(task), jnp.asarray(old_logp),
                                     jnp.asarray(old_logp + rng.normal(scale=0.1, size=(B, L))),
                                     jnp.asarray(turn_id), jnp.asarray(turn_mask),
                                     jnp.asarray(old_values), _rl(value_level=value_level))
  batch = dict(tokens_BxL=tokens, policy_mask_BxL=(turn_id >= 0).astype(np.float32), turn_id_BxL=turn_id,
               behaviour_logp_BxL=old_logp + rng.normal(scale=0.1, size=(B, L)).astype(np.float32),
               old_logp_BxL=old_logp, returns_BxT=np.asarray(targets["returns_BxT"]), turn_mask_BxT=turn_mask)
  if per_token:
    assert "advantages_BxT" not in targets
    return dict(batch, advantages_BxL=np.asarray(targets["advantages_BxL"]), old_values_BxL=old_values)
  return dict(batch, advantages_BxT=np.asarray(targets["advantages_BxT"]), old_values_BxT=old_values,
              value_index_BxT=value_index)


def _state(nets, optimizers):
  policy, value = jax.tree.map(np.copy, nets)
  return ppo.init_train_state(policy, value, *optimizers, jax.random.key(3))


def test_logprob_fn_matches_numpy_log_softmax(nets):
  policy, _ = nets
  _, tokens, *_ = _episodes(1)
  logp = np.asarray(LOGPROB(policy, jnp.asarray(tokens)))
  logits = np.asarray(POLICY.apply({"params": policy}, jnp.asarray(tokens))[0], np.float64)
  assert np.all(logp[:, 0] == 0.0)
  for b in range(B):
    for i in range(1, L):
      z = logits[b, i - 1]
      want = z[tokens[b, i]] - z.max() - np.log(np.exp(z - z.max()).sum())
      np.testing.assert_allclose(logp[b, i], want, rtol=1e-5, atol=1e-5)


def test_kl_term_is_zero_when_policy_equals_reference(nets):
  policy, _ = nets
  rng, tokens, turn_id, turn_mask, _ = _episodes(2)
  logprob = LOGPROB
  reference = jax.tree.map(np.copy, policy)  # the frozen initial policy, still equal to π
  task = rng.normal(size=(B, T)).astype(np.float32)
  targets = ppo.compute_turn_targets(task, logprob(policy, tokens), logprob(reference, tokens),
                                     turn_id, turn_mask, np.zeros((B, T), np.float32), RL)
  assert np.all(np.asarray(targets["kl_BxT"]) == 0.0)
  np.testing.assert_array_equal(targets["rewards_BxT"], task * turn_mask)


def test_compute_turn_targets_matches_numpy():
  rng, _, turn_id, turn_mask, _ = _episodes(3)
  logp = -rng.exponential(size=(B, L)).astype(np.float32)
  ref = -rng.exponential(size=(B, L)).astype(np.float32)
  task = rng.normal(size=(B, T)).astype(np.float32)
  values = rng.normal(size=(B, T)).astype(np.float32)
  got = ppo.compute_turn_targets(task, logp, ref, turn_id, turn_mask, values, RL)
  returns = np.zeros((B, T))
  raw = []
  for b in range(B):
    g = 0.0
    for t in reversed(range(T)):
      if turn_mask[b, t]:
        diffs = [logp[b, i] - ref[b, i] for i in range(L) if turn_id[b, i] == t]
        g += task[b, t] - 0.05 * np.mean(diffs)
        returns[b, t] = g
        raw.append(((b, t), g - values[b, t]))
  np.testing.assert_allclose(got["returns_BxT"], returns, rtol=1e-5, atol=1e-5)
  a = np.array([x for _, x in raw])
  for (b, t), x in raw:
    np.testing.assert_allclose(got["advantages_BxT"][b, t], (x - a.mean()) / (a.std() + 1e-8),
                               rtol=1e-4, atol=1e-4)


def test_first_update_losses_equal_hand_computation(nets, adam_update):
  batch = _minibatch(nets)
  batch["behaviour_logp_BxL"] = batch["old_logp_BxL"]
  optimizers, update = adam_update
  _, metrics = update(_state(nets, optimizers), batch)
  # At θ = θ_old = θ_b every ratio is 1: the loss is minus the mean advantage over response tokens.
  adv_tokens = [batch["advantages_BxT"][b, t] for b in range(B) for t in batch["turn_id_BxL"][b] if t >= 0]
  np.testing.assert_allclose(metrics["policy_loss"], -np.mean(adv_tokens), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics["pg_clip_frac"], 0.0)
  np.testing.assert_allclose(metrics["pg_correction"], 1.0, rtol=1e-6)
  np.testing.assert_allclose(metrics["pg_approx_kl"], 0.0, atol=1e-6)
  # V = V_old, so the clipped value loss is ½ (V − G)² averaged over the turns.
  mask = batch["turn_mask_BxT"].astype(bool)
  want_v = 0.5 * np.mean((batch["old_values_BxT"][mask] - batch["returns_BxT"][mask]) ** 2)
  np.testing.assert_allclose(metrics["value_loss"], want_v, rtol=1e-5)


def test_update_decreases_both_losses_on_a_fixed_batch(nets, adam_update):
  batch = _minibatch(nets, seed=4)
  optimizers, update = adam_update
  state = _state(nets, optimizers)
  history = []
  for _ in range(6):
    state, metrics = update(state, batch)
    history.append(jax.device_get(metrics))
  assert int(state.step) == 6
  assert history[-1]["policy_loss"] < history[0]["policy_loss"] - 1e-3
  assert history[-1]["value_loss"] < history[0]["value_loss"] - 1e-3
  assert history[-1]["pg_clip_frac"] > 0.0  # the policy moved far enough for PPO's clip to act


def test_microbatched_update_equals_one_pass(nets, sgd_update):
  batch = _minibatch(nets, seed=5)
  outs = []
  for update in (sgd_update, *(ppo_update.make_update_step(
      POLICY, VALUE, *SGD, _rl(loss_aggregation="turn_mean"), num_microbatches=m)
                              for m in (ppo_update.PER_SHARD, -2))):  # no mesh: B passes of 1; 2 of 2
    state, metrics = update(_state(nets, SGD), batch)
    outs.append(jax.device_get((state.policy_params, state.value_params, metrics)))
  for out in outs[1:]:
    for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(out)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_per_shard_microbatch_count():
  """num_microbatches = -k: k episodes per data-parallel shard per microbatch (PER_SHARD = -1: one)."""
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  assert ppo_update.microbatch_count(256, ppo_update.PER_SHARD, mesh) == 64
  assert ppo_update.microbatch_count(256, ppo_update.PER_SHARD) == 256
  assert ppo_update.microbatch_count(256, -4, mesh) == 16
  assert ppo_update.microbatch_count(256, -4) == 64
  assert ppo_update.microbatch_count(256, 8, mesh) == 8
  with pytest.raises(ValueError, match=r"minibatch size 6 must be a multiple of the mesh's data × fsdp × "
                                       r"episodes per shard \(1\) = 4"):
    ppo_update.microbatch_count(6, ppo_update.PER_SHARD, mesh)
  with pytest.raises(ValueError, match=r"minibatch size 24 .* episodes per shard \(4\) = 16"):
    ppo_update.microbatch_count(24, -4, mesh)
  with pytest.raises(ValueError, match=r"num_microbatches must be >= 1, or -k"):
    ppo_update.make_update_fn(POLICY, VALUE, *SGD, RL, num_microbatches=0)


def test_chunked_logprobs_update_equals_one_pass(nets, sgd_update):
  """rl.logprob_chunk: the loss's logits computed 5 positions at a time (L - 1 = 23 is not a
  multiple) under jax.checkpoint give the same update, and the scoring log-probs are the same."""
  batch = _minibatch(nets, seed=7)
  chunked = ppo_update.make_update_step(POLICY, VALUE, *SGD,
                                 _rl(loss_aggregation="turn_mean", logprob_chunk=5))
  outs = [jax.device_get(update(_state(nets, SGD), batch)) for update in (sgd_update, chunked)]
  (want_state, want_metrics), (got_state, got_metrics) = outs
  assert set(got_metrics) == set(want_metrics)
  for k in want_metrics:
    np.testing.assert_allclose(got_metrics[k], want_metrics[k], rtol=1e-5, atol=1e-6, err_msg=k)
  for a, b in zip(jax.tree.leaves((want_state.policy_params, want_state.value_params)),
                  jax.tree.leaves((got_state.policy_params, got_state.value_params))):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
  policy, _ = nets
  np.testing.assert_allclose(ppo.make_logprob_fn(POLICY, chunk=5)(policy, batch["tokens_BxL"]),
                             LOGPROB(policy, batch["tokens_BxL"]), rtol=1e-5, atol=1e-6)
  assert want_metrics["policy_grad_norm"] > 1e-3  # a real gradient was compared


def test_sharded_update_equals_unsharded(nets, sgd_update):
  batch = _minibatch(nets, seed=6)
  optimizers = SGD
  want_state, want_metrics = sgd_update(_state(nets, optimizers), batch)

  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  policy, value = nets
  p_shard = sharding.param_shardings(POLICY, mesh, policy)
  v_shard = sharding.param_shardings(VALUE, mesh, value)
  state = _state(nets, optimizers)
  state = state.replace(
      policy_params=sharding.shard_params(state.policy_params, p_shard),
      value_params=sharding.shard_params(state.value_params, v_shard),
      policy_opt_state=jax.device_put(state.policy_opt_state, sharding.opt_state_shardings(
          optimizers[0], p_shard, sharding.abstract_params(POLICY), mesh)),
      value_opt_state=jax.device_put(state.value_opt_state, sharding.opt_state_shardings(
          optimizers[1], v_shard, sharding.abstract_params(VALUE), mesh)))
  update = ppo_update.make_update_step(POLICY, VALUE, *optimizers, _rl(loss_aggregation="turn_mean"),
                                mesh=mesh)
  sharded_logp = ppo.make_logprob_fn(POLICY, mesh=mesh)(state.policy_params, batch["tokens_BxL"])
  np.testing.assert_allclose(sharded_logp, batch["old_logp_BxL"], rtol=1e-5, atol=1e-5)
  got_state, got_metrics = update(state, sharding.shard_batch(mesh, batch))
  for a, b in zip(jax.tree.leaves(jax.device_get(got_state.policy_params)),
                  jax.tree.leaves(jax.device_get(want_state.policy_params))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(jax.device_get(got_state.value_params)),
                  jax.tree.leaves(jax.device_get(want_state.value_params))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  for k in want_metrics:
    np.testing.assert_allclose(got_metrics[k], want_metrics[k], rtol=1e-5, atol=1e-5, err_msg=k)
  leaf = jax.tree.leaves(got_state.policy_params)[0]
  want_sharding = jax.tree.leaves(p_shard)[0]
  assert leaf.sharding.is_equivalent_to(want_sharding, leaf.ndim)


def test_learning_rate_schedule():
  warm = ppo.learning_rate_schedule(2.0, 4)
  np.testing.assert_allclose([warm(k) for k in range(6)], [0.5, 1.0, 1.5, 2.0, 2.0, 2.0])
  cosine = ppo.learning_rate_schedule(2.0, 2, "cosine", total_steps=6)
  np.testing.assert_allclose([cosine(k) for k in (0, 2, 4, 6, 9)], [1.0, 2.0, 1.0, 0.0, 0.0], atol=1e-6)
  linear = ppo.learning_rate_schedule(2.0, 0, "linear", total_steps=4)
  np.testing.assert_allclose([linear(k) for k in range(5)], [2.0, 1.5, 1.0, 0.5, 0.0])
  with pytest.raises(ValueError, match="total_steps"):
    ppo.learning_rate_schedule(1.0, 10, "cosine")


def test_settings_come_from_the_project_config():
  cfg = config_lib.base_config()
  settings = ppo.PPOSettings.from_config(cfg.rl)
  assert (settings.clip_eps, settings.value_clip, settings.kl_coef, settings.gamma) == (0.2, 0.2, 0.05, 1.0)
  policy_opt, value_opt = ppo.make_optimizers(cfg.optim, total_steps=cfg.train.num_updates)
  assert policy_opt is not None and value_opt is not None
  with pytest.raises(ValueError, match="config.rl.advantage_norm"):
    ppo.PPOSettings.from_config(dict(RL_FIELDS, advantage_norm="episode"))
  assert settings.value_level == "turn"  # the paper's turn-level value is the default
  with pytest.raises(ValueError, match="config.rl.value_level"):
    ppo.PPOSettings.from_config(dict(RL_FIELDS, value_level="episode"))


def test_bad_minibatch_is_rejected(nets, adam_update):
  optimizers, update = adam_update
  batch = _minibatch(nets)
  del batch["old_logp_BxL"]
  with pytest.raises(ValueError, match="old_logp_BxL"):
    update(_state(nets, optimizers), batch)
  batch = _minibatch(nets)
  batch["returns_BxT"] = batch["returns_BxT"][:, :2]
  with pytest.raises(ValueError, match="returns_BxT"):
    update(_state(nets, optimizers), batch)
  with pytest.raises(ValueError, match="num_microbatches"):
    ppo_update.make_update_step(POLICY, VALUE, *optimizers, RL, num_microbatches=3)(
        _state(nets, optimizers), _minibatch(nets))


# The token-level value of the ablation (rl.value_level = "token", paper App. B / Table 6b).

def test_token_values_are_read_before_each_response_token(nets):
  """Each response token's value is the value head's output at the position before it, 0 off the
  responses; a turn's first token gets exactly the turn-level value V(c_t) at its last prompt token."""
  _, value = nets
  _, tokens, turn_id, turn_mask, value_index = _episodes(8)
  got = np.asarray(TOKEN_VALUES(value, jnp.asarray(tokens), jnp.asarray(turn_id)))
  out = np.asarray(VALUE.apply({"params": value}, jnp.asarray(tokens)))
  turn_values = np.asarray(VALUES(value, jnp.asarray(tokens), jnp.asarray(value_index)))
  want = np.where(turn_id >= 0, np.pad(out[:, :-1], ((0, 0), (1, 0))), 0.0)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # (jitted vs not: float noise only)
  assert np.all(got[turn_id < 0] == 0) and np.all(got[turn_id >= 0] != 0)
  for b in range(B):
    for t in range(T):
      if turn_mask[b, t]:
        first = int(np.argmax(turn_id[b] == t))
        np.testing.assert_allclose(got[b, first], turn_values[b, t], rtol=1e-5, atol=1e-6)


def test_token_level_targets_match_numpy():
  """Per-token advantage G_t − V(token) of every response token, normalised over those tokens; the
  turn returns are those of the turn-level value (the value does not enter them)."""
  rng, _, turn_id, turn_mask, _ = _episodes(9)
  logp = -rng.exponential(size=(B, L)).astype(np.float32)
  ref = -rng.exponential(size=(B, L)).astype(np.float32)
  task = rng.normal(size=(B, T)).astype(np.float32)
  values = rng.normal(size=(B, L)).astype(np.float32)
  got = ppo.compute_turn_targets(task, logp, ref, turn_id, turn_mask, values, _rl(value_level="token"))
  turn_level = ppo.compute_turn_targets(task, logp, ref, turn_id, turn_mask, np.zeros((B, T), np.float32), RL)
  np.testing.assert_array_equal(got["returns_BxT"], turn_level["returns_BxT"])
  returns = np.asarray(turn_level["returns_BxT"])
  raw = {(b, i): returns[b, turn_id[b, i]] - values[b, i] for b in range(B) for i in range(L) if turn_id[b, i] >= 0}
  a = np.array(list(raw.values()), np.float64)
  want = np.zeros((B, L))
  for (b, i), x in raw.items():
    want[b, i] = (x - a.mean()) / (a.std() + 1e-8)
  np.testing.assert_allclose(got["advantages_BxL"], want, rtol=1e-4, atol=1e-4)


def test_token_level_update_losses_equal_hand_computation_and_microbatches_agree(nets):
  batch = _minibatch(nets, value_level="token")
  batch["behaviour_logp_BxL"] = batch["old_logp_BxL"]
  settings = _rl(value_level="token")
  outs = [jax.device_get(ppo_update.make_update_step(POLICY, VALUE, *SGD, settings, num_microbatches=m)(
      _state(nets, SGD), batch)) for m in (1, 2)]
  metrics = outs[0][1]
  mask = batch["turn_id_BxL"] >= 0
  # θ = θ_old = θ_b: the policy loss is minus the mean token advantage; V = V_old: the value loss is
  # ½ (V(token) − G_t)² averaged over the response tokens.
  np.testing.assert_allclose(metrics["policy_loss"], -np.mean(batch["advantages_BxL"][mask]), rtol=1e-5, atol=1e-6)
  token_returns = np.take_along_axis(batch["returns_BxT"], np.maximum(batch["turn_id_BxL"], 0), axis=1)
  residual = (batch["old_values_BxL"] - token_returns)[mask]
  np.testing.assert_allclose(metrics["value_loss"], 0.5 * np.mean(residual ** 2), rtol=1e-5)
  np.testing.assert_allclose(metrics["explained_variance"], 1 - residual.var() / token_returns[mask].var(),
                             rtol=1e-4, atol=1e-5)
  # Two gradient chunks give the same step as one pass.
  for (state_a, metrics_a), (state_b, metrics_b) in [outs]:
    for a, b in zip(jax.tree.leaves((state_a.policy_params, state_a.value_params, metrics_a)),
                    jax.tree.leaves((state_b.policy_params, state_b.value_params, metrics_b))):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert metrics["value_grad_norm"] > 1e-3 and metrics["policy_grad_norm"] > 1e-3
  with pytest.raises(ValueError, match="advantages_BxL"):  # a turn-level minibatch is refused
    ppo_update.make_update_step(POLICY, VALUE, *SGD, settings)(_state(nets, SGD), _minibatch(nets))


def test_chunk_order_and_widths_by_hand():
  """Rows sorted by the end of their last response token; each chunk's width is its longest end
  rounded up to the bucket, at most L; a row without response tokens ends at 1."""
  mask = np.zeros((4, 10), np.float32)
  mask[0, 3:5] = 1    # ends at 5
  mask[1, 2:12 - 2] = 1  # ends at 10 (= L)
  mask[3, 6] = 1      # ends at 7
  order, widths = ppo_update.chunk_order_and_widths(mask, rows_per_chunk=2, bucket_tokens=4)
  np.testing.assert_array_equal(order, [2, 0, 3, 1])
  assert widths == [8, 10]  # max(1, 5) -> 8; max(7, 10) -> 12, capped at L = 10
  order, widths = ppo_update.chunk_order_and_widths(mask, rows_per_chunk=1, bucket_tokens=1)
  assert widths == [1, 5, 7, 10]


@pytest.mark.parametrize("value_level,num_microbatches", [("turn", ppo_update.PER_SHARD), ("token", -2)])
def test_length_bucketed_update_equals_one_pass(nets, sgd_update, value_level, num_microbatches):
  """rl.update_bucket_tokens: chunks of length-sorted rows, each run to its own width, give the
  one-pass update (same parameters and metrics, up to float rounding)."""
  batch = _minibatch(nets, seed=7, value_level=value_level)
  settings = _rl(loss_aggregation="turn_mean", value_level=value_level)
  rows = B // ppo_update.microbatch_count(B, num_microbatches)
  _, widths = ppo_update.chunk_order_and_widths(batch["policy_mask_BxL"], rows, 8)
  assert min(widths) < L  # the batch really has chunks shorter than the padded length
  one_pass = sgd_update if value_level == "turn" else ppo_update.make_update_step(POLICY, VALUE, *SGD, settings)
  want = jax.device_get(one_pass(_state(nets, SGD), batch))
  got = jax.device_get(ppo_update.make_update_step(POLICY, VALUE, *SGD, settings, num_microbatches=num_microbatches,
                                            bucket_tokens=8)(_state(nets, SGD), batch))
  assert set(got[1]) == set(want[1])
  for a, b in zip(jax.tree.leaves((want[0].policy_params, want[0].value_params, want[1])),
                  jax.tree.leaves((got[0].policy_params, got[0].value_params, got[1]))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert int(got[0].step) == 1


def test_length_bucketed_update_on_a_mesh_equals_unsharded(nets, sgd_update):
  batch = _minibatch(nets, seed=8)
  want_state, want_metrics = jax.device_get(sgd_update(_state(nets, SGD), batch))
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  p_shard = sharding.param_shardings(POLICY, mesh, nets[0])
  state = _state(nets, SGD)
  state = state.replace(policy_params=sharding.shard_params(state.policy_params, p_shard))
  update = ppo_update.make_update_step(POLICY, VALUE, *SGD, _rl(loss_aggregation="turn_mean"), mesh=mesh,
                                num_microbatches=ppo_update.PER_SHARD, bucket_tokens=8)
  got_state, got_metrics = update(state, batch)
  leaf = jax.tree.leaves(got_state.policy_params)[0]
  assert leaf.sharding.is_equivalent_to(jax.tree.leaves(p_shard)[0], leaf.ndim)
  for a, b in zip(jax.tree.leaves(jax.device_get((got_state.policy_params, got_state.value_params,
                                                  got_metrics))),
                  jax.tree.leaves((want_state.policy_params, want_state.value_params, want_metrics))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
