"""RLEF's PPO mathematics as pure functions over arrays (paper §2 reward, §3 PPO).

Shape letters: B episodes, L tokens, T turns, V vocabulary.

Layout of one episode (token-in/token-out, see DESIGN.md "Tokenizer"): `tokens_BxL` is the whole
dialogue; `policy_mask_BxL` is 1 on tokens the policy sampled; `turn_id_BxL` gives the turn (0..T-1) of
each sampled token and -1 elsewhere. Per-token log-probs are aligned with the tokens they score:
`logp_BxL[b, i] = log p(tokens[b, i] | tokens[b, :i])` (0 at i = 0). Turn quantities (`*_BxT`) carry a
`turn_mask_BxT` marking the turns that happened.

The paper's choices, mapped here:
* reward per turn (§2): task reward − β · mean over the response's tokens of (log π − log ρ), β = 0.05;
* returns with γ = 1, advantage = return − V(last prompt token) broadcast to every token of the turn (§3);
* token-level clipped policy loss with the behaviour correction stopgrad(min(π/π_b, 1)), ε = 0.2 (§3);
* clipped value loss with α = 0.2 (§3);
* the token-level value of the ablation (App. B, Table 6b; `rl.value_level = "token"`): one value per
  response token, read just before the token, with its turn's return as target (γ = 1), and per-token
  advantages G_t − V(token) normalised over the batch's response tokens.

Losses take **weights that sum to 1 over the whole minibatch** (`token_weights_BxL`, `turn_weights_BxT`):
a loss is then a weighted sum, so microbatches summed together give exactly the minibatch loss whatever
the aggregation ([U] choice: mean over tokens, or mean over turns of each turn's token mean).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

AGGREGATIONS = ("token_mean", "turn_mean")


def _turn_onehot_BxLxT(turn_id_BxL: jax.Array, num_turns: int) -> jax.Array:
  return (turn_id_BxL[..., None] == jnp.arange(num_turns, dtype=turn_id_BxL.dtype)).astype(jnp.float32)


def turn_kl_BxT(policy_logp_BxL: jax.Array, ref_logp_BxL: jax.Array, turn_id_BxL: jax.Array,
                num_turns: int, clamp: Optional[float] = None) -> jax.Array:
  """Length-normalised log-ratio log π(a_t|c_t) − log ρ(a_t|c_t) per turn (paper §2).

  The paper takes π(a_t|c_t) as the geometric mean of the token probabilities, so the log-ratio is the
  mean over the turn's tokens of (log π − log ρ). `clamp` bounds each token's log-ratio to [−clamp, clamp]
  before the mean (as verl/OpenRLHF do against rare extreme ratios); None leaves it unbounded. Turns
  without tokens get 0.
  """
  diff_BxL = (policy_logp_BxL - ref_logp_BxL).astype(jnp.float32)
  if clamp is not None:
    diff_BxL = jnp.clip(diff_BxL, -clamp, clamp)
  onehot_BxLxT = _turn_onehot_BxLxT(turn_id_BxL, num_turns)
  sum_BxT = jnp.einsum("bl,blt->bt", diff_BxL, onehot_BxLxT)
  count_BxT = onehot_BxLxT.sum(axis=1)
  return sum_BxT / jnp.maximum(count_BxT, 1.0)


def turn_rewards_BxT(task_rewards_BxT: jax.Array, kl_BxT: jax.Array, turn_mask_BxT: jax.Array,
                     kl_coef: float) -> jax.Array:
  """R(s_t, a_t) = r(s_t, a_t) − β · KL_t on turns that happened, 0 elsewhere (paper §2, β = 0.05)."""
  rewards_BxT = task_rewards_BxT.astype(jnp.float32) - kl_coef * kl_BxT.astype(jnp.float32)
  return jnp.where(turn_mask_BxT.astype(bool), rewards_BxT, 0.0)


def returns_BxT(rewards_BxT: jax.Array, turn_mask_BxT: jax.Array, gamma: float = 1.0) -> jax.Array:
  """G_t = Σ_{i ≥ t} γ^{i−t} R_i within each episode (paper §2: γ = 1); 0 on turns that did not happen."""
  mask_BxT = turn_mask_BxT.astype(bool)
  rewards_TxB = jnp.where(mask_BxT, rewards_BxT, 0.0).astype(jnp.float32).T

  def step(future_B, reward_B):
    g_B = reward_B + gamma * future_B
    return g_B, g_B

  _, g_TxB = jax.lax.scan(step, jnp.zeros_like(rewards_TxB[0]), rewards_TxB, reverse=True)
  return jnp.where(mask_BxT, g_TxB.T, 0.0)


def masked_mean_std(x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean and (population) standard deviation of `x` over the entries where `mask` is set."""
  w = mask.astype(jnp.float32)
  n = jnp.maximum(w.sum(), 1.0)
  mean = (x * w).sum() / n
  var = (jnp.square(x - mean) * w).sum() / n
  return mean, jnp.sqrt(var)


def advantages_BxT(returns_BxT_: jax.Array, values_BxT: jax.Array, turn_mask_BxT: jax.Array,
                   normalize: bool = True, eps: float = 1e-8) -> jax.Array:
  """A_t = G_t − V(c_t), then (A − mean) / (std + eps) over the valid turns of the batch (paper §3).

  The paper says only "normalized advantage"; the scope — all valid turns of the batch passed in — is
  our [U] choice (pass a whole collection round to normalise over the round).
  """
  mask_BxT = turn_mask_BxT.astype(bool)
  adv_BxT = returns_BxT_.astype(jnp.float32) - values_BxT.astype(jnp.float32)
  if normalize:
    mean, std = masked_mean_std(adv_BxT, mask_BxT)
    adv_BxT = (adv_BxT - mean) / (std + eps)
  return jnp.where(mask_BxT, adv_BxT, 0.0)


def broadcast_to_tokens_BxL(per_turn_BxT: jax.Array, turn_id_BxL: jax.Array) -> jax.Array:
  """Gives every token the value of its turn (paper §3: one advantage per response); 0 where turn_id < 0."""
  index_BxL = jnp.clip(turn_id_BxL, 0, per_turn_BxT.shape[1] - 1)
  gathered_BxL = jnp.take_along_axis(per_turn_BxT, index_BxL, axis=1)
  return jnp.where(turn_id_BxL >= 0, gathered_BxL, 0.0)


def token_values_BxL(values_at_BxL: jax.Array, turn_id_BxL: jax.Array) -> jax.Array:
  """The token-level value of each response token: the value network's output at the position before
  it (the context the token is sampled from, aligned like the log-probs), 0 on other positions. A
  turn's first token gets V at its last prompt token, i.e. the turn-level value V(c_t)."""
  before_BxL = jnp.pad(values_at_BxL[:, :-1], ((0, 0), (1, 0)))
  return jnp.where(turn_id_BxL >= 0, before_BxL.astype(jnp.float32), 0.0)


def token_advantages_BxL(returns_BxT_: jax.Array, values_BxL: jax.Array, turn_id_BxL: jax.Array,
                         normalize: bool = True, eps: float = 1e-8) -> jax.Array:
  """Per-token A = G_t − V(token) for every response token (its turn's return G_t, γ = 1), normalised
  over all response tokens of the batch when `normalize`; 0 elsewhere (the token-level value ablation)."""
  returns_BxL = broadcast_to_tokens_BxL(returns_BxT_, turn_id_BxL)
  return advantages_BxT(returns_BxL, values_BxL, turn_id_BxL >= 0, normalize, eps)


def token_weights_BxL(policy_mask_BxL: jax.Array, turn_id_BxL: jax.Array, num_turns: int,
                      aggregation: str = "token_mean") -> jax.Array:
  """Per-token loss weights summing to 1 over the batch ([U] aggregation of the token-level loss).

  "token_mean": every policy token weighs the same. "turn_mean": every turn weighs the same, its tokens
  share its weight equally (long responses do not dominate).
  """
  mask_BxL = policy_mask_BxL.astype(jnp.float32)
  if aggregation == "token_mean":
    return mask_BxL / jnp.maximum(mask_BxL.sum(), 1.0)
  if aggregation == "turn_mean":
    onehot_BxLxT = _turn_onehot_BxLxT(turn_id_BxL, num_turns) * mask_BxL[..., None]
    count_BxT = onehot_BxLxT.sum(axis=1)
    num_turns_present = jnp.maximum((count_BxT > 0).sum(), 1)
    per_token_BxT = jnp.where(count_BxT > 0, 1.0 / jnp.maximum(count_BxT, 1.0), 0.0) / num_turns_present
    return jnp.einsum("blt,bt->bl", onehot_BxLxT, per_token_BxT)
  raise ValueError(f"unknown loss aggregation {aggregation!r}; use one of {AGGREGATIONS}")


def turn_weights_BxT(turn_mask_BxT: jax.Array) -> jax.Array:
  """Weights summing to 1 over the valid turns of the batch (value loss is a mean over turns)."""
  mask_BxT = turn_mask_BxT.astype(jnp.float32)
  return mask_BxT / jnp.maximum(mask_BxT.sum(), 1.0)


def policy_loss(logp_BxL: jax.Array, old_logp_BxL: jax.Array, behaviour_logp_BxL: jax.Array,
                advantages_BxL: jax.Array, weights_BxL: jax.Array,
                clip_eps: float = 0.2, behaviour_correction: bool = True
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Off-policy-corrected PPO-clip loss, token level (paper §3).

  r = π_θ/π_θold · stopgrad(min(π_θ/π_b, 1)); loss = −Σ w · min(r·A, clip(r, 1−ε, 1+ε)·A). Where the
  clip is active (A > 0, r > 1+ε or A < 0, r < 1−ε) the loss is constant in θ, so the token has no
  gradient. `behaviour_correction=False` drops the correction factor (plain PPO). Metrics are weighted means over the same tokens: `clip_frac` (clip active), `approx_kl`
  (k3 estimate of KL(π_θold‖π_θ)), `correction` (mean behaviour factor), `ratio`.
  """
  counted_BxL = weights_BxL > 0  # other tokens may hold any log-prob; keep exp() from overflowing
  log_ratio_BxL = jnp.where(counted_BxL, logp_BxL - old_logp_BxL, 0.0)
  ratio_BxL = jnp.exp(log_ratio_BxL)
  if behaviour_correction:
    behaviour_log_ratio_BxL = jnp.where(counted_BxL, logp_BxL - behaviour_logp_BxL, 0.0)
    correction_BxL = jax.lax.stop_gradient(jnp.minimum(jnp.exp(behaviour_log_ratio_BxL), 1.0))
  else:
    correction_BxL = jnp.ones_like(logp_BxL)
  r_BxL = ratio_BxL * correction_BxL
  unclipped_BxL = r_BxL * advantages_BxL
  clipped_BxL = jnp.clip(r_BxL, 1.0 - clip_eps, 1.0 + clip_eps) * advantages_BxL
  loss = -jnp.sum(weights_BxL * jnp.minimum(unclipped_BxL, clipped_BxL))
  clip_active_BxL = ((advantages_BxL > 0) & (r_BxL > 1.0 + clip_eps)) | (
      (advantages_BxL < 0) & (r_BxL < 1.0 - clip_eps))
  ratio_sg_BxL = jax.lax.stop_gradient(ratio_BxL)
  metrics = {
      "clip_frac": jnp.sum(weights_BxL * clip_active_BxL),
      "approx_kl": jnp.sum(weights_BxL * ((ratio_sg_BxL - 1.0) - jax.lax.stop_gradient(log_ratio_BxL))),
      "correction": jnp.sum(weights_BxL * correction_BxL),
      "ratio": jnp.sum(weights_BxL * ratio_sg_BxL),
  }
  return loss, metrics


def value_loss(values_BxT: jax.Array, old_values_BxT: jax.Array, returns_BxT_: jax.Array,
               weights_BxT: jax.Array, clip: float = 0.2) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Clipped value loss ½·max((V−G)², (clip(V, V_old−α, V_old+α) − G)²), weighted over turns (§3, α=0.2)."""
  values_BxT = values_BxT.astype(jnp.float32)
  clipped_BxT = old_values_BxT + jnp.clip(values_BxT - old_values_BxT, -clip, clip)
  loss_BxT = 0.5 * jnp.maximum(jnp.square(values_BxT - returns_BxT_), jnp.square(clipped_BxT - returns_BxT_))
  loss = jnp.sum(weights_BxT * loss_BxT)
  clip_frac = jnp.sum(weights_BxT * (jnp.abs(values_BxT - old_values_BxT) > clip))
  return loss, {"clip_frac": clip_frac, "value_mean": jnp.sum(weights_BxT * values_BxT)}


def explained_variance(values_BxT: jax.Array, returns_BxT_: jax.Array, turn_mask_BxT: jax.Array) -> jax.Array:
  """1 − Var(G − V) / Var(G) over valid turns (verl's `vf_explained_var`); 0 when Var(G) is 0."""
  _, std_resid = masked_mean_std(returns_BxT_ - values_BxT, turn_mask_BxT)
  _, std_ret = masked_mean_std(returns_BxT_, turn_mask_BxT)
  var_ret = jnp.square(std_ret)
  return jnp.where(var_ret > 0, 1.0 - jnp.square(std_resid) / jnp.where(var_ret > 0, var_ret, 1.0), 0.0)
