"""Rotary position embeddings (RoPE) for Llama 3, including the `llama3` long-context scaling.

The layout is transformers' half-split one (`rotate_half`: the first Dh/2 features pair with the last
Dh/2), so Hugging Face q/k projection weights load without any permutation (a permuted layout needs an
exact un-permute on export, a known source of bugs). The inverse-frequency table reproduces
transformers' float32 computation step by step so that positions in the tens of thousands rotate by
the same angles.

Shape letters: B batch, L sequence, H heads, Dh head dim.
"""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp
import numpy as np

from rlef_jax.model_types import RopeScaling


@functools.lru_cache(maxsize=64)
def inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None) -> np.ndarray:
  """The `[Dh/2]` float32 inverse frequencies `theta^(-2i/Dh)`, with Llama 3.1 scaling when given.

  `llama3` scaling (Llama 3.1 / 3.2) leaves high frequencies (wavelength below
  `original_max_position_embeddings / high_freq_factor`) alone, divides low frequencies (wavelength
  above `original_max_position_embeddings / low_freq_factor`) by `factor`, and interpolates smoothly
  in between. Arithmetic follows transformers' order and precision (float32, except the power,
  which torch evaluates in float64 for a Python-float base), so the table matches bit for bit.
  """
  f32 = np.float32
  exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(f32) / f32(head_dim)
  freq = f32(1.0) / np.power(np.float64(theta), exponents.astype(np.float64)).astype(f32)
  if scaling is None:
    return freq
  factor = f32(scaling.factor)
  low, high = f32(scaling.low_freq_factor), f32(scaling.high_freq_factor)
  old_len = scaling.original_max_position_embeddings
  low_freq_wavelen = old_len / scaling.low_freq_factor
  high_freq_wavelen = old_len / scaling.high_freq_factor
  wavelen = f32(2 * math.pi) / freq
  scaled = np.where(wavelen > low_freq_wavelen, freq / factor, freq)
  smooth = (f32(old_len) / wavelen - low) / (high - low)
  smoothed = (f32(1) - smooth) * scaled / factor + smooth * scaled
  medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
  return np.where(medium, smoothed, scaled).astype(f32)


def apply(x_BxLxHxDh: jnp.ndarray, positions_BxL: jnp.ndarray, freq: np.ndarray) -> jnp.ndarray:
  """Rotates each head vector by its position's angles; angles and cos/sin are float32."""
  angles_BxLxR = positions_BxL.astype(jnp.float32)[..., None] * jnp.asarray(freq, jnp.float32)
  angles_BxLxDh = jnp.concatenate([angles_BxLxR, angles_BxLxR], axis=-1)
  cos_BxLx1xDh = jnp.cos(angles_BxLxDh)[:, :, None, :].astype(x_BxLxHxDh.dtype)
  sin_BxLx1xDh = jnp.sin(angles_BxLxDh)[:, :, None, :].astype(x_BxLxHxDh.dtype)
  half = x_BxLxHxDh.shape[-1] // 2
  rotated_BxLxHxDh = jnp.concatenate([-x_BxLxHxDh[..., half:], x_BxLxHxDh[..., :half]], axis=-1)
  return x_BxLxHxDh * cos_BxLx1xDh + rotated_BxLxHxDh * sin_BxLx1xDh
