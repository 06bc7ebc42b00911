"""The Llama 3 policy and value networks as pure-functional Flax Linen modules.

`Llama` covers the Llama 3.0 / 3.1 / 3.2 family (grouped-query attention, RMSNorm, SwiGLU, RoPE with
`rope_theta` and `llama3` scaling, tied or untied embeddings) and decodes incrementally with a
`KVCache` with per-row positions, so a right-padded batch of different lengths, or a conversation
continued over several turns (paper §2.1), never recomputes its history. `LlamaValue` is the paper's
value network (§3): the same backbone with a freshly initialised scalar head.

Shape letters: B batch, L new tokens, S cache length, D hidden, H query heads, K key/value heads,
Dh head dim, F MLP hidden, V vocab, N layers.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rlef_jax import layers, rope
from rlef_jax.model_types import KVCache, LlamaConfig, RopeScaling  # noqa: F401  (the model's types, re-exported)
from rlef_jax.model_types import ATTENTION, DTYPES, REMAT_POLICIES  # noqa: F401  (ATTENTION, REMAT_POLICIES re-exported)

def rope_inv_freq(config: LlamaConfig) -> np.ndarray:
  """`[Dh/2]` float32 inverse frequencies, equal to transformers' `inv_freq` (llama3 scaling incl.)."""
  return rope.inv_freq(config.head_dim, config.rope_theta, config.rope_scaling)


def init_cache(config: LlamaConfig, batch_size: int, max_length: int) -> KVCache:
  """An empty cache (zeros, lengths 0) in the compute dtype for `max_length` tokens per row."""
  if batch_size <= 0 or max_length <= 0:
    raise ValueError(f"init_cache needs positive batch_size and max_length, got {batch_size}, "
                     f"{max_length}")
  B, K, Dh = batch_size, config.num_kv_heads, config.head_dim
  # Separate buffers: a cache is donated to the sampler, and one buffer cannot be donated twice.
  zeros = lambda shape: tuple(jnp.zeros(shape, config.compute_jnp_dtype) for _ in range(config.num_layers))
  return KVCache(zeros((B, K, Dh, max_length)), zeros((B, K, max_length, Dh)), jnp.zeros((B,), jnp.int32))


@functools.partial(jax.jit, static_argnames=("capacity",))
def grow_cache(cache: KVCache, capacity: int) -> KVCache:
  """`cache` with `capacity` slots per row (>= its current capacity); the new slots are empty."""
  more = capacity - cache.capacity
  grow = lambda xs, pad: tuple(jnp.pad(x, pad) for x in xs)
  return KVCache(grow(cache.keys, ((0, 0), (0, 0), (0, 0), (0, more))),
                 grow(cache.values, ((0, 0), (0, 0), (0, more), (0, 0))), cache.lengths_B)


def unstack_layers(params: Any) -> Any:
  """Params of a `scan_layers=True` model (`layers`, stacked on a leading axis) as those of the same
  model unrolled (`layers_0` ... `layers_{N-1}`); other params are returned as they are."""
  if not isinstance(params, dict) or "layers" not in params:
    return params
  stacked = params["layers"]
  n = jax.tree.leaves(stacked)[0].shape[0]
  out = {k: v for k, v in params.items() if k != "layers"}
  for i in range(n):
    out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
  return out


def stack_layers(params: Any) -> Any:
  """The inverse of `unstack_layers`: unrolled params (`layers_0` ... `layers_{N-1}`) as those of the
  same model with `scan_layers=True` (`layers`, stacked on a leading axis); others as they are."""
  if not isinstance(params, dict) or "layers_0" not in params:
    return params
  n = sum(1 for k in params if k.startswith("layers_"))
  out = {k: v for k, v in params.items() if not k.startswith("layers_")}
  out["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *(params[f"layers_{i}"] for i in range(n)))
  return out


def other_layer_layout(config: LlamaConfig) -> LlamaConfig:
  """`config` with its layers stored the other way (scanned <-> unrolled): the same model."""
  return dataclasses.replace(config, scan_layers=not config.scan_layers)


def cast_floating(params: Any, dtype: str) -> Any:
  """`params` with every floating leaf in `dtype` ("float32" | "bfloat16"; on its own sharding), the
  others as they are; leaves already in `dtype` are returned, not copied. E.g. the frozen reference
  policy kept in bfloat16 (`config.rl.reference_dtype`)."""
  target = DTYPES[dtype]
  return jax.tree.map(
      lambda x: x.astype(target) if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != target else x,
      params)


def decoding_config(config: LlamaConfig) -> LlamaConfig:
  """The config a decoding model uses: layers unrolled (one cache buffer each), no remat."""
  return dataclasses.replace(config, scan_layers=False, remat=False)


def _check_tokens(tokens_BxL, cache: KVCache | None, num_new_B) -> None:
  if tokens_BxL.ndim != 2:
    raise ValueError(f"tokens must be [batch, length], got shape {tokens_BxL.shape}")
  if cache is None:
    if num_new_B is not None:
      raise ValueError("num_new_B is only meaningful with a cache; pass cache=... or drop num_new_B")
    return
  B, _ = tokens_BxL.shape
  if cache.keys[0].shape[0] != B or cache.lengths_B.shape != (B,):
    raise ValueError(f"cache batch size {cache.keys[0].shape[0]} does not match tokens batch "
                     f"size {B}; build the cache with init_cache(config, {B}, max_length)")
  if num_new_B is not None and jnp.shape(num_new_B) != (B,):
    raise ValueError(f"num_new_B must have shape ({B},), got {jnp.shape(num_new_B)}")


class Llama(nn.Module):
  """Causal LM: `logits_BxLxV, new_cache = model.apply({"params": p}, tokens_BxL, cache, num_new_B)`.

  Without a cache, tokens sit at positions `0..L-1` (right padding is harmless under the causal
  mask) and `new_cache` is None. With a cache, token i of row b is written to slot and position
  `cache.lengths_B[b] + i` and attends to slots up to there; the returned cache's lengths grow by
  `num_new_B` (default L), so a right-padded chunk's garbage tail is overwritten by the row's next
  chunk. Callers guarantee `max(lengths) + L <= S`. Logits are float32.

  `logits_at_B`: compute logits only at position `logits_at_B[b]` of each row (`logits_Bx1xV`): a
  prefill that samples from its last token then never holds the B × L × V logits (at 8B, 128k
  vocabulary and a 2k-token chunk that is 1 GB per row).

  `attend_slots` (static, with a cache): attend over the cache's first slots only — a decode step
  then costs O(attend_slots), not O(capacity); callers guarantee every position stays below it.
  """
  config: LlamaConfig

  @nn.compact
  def __call__(self, tokens_BxL, cache: KVCache | None = None, num_new_B=None, logits_at_B=None,
               return_hidden: bool = False, attend_slots: int | None = None):
    cfg = self.config
    _check_tokens(tokens_BxL, cache, num_new_B)
    if cache is not None and (cfg.scan_layers or len(cache.keys) != cfg.num_layers):
      raise ValueError(
          "decoding with a KV cache runs the layers unrolled, one cache buffer per layer: use "
          "Llama(decoding_config(config)) with unstack_layers(params) (sampler.prepare does both), "
          f"and init_cache(config, ...) for {cfg.num_layers} layers")
    x_BxLxD, embed, kv = layers.decoder(cfg, tokens_BxL, cache, attend_slots)
    if return_hidden:  # the final normalised hidden states, for `logprobs.token_logprobs` (no cache)
      return x_BxLxD, None
    if logits_at_B is not None:
      x_BxLxD = jnp.take_along_axis(
          x_BxLxD, jnp.asarray(logits_at_B, jnp.int32)[:, None, None], axis=1)
    if cfg.tie_word_embeddings:
      logits_BxLxV = embed.attend(x_BxLxD)
    else:
      logits_BxLxV = layers.Proj(
          (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), "bld,dv->blv", (0,),
          cfg.compute_jnp_dtype, cfg.param_jnp_dtype, out_dtype=jnp.float32, name="lm_head")(x_BxLxD)
    logits_BxLxV = nn.with_logical_constraint(
        logits_BxLxV.astype(jnp.float32), ("activation_batch", "activation_length", "activation_vocab"))
    if cache is None:
      return logits_BxLxV, None
    L = tokens_BxL.shape[1]
    num_new_B = jnp.full_like(cache.lengths_B, L) if num_new_B is None else num_new_B
    new_cache = KVCache(kv[0], kv[1], cache.lengths_B + jnp.asarray(num_new_B, jnp.int32))
    return logits_BxLxV, new_cache


class _Backbone(nn.Module):
  """The policy without its LM head (params: `embed`, `layers_*` / `layers`, `norm`)."""
  config: LlamaConfig

  @nn.compact
  def __call__(self, tokens_BxL):
    x_BxLxD, _, _ = layers.decoder(self.config, tokens_BxL, None)
    return x_BxLxD


def _value_head(config: LlamaConfig) -> nn.Dense:
  return nn.Dense(
      1, dtype=jnp.float32, param_dtype=config.param_jnp_dtype,
      kernel_init=nn.with_logical_partitioning(
          nn.initializers.variance_scaling(1.0, "fan_in", "normal"), ("embed", None)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
      name="value_head")


class LlamaValue(nn.Module):
  """Value network (paper §3): `values_BxL = value_model.apply({"params": vp}, tokens_BxL)`, float32.

  Params: `{"backbone": <Llama params without lm_head>, "value_head": {"kernel", "bias"}}`.
  """
  config: LlamaConfig

  @nn.compact
  def __call__(self, tokens_BxL):
    _check_tokens(tokens_BxL, None, None)
    x_BxLxD = _Backbone(self.config, name="backbone")(tokens_BxL)
    values_BxLx1 = _value_head(self.config)(x_BxLxD.astype(jnp.float32))
    return nn.with_logical_constraint(
        values_BxLx1[..., 0], ("activation_batch", "activation_length"))


def _is_boxed(tree: Any) -> bool:
  leaves = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
  return any(isinstance(leaf, nn.meta.AxisMetadata) for leaf in leaves)


def value_params_from_policy(policy_params: Any, rng: jax.Array, config: LlamaConfig) -> dict:
  """Value-network params from policy params (paper §3: same initialisation, output layer replaced
  by a randomly initialised linear projection to a scalar).

  The backbone is copied into fresh buffers, so policy and value params can both be donated to a
  jitted update. Boxed (logically partitioned) policy params give a boxed value head.
  """
  if not isinstance(policy_params, dict) or "embed" not in policy_params:
    keys = list(policy_params) if isinstance(policy_params, dict) else type(policy_params).__name__
    raise ValueError(f"value_params_from_policy expects the policy's params tree (keys embed, "
                     f"layers..., norm), got {keys}; pass variables['params'], not the variables")
  backbone = {k: v for k, v in policy_params.items() if k != "lm_head"}
  backbone = jax.tree.map(lambda x: jnp.array(x, copy=True), backbone)
  head = _value_head(config).init(rng, jnp.zeros((1, 1, config.hidden_size), jnp.float32))["params"]
  if not _is_boxed(policy_params):
    head = nn.meta.unbox(head)
  return {"backbone": backbone, "value_head": head}
