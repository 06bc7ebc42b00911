"""Sampler throughput: tokens/s, ms per decode step, and the ratio to the device's limits.

  python benchmarks/sampler.py --preset=smollm2-135m --batch=32 --prompt=64 --new=128 \
      [--cache=0,1024,4096] [--dtype=float32] [--param_dtype=float32] [--temperature=0] \
      [--draw=gumbel,blocked] \
      [--scan_layers] [--transformers] [--peak_gflops=X --bandwidth_gbs=Y] [--history=0,512,1536] [--matmuls]

Random-initialised models of the project's presets (rlef_jax.config.MODEL_PRESETS, or --layers /
--hidden ... overrides for a custom size). For each allocated cache length (`--cache`, 0 = just what
the prompt and the new tokens need) it times `sampler.generate` on a right-padded prompt chunk: once
with `--new` tokens and once with 1, after a warm-up call of each (compilation excluded), every case
taking turns within each of `--reps` rounds (the median is reported: a drift of the machine's speed
hits all cases alike), and reports

* tok/s: B * new / time of the whole call (prefill included),
* ms/step: (t_new - t_1) / (new - 1), the decode step alone,
* the decode step's FLOPs (2 * params * B + attention over the filled slots) against the peak FLOP/s,
  and its bytes (compute-dtype weights + the filled part of the KV cache, read once) against the
  memory bandwidth: the step's roofline time is the larger of the two; `roofline` = that / measured.

Peak FLOP/s and bandwidth are measured here (a large jitted matmul, a large donated copy) unless
given. With `--history`, a later turn is timed too: the cache already holds that many tokens (fed
untimed), and the call feeds the prompt chunk (the feedback message) and samples `--new` tokens; its
time staying flat in the history shows a turn's continuation costs O(new tokens), not a re-prefill
of the dialogue. With `--transformers` (and torch installed) the same model and shapes run through
transformers' `generate` (greedy, `min_new_tokens` = `max_new_tokens`) in the same process, for a
side-by-side figure. With several `--draw` values (at `--temperature` > 0) every case runs once per
way of drawing the token, in the same rounds. With `--matmuls` it also times the decode step's matrix products alone — every
weight matrix of the model applied to B one-token rows in the model's order (a jitted chain of `x @ W`
and the output projection; no attention, norms, cache or sampling) — the floor this backend's matmuls
put under any sampler of the model, beside the roofline's. Nothing here is a test: figures go to
BUILD_NOTES.md with the command line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from rlef_jax import config as config_lib  # noqa: E402
from rlef_jax import model as model_lib  # noqa: E402
from rlef_jax import sampler  # noqa: E402


def measure_peak_gflops(dtype=jnp.float32, n=2048, reps=5) -> float:
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best / 1e9


def measure_bandwidth_gbs(mbytes=512, reps=5) -> float:
  x = jnp.ones((mbytes << 18,), jnp.float32)  # mbytes MiB
  f = jax.jit(lambda y: y * 1.0001, donate_argnums=0)
  x = f(x)
  x.block_until_ready()
  best = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    x = f(x)
    x.block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * x.nbytes / best / 1e9  # read + write


def llama_config(args) -> model_lib.LlamaConfig:
  cfg = config_lib.base_config().model
  cfg.preset = args.preset
  for key in ("num_layers", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads",
              "head_dim", "vocab_size"):
    if getattr(args, key) is not None:
      setattr(cfg, key, getattr(args, key))
  cfg.dtype, cfg.param_dtype = args.dtype, args.param_dtype
  cfg.remat, cfg.scan_layers = False, args.scan_layers
  cfg.max_position_embeddings = max(8192, max(args.cache) + 1)
  return config_lib.llama_config(cfg)


def _prepare(params, cfg):
  """The sampler's params and model: the sampler's own preparation when it has one."""
  prepare = getattr(sampler, "prepare", None)
  if prepare is not None:
    return prepare(params, cfg)
  return params, model_lib.Llama(cfg)


def generate_timer(params, cfg, args, cache_len: int, new: int, history: int = 0, draw: str = "gumbel"):
  """A function timing one `generate` call on a prompt chunk of `args.prompt` tokens and `new` new
  tokens (compiled by a first, untimed call here), tokens drawn by `draw` (`sampler.DRAWS`). With
  `history`, the cache already holds that many tokens (earlier turns, fed untimed with
  `sampler.feed`): the call is a later turn's continuation."""
  B, P = args.batch, args.prompt
  sparams, smodel = _prepare(params, cfg)
  rng = np.random.default_rng(0)
  chunk = rng.integers(3, cfg.vocab_size, size=(B, P)).astype(np.int32)
  lens = np.full(B, P, np.int32)
  past = rng.integers(3, cfg.vocab_size, size=(B, max(history, 1))).astype(np.int32)

  def once():
    cache = model_lib.init_cache(cfg, B, cache_len)
    if history:
      cache = sampler.feed(sparams, cache, past, np.full(B, history, np.int32), model=smodel)
      jax.block_until_ready(cache)
    t = time.perf_counter()
    out = sampler.generate(sparams, cache, chunk, lens, jax.random.key(0), model=smodel,
                           max_new_tokens=new, temperature=args.temperature, top_p=1.0,
                           stop_ids=(), pad_id=0, draw=draw)
    jax.block_until_ready(out.tokens_BxT)
    assert int(np.min(out.lengths_B)) == new, "rows stopped early"
    return time.perf_counter() - t

  once()  # compile
  return once


def _layer_kernels(params, num_layers: int) -> list[dict]:
  """Each layer's weight matrices as 2-D `[in, out]` arrays (unrolled `layers_i` or stacked `layers`)."""
  def layer(i):
    if "layers" in params:
      return jax.tree.map(lambda x: x[i], params["layers"])
    return params[f"layers_{i}"]
  two_d = lambda k, n_in: k.reshape(int(np.prod(k.shape[:n_in])), -1)  # the first n_in axes are the input
  out = []
  for i in range(num_layers):
    p = layer(i)
    attn, mlp = p["attn"], p["mlp"]
    out.append({"q": two_d(attn["q"]["kernel"], 1), "k": two_d(attn["k"]["kernel"], 1),
                "v": two_d(attn["v"]["kernel"], 1), "o": two_d(attn["o"]["kernel"], 2),
                "gate": mlp["gate"]["kernel"], "up": mlp["up"]["kernel"], "down": mlp["down"]["kernel"]})
  return out


def matmul_timer(params, cfg, batch: int):
  """A function timing the decode step's matrix products alone on `batch` one-token rows: per layer
  q, k, v, o, gate, up, down in the model's order (each product feeding the next as in the layer),
  then the output projection as the model computes it (the tied embedding `x E^T`, or `lm_head`)."""
  dt = cfg.compute_jnp_dtype
  cast = lambda x: x.astype(dt)
  params = nn.unbox(params)
  layers = jax.tree.map(cast, _layer_kernels(params, cfg.num_layers))
  head = cast(params["lm_head"]["kernel"] if "lm_head" in params else params["embed"]["embedding"])

  @jax.jit
  def step(x, layers, head):
    for w in layers:
      q, k, v = x @ w["q"], x @ w["k"], x @ w["v"]
      x = x + q @ w["o"] + (k.sum() + v.sum()) * 0.0  # k, v kept live; their use is attention's
      x = x + (x @ w["gate"] * (x @ w["up"])) @ w["down"]
    if "lm_head" in params:
      return x @ head
    return jnp.einsum("bd,vd->bv", x, head, preferred_element_type=jnp.float32)

  x = jnp.ones((batch, cfg.hidden_size), dt) * 0.01
  step(x, layers, head).block_until_ready()

  def once():
    t = time.perf_counter()
    step(x, layers, head).block_until_ready()
    return time.perf_counter() - t
  return once


def interleaved_medians(timers: dict, reps: int) -> dict:
  """Median time of each timer over `reps` rounds, the timers taking turns within each round, so that
  a drift of the machine's speed (these machines are noisy) hits every case alike."""
  times = {key: [] for key in timers}
  for _ in range(reps):
    for key, once in timers.items():
      times[key].append(once())
  return {key: float(np.median(t)) for key, t in times.items()}


def transformers_times(cfg, args) -> tuple[float, float] | None:
  try:
    import torch
    import transformers
  except ImportError:
    return None
  torch.manual_seed(0)
  torch.set_num_threads(os.cpu_count() or 1)
  hf = transformers.LlamaConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
      num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.rms_norm_eps,
      rope_theta=cfg.rope_theta, max_position_embeddings=cfg.max_position_embeddings,
      tie_word_embeddings=cfg.tie_word_embeddings)
  dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
  device = "cuda" if torch.cuda.is_available() else "cpu"  # the same device kind as the JAX side
  with torch.device(device):  # built there in its dtype: no float32 copy of an 8B model on the host
    model = transformers.LlamaForCausalLM._from_config(hf, dtype=dtype).eval()
  ids = torch.randint(3, cfg.vocab_size, (args.batch, args.prompt), device=device)

  def once(new):
    t = time.perf_counter()
    with torch.no_grad():
      out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                           min_new_tokens=new, do_sample=False, pad_token_id=0)
    if device == "cuda":
      torch.cuda.synchronize()
    assert out.shape[1] == args.prompt + new
    return time.perf_counter() - t

  once(args.new)
  once(1)
  return min(once(args.new) for _ in range(args.reps)), min(once(1) for _ in range(args.reps))


def add_case_args(ap: argparse.ArgumentParser, new: int = 128) -> None:
  """The model (a preset and its overrides) and the decoding case's shapes; `llama_config` reads them."""
  ap.add_argument("--preset", default="smollm2-135m")
  for key in ("num_layers", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "head_dim",
              "vocab_size"):
    ap.add_argument(f"--{key}", type=int, default=None)
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--prompt", type=int, default=64)
  ap.add_argument("--new", type=int, default=new)
  ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; the trainer samples at 1")
  ap.add_argument("--draw", default="gumbel",
                  help="how a token is drawn at temperature > 0 (rlef_jax.sampler.DRAWS); "
                       "benchmarks/sampler.py takes a comma-separated list and times each in turn")


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  add_case_args(ap)
  ap.add_argument("--cache", default="0", help="comma-separated allocated cache lengths (0 = just enough)")
  ap.add_argument("--history", default="",
                  help="comma-separated token counts already in the cache (a later turn's "
                       "continuation; timed: the feedback chunk + new tokens only)")
  ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  ap.add_argument("--param_dtype", default="float32", choices=("float32", "bfloat16"))
  ap.add_argument("--scan_layers", action="store_true")
  ap.add_argument("--transformers", action="store_true")
  ap.add_argument("--matmuls", action="store_true",
                  help="also time the decode step's matrix products alone (the backend's matmul floor)")
  ap.add_argument("--reps", type=int, default=2)
  ap.add_argument("--peak_gflops", type=float, default=None)
  ap.add_argument("--bandwidth_gbs", type=float, default=None)
  ap.add_argument("--json", action="store_true", help="also print one JSON line per cache length")
  args = ap.parse_args(argv)
  args.cache = [int(c) for c in args.cache.split(",")]
  draws = args.draw.split(",")
  if not set(draws) <= set(sampler.DRAWS):
    sys.exit(f"sampler benchmark: --draw takes {', '.join(sampler.DRAWS)}, got {args.draw!r}")
  cfg = llama_config(args)
  device = jax.devices()[0]
  peak = args.peak_gflops or measure_peak_gflops(cfg.compute_jnp_dtype)
  bw = args.bandwidth_gbs or measure_bandwidth_gbs()
  params = model_lib.Llama(cfg).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
  params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, params)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  roofline_s = lambda flops, nbytes: max(flops / (peak * 1e9), nbytes / (bw * 1e9))  # the step's lower bound
  itemsize = jnp.dtype(cfg.compute_jnp_dtype).itemsize
  print(f"device {device.platform}:{device.device_kind} x{jax.device_count()}, jax {jax.__version__}; "
        f"peak {peak:.0f} GFLOP/s, bandwidth {bw:.1f} GB/s"
        f"{' (given)' if args.peak_gflops or args.bandwidth_gbs else ' (measured)'}")
  print(f"model {args.preset} {n_params / 1e6:.1f}M params, {cfg.num_layers} layers, dtype {cfg.dtype}, "
        f"params {cfg.param_dtype}, scan_layers {cfg.scan_layers}; batch {args.batch}, prompt "
        f"{args.prompt}, new {args.new}, temperature {args.temperature}")
  caches = [c or args.prompt + args.new + 1 for c in args.cache]
  history = [int(h) for h in args.history.split(",") if h]
  capacity = max(history, default=0) + args.prompt + args.new + 1
  timers = {}
  for d in draws:
    for S in caches:
      timers[("cache", S, args.new, d)] = generate_timer(params, cfg, args, S, args.new, draw=d)
      timers[("cache", S, 1, d)] = generate_timer(params, cfg, args, S, 1, draw=d)
    for h in history:
      timers[("history", h, args.new, d)] = generate_timer(params, cfg, args, capacity, args.new,
                                                           history=h, draw=d)
      timers[("history", h, 1, d)] = generate_timer(params, cfg, args, capacity, 1, history=h, draw=d)
  if args.matmuls:
    mm_once = matmul_timer(params, cfg, args.batch)
    timers[("matmuls",)] = lambda: float(np.median([mm_once() for _ in range(10)]))
  t = interleaved_medians(timers, args.reps)
  for d, S in ((d, S) for d in draws for S in caches):
    t_new, t_one = t[("cache", S, args.new, d)], t[("cache", S, 1, d)]
    step = (t_new - t_one) / (args.new - 1)
    filled = args.prompt + args.new / 2  # mean filled slots over the decode
    kv_bytes = 2 * cfg.num_layers * args.batch * filled * cfg.num_kv_heads * cfg.head_dim * itemsize
    flops = 2 * n_params * args.batch + 4 * cfg.num_layers * args.batch * filled * cfg.num_heads * cfg.head_dim
    bound = roofline_s(flops, n_params * itemsize + kv_bytes)
    row = {"cache": S, "draw": d, "tok_s": args.batch * args.new / t_new, "ms_step": step * 1e3,
           "mfu": flops / step / (peak * 1e9), "roofline_ms": bound * 1e3, "roofline": bound / step}
    label = f" {d}" if len(draws) > 1 else ""
    print(f"rlef_jax{label:8s} cache {S:6d}: {row['tok_s']:8.1f} tok/s, {row['ms_step']:8.2f} ms/step "
          f"(roofline {row['roofline_ms']:.2f} ms: {row['roofline']:.0%}), MFU {row['mfu']:.0%}")
    if args.json:
      print(json.dumps(row))
  if args.matmuls:
    flops = 2 * n_params * args.batch
    bound = roofline_s(flops, n_params * itemsize)
    mm = t[("matmuls",)]
    print(f"matmuls alone (batch {args.batch}, one token): {mm * 1e3:8.2f} ms/step "
          f"(roofline without attention {bound * 1e3:.2f} ms: {bound / mm:.0%}, {flops / mm / 1e9:.0f} GFLOP/s)")
    if args.json:
      print(json.dumps({"matmuls_ms": mm * 1e3, "roofline_ms": bound * 1e3, "roofline": bound / mm}))
  for d in draws:
    base = None
    for h in history:
      t_new, t_one = t[("history", h, args.new, d)], t[("history", h, 1, d)]
      base = base or t_new
      label = f" ({d} draw)" if len(draws) > 1 else ""
      print(f"continuation after {h:6d} cached tokens (cache {capacity}){label}: turn {t_new * 1e3:8.1f} "
            f"ms ({t_new / base:.2f}x the first), {(t_new - t_one) / (args.new - 1) * 1e3:8.2f} ms/step")
      if args.json:
        print(json.dumps({"history": h, "cache": capacity, "draw": d, "turn_ms": t_new * 1e3,
                          "ms_step": (t_new - t_one) / (args.new - 1) * 1e3}))
  if args.transformers:
    times = transformers_times(cfg, args)
    if times is None:
      print("transformers: torch not installed")
    else:
      t_new, t_one = times
      print(f"transformers (same shapes): {args.batch * args.new / t_new:8.1f} tok/s, "
            f"{(t_new - t_one) / (args.new - 1) * 1e3:8.2f} ms/step")


if __name__ == "__main__":
  main()
