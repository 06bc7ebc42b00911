"""The train state's layout, in one place: built from the reference policy for a fresh run (`fresh`),
or as sharded `jax.ShapeDtypeStruct`s (`abstract`) — the restore target of a resume and what
benchmarks/fit.py compiles against, with nothing allocated.

Layout: the policy params on their logical shardings, the value model's backbone copied from them
and its fresh head replicated, optimizer statistics sharded like their params, the step and the RNG
key replicated; the reference policy in `rl.reference_dtype` on the policy's shardings.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from rlef_jax import model as model_lib
from rlef_jax import ppo
from rlef_jax import round_batch
from rlef_jax import sharding


def fresh(reference_params: Any, llama_config: model_lib.LlamaConfig,
          policy_opt: optax.GradientTransformation, value_opt: optax.GradientTransformation,
          value_rng: jax.Array, train_rng: jax.Array, mesh: jax.sharding.Mesh) -> ppo.TrainState:
  """A new run's state: the policy and the value backbone start as copies of the reference
  (paper §3), the optimizers from zero. The reference's own buffers are not shared (the update
  donates the state)."""
  value_params = model_lib.value_params_from_policy(reference_params, value_rng, llama_config)
  policy_params = jax.tree.map(lambda x: jnp.array(x, copy=True), reference_params)
  state = ppo.init_train_state(policy_params, value_params, policy_opt, value_opt, train_rng)
  return round_batch.on_mesh(state, mesh)


def abstract(policy_model: model_lib.Llama, policy_opt: optax.GradientTransformation,
             value_opt: optax.GradientTransformation, mesh: jax.sharding.Mesh,
             reference_dtype: str) -> tuple[ppo.TrainState, Any]:
  """(train state, reference params) as sharded `ShapeDtypeStruct`s laid out as `fresh` and
  `model.cast_floating` make them (tests/fit_test.py compares them with real ones)."""
  replicated = sharding.replicated(mesh)
  boxed = sharding.abstract_params(policy_model)
  policy_shardings = sharding.param_shardings(policy_model, mesh, boxed)
  policy = _with_shardings(nn.unbox(boxed), policy_shardings)
  rng = jax.eval_shape(lambda: jax.random.key(0))
  value_shapes = jax.eval_shape(
      lambda p: model_lib.value_params_from_policy(p, jax.random.key(0), policy_model.config), policy)
  value_shardings = {"backbone": {k: policy_shardings[k] for k in value_shapes["backbone"]},
                     "value_head": jax.tree.map(lambda _: replicated, value_shapes["value_head"])}
  value = _with_shardings(value_shapes, value_shardings)
  policy_opt_state = _with_shardings(
      jax.eval_shape(policy_opt.init, policy),
      sharding.opt_state_shardings(policy_opt, policy_shardings, policy, mesh))
  value_opt_state = _with_shardings(
      jax.eval_shape(value_opt.init, value),
      sharding.opt_state_shardings(value_opt, value_shardings, value, mesh))
  state = ppo.TrainState(
      policy, value, policy_opt_state, value_opt_state,
      jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
      jax.ShapeDtypeStruct(rng.shape, rng.dtype, sharding=replicated))
  reference = _with_shardings(
      jax.eval_shape(lambda p: model_lib.cast_floating(p, reference_dtype), policy), policy_shardings)
  return state, reference


def _with_shardings(shapes: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes,
                      shardings)
