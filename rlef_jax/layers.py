"""Llama decoder building blocks (Flax Linen): RMSNorm, grouped-query attention with a KV cache,
SwiGLU MLP, and the layer stack shared by the policy (`model.Llama`) and the value model
(`model.LlamaValue`, paper §3: same backbone, different head).

Every parameter carries logical axis names (`nn.with_logical_partitioning`) and the main activations
logical constraints; `rlef_jax.sharding` maps these names to mesh axes, and without axis rules in
context they are no-ops.

Shape letters: B batch, L new tokens, S key slots (cache length, or L without a cache), D hidden,
H query heads, K key/value heads, G = H // K query heads per key/value head, Dh head dim,
F MLP hidden, V vocab, N layers.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rlef_jax import rope
from rlef_jax.model_types import KVCache, LlamaConfig

ACT_BLD = ("activation_batch", "activation_length", "activation_embed")
# The residual stream between scanned layers (what remat keeps of each layer for the backward pass):
# sharded along the length (sequence parallelism), so the saved stack is not a full copy per device.
RESIDUAL_BLD = ("activation_batch", "activation_residual_length", "activation_embed")
KEY_CACHE_AXES = ("cache_batch", "cache_kv_heads", "cache_head_dim", "cache_length")  # one layer's keys
VALUE_CACHE_AXES = ("cache_batch", "cache_kv_heads", "cache_length", "cache_head_dim")  # one layer's values


def _fan_in_init(in_axes: tuple[int, ...], out_axes: tuple[int, ...]):
  return nn.initializers.variance_scaling(
      1.0, "fan_in", "truncated_normal", in_axis=in_axes, out_axis=out_axes)


class Proj(nn.Module):
  """A bias-free linear map: one einsum of the input with a kernel whose axes have logical names."""
  shape: tuple[int, ...]
  axes: tuple[str, ...]
  spec: str
  in_axes: tuple[int, ...]
  dtype: Any
  param_dtype: Any
  out_dtype: Any = None

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    out_axes = tuple(i for i in range(len(self.shape)) if i not in self.in_axes)
    init = nn.with_logical_partitioning(_fan_in_init(self.in_axes, out_axes), self.axes)
    kernel = self.param("kernel", init, self.shape, self.param_dtype)
    return jnp.einsum(self.spec, x.astype(self.dtype), kernel.astype(self.dtype),
                      preferred_element_type=self.out_dtype)


class Embed(nn.Module):
  """Token embedding table `[V, D]`; `attend` is the tied output projection (float32 logits)."""
  config: LlamaConfig

  def setup(self):
    cfg = self.config
    init = nn.with_logical_partitioning(
        nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=1, out_axis=0),
        ("vocab", "embed"))
    self.embedding = self.param("embedding", init, (cfg.vocab_size, cfg.hidden_size),
                                cfg.param_jnp_dtype)

  def __call__(self, tokens_BxL: jnp.ndarray) -> jnp.ndarray:
    x_BxLxD = jnp.take(self.embedding, tokens_BxL, axis=0).astype(self.config.compute_jnp_dtype)
    return nn.with_logical_constraint(x_BxLxD, ACT_BLD)

  def attend(self, x_BxLxD: jnp.ndarray) -> jnp.ndarray:
    dtype = self.config.compute_jnp_dtype
    return jnp.einsum("bld,vd->blv", x_BxLxD.astype(dtype), self.embedding.astype(dtype),
                      preferred_element_type=jnp.float32)


class RMSNorm(nn.Module):
  """`x / rms(x) * scale`, normalised in float32 like transformers' `LlamaRMSNorm`."""
  config: LlamaConfig

  @nn.compact
  def __call__(self, x_BxLxD: jnp.ndarray) -> jnp.ndarray:
    cfg = self.config
    init = nn.with_logical_partitioning(nn.initializers.ones, ("norm",))
    scale_D = self.param("scale", init, (x_BxLxD.shape[-1],), cfg.param_jnp_dtype)
    x32_BxLxD = x_BxLxD.astype(jnp.float32)
    ms_BxLx1 = jnp.mean(jnp.square(x32_BxLxD), axis=-1, keepdims=True)
    y_BxLxD = (x32_BxLxD * jax.lax.rsqrt(ms_BxLx1 + cfg.rms_norm_eps)).astype(cfg.compute_jnp_dtype)
    return y_BxLxD * scale_D.astype(cfg.compute_jnp_dtype)


def _write_cache(cache: jnp.ndarray, new: jnp.ndarray, lengths_B: jnp.ndarray, slot_axis: int) -> jnp.ndarray:
  """Writes row b's new keys (or values) to slots `lengths_B[b] + i` along `slot_axis` (of the
  `[B, ...]` buffer; `new` has its L tokens on the same axis), in place on a donated buffer; writes
  past the cache end are dropped (not shifted back as `dynamic_update_slice` would), so a chunk
  wider than a row needs, or the pad tokens of a finished row, can never overwrite that row's history."""
  L = new.shape[slot_axis]
  lead = (slice(None),) * (slot_axis - 1)

  def write(c, n, start):
    return c.at[lead + (start + jnp.arange(L),)].set(n, mode="drop")

  return jax.vmap(write)(cache, new.astype(cache.dtype), lengths_B)


def _cached_attention(q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh, kv, positions_BxL, lengths_B, dt,
                      attend_slots=None):
  """Attention of the new tokens over the cache (after writing them into it), in the cache's layouts
  (keys `[B, K, Dh, S]`, values `[B, K, S, Dh]`: `KVCache`): batch dims (b, k) lead in both operands
  and each product contracts a non-minor dim of its cache buffer (the layouts XLA's CPU dots read fast).
  `attend_slots` (static): attend over the first W slots only, so a step costs O(W), not O(S), when
  the caller knows that every row's positions stay below W. Returns
  `(out_BxLxHxDh, (k_BxKxDhxS, v_BxKxSxDh))`."""
  B, L, H, Dh = q_BxLxHxDh.shape
  K = k_BxLxKxDh.shape[2]
  k_BxKxDhxS = _write_cache(kv[0], k_BxLxKxDh.transpose(0, 2, 3, 1), lengths_B, slot_axis=3)
  v_BxKxSxDh = _write_cache(kv[1], v_BxLxKxDh.transpose(0, 2, 1, 3), lengths_B, slot_axis=2)
  k_BxKxDhxS = nn.with_logical_constraint(k_BxKxDhxS, KEY_CACHE_AXES)
  v_BxKxSxDh = nn.with_logical_constraint(v_BxKxSxDh, VALUE_CACHE_AXES)
  S = v_BxKxSxDh.shape[2]
  W = S if attend_slots is None else min(attend_slots, S)
  k_BxKxDhxW, v_BxKxWxDh = k_BxKxDhxS[..., :W], v_BxKxSxDh[:, :, :W]
  q_BxKxGxLxDh = q_BxLxHxDh.reshape(B, L, K, H // K, Dh).transpose(0, 2, 3, 1, 4)
  scores_BxKxGxLxW = jnp.einsum("bkgld,bkdw->bkglw", q_BxKxGxLxDh, k_BxKxDhxW.astype(dt),
                                preferred_element_type=jnp.float32) * (Dh ** -0.5)
  visible_BxLxW = jnp.arange(W, dtype=jnp.int32)[None, None, :] <= positions_BxL[:, :, None]
  scores_BxKxGxLxW = jnp.where(visible_BxLxW[:, None, None], scores_BxKxGxLxW, jnp.finfo(jnp.float32).min)
  probs_BxKxGxLxW = jax.nn.softmax(scores_BxKxGxLxW, axis=-1).astype(dt)
  out_BxKxGxLxDh = jnp.einsum("bkglw,bkwd->bkgld", probs_BxKxGxLxW, v_BxKxWxDh.astype(dt))
  out_BxLxHxDh = out_BxKxGxLxDh.transpose(0, 3, 1, 2, 4).reshape(B, L, H, Dh)
  return out_BxLxHxDh, (k_BxKxDhxS, v_BxKxSxDh)


# Query tokens per block of `attention="blocked"`. Measured on the 2-core CPU (one layer of the tiny
# preset, 64 rows x 512 tokens, forward + backward): 16 → 0.85 s, 32 → 0.59 s, 64 → 0.58-0.68 s,
# 128 → 0.71 s, 256 → 0.89 s, one block ("einsum") 1.27-1.53 s (BUILD_NOTES "A faster main job").
ATTENTION_BLOCK = 64


def _causal_attention(q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh, dt, block=None):
  """Causal attention of a full sequence (positions 0..L-1) with explicit float32 scores; K/V heads
  shared by G query heads without being repeated. `block` (static): queries in blocks of that many
  tokens, block i attending over keys `[0, end of block i)` only, so the scores above the diagonal
  block are never computed and each block's scores stay small (cache-sized); None: one block."""
  B, L, H, Dh = q_BxLxHxDh.shape
  K = k_BxLxKxDh.shape[2]
  q_BxLxKxGxDh = q_BxLxHxDh.reshape(B, L, K, H // K, Dh)
  k_BxLxKxDh, v_BxLxKxDh = k_BxLxKxDh.astype(dt), v_BxLxKxDh.astype(dt)
  block = L if block is None else block
  outs = []
  for start in range(0, L, block):
    end = min(start + block, L)
    scores_BxKxGxQxS = jnp.einsum("blkgd,bskd->bkgls", q_BxLxKxGxDh[:, start:end], k_BxLxKxDh[:, :end],
                                  preferred_element_type=jnp.float32) * (Dh ** -0.5)
    visible_QxS = jnp.arange(end)[None, :] <= jnp.arange(start, end)[:, None]
    scores_BxKxGxQxS = jnp.where(visible_QxS, scores_BxKxGxQxS, jnp.finfo(jnp.float32).min)
    probs_BxKxGxQxS = jax.nn.softmax(scores_BxKxGxQxS, axis=-1).astype(dt)
    outs.append(jnp.einsum("bkgls,bskd->blkgd", probs_BxKxGxQxS, v_BxLxKxDh[:, :end]))
  out_BxLxKxGxDh = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)
  return out_BxLxKxGxDh.reshape(B, L, H, Dh)


class Attention(nn.Module):
  """Causal grouped-query attention; K/V heads are shared by G query heads without being repeated.
  `attend_slots`: with a cache, attend over its first slots only (see `_cached_attention`)."""
  config: LlamaConfig
  attend_slots: int | None = None

  @nn.compact
  def __call__(self, x_BxLxD, kv, positions_BxL, lengths_B):
    cfg = self.config
    D, H, K, Dh = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    B, L, _ = x_BxLxD.shape
    dt, pdt = cfg.compute_jnp_dtype, cfg.param_jnp_dtype
    q_BxLxHxDh = Proj((D, H, Dh), ("embed", "q_heads", "head_dim"), "bld,dhk->blhk", (0,), dt, pdt,
                      name="q")(x_BxLxD)
    k_BxLxKxDh = Proj((D, K, Dh), ("embed", "kv_heads", "head_dim"), "bld,dhk->blhk", (0,), dt, pdt,
                      name="k")(x_BxLxD)
    v_BxLxKxDh = Proj((D, K, Dh), ("embed", "kv_heads", "head_dim"), "bld,dhk->blhk", (0,), dt, pdt,
                      name="v")(x_BxLxD)
    freq = rope.inv_freq(Dh, cfg.rope_theta, cfg.rope_scaling)
    q_BxLxHxDh = nn.with_logical_constraint(
        rope.apply(q_BxLxHxDh, positions_BxL, freq),
        ("activation_batch", "activation_length", "activation_heads", None))
    kv_names = ("activation_batch", "activation_length", "activation_kv_heads", None)
    k_BxLxKxDh = nn.with_logical_constraint(rope.apply(k_BxLxKxDh, positions_BxL, freq), kv_names)
    v_BxLxKxDh = nn.with_logical_constraint(v_BxLxKxDh, kv_names)

    if kv is not None:
      out_BxLxHxDh, kv = _cached_attention(q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh, kv, positions_BxL,
                                           lengths_B, dt, self.attend_slots)
    elif cfg.attention in ("einsum", "blocked"):
      # Positions are 0..L-1 without a cache, so the mask is the causal one.
      out_BxLxHxDh = _causal_attention(q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh, dt,
                                       ATTENTION_BLOCK if cfg.attention == "blocked" else None)
    else:
      # GQA without repeating K/V.
      out_BxLxHxDh = jax.nn.dot_product_attention(
          q_BxLxHxDh, k_BxLxKxDh.astype(dt), v_BxLxKxDh.astype(dt), is_causal=True,
          implementation=None if cfg.attention == "dot_product" else cfg.attention)
    out_BxLxD = Proj((H, Dh, D), ("q_heads", "head_dim", "embed"), "blhk,hkd->bld", (0, 1), dt, pdt,
                     name="o")(out_BxLxHxDh)
    return nn.with_logical_constraint(out_BxLxD, ACT_BLD), kv


class MLP(nn.Module):
  """SwiGLU: `down(silu(gate(x)) * up(x))`."""
  config: LlamaConfig

  @nn.compact
  def __call__(self, x_BxLxD):
    cfg = self.config
    D, F = cfg.hidden_size, cfg.intermediate_size
    dt, pdt = cfg.compute_jnp_dtype, cfg.param_jnp_dtype
    gate_BxLxF = Proj((D, F), ("embed", "mlp"), "bld,df->blf", (0,), dt, pdt, name="gate")(x_BxLxD)
    up_BxLxF = Proj((D, F), ("embed", "mlp"), "bld,df->blf", (0,), dt, pdt, name="up")(x_BxLxD)
    h_BxLxF = nn.with_logical_constraint(
        nn.silu(gate_BxLxF) * up_BxLxF, ("activation_batch", "activation_length", "activation_mlp"))
    out_BxLxD = Proj((F, D), ("mlp", "embed"), "blf,fd->bld", (0,), dt, pdt, name="down")(h_BxLxF)
    return nn.with_logical_constraint(out_BxLxD, ACT_BLD)


class DecoderLayer(nn.Module):
  """Pre-norm residual block: `x + attn(norm(x))`, then `x + mlp(norm(x))`.

  Signature `(carry, *inputs) -> (carry, output)` so that `nn.scan` can stack it: the carry is the
  hidden state, the rest is broadcast. `kv` is this layer's cache buffers (unrolled decoding) or None,
  and the output its updated buffers.
  """
  config: LlamaConfig
  attend_slots: int | None = None

  @nn.compact
  def __call__(self, x_BxLxD, kv, positions_BxL, lengths_B):
    attn_BxLxD, kv = Attention(self.config, self.attend_slots, name="attn")(
        RMSNorm(self.config, name="input_norm")(x_BxLxD), kv, positions_BxL, lengths_B)
    x_BxLxD = x_BxLxD + attn_BxLxD
    x_BxLxD = x_BxLxD + MLP(self.config, name="mlp")(
        RMSNorm(self.config, name="post_attn_norm")(x_BxLxD))
    # Stacked (scanned) layers are the full-sequence passes (training, scoring); decoding is unrolled.
    return nn.with_logical_constraint(x_BxLxD, RESIDUAL_BLD if self.config.scan_layers else ACT_BLD), kv


def decoder(cfg: LlamaConfig, tokens_BxL: jnp.ndarray, cache: KVCache | None,
            attend_slots: int | None = None) -> tuple[jnp.ndarray, Embed, tuple[tuple, tuple] | None]:
  """Embedding, N decoder layers and the final norm, created inside the calling compact module.

  Returns the normalised hidden states, the embedding module (for tied output projections) and the
  updated per-layer `(keys, values)` (None without a cache). Token i of row b sits at position
  `lengths_B[b] + i` (just `i` without a cache). With a cache the layers run unrolled (the caller
  checks), each on its own cache buffer, attending over its first `attend_slots` slots (all: None).
  """
  B, L = tokens_BxL.shape
  embed = Embed(cfg, name="embed")
  x_BxLxD = embed(tokens_BxL)
  offsets_L = jnp.arange(L, dtype=jnp.int32)
  lengths_B = jnp.zeros((B,), jnp.int32) if cache is None else cache.lengths_B.astype(jnp.int32)
  positions_BxL = lengths_B[:, None] + offsets_L[None, :]

  layer_cls = DecoderLayer
  if cfg.remat:
    layer_cls = nn.remat(layer_cls, prevent_cse=not cfg.scan_layers,
                         policy=getattr(jax.checkpoint_policies, cfg.remat_policy))
  if cfg.scan_layers:
    stack = nn.scan(layer_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                    in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=cfg.num_layers,
                    metadata_params={nn.PARTITION_NAME: "layers"})
    x_BxLxD, _ = stack(cfg, name="layers")(x_BxLxD, None, positions_BxL, lengths_B)
    return RMSNorm(cfg, name="norm")(x_BxLxD), embed, None
  keys, values = [], []
  for i in range(cfg.num_layers):
    kv_i = None if cache is None else (nn.with_logical_constraint(cache.keys[i], KEY_CACHE_AXES),
                                       nn.with_logical_constraint(cache.values[i], VALUE_CACHE_AXES))
    x_BxLxD, kv_i = layer_cls(cfg, attend_slots, name=f"layers_{i}")(x_BxLxD, kv_i, positions_BxL,
                                                                   lengths_B)
    if kv_i is not None:
      keys.append(kv_i[0])
      values.append(kv_i[1])
  kv_all = None if cache is None else (tuple(keys), tuple(values))
  return RMSNorm(cfg, name="norm")(x_BxLxD), embed, kv_all
