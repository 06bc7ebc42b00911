"""PPO mathematics (rlef_jax.losses) against loop-based NumPy references on random inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlef_jax import logprobs
from rlef_jax import losses

B, L, T, V = 5, 23, 3, 11


def _random_episodes(seed):
  """Random per-token data with turns laid out as contiguous response spans separated by prompts."""
  rng = np.random.default_rng(seed)
  turn_id = np.full((B, L), -1, np.int32)
  turn_mask = np.zeros((B, T), np.float32)
  for b in range(B):
    num_turns = rng.integers(1, T + 1)
    pos = rng.integers(1, 4)
    for t in range(num_turns):
      n = rng.integers(1, 5)
      turn_id[b, pos:pos + n] = t
      turn_mask[b, t] = 1
      pos += n + rng.integers(1, 3)
  policy_mask = (turn_id >= 0).astype(np.float32)
  return dict(
      rng=rng, turn_id=turn_id, turn_mask=turn_mask, policy_mask=policy_mask,
      logp=-rng.exponential(1.5, (B, L)).astype(np.float32),
      ref_logp=-rng.exponential(1.5, (B, L)).astype(np.float32),
      task=rng.choice([-1.0, 0.0, -0.2, 1.0], (B, T)).astype(np.float32),
      values=rng.normal(size=(B, T)).astype(np.float32))


def _np_turn_kl(logp, ref, turn_id, clamp):
  out = np.zeros((B, T))
  for b in range(B):
    for t in range(T):
      diffs = [logp[b, i] - ref[b, i] for i in range(L) if turn_id[b, i] == t]
      if clamp is not None:
        diffs = [min(max(d, -clamp), clamp) for d in diffs]
      out[b, t] = sum(diffs) / len(diffs) if diffs else 0.0
  return out


def _np_returns(rewards, mask, gamma):
  out = np.zeros((B, T))
  for b in range(B):
    g = 0.0
    for t in reversed(range(T)):
      if mask[b, t]:
        g = rewards[b, t] + gamma * g
        out[b, t] = g
  return out


@pytest.mark.parametrize("clamp", [None, 0.5])
def test_turn_kl_matches_numpy(clamp):
  d = _random_episodes(0)
  got = losses.turn_kl_BxT(jnp.asarray(d["logp"]), jnp.asarray(d["ref_logp"]),
                           jnp.asarray(d["turn_id"]), T, clamp=clamp)
  np.testing.assert_allclose(got, _np_turn_kl(d["logp"], d["ref_logp"], d["turn_id"], clamp),
                             rtol=1e-5, atol=1e-6)


def test_turn_kl_is_zero_when_policy_equals_reference():
  d = _random_episodes(1)
  got = losses.turn_kl_BxT(jnp.asarray(d["logp"]), jnp.asarray(d["logp"]), jnp.asarray(d["turn_id"]), T)
  assert np.all(np.asarray(got) == 0.0)


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_rewards_returns_advantages_match_numpy(gamma):
  d = _random_episodes(2)
  kl = _np_turn_kl(d["logp"], d["ref_logp"], d["turn_id"], None)
  rewards = losses.turn_rewards_BxT(jnp.asarray(d["task"]), jnp.asarray(kl, jnp.float32),
                                    jnp.asarray(d["turn_mask"]), 0.05)
  want_rewards = np.zeros((B, T))
  for b in range(B):
    for t in range(T):
      if d["turn_mask"][b, t]:
        want_rewards[b, t] = d["task"][b, t] - 0.05 * kl[b, t]
  np.testing.assert_allclose(rewards, want_rewards, rtol=1e-5, atol=1e-6)

  returns = losses.returns_BxT(rewards, jnp.asarray(d["turn_mask"]), gamma)
  want_returns = _np_returns(want_rewards, d["turn_mask"], gamma)
  np.testing.assert_allclose(returns, want_returns, rtol=1e-5, atol=1e-6)

  adv = losses.advantages_BxT(returns, jnp.asarray(d["values"]), jnp.asarray(d["turn_mask"]))
  raw = [(b, t, want_returns[b, t] - d["values"][b, t]) for b in range(B) for t in range(T)
         if d["turn_mask"][b, t]]
  mean = sum(a for _, _, a in raw) / len(raw)
  std = (sum((a - mean) ** 2 for _, _, a in raw) / len(raw)) ** 0.5
  want_adv = np.zeros((B, T))
  for b, t, a in raw:
    want_adv[b, t] = (a - mean) / (std + 1e-8)
  np.testing.assert_allclose(adv, want_adv, rtol=1e-4, atol=1e-5)

  unnormalised = losses.advantages_BxT(returns, jnp.asarray(d["values"]), jnp.asarray(d["turn_mask"]),
                                       normalize=False)
  for b, t, a in raw:
    np.testing.assert_allclose(unnormalised[b, t], a, rtol=1e-5, atol=1e-6)


def test_broadcast_gives_each_token_its_turn_value():
  d = _random_episodes(3)
  per_turn = d["rng"].normal(size=(B, T)).astype(np.float32)
  got = np.asarray(losses.broadcast_to_tokens_BxL(jnp.asarray(per_turn), jnp.asarray(d["turn_id"])))
  for b in range(B):
    for i in range(L):
      t = d["turn_id"][b, i]
      assert got[b, i] == (per_turn[b, t] if t >= 0 else 0.0)


def _np_policy_loss(logp, old, behaviour, adv_BxT, turn_id, mask, eps, aggregation):
  """Loop reference: per-token PPO-clip with the behaviour correction, aggregated as asked."""
  per_token, groups = {}, {}
  for b in range(B):
    for i in range(L):
      if not mask[b, i]:
        continue
      a = adv_BxT[b, turn_id[b, i]]
      r = np.exp(logp[b, i] - old[b, i]) * min(np.exp(logp[b, i] - behaviour[b, i]), 1.0)
      per_token[b, i] = -min(r * a, min(max(r, 1 - eps), 1 + eps) * a)
      groups.setdefault((b, turn_id[b, i]), []).append(per_token[b, i])
  if aggregation == "token_mean":
    return sum(per_token.values()) / len(per_token)
  return sum(sum(g) / len(g) for g in groups.values()) / len(groups)


@pytest.mark.parametrize("aggregation", ["token_mean", "turn_mean"])
def test_policy_loss_matches_numpy(aggregation):
  d = _random_episodes(4)
  rng = d["rng"]
  old = d["logp"] + rng.normal(scale=0.3, size=(B, L)).astype(np.float32)
  behaviour = d["logp"] + rng.normal(scale=0.3, size=(B, L)).astype(np.float32)
  adv = rng.normal(size=(B, T)).astype(np.float32)
  weights = losses.token_weights_BxL(jnp.asarray(d["policy_mask"]), jnp.asarray(d["turn_id"]), T,
                                     aggregation)
  np.testing.assert_allclose(float(weights.sum()), 1.0, rtol=1e-6)
  adv_BxL = losses.broadcast_to_tokens_BxL(jnp.asarray(adv), jnp.asarray(d["turn_id"]))
  loss, metrics = losses.policy_loss(jnp.asarray(d["logp"]), jnp.asarray(old), jnp.asarray(behaviour),
                                     adv_BxL, weights, clip_eps=0.2)
  want = _np_policy_loss(d["logp"], old, behaviour, adv, d["turn_id"], d["policy_mask"], 0.2,
                         aggregation)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5, atol=1e-6)
  assert 0.0 < float(metrics["clip_frac"]) < 1.0
  assert 0.0 < float(metrics["correction"]) <= 1.0


def test_tokens_outside_the_loss_cannot_poison_it():
  d = _random_episodes(8)
  weights = losses.token_weights_BxL(jnp.asarray(d["policy_mask"]), jnp.asarray(d["turn_id"]), T)
  adv_BxL = losses.broadcast_to_tokens_BxL(jnp.asarray(d["values"]), jnp.asarray(d["turn_id"]))
  old = np.where(d["policy_mask"] > 0, d["ref_logp"], -1e4).astype(np.float32)  # garbage elsewhere
  f = lambda lp, o: losses.policy_loss(lp, o, o, adv_BxL, weights)[0]
  clean = f(jnp.asarray(d["logp"]), jnp.asarray(d["ref_logp"]))
  loss, grad = jax.value_and_grad(f)(jnp.asarray(d["logp"]), jnp.asarray(old))
  np.testing.assert_allclose(loss, clean, rtol=1e-6)
  assert np.all(np.isfinite(np.asarray(grad)))


def test_policy_gradient_vanishes_exactly_where_the_clip_is_active():
  d = _random_episodes(5)
  rng = d["rng"]
  logp = d["logp"]
  old = logp + rng.normal(scale=0.5, size=(B, L)).astype(np.float32)
  behaviour = logp + rng.normal(scale=0.5, size=(B, L)).astype(np.float32)
  adv = rng.normal(size=(B, T)).astype(np.float32)
  eps = 0.2
  weights = losses.token_weights_BxL(jnp.asarray(d["policy_mask"]), jnp.asarray(d["turn_id"]), T)
  adv_BxL = losses.broadcast_to_tokens_BxL(jnp.asarray(adv), jnp.asarray(d["turn_id"]))
  grad = jax.grad(lambda lp: losses.policy_loss(lp, jnp.asarray(old), jnp.asarray(behaviour),
                                                adv_BxL, weights, eps)[0])(jnp.asarray(logp))
  grad = np.asarray(grad)
  n_tokens = d["policy_mask"].sum()
  clipped_seen = free_seen = 0
  for b in range(B):
    for i in range(L):
      if not d["policy_mask"][b, i]:
        assert grad[b, i] == 0.0
        continue
      a = adv[b, d["turn_id"][b, i]]
      r = np.exp(logp[b, i] - old[b, i]) * min(np.exp(logp[b, i] - behaviour[b, i]), 1.0)
      if (a > 0 and r > 1 + eps) or (a < 0 and r < 1 - eps):
        assert grad[b, i] == 0.0, (b, i, r, a)
        clipped_seen += 1
      else:
        # d/dlogp of −r·A/N with the correction held fixed (stop-gradient) is −r·A/N.
        np.testing.assert_allclose(grad[b, i], -r * a / n_tokens, rtol=1e-4, atol=1e-7)
        free_seen += 1
  assert clipped_seen > 0 and free_seen > 0


def test_token_logp_and_entropy_match_numpy():
  rng = np.random.default_rng(6)
  logits = rng.normal(scale=3.0, size=(2, 7, V)).astype(np.float32)
  tokens = rng.integers(0, V, (2, 7)).astype(np.int32)
  logp, entropy = logprobs.token_logp_and_entropy(jnp.asarray(logits), jnp.asarray(tokens))
  for b in range(2):
    assert logp[b, 0] == 0.0 and entropy[b, 0] == 0.0
    for i in range(1, 7):
      z = logits[b, i - 1].astype(np.float64)
      logq = z - np.log(np.sum(np.exp(z - z.max()))) - z.max()
      np.testing.assert_allclose(logp[b, i], logq[tokens[b, i]], rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(entropy[b, i], -np.sum(np.exp(logq) * logq), rtol=1e-5, atol=1e-5)


def test_value_loss_and_explained_variance_match_numpy():
  d = _random_episodes(7)
  rng = d["rng"]
  old_values = d["values"] + rng.normal(scale=0.3, size=(B, T)).astype(np.float32)
  returns = rng.normal(size=(B, T)).astype(np.float32)
  loss, metrics = losses.value_loss(jnp.asarray(d["values"]), jnp.asarray(old_values),
                                    jnp.asarray(returns), losses.turn_weights_BxT(d["turn_mask"]),
                                    clip=0.2)
  terms, resid, rets = [], [], []
  for b in range(B):
    for t in range(T):
      if d["turn_mask"][b, t]:
        v, vo, g = d["values"][b, t], old_values[b, t], returns[b, t]
        vc = min(max(v, vo - 0.2), vo + 0.2)
        terms.append(0.5 * max((v - g) ** 2, (vc - g) ** 2))
        resid.append(g - v)
        rets.append(g)
  np.testing.assert_allclose(float(loss), sum(terms) / len(terms), rtol=1e-5)
  assert 0.0 < float(metrics["clip_frac"]) < 1.0
  ev = losses.explained_variance(jnp.asarray(d["values"]), jnp.asarray(returns),
                                 jnp.asarray(d["turn_mask"]))
  np.testing.assert_allclose(float(ev), 1 - np.var(resid) / np.var(rets), rtol=1e-4)


def test_value_loss_gradient_vanishes_when_clipped_side_dominates():
  values = jnp.array([[1.0, 0.0]])
  old = jnp.array([[0.0, 0.0]])
  returns = jnp.array([[2.0, 1.0]])
  w = jnp.array([[0.5, 0.5]])
  grad = jax.grad(lambda v: losses.value_loss(v, old, returns, w, clip=0.2)[0])(values)
  # Row 0: V moved 1.0 away from V_old toward G: the clipped error (0.2 − 2)² dominates, no gradient.
  # Row 1: V = V_old, unclipped; gradient w·(V − G) = −0.5.
  np.testing.assert_allclose(np.asarray(grad), [[0.0, -0.5]], atol=1e-7)


def test_unknown_aggregation_is_rejected():
  with pytest.raises(ValueError, match="loss aggregation"):
    losses.token_weights_BxL(jnp.ones((1, 2)), jnp.zeros((1, 2), jnp.int32), 1, "sum")
