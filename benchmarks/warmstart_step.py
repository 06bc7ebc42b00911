"""Warm-start (supervised) step time for several gradient-chunk counts, side by side.

  python benchmarks/warmstart_step.py --config=configs/tiny.py [--batch=32] [--length=512] \\
      [--microbatches=1,4,8,16] [--reps=3]

Times `rlef_jax.warmstart.make_sft_step` (the warm start's jitted AdamW step) on random tokens of the
config's model for each `--microbatches` value (`warmstart.num_microbatches`), after one compiling
call each; the values take turns within each of `--reps` rounds and the median is printed, so a drift
of the machine's speed hits all alike. Nothing here is a test: figures go to BUILD_NOTES.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import fit  # noqa: E402  (benchmarks/fit.py: configs with overrides)
from sampler import interleaved_medians  # noqa: E402  (benchmarks/sampler.py)
from rlef_jax import config as config_lib  # noqa: E402
from rlef_jax import model as model_lib  # noqa: E402
from rlef_jax import warmstart  # noqa: E402


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", required=True, help="a configs/*.py file")
  ap.add_argument("--set", action="append", default=[], metavar="GROUP.FIELD=VALUE")
  ap.add_argument("--batch", type=int, default=0, help="default warmstart.batch_size")
  ap.add_argument("--length", type=int, default=0, help="default sampling.max_context_length")
  ap.add_argument("--microbatches", default="1,4,8,16")
  ap.add_argument("--reps", type=int, default=3)
  args = ap.parse_args(argv)
  config = fit.load_config(args.config, args.set)
  B = args.batch or config.warmstart.batch_size
  L = args.length or config.sampling.max_context_length
  cfg = config_lib.llama_config(config.model)
  model = model_lib.Llama(cfg)
  params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, params)
  rng = np.random.default_rng(0)
  batch = {"tokens_BxL": rng.integers(0, cfg.vocab_size, size=(B, L)).astype(np.int32),
           "loss_mask_BxL": np.ones((B, L), np.float32)}
  opt = optax.adamw(1e-4)

  def timer(m):
    step = warmstart.make_sft_step(model, opt, m)

    def once():
      state = opt.init(params)
      t = time.perf_counter()
      jax.block_until_ready(step(params, state, batch))
      return time.perf_counter() - t
    once()  # compile
    return once

  timers = {m: timer(m) for m in map(int, args.microbatches.split(","))}
  medians = interleaved_medians(timers, args.reps)
  print(f"{args.config}: {cfg.num_params() / 1e6:.1f}M params, dtype {cfg.dtype}, attention {cfg.attention}; "
        f"warm-start step on {B} x {L} tokens, {jax.devices()[0].platform}")
  for m, median in medians.items():
    print(f"num_microbatches {m:3d}: {median:7.3f} s per step (median of {args.reps})")


if __name__ == "__main__":
  main()
