"""Per-token log-probabilities of a sequence under the policy: the one path that scoring (π_θold and
the reference ρ before a round's updates) and the policy loss both use.

`token_logprobs(model, params, tokens_BxL, chunk)` runs the model once and returns, for each token,
log p(token | prefix) and the entropy of the distribution that predicted it. With `chunk > 0` the LM
head runs `chunk` positions at a time under `jax.checkpoint`, so no B × L × V logits exist in the
forward or the gradient. The sampler's behaviour log-probs come from its own sampling distribution
(rlef_jax/sampler.py), not from here.

Shape letters: B batch, L tokens, C chunk, N chunks, D hidden, V vocab.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def token_logp_and_entropy(logits_BxLxV: jax.Array, tokens_BxL: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Log-prob of each token given its prefix and the entropy of the distribution that predicted it.

  Aligned with the tokens: index i scores `tokens[:, i]` from the logits at i − 1; index 0 is 0.
  """
  logp_BxL, entropy_BxL = logp_and_entropy(logits_BxLxV[:, :-1], tokens_BxL[:, 1:])
  pad = jnp.zeros_like(logp_BxL[:, :1])
  return (jnp.concatenate([pad, logp_BxL], axis=1), jnp.concatenate([pad, entropy_BxL], axis=1))


def logp_and_entropy(logits_BxLxV: jax.Array, targets_BxL: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Log-prob of `targets_BxL` under each position's logits, and the entropy there (float32)."""
  logits_BxLxV = logits_BxLxV.astype(jnp.float32)
  lse_BxL = jax.nn.logsumexp(logits_BxLxV, axis=-1)
  picked_BxL = jnp.take_along_axis(logits_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
  probs_BxLxV = jnp.exp(logits_BxLxV - lse_BxL[..., None])
  entropy_BxL = lse_BxL - jnp.sum(probs_BxLxV * logits_BxLxV, axis=-1)
  return picked_BxL - lse_BxL, entropy_BxL


def head_logits(config: Any, params: Any, x_BxLxD: jax.Array) -> jax.Array:
  """The LM head of `rlef_jax.model.Llama` as a pure function of its params (`config`: its
  `LlamaConfig`): float32 logits of hidden states."""
  dtype = config.compute_jnp_dtype
  if config.tie_word_embeddings:
    table_VxD = nn.meta.unbox(params["embed"]["embedding"])  # params may be boxed (logical axes)
    return jnp.einsum("bld,vd->blv", x_BxLxD.astype(dtype), table_VxD.astype(dtype),
                      preferred_element_type=jnp.float32)
  kernel_DxV = nn.meta.unbox(params["lm_head"]["kernel"])
  return jnp.einsum("bld,dv->blv", x_BxLxD.astype(dtype), kernel_DxV.astype(dtype),
                    preferred_element_type=jnp.float32)


def token_logprobs(model: Any, params: Any, tokens_BxL: jax.Array, chunk: int = 0
                   ) -> tuple[jax.Array, jax.Array]:
  """`(logp_BxL, entropy_BxL)`: log p(tokens[b, i] | tokens[b, :i]) and the entropy of the
  distribution that predicted it; index 0 is 0.

  `chunk > 0` computes the logits `chunk` positions at a time, each chunk under `jax.checkpoint`,
  so neither the forward nor the gradient ever holds B × L × V logits (at 8B, 128k vocabulary and
  8k tokens that is 4 GB per sequence in float32): only B × chunk × V. Same values as `chunk = 0`.
  """
  if not chunk:
    logits_BxLxV, _ = model.apply({"params": params}, tokens_BxL)
    return token_logp_and_entropy(logits_BxLxV, tokens_BxL)
  B, L = tokens_BxL.shape
  zero_Bx1 = jnp.zeros((B, 1), jnp.float32)
  x_BxLxD, _ = model.apply({"params": params}, tokens_BxL, return_hidden=True)
  n = -(-(L - 1) // chunk)
  pad = n * chunk - (L - 1)
  x_NxBxCxD = jnp.pad(x_BxLxD[:, :-1], ((0, 0), (0, pad), (0, 0))).reshape(
      B, n, chunk, -1).transpose(1, 0, 2, 3)
  targets_NxBxC = jnp.pad(tokens_BxL[:, 1:], ((0, 0), (0, pad))).reshape(B, n, chunk).transpose(1, 0, 2)

  @jax.checkpoint
  def one(x_BxCxD, targets_BxC):
    return logp_and_entropy(head_logits(model.config, params, x_BxCxD), targets_BxC)

  _, (logp_NxBxC, entropy_NxBxC) = jax.lax.scan(
      lambda carry, xs: (carry, one(*xs)), None, (x_NxBxCxD, targets_NxBxC))
  unchunk = lambda a_NxBxC: a_NxBxC.transpose(1, 0, 2).reshape(B, n * chunk)[:, :L - 1]
  return (jnp.concatenate([zero_Bx1, unchunk(logp_NxBxC)], axis=1),
          jnp.concatenate([zero_Bx1, unchunk(entropy_NxBxC)], axis=1))
