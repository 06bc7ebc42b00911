"""The decode step's two attention products by KV-cache layout: which layout each product reads fast.

  python benchmarks/cache_layout.py [--batch=8] [--kv_heads=3] [--group=3] [--slots=2048] [--head_dim=64]
      [--dtype=float32] [--reps=7]

One new token per row attends over `--slots` cached slots: the scores `q . k` contract the head dim, the
output `p . v` contracts the slots. Each product is timed (jitted, one call after a compiling one,
interleaved over `--reps` rounds, median) with its cache operand stored `[B, K, S, Dh]` (slots major)
and `[B, K, Dh, S]` (head dim major); the results are checked equal. `rlef_jax.model_types.KVCache`
stores keys `[B, K, Dh, S]` and values `[B, K, S, Dh]` from these figures (BUILD_NOTES.md, "The keys'
layout"). Runs on whatever device JAX finds; nothing here is a test.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

PRODUCTS = {  # name: (einsum, cache layout)
    "scores, cache [B,K,S,Dh]": ("bkgd,bkwd->bkgw", "slots_major"),
    "scores, cache [B,K,Dh,S]": ("bkgd,bkdw->bkgw", "dim_major"),
    "output, cache [B,K,S,Dh]": ("bkgw,bkwd->bkgd", "slots_major"),
    "output, cache [B,K,Dh,S]": ("bkgw,bkdw->bkgd", "dim_major"),
}


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--kv_heads", type=int, default=3)
  ap.add_argument("--group", type=int, default=3, help="query heads per key/value head")
  ap.add_argument("--slots", type=int, default=2048)
  ap.add_argument("--head_dim", type=int, default=64)
  ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  ap.add_argument("--reps", type=int, default=7)
  args = ap.parse_args(argv)
  B, K, G, S, Dh = args.batch, args.kv_heads, args.group, args.slots, args.head_dim
  dt = jnp.dtype(args.dtype)
  rng = np.random.default_rng(0)
  cache = rng.standard_normal((B, K, S, Dh), dtype=np.float32)
  layouts = {"slots_major": jnp.asarray(cache, dt), "dim_major": jnp.asarray(cache.transpose(0, 1, 3, 2).copy(), dt)}
  q = jnp.asarray(rng.standard_normal((B, K, G, Dh), dtype=np.float32), dt)
  p = jnp.asarray(rng.random((B, K, G, S), dtype=np.float32), dt)
  cases = {}
  for name, (spec, layout) in PRODUCTS.items():
    f = jax.jit(lambda a, c, spec=spec: jnp.einsum(spec, a, c, preferred_element_type=jnp.float32))
    cases[name] = (f, q if name.startswith("scores") else p, layouts[layout])
  for kind in ("scores", "output"):
    a, b = [np.asarray(f(x, c)) for n, (f, x, c) in cases.items() if n.startswith(kind)]
    np.testing.assert_allclose(a, b, rtol=1e-2 if dt == jnp.bfloat16 else 1e-4, atol=1e-2)
  times = {name: [] for name in cases}
  for _ in range(args.reps):
    for name, (f, x, c) in cases.items():
      t = time.perf_counter()
      for _ in range(10):
        y = f(x, c)
      y.block_until_ready()
      times[name].append((time.perf_counter() - t) / 10)
  device = jax.devices()[0]
  mb = B * K * S * Dh * dt.itemsize / 1e6
  print(f"device {device.platform}:{device.device_kind}, jax {jax.__version__}; batch {B}, kv heads {K}, "
        f"group {G}, slots {S}, head dim {Dh}, {args.dtype}: the cache operand is {mb:.1f} MB")
  for name, t in times.items():
    ms = float(np.median(t)) * 1e3
    print(f"{name}: {ms:8.3f} ms ({mb / 1e3 / (ms / 1e3):6.1f} GB/s of cache read)")


if __name__ == "__main__":
  main()
