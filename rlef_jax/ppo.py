"""RLEF's PPO (paper §3): settings, train state, optimizers, the scoring functions and per-turn targets.

The pure mathematics lives in `rlef_jax.losses`; this module wires it to the policy (`model.Llama`)
and the separate value network (`model.LlamaValue`, same backbone, fresh scalar head):

* `PPOSettings`: the `rl` config fields the update reads; `minibatch_keys`: what a minibatch holds;
* `make_logprob_fn` / `make_value_fn`: full-forward per-token log-probs (the trainer's π_θold and the
  frozen reference ρ) and turn values V(c_t) read at the last prompt token of each turn (or, with
  `rl.value_level = "token"`, the ablation of App. B, one value per response token);
* `compute_turn_targets`: KL-in-reward, returns (γ = 1) and normalised advantages for a whole round;
* `make_optimizers`: AdamW with linear warm-up (paper App. A.1), separate value learning rate.

The jitted optimizer step built from these is `rlef_jax.ppo_update`.

Shape letters: B episodes, L tokens, T turns, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from rlef_jax import logprobs as logprobs_lib
from rlef_jax import losses

_EPISODE_KEYS = ("tokens_BxL", "policy_mask_BxL", "turn_id_BxL", "behaviour_logp_BxL", "old_logp_BxL",
                 "returns_BxT", "turn_mask_BxT")
# A minibatch with the turn-level value (the paper's): per-turn advantages and old values, read at
# value_index_BxT.
MINIBATCH_KEYS = _EPISODE_KEYS + ("advantages_BxT", "old_values_BxT", "value_index_BxT")
# With the token-level value (`rl.value_level = "token"`) advantages and old values are per token, and no
# value index is needed (the value of a response token is read at the position before it).
TOKEN_VALUE_MINIBATCH_KEYS = _EPISODE_KEYS + ("advantages_BxL", "old_values_BxL")
VALUE_LEVELS = ("turn", "token")


@dataclasses.dataclass(frozen=True)
class PPOSettings:
  """The `config.rl` fields the PPO mathematics uses, typed: built once from the config by the trainer
  (`from_config`) and passed down. No defaults here: every value comes from the config, whose
  defaults live in `rlef_jax.config.base_config` alone; the checks of these fields live here alone
  (`config.validate` calls `from_config`)."""
  clip_eps: float
  value_clip: float
  kl_coef: float
  gamma: float
  kl_clamp: float
  advantage_norm: str
  behaviour_correction: bool
  loss_aggregation: str
  logprob_chunk: int
  value_level: str

  def __post_init__(self):
    checks = (
        (0 < self.clip_eps < 1, "clip_eps", "in (0, 1)"),
        (self.value_clip > 0, "value_clip", "> 0"),
        (self.kl_coef >= 0, "kl_coef", ">= 0"),
        (0 < self.gamma <= 1, "gamma", "in (0, 1]"),
        (self.kl_clamp >= 0, "kl_clamp", ">= 0 (0 = off)"),
        (self.advantage_norm in ("batch", "none"), "advantage_norm", "'batch' or 'none'"),
        (self.loss_aggregation in losses.AGGREGATIONS, "loss_aggregation",
         f"one of {losses.AGGREGATIONS}"),
        (self.logprob_chunk >= 0, "logprob_chunk", ">= 0 (0 = off)"),
        (self.value_level in VALUE_LEVELS, "value_level", f"one of {VALUE_LEVELS}"),
    )
    for ok, name, want in checks:
      if not ok:
        raise ValueError(f"config.rl.{name} must be {want}, got {getattr(self, name)!r}")

  @classmethod
  def from_config(cls, rl_config: Any) -> "PPOSettings":
    """From `config.rl` (a ConfigDict or a dict); a field it lacks is an error naming the field."""
    return cls(**{f.name: _field(rl_config, f.name) for f in dataclasses.fields(cls)})


def minibatch_keys(settings: PPOSettings) -> tuple[str, ...]:
  """The arrays an update's minibatch holds under `settings.value_level`."""
  return TOKEN_VALUE_MINIBATCH_KEYS if as_settings(settings).value_level == "token" else MINIBATCH_KEYS


def as_settings(settings: Any) -> PPOSettings:
  if not isinstance(settings, PPOSettings):
    raise TypeError(f"expected PPOSettings (ppo.PPOSettings.from_config(config.rl)), got "
                    f"{type(settings).__name__}")
  return settings


@flax.struct.dataclass
class TrainState:
  """Everything an update changes; a pytree, so it checkpoints and donates as one."""
  policy_params: Any
  value_params: Any
  policy_opt_state: Any
  value_opt_state: Any
  step: jax.Array
  rng: jax.Array


def init_train_state(policy_params, value_params, policy_opt: optax.GradientTransformation,
                     value_opt: optax.GradientTransformation, rng: jax.Array) -> TrainState:
  return TrainState(policy_params, value_params, policy_opt.init(policy_params),
                    value_opt.init(value_params), jnp.zeros((), jnp.int32), rng)


def learning_rate_schedule(peak: float, warmup_steps: int, after_warmup: str = "constant",
                           total_steps: Optional[int] = None) -> Callable[[jax.Array], jax.Array]:
  """Linear warm-up to `peak` over `warmup_steps` updates (paper App. A.1), then [U] constant,
  cosine or linear decay to 0 at `total_steps`. Update k (from 0) uses peak·(k+1)/warmup while warming.
  """
  if after_warmup not in ("constant", "cosine", "linear"):
    raise ValueError(f"config.optim.schedule_after_warmup must be 'constant', 'cosine' or 'linear', "
                     f"got {after_warmup!r}")
  if after_warmup != "constant" and (total_steps is None or total_steps <= warmup_steps):
    raise ValueError(f"a {after_warmup!r} decay needs total_steps (config.train.num_updates) above "
                     f"warmup_steps ({warmup_steps}), got {total_steps}")

  def schedule(count):
    count = jnp.asarray(count, jnp.float32)
    warm = jnp.minimum(1.0, (count + 1.0) / warmup_steps) if warmup_steps > 0 else 1.0
    if after_warmup == "constant":
      return peak * warm
    frac = jnp.clip((count - warmup_steps) / (total_steps - warmup_steps), 0.0, 1.0)
    decay = 0.5 * (1.0 + jnp.cos(math.pi * frac)) if after_warmup == "cosine" else 1.0 - frac
    return peak * warm * decay

  return schedule


def _decay_mask(params):
  """[U] weight decay on matrices only (not RMSNorm scales or the value head's bias)."""
  return jax.tree.map(lambda x: jnp.ndim(x) >= 2, params)


def _field(cfg: Any, name: str) -> Any:
  """`cfg.name` of a ConfigDict, a dict or a dataclass; a missing field is an error naming it."""
  value = cfg.get(name) if isinstance(cfg, dict) else getattr(cfg, name, None)
  if value is None:
    raise ValueError(f"the config has no field {name!r}; start from rlef_jax.config.base_config()")
  return value


def make_optimizers(optim_config: Any, total_steps: Optional[int] = None
                    ) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
  """(policy, value) AdamW optimizers with gradient clipping and warm-up (paper App. A.1).

  `optim_config` is `config.optim`; `total_steps` (`config.train.num_updates`) is needed by the cosine
  and linear schedules.
  """
  clip_norm = _field(optim_config, "grad_clip_norm")

  def build(lr):
    schedule = learning_rate_schedule(lr, _field(optim_config, "warmup_steps"),
                                      _field(optim_config, "schedule_after_warmup"), total_steps)
    adamw = optax.adamw(schedule, b1=_field(optim_config, "b1"), b2=_field(optim_config, "b2"),
                        eps=_field(optim_config, "eps"),
                        weight_decay=_field(optim_config, "weight_decay"), mask=_decay_mask)
    return optax.chain(optax.clip_by_global_norm(clip_norm), adamw) if clip_norm > 0 else adamw

  return build(_field(optim_config, "lr")), build(_field(optim_config, "value_lr"))


def values_at_BxT(values_BxL: jax.Array, value_index_BxT: jax.Array) -> jax.Array:
  index_BxT = jnp.clip(value_index_BxT, 0, values_BxL.shape[1] - 1)
  return jnp.take_along_axis(values_BxL, index_BxT, axis=1)


def _under_mesh(fn: Callable, mesh: Optional[jax.sharding.Mesh]) -> Callable:
  """`fn` traced and run under `sharding.use_mesh(mesh)` (activation constraints on) when a mesh is given."""
  if mesh is None:
    return fn
  from rlef_jax import sharding  # pylint: disable=g-import-not-at-top

  def run(*args):
    with sharding.use_mesh(mesh):
      return fn(*args)
  return run


def make_logprob_fn(model: nn.Module, mesh: Optional[jax.sharding.Mesh] = None, chunk: int = 0
                    ) -> Callable[[Any, jax.Array], jax.Array]:
  """Jitted `logp_BxL = fn(params, tokens_BxL)`: log p(tokens[b, i] | tokens[b, :i]), 0 at i = 0.

  One full causal forward (right padding is harmless); used for π_θold before the updates of a round
  and for the frozen initial policy ρ of the KL penalty (paper §2).
  """

  @jax.jit
  def logprobs(params, tokens_BxL):
    return logprobs_lib.token_logprobs(model, params, tokens_BxL, chunk)[0]

  return _under_mesh(logprobs, mesh)


def make_value_fn(value_model: nn.Module, mesh: Optional[jax.sharding.Mesh] = None,
                  value_level: str = "turn") -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
  """Jitted `values_BxT = fn(value_params, tokens_BxL, value_index_BxT)`: V(c_t) read at the last
  prompt token before each turn's response (paper §3). With `value_level="token"` (the App. B
  ablation) `values_BxL = fn(value_params, tokens_BxL, turn_id_BxL)`: each response token's value, read
  at the position before it (`losses.token_values_BxL`), 0 elsewhere."""
  if value_level not in VALUE_LEVELS:
    raise ValueError(f"value_level must be one of {VALUE_LEVELS}, got {value_level!r}")

  @jax.jit
  def values(value_params, tokens_BxL, where):
    values_BxL = value_model.apply({"params": value_params}, tokens_BxL)
    if value_level == "token":
      return losses.token_values_BxL(values_BxL, where)
    return values_at_BxT(values_BxL, where)

  return _under_mesh(values, mesh)


def compute_turn_targets(task_rewards_BxT: jax.Array, policy_logp_BxL: jax.Array,
                         ref_logp_BxL: jax.Array, turn_id_BxL: jax.Array, turn_mask_BxT: jax.Array,
                         values: jax.Array, settings: PPOSettings) -> dict[str, jax.Array]:
  """Per-turn KL, reward, return and advantage of a collection round (paper §2 and §3).

  KL_t = mean over turn t's tokens of (log π − log ρ); R_t = r_t − β·KL_t; G_t = Σ_{i≥t} γ^{i−t} R_i;
  A_t = G_t − V(c_t), normalised over the valid turns of the arrays passed in when
  `rl.advantage_norm == "batch"` (pass the whole round to normalise over the round).

  `values` are `[B, T]` turn values; with `settings.value_level == "token"` they are `[B, L]` token
  values (`make_value_fn`) and the advantage is per token, `advantages_BxL` (G_t − V(token), normalised
  over the response tokens), in place of `advantages_BxT`.
  """
  s = as_settings(settings)
  T = task_rewards_BxT.shape[1]
  kl_BxT = losses.turn_kl_BxT(policy_logp_BxL, ref_logp_BxL, turn_id_BxL, T,
                              clamp=s.kl_clamp if s.kl_clamp > 0 else None)
  kl_BxT = jnp.where(turn_mask_BxT.astype(bool), kl_BxT, 0.0)
  rewards_BxT = losses.turn_rewards_BxT(task_rewards_BxT, kl_BxT, turn_mask_BxT, s.kl_coef)
  returns_BxT = losses.returns_BxT(rewards_BxT, turn_mask_BxT, s.gamma)
  normalize = s.advantage_norm == "batch"
  if s.value_level == "token":
    advantages = {"advantages_BxL": losses.token_advantages_BxL(returns_BxT, values, turn_id_BxL,
                                                                normalize=normalize)}
  else:
    advantages = {"advantages_BxT": losses.advantages_BxT(returns_BxT, values, turn_mask_BxT,
                                                          normalize=normalize)}
  return {"kl_BxT": kl_BxT, "rewards_BxT": rewards_BxT, "returns_BxT": returns_BxT, **advantages}
